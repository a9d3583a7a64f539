"""The training curve of a BERT run: per-epoch figures from the Trainer's log, and their picture."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def epoch_history(log_history: list[dict]) -> list[dict]:
    """One entry per epoch: mean training loss since the last evaluation, and the validation figures."""
    history, train_losses = [], []
    for entry in log_history:
        if "loss" in entry:
            train_losses.append(entry["loss"])
        if "eval_loss" in entry:
            history.append({"epoch": round(entry["epoch"], 3), "step": entry["step"],
                            "train_loss": float(np.mean(train_losses)) if train_losses else None,
                            "val_loss": entry["eval_loss"], "val_accuracy": entry["eval_accuracy"],
                            "val_mcc": entry["eval_mcc"], "val_roc_auc": entry["eval_roc_auc"]})
            train_losses = []
    return history


def plot_curves(log_history: list[dict], path: Path) -> Path:
    """The loss and validation curves as a PNG at path; returns path."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no backend to choose

    steps = [e["step"] for e in log_history if "loss" in e]
    losses = [e["loss"] for e in log_history if "loss" in e]
    evals = [e for e in log_history if "eval_loss" in e]
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(steps, losses, label="train loss")
    ax1.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="validation loss")
    ax1.set_xlabel("step")
    ax1.legend()
    ax2.plot([e["epoch"] for e in evals], [e["eval_accuracy"] for e in evals], "o-", label="accuracy")
    ax2.plot([e["epoch"] for e in evals], [e["eval_mcc"] for e in evals], "o-", label="MCC")
    ax2.set_xlabel("epoch")
    ax2.set_title("validation")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
