"""The one metrics function for training, export parity and scoring.

Written in numpy because infer/ must not import sklearn (the scoring tool installs without it); tests check
every figure against sklearn.metrics on the same inputs.
"""
from __future__ import annotations

import math

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve from scores (Mann-Whitney U with ties counted half); None with one class."""
    labels = np.asarray(labels).astype(bool)
    values, inverse = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    inverse = inverse.reshape(-1)
    return auc_from_counts(np.bincount(inverse[~labels], minlength=values.size),
                           np.bincount(inverse[labels], minlength=values.size))


def auc_from_counts(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """ROC-AUC from the count of negatives and positives at each distinct score, lowest score first: for each
    positive, the negatives scored below it plus half those tied with it (Mann-Whitney U). Counted in integers
    (twice U), so exact; None with one class. Only the scores that occur are read: an empty bin adds nothing, and a
    streaming histogram has 1,000,001 bins of which a run fills a few thousand."""
    neg, pos = np.asarray(neg, dtype=np.int64), np.asarray(pos, dtype=np.int64)
    seen = np.flatnonzero(neg + pos)
    neg, pos = neg[seen], pos[seen]
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if not n_pos or not n_neg:
        return None
    below = np.cumsum(neg) - neg
    twice_u = 2 * int(np.dot(pos, below)) + int(np.dot(pos, neg))
    return twice_u / 2 / (n_pos * n_neg)


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


def metrics_from_confusion(cm: np.ndarray, names: tuple[str, str] = ("negative", "positive")) -> dict:
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
            names[0]: {"precision": p0, "recall": r0, "f1": f0, "support": tn + fp},
            names[1]: {"precision": p1, "recall": r1, "f1": f1, "support": fn + tp},
        },
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def binary_metrics(labels, preds, scores=None, names: tuple[str, str] = ("negative", "positive")) -> dict:
    """Every figure the reports and the scorer print; ROC-AUC only from real scores (never from 0/1 labels)."""
    out = metrics_from_confusion(confusion(labels, preds), names)
    out["roc_auc"] = roc_auc(labels, scores) if scores is not None else None
    return out


ECE_BINS = 15


def calibration_bins(scores: np.ndarray, neg: np.ndarray | int = 1, pos: np.ndarray | int | None = None,
                     n_bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of P(positive) (bin i holds [i/n_bins, (i+1)/n_bins), the last one also 1.0): rows,
    positive rows, and the sum of P(positive), from the count of negatives and positives at each score.

    One path for rows (counts of 0/1) and for StreamingMetrics' histogram, so that both give the same numbers.
    """
    scores = np.asarray(scores, dtype=np.float64)
    neg = np.broadcast_to(np.asarray(neg, dtype=np.float64), scores.shape)
    pos = np.broadcast_to(np.asarray(pos, dtype=np.float64), scores.shape)
    rows = neg + pos
    index = np.minimum((scores * n_bins).astype(np.int64), n_bins - 1)
    return (np.bincount(index, weights=rows, minlength=n_bins), np.bincount(index, weights=pos, minlength=n_bins),
            np.bincount(index, weights=rows * scores, minlength=n_bins))


def ece_from_bins(rows: np.ndarray, positives: np.ndarray, score_sums: np.ndarray) -> float | None:
    """sum over bins of (bin rows / all rows) * |share of positives - mean P(positive)|; None without rows."""
    total = float(np.sum(rows))
    return float(np.abs(np.asarray(positives) - np.asarray(score_sums)).sum() / total) if total else None


def expected_calibration_error(labels, scores, n_bins: int = ECE_BINS) -> float | None:
    """Expected calibration error of P(positive) over `n_bins` equal-width bins of P(positive).

    This is the ECE of the positive-class probability (each bin compares the share of positive rows with the mean
    P(positive)), not the top-label variant over the predicted class's confidence; for two classes the two differ
    only in how rows are grouped into bins.
    """
    labels = np.asarray(labels).astype(bool)
    return ece_from_bins(*calibration_bins(scores, ~labels, labels, n_bins))


SCORE_DECIMALS = 6
SCORE_BINS = 10 ** SCORE_DECIMALS  # a score is written as b / 10**6; b in 0..SCORE_BINS is its bin


def score_bins(scores: np.ndarray) -> np.ndarray:
    """P(positive) in [0, 1] -> the integer b of its written form b / 10**6 (what the predictions file holds)."""
    return np.rint(np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0) * SCORE_BINS).astype(np.int64)


def format_score_bins(bins: np.ndarray) -> list[str]:
    """The written scores, '0.264187', made from the bins so that file and metrics agree to the last digit."""
    return [f"{b // SCORE_BINS}.{b % SCORE_BINS:0{SCORE_DECIMALS}d}" for b in bins.tolist()]


