"""Fine-tuned BERT folder -> OpenVINO int8 (NNCF post-training quantization), the CPU engine's model file.

- The PyTorch classifier is converted by `openvino.convert_model` with dynamic batch and length, its last encoder
  layer computed for the [CLS] token alone (the only row the classifier reads: the same numbers for about a sixth
  less work, as the onnxruntime CPU graphs do in export/bert.py). Unlike those, this graph also folds that layer's
  keys and values into the [CLS] query (last_layer_attention), so the last layer projects nothing per token.
  OpenVINO cannot read onnxruntime's fused contrib ops, so it starts from the PyTorch model, not model.onnx.
- A BERT classifier's graph takes input_ids alone, with no attention mask: the CPU runs batches of one row length
  only (never padded), where the mask adds nothing but its cost, and the engine splits any padded batch it is
  given into such batches (infer/engines.py). The token-type embedding, always type 0 here, is added to the
  position embeddings once at export instead of gathered for every token.
- NNCF quantizes it with its transformer preset (SmoothQuant, static per-tensor activation scales fitted on
  training rows, int8 MatMuls): static scales keep a row's answer independent of the rows batched with it, which
  per-batch dynamic scales would not (see infer/engines.py for the runtime side). The word-embedding table it
  packs to int8 is then stored as bf16 (bf16_word_embeddings): the same logits where OpenVINO runs in bf16.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

OPENVINO_FILES = {"int8": "model_int8_ov.xml"}  # its weights sit beside it, same stem, .bin
CALIBRATION_ROWS = 300  # NNCF's default subset size: enough rows for its activation statistics


def cls_only_classifier(model):
    """The classifier with its last layer for token 0 only, taking input_ids alone (unpadded rows), or the
    classifier itself (input_ids and attention_mask) when it is not a BERT sequence classifier (pooler + classifier on
    BertModel, absolute positions) that the rewrite knows."""
    import torch

    bert = getattr(model, "bert", None)
    if (bert is None or getattr(bert, "pooler", None) is None or not hasattr(model, "classifier")
            or getattr(bert.embeddings, "position_embedding_type", "absolute") != "absolute"):
        return _logits_only(model)

    class ClsOnly(torch.nn.Module):
        input_names = ("input_ids",)

        def __init__(self):
            super().__init__()
            self.model = model
            emb = bert.embeddings
            # position + type-0 embedding rows, one constant (every row here is a single segment)
            self.positions = (emb.position_embeddings.weight + emb.token_type_embeddings.weight[0]).detach()
            self.attention = last_layer_attention(bert.encoder.layer[-1].attention.self)

        def forward(self, input_ids):
            emb = bert.embeddings
            s = input_ids.shape[1]
            hidden = emb.word_embeddings(input_ids) + self.positions[:s]
            hidden = emb.LayerNorm(hidden)
            for layer in bert.encoder.layer[:-1]:
                hidden = layer(hidden)[0]
            last = bert.encoder.layer[-1]
            first = last.attention.output(self.attention(hidden), hidden[:, :1])
            out = last.output(last.intermediate(first), first)
            return model.classifier(bert.pooler(out))

    return ClsOnly().eval()


def last_layer_attention(att):
    """The last layer's self-attention for the [CLS] query alone, written so that no projection runs per token.

    With q the [CLS] query of head h, its scores are x_t . (W_k,h^T q) / sqrt(d) (the key bias adds the same
    number to every score, which softmax ignores) and its context is (sum_t p_t x_t) W_v,h^T + b_v,h (the weights
    sum to one). So each row projects one query and one pooled vector per head instead of a key and a value per
    token: the same numbers up to float rounding, for a fraction of the last layer's work."""
    import torch

    heads, d = att.num_attention_heads, att.attention_head_size
    width = att.key.weight.shape[1]

    class ClsAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query = att.query
            # [heads, d, width]: each head's key weights, the score scale folded in
            self.key = torch.nn.Parameter(att.key.weight.detach().view(heads, d, width) * d ** -0.5,
                                          requires_grad=False)
            # [heads, width, d]: each head's value weights, transposed for the pooled rows
            self.value = torch.nn.Parameter(att.value.weight.detach().view(heads, d, width).transpose(1, 2)
                                            .contiguous(), requires_grad=False)
            self.value_bias = torch.nn.Parameter(att.value.bias.detach().view(1, heads, d), requires_grad=False)

        def forward(self, hidden):
            b = hidden.shape[0]
            q = self.query(hidden[:, 0]).view(b, heads, d)
            keyed = torch.matmul(q.transpose(0, 1), self.key).transpose(0, 1)       # [b, heads, width]
            weights = torch.softmax(torch.matmul(keyed, hidden.transpose(1, 2)), dim=-1)  # [b, heads, tokens]
            pooled = torch.matmul(weights, hidden)                                    # [b, heads, width]
            context = torch.matmul(pooled.transpose(0, 1), self.value).transpose(0, 1) + self.value_bias
            return context.reshape(b, 1, heads * d)

    return ClsAttention().eval()


