"""The models the GPU check measures (benchmarks/gpu/bench.py): a bert-base-shaped classifier built, exported with
torch.onnx and converted into each fp16 layout by make export's own optimize_variants; the PyTorch contender's
copy of it; and the fp16 parity of the GPU-trained MiniLM, when train.sh left one."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_model(small: bool):
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    config = BertConfig(num_labels=2)  # bert-base-uncased: 12 layers, 768 wide, 12 heads, vocab 30522
    if small:
        config = BertConfig(num_labels=2, num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
                            intermediate_size=512)
    # eager attention exports the pattern onnxruntime's optimizer fuses into its Attention kernel
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    return config, model


def torch_model(config):
    """PyTorch contenders: the same architecture with the default (sdpa) attention and the same seed's weights."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def export_raw(model, raw: Path) -> str:
    """torch.onnx export of the classifier with dynamic batch and sequence axes; returns which exporter ran."""
    import torch

    from tsinfer.export.bert import OPSET

    ids = torch.ones((2, 16), dtype=torch.int64)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    try:
        torch.onnx.export(model, args, str(raw), input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
        return "torch.onnx (TorchScript exporter)"
    except Exception as e:  # a torch without the TorchScript exporter: the dynamo one
        log(f"TorchScript export failed ({str(e).splitlines()[0][:200]}); trying dynamo=True")
        torch.onnx.export(model, args, str(raw), input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=True, external_data=False)
        return "torch.onnx (dynamo exporter)"


def model_folder(folder: Path, onnx_files: dict, tokenizer: Path, cuda_options: dict) -> dict:
    """A tsinfer model folder (meta.json with sha256) around already written ONNX files; returns the fused ops."""
    import onnx

    from tsinfer.infer.meta import ModelMeta

    shutil.copy(tokenizer, folder / "tokenizer.json")
    first = next(iter(onnx_files))
    ModelMeta(kind="bert", max_length=128, files=onnx_files, providers={p: ["cpu", "cuda"] for p in onnx_files},
              default_precision={"cpu": first, "cuda": first}, cuda_options=cuda_options).write(folder)
    ops: dict = {}
    for node in onnx.load(str(folder / next(iter(onnx_files.values()))), load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    keep = ("Attention", "MultiHeadAttention", "PackedAttention", "PackedMultiHeadAttention", "RemovePadding",
            "RestorePadding", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu", "FastGelu",
            "LayerNormalization", "MatMul")
    return {k: v for k, v in ops.items() if k in keep}


def build_layouts(raw: Path, work: Path, config, layouts: list[str], precision: str, tokenizer: Path,
                  result: dict) -> dict:
    """One model folder per fp16 layout (export.bert.GPU_LAYOUTS), through make export's own optimize_variants."""
    from tsinfer.export.bert import GPU_LAYOUTS, optimize_variants

    folders = {}
    for layout in layouts:
        t = time.perf_counter()
        folder = work / f"bert_base_{layout}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            files = optimize_variants(raw, folder, num_heads=config.num_attention_heads,
                                      hidden_size=config.hidden_size, variants=(precision,), gpu_layout=layout)
        except Exception as e:  # a layout that does not convert is reported, the others still run
            result["export"][layout] = {"error": str(e)[:300]}
            log(f"layout {layout}: {e}")
            continue
        fused = model_folder(folder, files, tokenizer, GPU_LAYOUTS[layout]["cuda_options"])
        result["export"][layout] = {"fused_ops": fused, "seconds": round(time.perf_counter() - t, 1),
                                    "bytes": (folder / files[precision]).stat().st_size}
        folders[layout] = folder
        log(f"layout {layout}: {result['export'][layout]}")
    return folders


def minilm_parity(minilm: Path, work: Path, data: Path, layouts: list[str]) -> dict:
    """The GPU-trained MiniLM (train.sh) exported here: fp16 per layout on CUDA against fp32 on the CPU provider."""
    from transformers import AutoModelForSequenceClassification

    from tsinfer.export.bert import GPU_LAYOUTS, optimize_variants
    from tsinfer.infer.models import ScorerSettings
    from tsinfer.infer.request import OutputSpec, ScoreRequest
    from tsinfer.infer.score import score_files

    from benchmarks.gpu.train import fp32_checkpoint

    minilm = fp32_checkpoint(minilm, work / "minilm_fp32_checkpoint")  # a carried copy may be fp16
    model = AutoModelForSequenceClassification.from_pretrained(minilm, attn_implementation="eager").eval()
    raw = work / "minilm_raw.onnx"
    export_raw(model, raw)
    out = {}
    folder = work / "minilm_fp32"
    folder.mkdir(parents=True, exist_ok=True)
    files = optimize_variants(raw, folder, num_heads=model.config.num_attention_heads,
                              hidden_size=model.config.hidden_size, variants=("fp32",))
    model_folder(folder, files, minilm / "tokenizer.json", {})
    score_files(ScoreRequest([str(data)], [str(folder)], OutputSpec(str(work / "minilm_fp32.tsv")),
                             ScorerSettings(provider="cpu", precision="fp32")))
    for layout in layouts:
        folder = work / f"minilm_{layout}"
        folder.mkdir(parents=True, exist_ok=True)
        files = optimize_variants(raw, folder, num_heads=model.config.num_attention_heads,
                                  hidden_size=model.config.hidden_size, variants=("fp16",), gpu_layout=layout)
        model_folder(folder, files, minilm / "tokenizer.json", GPU_LAYOUTS[layout]["cuda_options"])
        score_files(ScoreRequest([str(data)], [str(folder)], OutputSpec(str(work / f"minilm_{layout}.tsv")),
                                 ScorerSettings(provider="cuda", precision="fp16")))
        out[layout] = fp16_parity(work / f"minilm_{layout}.tsv", work / "minilm_fp32.tsv")
        log(f"MiniLM fp16 {layout} (CUDA) vs fp32 (CPU provider), test.tsv: {out[layout]}")
    return out


def fp16_parity(pred_path: Path, reference: Path) -> dict:
    """Agreement, score deltas and accuracy of two tsinfer prediction files (id, label, pred, score) row by row."""
    def load(path):
        rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")][1:]
        return (np.array([int(r[1]) for r in rows]), np.array([int(r[2]) for r in rows]),
                np.array([float(r[3]) for r in rows]))

    (y, p16, s16), (y32, p32, s32) = load(pred_path), load(reference)
    assert len(y) == len(y32) and (y == y32).all(), "the two files hold other rows"
    return {"rows": int(len(y)), "agreement": float((p16 == p32).mean()),
            "max_abs_delta_p": float(np.abs(s16 - s32).max()), "accuracy_fp16": float((p16 == y).mean()),
            "accuracy_fp32": float((p32 == y).mean())}