class StreamingMetrics:
    """binary_metrics of a stream of chunks, in fixed memory: the confusion matrix, and per class a histogram of
    the written scores (1,000,001 bins, 16 MB, however many rows). The ROC-AUC is exact for the scores as written
    (sklearn on the predictions file gives the same number), and the counts add up across shards and machines
    (the Ray engine adds up per-block counts with add(..., counts)).
    """

    def __init__(self, names: tuple[str, ...] = ("negative", "positive")):
        self.names = tuple(names)
        self.cm = np.zeros((2, 2), dtype=np.int64)
        self.hist = np.zeros((2, SCORE_BINS + 1), dtype=np.int64)

    def add(self, labels: np.ndarray, preds: np.ndarray, bins: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add rows (label, pred, score bin), or with counts, partial counts of such triples (the Ray engine)."""
        labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
        counts = 1 if counts is None else np.asarray(counts, dtype=np.int64)
        np.add.at(self.cm, (labels, preds), counts)
        np.add.at(self.hist, (labels, np.asarray(bins, dtype=np.int64)), counts)

    def merge(self, other: "StreamingMetrics") -> None:
        """Add another shard's counts."""
        self.cm += other.cm
        self.hist += other.hist

    @property
    def rows(self) -> int:
        return int(self.cm.sum())

    def _written(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The written scores that occur (bins, lowest first) and their negatives and positives: the ROC curve and
        the ECE read these few thousand bins, not all 1,000,001 (empty bins add nothing to either)."""
        seen = np.flatnonzero(self.hist[0] + self.hist[1])
        return seen, self.hist[0][seen], self.hist[1][seen]

    def roc_auc(self) -> float | None:
        return auc_from_counts(*self.hist)

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """False and true positive rates at every written score that occurs, from the highest down."""
        _, neg, pos = self._written()
        tpr = np.cumsum(pos[::-1]) / max(int(pos.sum()), 1)
        fpr = np.cumsum(neg[::-1]) / max(int(neg.sum()), 1)
        return np.r_[0.0, fpr], np.r_[0.0, tpr]

    def ece(self, n_bins: int = ECE_BINS) -> float | None:
        """expected_calibration_error of the written scores: exact, as each histogram bin is one written score."""
        seen, neg, pos = self._written()
        return ece_from_bins(*calibration_bins(seen.astype(np.float64) / SCORE_BINS, neg, pos, n_bins))

    def result(self) -> dict:
        out = metrics_from_confusion(self.cm, self.names)
        out["roc_auc"] = self.roc_auc()
        return out

    def summary(self) -> dict:
        """The figures a scoring run reports per model (both engines), with rows_labelled; {} without labels."""
        if not self.rows:
            return {}
        m = self.result()
        keys = ("accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "confusion_matrix", "per_class")
        return dict({k: m[k] for k in keys}, ece=self.ece(), rows_labelled=self.rows)


# More than two classes: macro averages, the N x N confusion matrix, one-vs-rest ROC-AUC, ECE of the top class.


def confusion_n(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """N x N counts, rows = true label, columns = prediction (sklearn's confusion_matrix)."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    return np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def multiclass_from_confusion(cm: np.ndarray, names: tuple[str, ...]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1 and MCC (sklearn's multi-class formula) from N x N counts;
    a ratio with nothing under it is 0, as sklearn's zero_division default."""
    cm = np.asarray(cm, dtype=np.int64)
    n, tp = int(cm.sum()), np.diag(cm)
    true, predicted = cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(true > 0, tp / np.maximum(true, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    cov_tp = float(tp.sum()) * n - float(np.dot(true, predicted))
    cov_pp, cov_tt = float(n) * n - float(np.dot(predicted, predicted)), float(n) * n - float(np.dot(true, true))
    denom = math.sqrt(cov_tt * cov_pp)
    return {
        "n": n,
        "accuracy": float(tp.sum()) / n if n else 0.0,
        "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()), "macro_f1": float(f1.mean()),
        "mcc": cov_tp / denom if denom else 0.0,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(true[i])} for i, name in enumerate(names)},
        "confusion_matrix": cm.tolist(),
    }


def ovr_auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC-AUC per class from (N, bins) counts of that class's rows and of the others' at each value of
    its own score."""
    return [auc_from_counts(neg[c], pos[c]) for c in range(len(pos))]


def macro(values: list[float | None]) -> float | None:
    """The unweighted mean (sklearn's average='macro'); None when a class has none (sklearn refuses then)."""
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def top_class_ece(labels, proba, n_bins: int = ECE_BINS) -> float | None:
    """ECE of the top class: per equal-width bin of the highest probability, |share of rows whose top class is
    the label - mean highest probability|, weighted by the bin's rows. For two classes see
    expected_calibration_error (P(positive), as tsinfer always reported it)."""
    proba = np.asarray(proba, dtype=np.float64)
    right = proba.argmax(axis=1) == np.asarray(labels)
    return ece_from_bins(*calibration_bins(proba.max(axis=1), ~right, right, n_bins))


def classification_metrics(labels, preds, proba, names: tuple[str, ...]) -> dict:
    """What binary_metrics is for two classes, for N: the figures of multiclass_from_confusion, the one-vs-rest
    ROC-AUC per class and its macro average (from the probabilities; None without them), the top-class ECE."""
    labels = np.asarray(labels, dtype=np.int64)
    out = multiclass_from_confusion(confusion_n(labels, preds, len(names)), names)
    if proba is None:
        return dict(out, roc_auc=None, roc_auc_per_class=None, ece=None)
    proba = np.asarray(proba, dtype=np.float64)
    per_class = [roc_auc(labels == c, proba[:, c]) for c in range(len(names))]
    return dict(out, roc_auc=macro(per_class), roc_auc_per_class=dict(zip(names, per_class)),
                ece=top_class_ece(labels, proba) if len(labels) else None)


def metrics_for(labels, preds, scores, names: tuple[str, ...]) -> dict:
    """binary_metrics for two classes (scores: P(class 1) or a decision value), classification_metrics for more
    (scores: the (rows, N) probabilities)."""
    if len(names) == 2:
        return binary_metrics(labels, preds, scores, tuple(names))
    return classification_metrics(labels, preds, scores, names)


class MulticlassMetrics:
    """StreamingMetrics for N > 2 classes, in fixed memory: the N x N confusion matrix; per class, histograms of
    its written probability over its own rows and over the others' (1,000,001 bins each: the one-vs-rest ROC-AUC,
    exact for the probabilities as written); and per ECE bin of the top written probability, its rows, those whose
    top class is the label and the sum of the top probabilities' bins (integers: exact). All counts add up across
    shards and machines (merge, or add(..., counts) for partial counts of identical rows)."""

    def __init__(self, names: tuple[str, ...]):
        self.names = tuple(names)
        k = len(self.names)
        self.cm = np.zeros((k, k), dtype=np.int64)
        self.pos = np.zeros((k, SCORE_BINS + 1), dtype=np.int64)
        self.neg = np.zeros((k, SCORE_BINS + 1), dtype=np.int64)
        self.top = np.zeros((3, ECE_BINS), dtype=np.int64)  # rows, top class right, sum of top bins

    def add(self, labels: np.ndarray, preds: np.ndarray, bins: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Rows (label, pred, (N,) written probability bins), or with counts, how many rows each stands for."""
        labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
        bins = np.asarray(bins, dtype=np.int64).reshape(len(labels), len(self.names))
        counts = np.ones(len(labels), dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
        np.add.at(self.cm, (labels, preds), counts)
        for c in range(len(self.names)):
            mine = labels == c
            self.pos[c] += np.bincount(bins[mine, c], weights=counts[mine], minlength=SCORE_BINS + 1).astype(np.int64)
            self.neg[c] += np.bincount(bins[~mine, c], weights=counts[~mine],
                                       minlength=SCORE_BINS + 1).astype(np.int64)
        top = bins.max(axis=1)
        right = (bins.argmax(axis=1) == labels).astype(np.int64)
        # the bin calibration_bins gives the written probability (the same float expression, so the same bin)
        at = np.minimum((top / SCORE_BINS * ECE_BINS).astype(np.int64), ECE_BINS - 1)
        for row, weights in enumerate((counts, counts * right, counts * top)):
            np.add.at(self.top[row], at, weights)

    def merge(self, other: "MulticlassMetrics") -> None:
        for name in ("cm", "pos", "neg", "top"):
            getattr(self, name).__iadd__(getattr(other, name))

    @property
    def rows(self) -> int:
        return int(self.cm.sum())

    def roc_curve(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Class c against the rest: false and true positive rates at every written value of its probability."""
        pos, neg = self.pos[c], self.neg[c]
        seen = np.flatnonzero(pos + neg)[::-1]
        tpr = np.cumsum(pos[seen]) / max(int(pos.sum()), 1)
        fpr = np.cumsum(neg[seen]) / max(int(neg.sum()), 1)
        return np.r_[0.0, fpr], np.r_[0.0, tpr]

    def ece(self) -> float | None:
        rows, right, top_bins = self.top
        total = int(rows.sum())
        return float(np.abs(right - top_bins / SCORE_BINS).sum() / total) if total else None

    def summary(self) -> dict:
        """The figures a scoring run reports per model; {} without labelled rows."""
        if not self.rows:
            return {}
        out = multiclass_from_confusion(self.cm, self.names)
        per_class = ovr_auc_from_counts(self.pos, self.neg)
        keys = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "mcc", "confusion_matrix", "per_class")
        return dict({k: out[k] for k in keys}, roc_auc=macro(per_class),
                    roc_auc_per_class=dict(zip(self.names, per_class)), ece=self.ece(), classes=list(self.names),
                    rows_labelled=self.rows)


def streaming_metrics(names: tuple[str, ...]) -> StreamingMetrics | MulticlassMetrics:
    """The streaming metrics of a model with these classes: StreamingMetrics for two (P(class 1) histograms, as
    always), MulticlassMetrics for more."""
    return StreamingMetrics(tuple(names)) if len(names) == 2 else MulticlassMetrics(tuple(names))
