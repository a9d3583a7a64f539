"""A trained teacher's soft targets on the training rows, for distillation (train/distill.py reads them).

    tsinfer train teacher-targets --model /path/to/teacher --data data --out teachers/all-mpnet-base-v2.npz

The teacher is a model folder from `tsinfer train bert` (its training_data.json names the text normalisation it
was trained with, applied here too). Its raw logits on the training and validation rows go into the npz; its
validation and test figures, the command and the rows' fingerprint into the JSON sidecar. Inference takes the fast
path: rows sorted by length so that each batch pads little, under bf16 autocast where the hardware has bf16.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tsinfer.infer.metrics import binary_metrics
from tsinfer.infer.models import positive_probability
from tsinfer.infer.preprocess import normalization_for
from tsinfer.train.data import TrainingData, prepared
from tsinfer.train.distill import TARGETS_FORMAT, rows_fingerprint, sidecar
from tsinfer.train.errors import TrainError
from tsinfer.train.precision import training_precision
from tsinfer.train.report import TRAINING_DATA_FILE, Progress, log_progress, write_report


def load_teacher(model_dir: str | Path) -> tuple:
    """(model, tokenizer, its training record) from a `tsinfer train bert` folder."""
    model_dir = Path(model_dir)
    record_path = model_dir / TRAINING_DATA_FILE
    if not record_path.is_file():
        raise TrainError(f"{model_dir} has no {TRAINING_DATA_FILE}: give a model folder that `tsinfer train bert` "
                         "wrote")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    except OSError as e:
        raise TrainError(f"cannot load the teacher {model_dir}: {str(e).splitlines()[0]}") from e
    return model.eval(), tokenizer, json.loads(record_path.read_text(encoding="utf-8"))


def batch_logits(model, tokenizer, texts: list[str], *, batch_size: int, max_length: int, device: str,
                 bf16: bool) -> np.ndarray:
    """Logits of `texts` in their order, computed in batches of rows sorted by token count."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(device)
            out[idx] = model(**enc).logits.float().cpu().numpy()
    return out


def _figures(logits: np.ndarray, labels: list[int]) -> dict:
    p = positive_probability(logits)
    m = binary_metrics(np.asarray(labels), (p > 0.5).astype(int), p)
    return {key: m[key] for key in ("accuracy", "mcc", "roc_auc")}


def training_figures(report_path: str | Path | None) -> dict | None:
    """The teacher's validation and test figures from its training report (fp32, as trained), or None."""
    if report_path is None:
        return None
    try:
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainError(f"cannot read the teacher's training report {report_path} ({e})") from e
    keys = [f"{split}_{key}" for split in ("val", "test") for key in ("accuracy", "mcc", "roc_auc")]
    if report.get("model") != "bert" or "val_accuracy" not in report:
        raise TrainError(f"{report_path} is not a `tsinfer train bert` report")
    return {"report": str(report_path), **{key: report.get(key) for key in keys},
            **{key: report.get(key) for key in ("base_model", "preset", "hyperparameters", "precision",
                                                "train_seconds", "device_name", "best_epoch")}}


def write_teacher_targets(model_dir: str | Path, data: TrainingData | str | Path, out_path: str | Path, *,
                          command: str, batch_size: int = 64, max_length: int = 128, precision: str = "auto",
                          teacher_report: str | Path | None = None, progress: Progress = log_progress) -> dict:
    """Write the npz of the teacher's logits (training rows, validation rows) and its JSON sidecar; returns the
    sidecar's record. With `teacher_report` (its training report) the sidecar takes the test figures from there
    and the test file is not scored again. `out_path` and its sidecar must not exist (never overwritten)."""
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise TrainError(f"{out_path}: the targets file is an .npz (its record goes beside it as .json)")
    for path in (out_path, sidecar(out_path)):
        if path.exists():
            raise TrainError(f"{path} already exists: remove it or choose another --out (it is never overwritten)")
    data = prepared(data, None, progress)
    trained = training_figures(teacher_report)
    model, tokenizer, record = load_teacher(model_dir)
    cuda = torch.cuda.is_available()
    chosen = training_precision(precision, cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported())
    if chosen.name == "fp16":  # the CUDA choice without bf16: fp32 is exact and a GPU is fast enough for it
        chosen = type(chosen)("fp32", f"{chosen.source}; fp32 in place of fp16")
    device = "cuda" if cuda else "cpu"
    model.to(device)
    normalize = normalization_for(record) or list
    splits = {"train": data.train, "val": data.val, "test": data.test if trained is None else None}
    logits, seconds = {}, {}
    for name, rows in splits.items():
        if rows is None:
            continue
        progress(f"teacher-targets: {name}, {len(rows.texts):,} rows ({device} {chosen.name})")
        start = time.perf_counter()
        logits[name] = batch_logits(model, tokenizer, normalize(rows.texts), batch_size=batch_size,
                                    max_length=max_length, device=device, bf16=chosen.name == "bf16")
        seconds[name] = round(time.perf_counter() - start, 2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp.npz")
    np.savez_compressed(tmp, train_logits=logits["train"], val_logits=logits["val"])
    tmp.replace(out_path)
    result = {
        "format": TARGETS_FORMAT,
        "command": command,
        "logits": "raw (no temperature), in the order of the training split's rows",
        "teacher": {"model_dir": str(model_dir), "model_type": model.config.model_type,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "text_normalization": record.get("text_normalization"),
                    "training_run": record.get("training_run"),
                    **{f"{name}_{key}": value for name in ("train", "val", "test") if name in logits
                       for key, value in _figures(logits[name], splits[name].labels).items()},
                    "training_report": trained},
        "inference": {"device": device, "precision": chosen.name, "precision_source": chosen.source,
                      "batch_size": batch_size, "max_length": max_length, "seconds": seconds},
        "data": rows_fingerprint(data),
    }
    write_report(sidecar(out_path), result)
    return result