def _logits_only(model):
    import torch

    class LogitsOnly(torch.nn.Module):
        input_names = ("input_ids", "attention_mask")

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return LogitsOnly().eval()


def silence_openvino_telemetry() -> None:
    """OpenVINO's model converter (and NNCF outside its own tests) send usage telemetry unless the user has opted out
    in their home folder: each event forks a process for an HTTP request, and offline such a fork from this threaded
    process once deadlocked in getaddrinfo and kept the process from exiting. tsinfer sends nothing: the library's
    sender is a no-op in this process (the user's own opt-in file is left as it is)."""
    try:
        from openvino_telemetry.utils.sender import TelemetrySender
    except ImportError:  # the telemetry package is optional for both libraries
        return
    TelemetrySender.send = lambda self, backend, message: None


def convert(model_dir: Path):
    """The fine-tuned folder as an fp32 openvino.Model: inputs input_ids (and attention_mask where the [CLS]-only
    rewrite does not apply), output logits."""
    import openvino as ov
    import torch
    from transformers import AutoModelForSequenceClassification

    silence_openvino_telemetry()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    module = cls_only_classifier(model)
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in module.input_names)
    with torch.no_grad():
        ov_model = ov.convert_model(module, example_input=example,
                                    input=[(name, [-1, -1], ov.Type.i64) for name in module.input_names])
    ov_model.outputs[0].get_tensor().set_names({"logits"})
    return ov_model


def export_openvino_int8(model_dir: str | Path, out_dir: str | Path, calibration: list[np.ndarray]) -> dict:
    """Write model_int8_ov.xml/.bin into out_dir; returns {precision: file}. calibration: token id rows (one array
    per row, as the runtime tokenizes them), each fed alone so that no statistic sees padding."""
    import nncf
    import openvino as ov

    from tsinfer.infer.engines import takes_attention_mask

    ov_model = convert(Path(model_dir))
    takes_mask = takes_attention_mask(ov_model.inputs)
    items = [{"input_ids": ids[None, :], **({"attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
                                            if takes_mask else {})} for ids in calibration]
    quantized = nncf.quantize(ov_model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(items))
    bf16_word_embeddings(quantized)
    out = Path(out_dir) / OPENVINO_FILES["int8"]
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return dict(OPENVINO_FILES)


def bf16_word_embeddings(model) -> bool:
    """Store the word-embedding table (NNCF leaves it int8 with a scale per row, which OpenVINO unpacks to float32
    at load) as bfloat16 values. Where OpenVINO runs in bf16 it rounds the gathered rows to bf16 before their first
    addition anyway, so the logits are the same bits, and the Gather copies half the bytes with no conversion after
    it; on a CPU without bf16 the rows are those values widened. Returns whether the table was found."""
    import openvino as ov
    import torch

    gathers = [node for node in model.get_ops()
               if node.get_type_name() == "Gather" and "word_embeddings" in node.get_friendly_name()]
    table = _constant_value(gathers[0].input_value(0).get_node()) if len(gathers) == 1 else None
    if table is None:
        return False
    rounded = torch.from_numpy(table).to(torch.bfloat16).view(torch.int16).numpy()  # round to nearest even
    packed = ov.Tensor(ov.Type.bf16, list(table.shape))
    packed.data.view(np.int16)[...] = rounded
    widened = ov.opset13.convert(ov.op.Constant(packed), "f32")
    gathers[0].input(0).replace_source_output(widened.output(0))
    model.validate_nodes_and_infer_types()
    return True


def _constant_value(node) -> np.ndarray | None:
    """A float32 Constant's values, or those of NNCF's packed weights: Multiply(Convert(int8 Constant), scale)."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data().astype(np.float32)
    if kind == "Multiply":
        packed, scale = (node.input_value(i).get_node() for i in (0, 1))
        if packed.get_type_name() == "Convert" and scale.get_type_name() == "Constant":
            ints = packed.input_value(0).get_node()
            if ints.get_type_name() == "Constant":
                return ints.get_data().astype(np.float32) * scale.get_data().astype(np.float32)
    return None


def calibration_ids(out_dir: Path, texts: list[str], *, max_length: int, normalize=None,
                    rows: int = CALIBRATION_ROWS) -> list[np.ndarray]:
    """Token ids of an evenly spaced sample of the training texts, through the exported folder's tokenizer and
    the model's text normalisation: the calibration sees rows exactly as the runtime will feed them."""
    from tsinfer.infer.batching import encode, load_tokenizer

    picked = [texts[int(i)] for i in np.linspace(0, len(texts) - 1, num=min(rows, len(texts)))]
    if normalize is not None:
        picked = normalize(picked)
    enc = encode(load_tokenizer(out_dir, max_length), picked)
    return [enc.ids[enc.offsets[i]:enc.offsets[i + 1]] for i in range(len(enc))]
