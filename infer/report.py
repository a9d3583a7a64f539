"""What a local run reports: each model's running figures (ModelRun), the run's result and metrics JSON head, the
ROC plot and the comparison table printed at the end."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsinfer.infer.cpus import cpu_budget
from tsinfer.infer.metrics import MulticlassMetrics, StreamingMetrics, streaming_metrics
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
    # fixed size, see infer.metrics; by default for the model's classes (meta.json)
    metrics: StreamingMetrics | MulticlassMetrics | None = None

    def __post_init__(self):
        if self.metrics is None:
            self.metrics = streaming_metrics(tuple(self.scorer.meta.labels))

    def summary(self, wall_s: float) -> dict:
        out = {"model": self.name, "kind": self.scorer.kind, "provider": self.scorer.provider,
               "precision_mode": self.scorer.precision, "file": self.scorer.file,
               "backend": self.scorer.backend}
        # the run-time choices made for this machine, so that a figure can be traced to its settings
        out["settings"] = {k: getattr(self.scorer, k) for k in ("batch_tokens", "max_batch", "batch_rows",
                                                                "tokenizer_workers", "lanes")
                           if hasattr(self.scorer, k)}
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
    """Every model's ROC curve on one plot; for more than two classes, one plot per model with each class's
    one-vs-rest curve and the macro average's area."""
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot, no global backend to set

    labelled = [run for run in runs if run.metrics.rows]
    multiclass = any(isinstance(run.metrics, MulticlassMetrics) for run in labelled)
    fig = Figure(figsize=(5.5 * len(labelled), 5) if multiclass else (5.5, 5))
    axes = fig.subplots(1, len(labelled), squeeze=False)[0] if multiclass else [fig.subplots()] * len(labelled)
    for ax, run in zip(axes, labelled):
        summary = summaries[run.name]
        if isinstance(run.metrics, MulticlassMetrics):
            for c, name in enumerate(run.metrics.names):
                auc = summary["roc_auc_per_class"][name]
                ax.plot(*run.metrics.roc_curve(c), label=f"{name} vs rest: AUC {_figure(auc)}")
            ax.set_title(f"{run.name} ({run.scorer.precision}): one-vs-rest ROC, macro AUC "
                         f"{_figure(summary['roc_auc'])}")
        else:
            ax.plot(*run.metrics.roc_curve(), label=f"{run.name} ({run.scorer.precision}) AUC "
                                                    f"{_figure(summary['roc_auc'])}")
            ax.set_title("ROC")
    for ax in dict.fromkeys(axes):  # the binary models share one
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def comparison_table(result: ScoreResult) -> str:
    """The side-by-side table printed to stderr at the end of a run."""
    lines = []
    summaries = list(result.summaries.values())
    labelled = [s for s in summaries if "accuracy" in s]
    if any("macro_f1" in s for s in labelled):
        return "\n".join(multiclass_table(summaries) + _run_lines(result, summaries))
    header = f"{'model':<12}{'precision':>10}{'tweets/s':>10}"
    if labelled:  # the two classes by the first letters of their names: neg and pos
        header += f"{'acc':>8}{'MCC':>8}{'AUC':>8}" + "".join(
            f"{f'{m}({name[:3]})':>8}" for name in labelled[0]["per_class"] for m in ("P", "R", "F1"))
    lines.append(header)
    for s in summaries:
        row = f"{s['model']:<12}{s['precision_mode']:>10}{s['tweets_per_s'] or 0:>10.0f}"
        if "accuracy" in s:
            neg, pos = s["per_class"].values()
            auc = s["roc_auc"] if s["roc_auc"] is not None else float("nan")
            row += (f"{s['accuracy']:>8.4f}{s['mcc']:>8.4f}{auc:>8.4f}{neg['precision']:>8.4f}{neg['recall']:>8.4f}"
                    f"{neg['f1']:>8.4f}{pos['precision']:>8.4f}{pos['recall']:>8.4f}{pos['f1']:>8.4f}")
        lines.append(row)
    return "\n".join(lines + _run_lines(result, summaries))


def multiclass_table(summaries: list[dict]) -> list[str]:
    """The table for more than two classes: accuracy, macro-F1, macro-recall (SemEval's measure), MCC, macro
    one-vs-rest AUC and top-class ECE per model, then each class's precision, recall, F1 and AUC."""
    lines = [f"{'model':<12}{'precision':>10}{'tweets/s':>10}{'acc':>8}{'F1(mac)':>8}{'R(mac)':>8}{'MCC':>8}"
             f"{'AUC':>8}{'ECE':>8}"]
    nan = float("nan")
    for s in summaries:
        row = f"{s['model']:<12}{s['precision_mode']:>10}{s['tweets_per_s'] or 0:>10.0f}"
        if "accuracy" in s:
            row += "".join(f"{nan if s[k] is None else s[k]:>8.4f}"
                           for k in ("accuracy", "macro_f1", "macro_recall", "mcc", "roc_auc", "ece"))
        lines.append(row)
    for s in (s for s in summaries if "accuracy" in s):
        for name, c in s["per_class"].items():
            auc = s["roc_auc_per_class"][name]
            lines.append(f"  {s['model']} {name}: precision {c['precision']:.4f} recall {c['recall']:.4f} "
                         f"F1 {c['f1']:.4f} AUC {_figure(auc)} ({c['support']:,} rows)")
    return lines


def _run_lines(result: ScoreResult, summaries: list[dict]) -> list[str]:
    """The table's last lines: rows, rate and where the time went, and BERT's padding."""
    lines = []
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
    return lines
