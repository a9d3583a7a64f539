"""Parity of each ONNX graph with the trained model it came from, on the same rows."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tsinfer.infer.batching import encode, load_tokenizer, pad_batch, plan_batches
from tsinfer.infer.meta import ModelMeta
from tsinfer.infer.models import BertScorer, ScorerSettings, SvcScorer, class_probabilities, positive_probability
from tsinfer.infer.preprocess import normalization_for


def compare(name: str, labels, *, ref_pred, ref_value, onnx_pred, onnx_value, value_name: str,
            seconds: float) -> dict:
    """One variant's parity entry: the ONNX graph's predictions and values (value_name) against the reference's."""
    labels = np.asarray(labels)
    return {
        "variant": name,
        "rows": int(len(ref_pred)),
        "agreement": float(np.mean(np.asarray(ref_pred) == np.asarray(onnx_pred))),
        "compared_value": value_name,
        "max_abs_delta": float(np.max(np.abs(np.asarray(ref_value) - np.asarray(onnx_value)))),
        "reference_accuracy": _accuracy(labels, ref_pred),
        "onnx_accuracy": _accuracy(labels, onnx_pred),
        "onnx_seconds": round(seconds, 2),
    }


def _accuracy(labels, pred) -> float:
    labels = np.asarray(labels)
    return float(np.mean(labels == np.asarray(pred))) if len(labels) else 0.0


def svc_parity(svc_model, onnx_folder: Path, texts: list[str], labels) -> dict:
    """Labels and decision values of the ONNX graph against the float64 SVC formula (equal to sklearn's to ~1e-12);
    with more than two classes, the probabilities too (max_abs_probability_delta)."""
    from tsinfer.infer.preprocess import preprocess

    docs = preprocess(texts)
    ref = svc_model.decision_function(docs)
    scorer = SvcScorer(onnx_folder, ModelMeta.read(onnx_folder), None)
    start = time.perf_counter()
    out = scorer.score(docs)
    seconds = time.perf_counter() - start
    entry = compare("fp64", labels, ref_pred=svc_model.predict(ref), ref_value=ref, onnx_pred=out.pred,
                    onnx_value=out.decision, value_name="decision", seconds=seconds)
    if svc_model.multiclass:
        proba = svc_model.probability(ref)
        entry["max_abs_probability_delta"] = float(np.max(np.abs(proba - out.proba))) if len(ref) else 0.0
        # the vote and the calibrated probabilities are two answers (as in sklearn): how often they agree
        entry["label_is_top_probability"] = _accuracy(out.pred, out.proba.argmax(axis=1))
    return entry


def torch_positive_probability(model_dir: Path, enc, batch_tokens: int = 8192,
                               temperature: float | None = None) -> np.ndarray:
    """The fine-tuned PyTorch model's P(positive) ((rows, classes) probabilities for more than two classes), fp32
    logits, on the same token ids the ONNX graphs get, with the temperature the runtime applies."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    classes = model.config.num_labels
    prob = np.zeros(len(enc) if classes == 2 else (len(enc), classes))
    with torch.inference_mode():
        for rows in tqdm(plan_batches(enc.lengths, batch_tokens), desc="parity torch", unit="batch", leave=False):
            ids, mask = pad_batch(enc, rows)
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
            prob[rows] = (positive_probability if classes == 2 else class_probabilities)(logits.numpy(), temperature)
    return prob


def bert_parity(model_dir: Path, onnx_folder: Path, texts: list[str], labels, provider_for: dict) -> list[dict]:
    """Each ONNX variant against PyTorch fp32. provider_for maps precision -> provider, or None: not measured."""
    meta = ModelMeta.read(onnx_folder)
    # as the runtime's prepare() does before its tokenizer
    normalize = normalization_for({"text_normalization": meta.text_normalization})
    enc = encode(load_tokenizer(onnx_folder, meta.max_length), normalize(texts) if normalize else texts)
    ref = torch_positive_probability(model_dir, enc, temperature=meta.temperature)
    binary = ref.ndim == 1
    ref_pred = (ref > 0.5).astype(int) if binary else ref.argmax(axis=1)
    variants = [(p, "onnxruntime", p) for p in meta.files]
    variants += [(p, "openvino", f"{p} openvino") for p in meta.openvino_files]
    entries = []
    for precision, backend, name in variants:
        provider = provider_for.get(precision)
        if provider is None:
            entries.append({"variant": name, "measured": False,
                            "reason": f"needs the {'/'.join(meta.providers[precision])} provider, which this "
                                      "machine lacks (fp16 parity is only meaningful on a GPU; not faked on the CPU)"})
            continue
        if backend == "openvino":
            provider = "cpu"
        scorer = BertScorer(onnx_folder, meta, ScorerSettings(provider=provider, precision=precision, backend=backend))
        start = time.perf_counter()
        out = scorer.score(enc)
        scorer.close()
        entry = compare(name, labels, ref_pred=ref_pred, ref_value=ref, onnx_pred=out.pred,
                        onnx_value=out.score if binary else out.proba,
                        value_name="p_positive" if binary else "probabilities", seconds=time.perf_counter() - start)
        entries.append(dict(entry, provider=provider, backend=backend, measured=True))
    return entries
