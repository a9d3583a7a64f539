"""The one metrics function for training, export parity and scoring.

Written in numpy because infer/ must not import sklearn (the scoring tool installs without it); tests check
every figure against sklearn.metrics on the same inputs.
"""
from __future__ import annotations

import math

import numpy as np


def score_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores with their positive and negative counts: the ROC-AUC's sufficient statistics, which add up
    across shards (concatenate and pass to roc_auc_from_counts)."""
    labels = np.asarray(labels).astype(bool)
    values, inverse = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    pos = np.bincount(inverse, weights=labels, minlength=values.size).astype(np.int64)
    neg = np.bincount(inverse, minlength=values.size).astype(np.int64) - pos
    return values, pos, neg


def roc_auc_from_counts(values: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half) from score counts; None with one class.

    values may repeat (partial counts from several shards): equal values are merged first, so the result is the
    same number as from all the rows at once.
    """
    values, inverse = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True)
    pos = np.bincount(inverse, weights=pos, minlength=values.size)
    neg = np.bincount(inverse, weights=neg, minlength=values.size)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    negatives_below = np.cumsum(neg) - neg
    u = float(np.sum(pos * (negatives_below + neg / 2.0)))  # integers and halves: exact in float64 below 2**52
    return u / float(n_pos * n_neg)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve from scores (Mann-Whitney U with ties counted half); None with one class."""
    return roc_auc_from_counts(*score_counts(labels, scores))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from the highest score down."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s = np.asarray(scores, dtype=np.float64)[order]
    y = labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr


def confusion(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """2x2 counts [[tn, fp], [fn, tp]] (rows = true label, columns = prediction), as sklearn orders them."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    return np.bincount(labels * 2 + preds, minlength=4).reshape(2, 2)


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """Accuracy, per-class precision/recall/F1 and MCC from a 2x2 confusion matrix (mergeable across shards)."""
    (tn, fp), (fn, tp) = np.asarray(cm, dtype=np.int64).tolist()
    n = tn + fp + fn + tp

    def ratio(a, b):
        return a / b if b else 0.0

    def prf(tp_, fp_, fn_):
        p, r = ratio(tp_, tp_ + fp_), ratio(tp_, tp_ + fn_)
        return p, r, ratio(2 * p * r, p + r)

    p1, r1, f1 = prf(tp, fp, fn)
    p0, r0, f0 = prf(tn, fn, fp)
    denom = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "n": n,
        "accuracy": ratio(tp + tn, n),
        "precision": p1,
        "recall": r1,
        "f1": f1,
        "mcc": ratio(tp * tn - fp * fn, denom),
        "per_class": {
            "negative": {"precision": p0, "recall": r0, "f1": f0, "support": tn + fp},
            "positive": {"precision": p1, "recall": r1, "f1": f1, "support": fn + tp},
        },
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def binary_metrics(labels, preds, scores=None) -> dict:
    """Every figure the reports and the scorer print; ROC-AUC only from real scores (never from 0/1 labels)."""
    out = metrics_from_confusion(confusion(labels, preds))
    out["roc_auc"] = roc_auc(labels, scores) if scores is not None else None
    return out


class StreamingMetrics:
    """binary_metrics over a stream of chunks in little memory: the confusion matrix is summed as rows arrive, and
    only the float32 score of each labelled row is kept (4 bytes a row, split by label) because an exact ROC-AUC
    needs every score. result() gives the same figures as binary_metrics on all the rows at once."""

    def __init__(self):
        self.cm = np.zeros((2, 2), dtype=np.int64)
        self._scores: dict[int, list[np.ndarray]] = {0: [], 1: []}
        self._sorted: dict[int, np.ndarray] = {}

    def add(self, labels: np.ndarray, preds: np.ndarray, scores: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        self.cm += confusion(labels, preds)
        scores = np.asarray(scores, dtype=np.float32)
        for label in (0, 1):
            self._scores[label].append(scores[labels == label])
        self._sorted = {}

    @property
    def rows(self) -> int:
        return int(self.cm.sum())

    def sorted_scores(self, label: int) -> np.ndarray:
        """All scores of one class, sorted (built once, and the chunk arrays are then let go)."""
        if label not in self._sorted:
            parts = self._scores[label]
            whole = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
            whole.sort()
            self._scores[label] = [whole]
            self._sorted[label] = whole
        return self._sorted[label]

    def roc_auc(self, block: int = 1 << 16) -> float | None:
        """Mann-Whitney U by counting, for each positive score, the negatives below it and half those equal to
        it; in blocks, so the working memory stays small. Integers and halves: exact, as roc_auc()."""
        pos, neg = self.sorted_scores(1), self.sorted_scores(0)
        if not pos.size or not neg.size:
            return None
        u = 0.0
        for i in range(0, pos.size, block):
            part = pos[i:i + block]
            below = np.searchsorted(neg, part, side="left")
            up_to = np.searchsorted(neg, part, side="right")
            u += float(below.sum()) + float((up_to - below).sum()) / 2.0
        return u / (float(pos.size) * float(neg.size))

    def roc_curve(self, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
        """False and true positive rates at up to `points` thresholds spread over the scores (for plotting)."""
        pos, neg = self.sorted_scores(1), self.sorted_scores(0)
        everything = np.concatenate([pos[:: max(1, pos.size // points)], neg[:: max(1, neg.size // points)]])
        thresholds = np.unique(everything)[::-1]
        tpr = (pos.size - np.searchsorted(pos, thresholds, side="left")) / max(pos.size, 1)
        fpr = (neg.size - np.searchsorted(neg, thresholds, side="left")) / max(neg.size, 1)
        return np.r_[0.0, fpr, 1.0], np.r_[0.0, tpr, 1.0]

    def result(self) -> dict:
        out = metrics_from_confusion(self.cm)
        out["roc_auc"] = self.roc_auc()
        return out
