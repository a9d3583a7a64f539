"""What a local run reports: each model's running figures (ModelRun), the run's result and metrics JSON head, the
ROC plot and the comparison table printed at the end."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tsinfer.infer.cpus import cpu_budget
from tsinfer.infer.metrics import StreamingMetrics
from tsinfer.infer.models import Scorer
from tsinfer.infer.pipeline import ChunkScores
from tsinfer.infer.rows import NO_LABEL


@dataclass
class ModelRun:
    """One model's scorer and its running figures over a run."""

    name: str
    scorer: Scorer
    prepare_s: float = 0.0
    infer_s: float = 0.0
    rows: int = 0
    tokens: int = 0
    padded: int = 0
    truncated: int = 0
    metrics: StreamingMetrics = field(default_factory=StreamingMetrics)  # fixed size, see infer.metrics

    def summary(self, wall_s: float) -> dict:
        out = {"model": self.name, "kind": self.scorer.kind, "provider": self.scorer.provider,
               "precision_mode": self.scorer.precision, "file": self.scorer.file,
               "backend": self.scorer.backend}
        # the run-time choices made for this machine, so that a figure can be traced to its settings
        out["settings"] = {k: getattr(self.scorer, k) for k in ("batch_tokens", "max_batch", "batch_rows",
                                                                "tokenizer_workers")
                           if hasattr(self.scorer, k)}
        out["settings"]["lanes"] = len(getattr(self.scorer, "sessions", [None]))
        out.update(self.metrics.summary())
        busy = self.prepare_s + self.infer_s
        out.update({
            "tweets_per_s": self.rows / busy if busy else None,
            "tokens_per_s": self.tokens / busy if busy and self.tokens else None,
            "padding_efficiency": self.tokens / self.padded if self.padded else None,
            "rows_truncated": self.truncated,
            "prepare_s": round(self.prepare_s, 3), "inference_s": round(self.infer_s, 3), "wall_s": round(wall_s, 3),
        })
        return out

    def add(self, scores: ChunkScores, labels: np.ndarray) -> None:
        """A scored chunk's counts and its labelled rows' metrics (the scores as written: the metrics are the
        file's)."""
        self.prepare_s += scores.wait_s
        self.infer_s += scores.infer_s
        self.rows += len(scores.pred)
        self.tokens += scores.tokens
        self.padded += scores.padded
        self.truncated += scores.truncated
        has = labels != NO_LABEL
        if has.any():
            self.metrics.add(labels[has], scores.pred[has], scores.bins[has])

    def counts(self) -> dict:
        return {"rows": self.rows, "tokens": self.tokens, "padded": self.padded, "truncated": self.truncated}


@dataclass
class ScoreResult:
    rows_read: int
    rows_scored: int
    rows_rejected: int
    wall_s: float
    timings: dict
    load_s: float
    models: list[ModelRun]
    summaries: dict
    metrics: dict
    blank_lines_skipped: int = 0


def run_head(counts, *, rows_rejected: int, wall: float, load_s: float, timings: dict, chunk_rows: int) -> dict:
    """The metrics JSON's run-wide figures (each model's own are its ModelRun.summary)."""
    # blank lines are not rows (rows_read = rows_scored + rows_rejected holds): they are counted on their own
    return {"rows_read": counts.rows_read, "rows_scored": counts.rows_scored, "rows_rejected": rows_rejected,
            "blank_lines_skipped": counts.blank_lines,
            "tweets_per_s": counts.rows_scored / wall if wall else None, "wall_s": round(wall, 3),
            "load_s": round(load_s, 3), "timings": timings, "chunk_rows": chunk_rows,
            "cpus": cpu_budget().as_dict()}  # what the lanes and threads were sized by, and why


def plot_roc(runs: list[ModelRun], summaries: dict, path: str) -> None:
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot, no global backend to set

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for run in runs:
        if not run.metrics.rows:
            continue
        fpr, tpr = run.metrics.roc_curve()
        auc = summaries[run.name]["roc_auc"]
        ax.plot(fpr, tpr, label=f"{run.name} ({run.scorer.precision}) AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def comparison_table(result: ScoreResult) -> str:
    """The side-by-side table printed to stderr at the end of a run."""
    lines = []
    summaries = list(result.summaries.values())
    labelled = [s for s in summaries if "accuracy" in s]
    header = f"{'model':<12}{'precision':>10}{'tweets/s':>10}"
    if labelled:
        header += (f"{'acc':>8}{'MCC':>8}{'AUC':>8}{'P(neg)':>8}{'R(neg)':>8}{'F1(neg)':>8}"
                   f"{'P(pos)':>8}{'R(pos)':>8}{'F1(pos)':>8}")
    lines.append(header)
    for s in summaries:
        row = f"{s['model']:<12}{s['precision_mode']:>10}{s['tweets_per_s'] or 0:>10.0f}"
        if "accuracy" in s:
            neg, pos = s["per_class"]["negative"], s["per_class"]["positive"]
            auc = s["roc_auc"] if s["roc_auc"] is not None else float("nan")
            row += (f"{s['accuracy']:>8.4f}{s['mcc']:>8.4f}{auc:>8.4f}{neg['precision']:>8.4f}{neg['recall']:>8.4f}"
                    f"{neg['f1']:>8.4f}{pos['precision']:>8.4f}{pos['recall']:>8.4f}{pos['f1']:>8.4f}")
        lines.append(row)
    t = result.timings
    blank = f" ({result.blank_lines_skipped:,} blank lines skipped)" if result.blank_lines_skipped else ""
    lines.append(f"rows read {result.rows_read:,}, scored {result.rows_scored:,}, rejected {result.rows_rejected:,}"
                 f"{blank}; "
                 f"{result.rows_scored / result.wall_s if result.wall_s else 0:,.0f} tweets/s overall in "
                 f"{result.wall_s:.1f} s (inference {t['inference_s']:.1f} s, waiting for tokens "
                 f"{t['prepare_wait_s']:.1f} s; in parallel threads: read+prepare {t['read_prepare_s']:.1f} s, write "
                 f"{t['write_s']:.1f} s)")
    for s in summaries:
        if s.get("padding_efficiency"):
            lines.append(f"{s['model']}: padding efficiency {s['padding_efficiency']:.3f} (real/padded tokens), "
                         f"{s['tokens_per_s']:,.0f} tokens/s, {s['rows_truncated']:,} rows truncated")
    return "\n".join(lines)
