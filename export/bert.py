"""Fine-tuned BERT folder -> ONNX variants: fp32 fused (CPU/CUDA), fp16 (CUDA), int8 dynamic (CPU).

- optimum-onnx exports the graph (opset 17, dynamic batch and sequence axes, int64 inputs);
- onnxruntime's transformer optimizer fuses the graph. For the CPU files (model.onnx, model_int8.onnx): attention as
  MultiHeadAttention after separate Q/K/V MatMuls (each then quantized to int8 on its own, where the fused QAttention
  kernel measured slower), GELU with its bias, and the residual adds left beside standard LayerNormalization ops:
  onnxruntime's SkipLayerNormalization CPU kernel measured several times slower than Add + LayerNormalization (the
  runtime also stops onnxruntime from fusing them back at load; see infer/models.py); and the last layer computed
  for the [CLS] token alone, the only one the classifier reads (last_layer_for_first_token_only);
- the fp16 file comes from the GPU-flavoured fusion converted with keep_io_types (int64 ids in, fp32 logits out).
  The known fp16 pitfall is SkipLayerNormalization accumulating mean/variance in fp16 on CUDA (overflow, lost
  precision; fixed upstream in onnxruntime PR 28682 by fp32 accumulation): the runtime also turns on the CUDA
  provider's enable_skip_layer_norm_strict_mode, which computes it in fp32 on older onnxruntime releases;
- onnxruntime's dynamic quantizer makes per-channel int8 weights for the MatMuls (model_int8.onnx); its
  activations, which it quantizes per batch, are rewritten to one scale per token (export/int8.py), so a row's
  int8 score does not depend on the rows beside it. It has no CUDA kernels, so meta.json marks it CPU-only and the
  runtime never picks it for CUDA.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from tsinfer.export.int8 import per_token_activations
from tsinfer.train.errors import ExportError

OPSET = 17
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")
FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
PROVIDERS = {"fp32": ["cpu", "cuda", "tensorrt"], "fp16": ["cuda", "tensorrt"], "int8": ["cpu"]}
DEFAULT_PRECISION = {"cpu": "int8", "cuda": "fp16", "tensorrt": "fp16"}
# Layouts of the fp16 (CUDA) graph: fusion options, packing (RemovePadding/RestorePadding around the encoder, so
# that every MatMul, norm and attention runs on real tokens only, never on padding) and the CUDA provider options
# the graph wants (written to meta.json). benchmarks/gpu measures each; GPU_LAYOUT is the one that won there.
GPU_LAYOUTS = {
    "padded": {"fusion": {}, "packing": False, "cuda_options": {}},           # Attention, 1D mask index
    "packed": {"fusion": {}, "packing": True, "cuda_options": {}},            # PackedAttention (cutlass varlen)
    # PackedMultiHeadAttention; sdpa_kernel 3 = flash or memory-efficient (onnxruntime's AttentionBackend bits)
    "packed_mha": {"fusion": {"use_multi_head_attention": True}, "packing": True,
                   "cuda_options": {"sdpa_kernel": "3"}},
}
GPU_LAYOUT = "packed"
# Fusion options of the CPU graphs (see the module docstring; benchmarks/results/cpu.md has the measurements)
CPU_FUSION = {"enable_skip_layer_norm": False, "use_multi_head_attention": True}


def export_bert_onnx(model_dir: str | Path, out_dir: str | Path, variants=("fp32", "fp16", "int8")) -> dict:
    """Write the ONNX variants and tokenizer files into out_dir; returns {precision: file name}."""
    from optimum.exporters.onnx import main_export
    from transformers import AutoConfig

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory(prefix="tsinfer-export-") as scratch:
        main_export(str(model_dir), scratch, task="text-classification", opset=OPSET, do_validation=False,
                    local_files_only=True)
        written = optimize_variants(Path(scratch) / "model.onnx", out_dir, num_heads=config.num_attention_heads,
                                    hidden_size=config.hidden_size, variants=variants)
        for name in TOKENIZER_FILES:
            for src in (model_dir / name, Path(scratch) / name):
                if src.exists():
                    shutil.copy(src, out_dir / name)
                    break
    if not (out_dir / "tokenizer.json").exists():
        raise ExportError(f"{model_dir} has no tokenizer.json (a fast tokenizer is needed): re-run training")
    return written


def optimize_variants(raw: Path, out_dir: Path, *, num_heads: int, hidden_size: int,
                      variants=("fp32", "fp16", "int8"), gpu_layout: str = GPU_LAYOUT) -> dict:
    """A raw exported BERT graph -> the fused fp32, fp16 and int8 files in out_dir; returns {precision: file}.

    Shared by `make export` (graph from optimum-onnx) and benchmarks/gpu (graph from torch.onnx, as the GPU
    machine has no optimum). gpu_layout: a GPU_LAYOUTS key for the fp16 file (benchmarks/gpu tries each).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fusion = {"model_type": "bert", "num_heads": num_heads, "hidden_size": hidden_size}
    cpu_options = FusionOptions("bert")
    for key, value in CPU_FUSION.items():
        setattr(cpu_options, key, value)
    layout = GPU_LAYOUTS[gpu_layout]
    gpu_options = FusionOptions("bert")
    for key, value in layout["fusion"].items():
        setattr(gpu_options, key, value)
    written = {}
    # opt_level=0: onnxruntime's Python fusions only; the session applies its own graph optimizations at load,
    # and a GPU-flavoured fusion needs no GPU here.
    if "fp32" in variants or "int8" in variants:
        fused = optimize_model(str(raw), **fusion, opt_level=0, use_gpu=False, optimization_options=cpu_options)
        last_layer_for_first_token_only(fused)
        fused.save_model_to_file(str(out_dir / FILES["fp32"]))
        written["fp32"] = FILES["fp32"]
    if "fp16" in variants:
        gpu_fused = optimize_model(str(raw), **fusion, opt_level=0, use_gpu=True, optimization_options=gpu_options)
        # packing converts fused attention only; onnxruntime's optimizer fuses BERT-shaped attention, not MPNet's
        # (its relative position bias): such a graph gets no fp16 file, and CUDA runs its fp32 one
        if not layout["packing"] or attention_fused(gpu_fused):
            if layout["packing"]:
                pack(gpu_fused)
            gpu_fused.convert_float_to_float16(keep_io_types=True)
            gpu_fused.save_model_to_file(str(out_dir / FILES["fp16"]))
            written["fp16"] = FILES["fp16"]
    if "int8" in variants:
        # per-channel weight scales: on the fine-tuned MiniLM, test.tsv accuracy fell 0.52 points from fp32
        # with per-tensor scales and 0.11 with per-channel ones, at the same speed
        quantize_dynamic(str(out_dir / FILES["fp32"]), str(out_dir / FILES["int8"]), per_channel=True,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Attention"],
                         # the fused contrib ops defeat ONNX shape inference: their outputs are float32
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        int8 = onnx.load(str(out_dir / FILES["int8"]))
        per_token_activations(int8)  # one scale per token, not per batch: see export/int8.py
        onnx.save(int8, str(out_dir / FILES["int8"]))
        written["int8"] = FILES["int8"]
    return written


def attention_fused(model) -> bool:
    """Whether onnxruntime's optimizer turned the graph's attention into its fused contrib ops."""
    return any(n.op_type in {"Attention", "MultiHeadAttention"} for n in model.model.graph.node)


def pack(model) -> None:
    """onnxruntime's packing mode on a fused graph (in place); raises if it did not convert every attention.

    Symbolic shape inference is skipped: it does not know the packed contrib ops, and the session needs none.
    """
    from onnxruntime.transformers.convert_to_packing_mode import PackingMode

    PackingMode(model).convert(use_symbolic_shape_infer=False)
    ops = {n.op_type for n in model.model.graph.node}
    if "RemovePadding" not in ops or ops & {"Attention", "MultiHeadAttention"}:
        raise ValueError(f"packing mode did not convert this graph (ops: {sorted(ops)})")


def last_layer_for_first_token_only(model) -> bool:
    """Compute the last encoder layer for the first ([CLS]) token only, in place; True if the graph was changed.

    The classifier reads the last layer at token 0 alone (the pooler's Gather), so past the keys and values of
    the last attention every operator there (the query projection, attention output, feed-forward layers and
    norms) only needs that one row: the same numbers, for about a sixth less work. onnxruntime's optimizer has no
    such pass, so it is done here: a Slice keeps token 0 of the layer's input for the query and the residual add,
    while the keys and values still see every token. A graph whose last layer feeds anything but that Gather
    (another head) is left as it is.
    """
    from onnx import helper, numpy_helper

    graph = model.model.graph
    attention = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    if not attention:
        return False
    last = attention[-1]
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    query, key, value = (producer.get(name) for name in last.input[:3])
    if not all(n is not None and n.op_type == "MatMul" for n in (query, key, value)):
        return False
    hidden = query.input[0]
    if {key.input[0], value.input[0]} != {hidden}:
        return False
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    readers = consumers.get(norms[-1].output[0], []) if norms else []
    if len(readers) != 1 or readers[0].op_type != "Gather" or not _is_first_token_gather(readers[0], graph):
        return False
    first = hidden + "_first_token"
    consts = {"starts": 0, "ends": 1, "axes": 1}
    names = {k: f"{first}_{k}" for k in consts}
    graph.initializer.extend(numpy_helper.from_array(np.array([v], dtype=np.int64), names[k])
                             for k, v in consts.items())
    graph.node.append(helper.make_node("Slice", [hidden, names["starts"], names["ends"], names["axes"]], [first],
                                       name=f"{first}_Slice"))
    for n in consumers[hidden]:
        if n is not key and n is not value:
            n.input[list(n.input).index(hidden)] = first
    model.topological_sort()
    return True


def _is_first_token_gather(node, graph) -> bool:
    from onnx import numpy_helper

    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == node.input[1]:
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    index = values.get(node.input[1])
    return axis == 1 and index is not None and index.size == 1 and int(index.reshape(-1)[0]) == 0
