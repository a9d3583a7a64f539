"""Distillation: a student fine-tuned on a teacher's soft targets as well as on the labels.

    tsinfer train bert --data data --teacher-targets teachers/all-mpnet-base-v2.npz
        [--distill-temperature T] [--distill-alpha A]

loss = A * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - A) * cross-entropy(student, labels)
(Hinton et al.; T^2 keeps the soft term's gradients on the scale of the hard one's as T grows).

A targets file is an npz (`train_logits`: the teacher's raw logits on the training rows, in the training split's
order; `val_logits` beside them) with a JSON sidecar of the same name: the command that produced it, the teacher's
own validation and test figures, and the fingerprint of the rows (the data files' sha256, the split, the rows'
count and a digest of their texts). A student trains on them only when that fingerprint is its own training
data's, so a target can never be paired with another row. train/teacher.py writes them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer

from tsinfer.infer.meta import sha256_file
from tsinfer.train.data import TrainingData
from tsinfer.train.errors import TrainError
from tsinfer.train.precision import CpuBf16Trainer

TARGETS_FORMAT = 1
TEACHER_KEY = "teacher_logits"  # the training rows' field the collator batches and compute_loss takes out


def sidecar(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def texts_digest(texts: list[str]) -> str:
    """sha256 of the rows' texts in order (each one's UTF-8 and a NUL): the same rows in the same order."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def rows_fingerprint(data: TrainingData) -> dict:
    """What identifies the training rows: the files (name, sha256, rows), the split, the count and the digest."""
    return {"files": [{k: f[k] for k in ("role", "name", "sha256", "rows")} for f in data.files],
            "split": data.split, "train_rows": len(data.train.texts),
            "train_texts_sha256": texts_digest(data.train.texts)}


def _short(sha: str | None) -> str:
    return (sha or "none")[:12]


def check_fingerprint(made_from: dict, data: TrainingData, path: Path) -> None:
    """A TrainError unless the targets were made from these training rows. A smoke run's --limit (the first N
    rows of the split) is checked by the training file and the split alone."""
    ours = rows_fingerprint(data)
    theirs_file = next((f for f in made_from.get("files", []) if f["role"] == "train"), {})
    our_file = next(f for f in ours["files"] if f["role"] == "train")
    redo = ("make targets for this data (tsinfer train teacher-targets --model TEACHER_DIR ...) or train without "
            "--teacher-targets")
    if theirs_file.get("sha256") != our_file["sha256"]:
        raise TrainError(f"{path} was made from {theirs_file.get('name')} sha256 {_short(theirs_file.get('sha256'))}"
                         f"..., the training file is {our_file['name']} sha256 {_short(our_file['sha256'])}...: {redo}")
    split = {k: v for k, v in data.split.items() if k != "limit"}
    limited = "limit" in data.split
    made_rows = made_from.get("train_rows")
    # a limited run takes the first rows of the targets' split; a full one, all of them
    rows_fit = ours["train_rows"] <= (made_rows or 0) if limited else ours["train_rows"] == made_rows
    if made_from.get("split") != split or not rows_fit:
        raise TrainError(f"{path} holds targets for {made_from.get('train_rows')} rows split {made_from.get('split')}"
                         f", the training split has {ours['train_rows']} rows split {split}: {redo}")
    if not limited and made_from.get("train_texts_sha256") != ours["train_texts_sha256"]:
        raise TrainError(f"{path}: the training rows' texts differ from those the targets were made from: {redo}")


def load_targets(path: str | Path, data: TrainingData) -> tuple[np.ndarray, dict]:
    """The teacher's logits for `data.train`'s rows, in their order, and the sidecar's record; a TrainError (one
    line) when the file or its sidecar is missing or unreadable, or was made from other rows."""
    path = Path(path)
    if not path.is_file() or not sidecar(path).is_file():
        raise TrainError(f"teacher targets {path} (with its {sidecar(path).name}) not found: give the npz that "
                         "`tsinfer train teacher-targets` wrote")
    try:
        record = json.loads(sidecar(path).read_text(encoding="utf-8"))
        with np.load(path, allow_pickle=False) as npz:
            logits = np.asarray(npz["train_logits"], dtype=np.float32)
    except (ValueError, KeyError, OSError) as e:
        raise TrainError(f"teacher targets {path} cannot be read ({e}): write them again") from e
    if record.get("format") != TARGETS_FORMAT or logits.ndim != 2 or logits.shape[1] != 2:
        raise TrainError(f"teacher targets {path}: format {record.get('format')}, logits {logits.shape}; this tsinfer "
                         f"reads format {TARGETS_FORMAT} with two logits a row: write them again")
    check_fingerprint(record.get("data", {}), data, path)
    return logits[:len(data.train.texts)], record


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *, temperature: float,
                      alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels), in fp32 whatever the
    autocast (bf16 softmax loses the soft targets' small differences)."""
    student, teacher = student.float(), teacher.float()
    soft = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    return alpha * soft + (1.0 - alpha) * hard


class DistillingTrainer(Trainer):
    """The Trainer whose training loss is distillation_loss on batches that carry teacher logits; batches without
    them (validation, prediction) keep the plain loss."""

    def __init__(self, *args, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature, self.alpha = temperature, alpha

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        teacher = inputs.pop(TEACHER_KEY, None)
        if teacher is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        outputs = model(**inputs)
        loss = distillation_loss(outputs.logits, teacher, inputs["labels"], temperature=self.temperature,
                                 alpha=self.alpha, label_smoothing=self.args.label_smoothing_factor)
        return (loss, outputs) if return_outputs else loss


class CpuBf16DistillingTrainer(CpuBf16Trainer, DistillingTrainer):
    """Distillation with the CPU's bf16 autocast around the training steps (CpuBf16Trainer's compute_loss wraps
    DistillingTrainer's)."""


def trainer_class(*, cpu_bf16: bool, distilling: bool) -> type[Trainer]:
    if distilling:
        return CpuBf16DistillingTrainer if cpu_bf16 else DistillingTrainer
    return CpuBf16Trainer if cpu_bf16 else Trainer


def attach_targets(rows: list[dict], logits: np.ndarray) -> None:
    """Each training row (TokenizedTexts.rows, in the split's order) gets its teacher logits."""
    if len(rows) != len(logits):
        raise TrainError(f"{len(logits)} teacher targets for {len(rows)} training rows")
    for row, pair in zip(rows, logits.tolist()):
        row[TEACHER_KEY] = pair


def distillation_record(path, record: dict, hp) -> dict:
    """The report's and the model folder's record of the teacher whose targets (and sidecar `record`) it trains on."""
    return {"teacher_targets": str(path), "sha256": sha256_file(Path(path)), "command": record.get("command"),
            "teacher": record.get("teacher"), "temperature": hp.distill_temperature, "alpha": hp.distill_alpha}
