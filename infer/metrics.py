"""The one metrics function for training, export parity and scoring.

Written in numpy because infer/ must not import sklearn (the scoring tool installs without it); tests check
every figure against sklearn.metrics on the same inputs.
"""
from __future__ import annotations

import math

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve from scores (Mann-Whitney U with tie-averaged ranks); None with one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average ranks over ties: group equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


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
