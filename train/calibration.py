"""Calibration of the BERT classifier's probabilities: temperature scaling fitted on the validation split, the
expected calibration error (infer/metrics.py) before and after it, and a reliability diagram.

Temperature scaling divides all the logits by one number T before the softmax: the predicted class never changes,
only how sure the scores are. T is fitted by minimising the validation negative log-likelihood (scipy's bounded
scalar search on log T), and kept only when it also lowers the validation ECE; the runtime then applies it. The ECE
is that of P(positive) for two classes (as tsinfer always reported it) and of the top class for more.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tsinfer.infer.metrics import (ECE_BINS, calibration_bins, ece_from_bins, expected_calibration_error,
                                   top_class_ece)
from tsinfer.infer.models import class_probabilities, positive_probability

LOG_T_RANGE = (math.log(0.05), math.log(20.0))
LOG_T_TOLERANCE = 1e-8  # far below any useful precision of T


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T), computed stably (from the margin for
    two classes, by log-sum-exp for more)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[1] > 2:
        z = z / temperature
        top = z.max(axis=1)
        log_norm = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        return float(np.mean(log_norm - z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]))
    margin = (z[:, 1] - z[:, 0]) / temperature
    sign = np.where(np.asarray(labels).astype(bool), 1.0, -1.0)
    return float(np.mean(np.logaddexp(0.0, -sign * margin)))


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float | None = None) -> float | None:
    """ECE of P(positive) for two classes, of the top class for more."""
    if np.asarray(logits).shape[1] > 2:
        return top_class_ece(labels, class_probabilities(logits, temperature))
    return expected_calibration_error(labels, positive_probability(logits, temperature))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL (convex in 1/T, so the bounded search finds its one minimum)."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=LOG_T_RANGE,
                            method="bounded", options={"xatol": LOG_T_TOLERANCE})
    return math.exp(found.x)


def calibrate(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Fit T on splits["val"] = (logits, labels); ECE and NLL of every split before and after it.

    Returns {"temperature": T or None (None: it did not lower the validation ECE, so the runtime keeps T=1),
    "fitted_temperature": T, "ece_bins": 15, split: {"ece", "ece_scaled", "nll", "nll_scaled"}}.
    """
    t = fit_temperature(*splits["val"])
    out: dict = {"fitted_temperature": t, "ece_bins": ECE_BINS}
    for name, (logits, labels) in splits.items():
        out[name] = {"ece": ece(logits, labels), "ece_scaled": ece(logits, labels, t),
                     "nll": nll(logits, labels), "nll_scaled": nll(logits, labels, t)}
    out["temperature"] = t if out["val"]["ece_scaled"] < out["val"]["ece"] else None
    return out


def plot_reliability(splits: dict[str, tuple[np.ndarray, np.ndarray]], temperature: float | None,
                     path: str | Path) -> None:
    """Reliability diagram per split: share of positives against mean P(positive) in each of the 15 bins (for more
    than two classes: share of rows whose top class is right against the mean top probability), before and (when a
    temperature is kept) after scaling, with the diagonal of perfect calibration."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(splits), 4.5))
    for i, (name, (logits, labels)) in enumerate(splits.items()):
        ax = fig.add_subplot(1, len(splits), i + 1)
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        for t, label in ((None, "raw"), (temperature, f"T = {temperature:.2f}" if temperature else None)):
            if label is None:
                continue
            p, truth = _reliability_points(logits, labels, t)
            rows, positives, sums = calibration_bins(p, ~truth, truth)
            seen = rows > 0
            error = ece_from_bins(rows, positives, sums)
            ax.plot(sums[seen] / rows[seen], positives[seen] / rows[seen], "o-", label=f"{label} (ECE {error:.3f})")
        multiclass = np.asarray(logits).shape[1] > 2
        ax.set_xlabel("mean top-class probability in bin" if multiclass else "mean P(positive) in bin")
        ax.set_ylabel("share whose top class is right" if multiclass else "share positive")
        ax.set_title(f"{name}: {len(labels):,} rows, {ECE_BINS} bins")
        ax.legend(loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _reliability_points(logits, labels, temperature) -> tuple[np.ndarray, np.ndarray]:
    """(score, hit) per row: P(positive) and the label for two classes; the top probability and whether its class
    is the label for more."""
    if np.asarray(logits).shape[1] > 2:
        proba = class_probabilities(logits, temperature)
        return proba.max(axis=1), proba.argmax(axis=1) == np.asarray(labels)
    return positive_probability(logits, temperature), np.asarray(labels).astype(bool)
