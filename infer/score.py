"""Stream TSV files through one or more exported models: predictions, metrics, ROC curves and throughput.

A reader thread parses chunks of rows and does each model's CPU-side preparation (HF fast tokenizer for BERT,
the spaCy step for the SVC) for chunk k+1 while the main thread runs onnxruntime on chunk k. Inside a chunk, BERT
rows are sorted by token length and batched by a token budget; predictions are written back in input order.
"""
from __future__ import annotations

import io
import json
import os
import queue
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tsinfer.infer.batching import CHUNK_ROWS_BY_PROVIDER
from tsinfer.infer.metrics import StreamingMetrics, format_score_bins, score_bins
from tsinfer.infer.models import load_scorer
from tsinfer.infer import formats
from tsinfer.infer.formats import Columns
from tsinfer.infer.reader import (DEFAULT_CHUNK_ROWS, NO_LABEL, Chunk, InputError, input_size,
                                  open_text, refuse_input_as_output, tsv_field, tsv_line)


@dataclass
class ModelRun:
    name: str
    scorer: object
    prepare_s: float = 0.0
    infer_s: float = 0.0
    rows: int = 0
    tokens: int = 0
    padded: int = 0
    truncated: int = 0
    metrics: StreamingMetrics = field(default_factory=StreamingMetrics)  # fixed size, see infer.metrics

    def summary(self, wall_s: float) -> dict:
        out = {"model": self.name, "kind": self.scorer.kind, "provider": self.scorer.provider,
               "precision_mode": self.scorer.precision, "file": self.scorer.file}
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

    def roc(self):
        return self.metrics.roc_curve()


def model_names(models: list[str]) -> list[str]:
    """One name per model folder (its folder name, made unique): the suffix of its output columns."""
    names: list[str] = []
    for folder in models:
        name = Path(folder).name or "model"
        while name in names:
            name += "_"
        names.append(name)
    return names


def prediction_columns(names: list[str]) -> list[tuple[str, str]]:
    """(pred column, score column) per model: pred/score for one model, pred_NAME/score_NAME for several."""
    return [("pred", "score")] if len(names) == 1 else [(f"pred_{n}", f"score_{n}") for n in names]


COMPRESSED_OUTPUT = (".gz", ".zst")  # output names that are written compressed (not resumable: see _score_files)


def _open_output(tmp: Path, final: str):
    if final.endswith(".gz"):
        import gzip

        return gzip.open(tmp, "wt", encoding="utf-8", newline="")
    if final.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{final}: writing zstd needs pip install zstandard (or name the output .gz)") from None
        return zstandard.open(tmp, "wt", encoding="utf-8", newline="")
    return open(tmp, "w", encoding="utf-8", newline="")


class PredictionWriter:
    """TSV (csv-quoted where a field needs it, so the reader reads it back) or JSONL, to a file or stdout.

    A file is written under a hidden `.NAME.partial` name in the same folder and renamed when complete, so an
    interrupted run never leaves a half-written file under the final name; `resume_bytes` continues a partial file
    from the end of its last completed chunk.
    """

    def __init__(self, path: str | None, names: list[str], fmt: str = "tsv", resume_bytes: int | None = None):
        self.path, self.names, self.fmt = path, names, fmt
        self.tsv = fmt == "tsv"
        self.columns = ["id", "label"] + [c for pair in prediction_columns(names) for c in pair]
        if path in (None, "-"):
            self.tmp, self.fh = None, sys.stdout
        else:
            self.tmp = sidecar(path, "partial")
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            if resume_bytes is not None:
                os.truncate(self.tmp, resume_bytes)
                self.fh = open(self.tmp, "a", encoding="utf-8", newline="")
                return
            self.fh = _open_output(self.tmp, str(path))
        if self.tsv:
            self.fh.write(tsv_line(self.columns))

    def position(self) -> int:
        self.fh.flush()
        return os.fstat(self.fh.fileno()).st_size

    def write(self, chunk: Chunk, results: list, bins: list) -> None:
        labels = ["" if lab == NO_LABEL else str(lab) for lab in chunk.labels]
        cols = []
        for r, b in zip(results, bins):
            cols.append(list(map(str, r.pred.tolist())))
            cols.append(format_score_bins(b))
        if self.tsv:  # only the ids can need quoting: the other fields are written here
            ids = list(map(tsv_field, chunk.ids))
            self.fh.write("".join("\t".join(row) + "\n" for row in zip(ids, labels, *cols)))
        else:
            buf = io.StringIO()
            for row in zip(chunk.ids, labels, *cols):
                rec = {"id": row[0], "label": int(row[1]) if row[1] else None}
                for k, name in enumerate(self.columns[2:]):
                    rec[name] = int(row[2 + k]) if name.startswith("pred") else float(row[2 + k])
                buf.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.fh.write(buf.getvalue())

    def close(self, ok: bool = True, keep: bool = False) -> None:
        """ok: rename into place; else the partial file is removed, or kept for --resume."""
        if self.tmp is None:
            self.fh.flush()
            return
        self.fh.close()
        if ok:
            os.replace(self.tmp, self.path)
        elif not keep:
            self.tmp.unlink(missing_ok=True)


class RejectWriter:
    """Rows that could not be scored: input file, line number, reason and the raw row (created on first use)."""

    def __init__(self, path: str | None, resume_bytes: int = 0, resume_count: int = 0):
        self.path, self.fh, self.count = path, None, resume_count
        if path and resume_bytes:
            os.truncate(path, resume_bytes)
            self.fh = open(path, "a", encoding="utf-8", newline="")
        elif path and Path(path).exists():
            Path(path).unlink()  # a stale rejects file from an earlier run would mislead

    def position(self) -> int:
        if self.fh is None:
            return 0
        self.fh.flush()
        return os.fstat(self.fh.fileno()).st_size

    def write(self, source: str, chunk: Chunk) -> None:
        self.count += len(chunk.rejects)
        if not chunk.rejects or self.path is None:
            return
        if self.fh is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "w", encoding="utf-8", newline="")
            self.fh.write(tsv_line(["file", "line", "reason", "raw"]))
        self.fh.write("".join(tsv_line((source, r.line, r.reason, r.raw)) for r in chunk.rejects))

    def close(self) -> None:
        if self.fh:
            self.fh.close()


def _progress(enabled: bool, inputs: list[str]):
    from tqdm import tqdm

    sizes = [input_size(p) for p in inputs]
    total_bytes = sum(s for s in sizes if s) if all(sizes) else None
    bar = tqdm(total=None, unit="rows", unit_scale=True, disable=not enabled, file=sys.stderr,
               dynamic_ncols=True, desc="scoring")
    bar.total_bytes = total_bytes
    return bar


def sidecar(output: str, kind: str) -> Path:
    """Hidden files beside the output: the partial output, the checkpoint and the metrics rows of a run."""
    target = Path(output)
    return target.with_name(f".{target.name}.{kind}")


class Checkpoint:
    """After each completed chunk: how far the run got, so that --resume continues from there.

    The checkpoint JSON records the byte sizes of the partial output, rejects and metrics files at that point;
    resuming truncates them back to those sizes, skips the chunks already done and appends, so the final output
    is byte-identical to an uninterrupted run (the same chunks make the same batches).
    """

    def __init__(self, output: str, config: dict):
        self.path, self.rows_path, self.config = sidecar(output, "checkpoint.json"), sidecar(output, "rows.bin"), config

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        state = json.loads(self.path.read_text())
        if state.get("config") != self.config:
            raise InputError(f"{self.path} was written by a run with other inputs, models or options: rerun "
                              "with the same ones, or without --resume to start over")
        return state

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(state, config=self.config)))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.rows_path.unlink(missing_ok=True)


def _append_rows(fh, labels: np.ndarray, preds: np.ndarray, bins: np.ndarray) -> None:
    fh.write(np.int64(len(labels)).tobytes() + labels.astype(np.int8).tobytes() + preds.astype(np.int8).tobytes()
             + bins.astype(np.int32).tobytes())


def _read_rows(path: Path, size: int, runs: list) -> None:
    """Reload the labelled rows of completed chunks (per chunk, per model, as _append_rows wrote them)."""
    data = path.read_bytes()[:size]
    pos = 0
    while pos < len(data):
        for run in runs:
            n = int(np.frombuffer(data, np.int64, 1, pos)[0])
            pos += 8
            if n:
                run.metrics.add(np.frombuffer(data, np.int8, n, pos), np.frombuffer(data, np.int8, n, pos + n),
                                np.frombuffer(data, np.int32, n, pos + 2 * n))
            pos += 6 * n


class StrictError(Exception):
    """--strict and a row could not be read."""


class Interrupted(Exception):
    """SIGINT/SIGTERM during a run: how far it got; no output file was left under its final name."""

    def __init__(self, rows_read: int, rows_scored: int, resumable: bool = False):
        how = "; run the same command with --resume to continue" if resumable else ""
        super().__init__(f"interrupted after {rows_read:,} rows read, {rows_scored:,} scored{how}")
        self.rows_read, self.rows_scored = rows_read, rows_scored


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


def score_files(*args, **kwargs) -> ScoreResult:
    """Score the input files with every model (see _score_files), one run at a time per output file."""
    import inspect

    output = inspect.signature(_score_files).bind(*args, **kwargs).arguments.get("output", "-")
    with output_lock(output):
        return _score_files(*args, **kwargs)


@contextmanager
def output_lock(output: str | None):
    """Hold an exclusive lock on a hidden file beside the output while a run writes it: a second run on the same
    output would share its partial file, checkpoint and rejects, so it stops at once instead. The lock file is
    left in place (removing it would let a third run lock a new file while the second holds the old one)."""
    if output in (None, "-"):
        yield
        return
    import fcntl

    path = sidecar(output, "lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another tsinfer run is writing {output}: wait for it to end, or choose another "
                             "--output") from None
        yield


def _score_files(inputs: list[str], models: list[str], provider: str = "auto", precision: str = "auto",
                batch_tokens: int | None = None, max_batch: int | None = None, output: str | None = "-",
                fmt: str = "tsv",
                metrics_path: str | None = None, roc_path: str | None = None, rejects_path: str | None = None,
                threads: int | None = None, progress: bool = False, chunk_rows: int | None = None,
                verify: bool = True, sort: bool = True, strict: bool = False, resume: bool = False,
                lanes: int | None = None, input_format: str = "auto", columns: Columns | None = None,
                tokenizer_workers: int | None = None) -> ScoreResult:
    start = time.perf_counter()
    columns = columns or Columns()
    for source in inputs:  # fail on a missing or unreadable input before loading any model
        if source != "-" and formats.input_format(source, input_format) != "parquet":
            open_text(source).close()
        elif source != "-" and not Path(source).is_file():
            raise InputError(f"input file not found: {source}")
    refuse_input_as_output(inputs, {"output": output, "rejects": rejects_path, "metrics": metrics_path,
                                    "ROC": roc_path})
    runs = [ModelRun(name, load_scorer(folder, provider, precision, threads, verify, batch_tokens=batch_tokens,
                                       max_batch=max_batch, lanes=lanes, tokenizer_workers=tokenizer_workers))
            for name, folder in zip(model_names(models), models)]
    for run in runs:
        run.scorer.warm_up()
    chunk_rows = chunk_rows or CHUNK_ROWS_BY_PROVIDER.get(runs[0].scorer.provider, DEFAULT_CHUNK_ROWS)
    load_s = time.perf_counter() - start
    to_file = output not in (None, "-")
    compressed = to_file and str(output).endswith(COMPRESSED_OUTPUT)
    if resume and compressed:
        raise InputError(f"--resume cannot continue a compressed output ({output}): a compressed stream cannot be "
                         "cut back to its last chunk; write plain text to be able to resume, or run without --resume")
    checkpoint = state = None
    if to_file and not compressed:
        checkpoint = Checkpoint(output, {
            # an input edited since the checkpoint must not be continued: its size and mtime are part of the key
            "inputs": [[str(Path(i).resolve()), Path(i).stat().st_size, Path(i).stat().st_mtime_ns]
                       if i != "-" else ["-"] for i in inputs],
            "models": [str(Path(m).resolve()) for m in models],
            "provider": runs[0].scorer.provider, "precisions": [r.scorer.precision for r in runs], "format": fmt,
            "chunk_rows": chunk_rows, "batch_tokens": batch_tokens, "max_batch": max_batch, "sort": sort,
            "input_format": input_format, "columns": [columns.text, columns.id, columns.label]})
        state = checkpoint.load() if resume else None
        if state is None:
            checkpoint.remove()
    elif resume:
        raise InputError("--resume needs --output FILE (stdout cannot be continued)")
    skip = state["chunks_done"] if state else 0
    writer = PredictionWriter(output, [r.name for r in runs], fmt, resume_bytes=state and state["output_bytes"])
    rejects = RejectWriter(rejects_path, state["rejects_bytes"] if state else 0, state["rejects_count"] if state else 0)
    rows_file = None
    if checkpoint:
        if state:
            _read_rows(checkpoint.rows_path, state["rows_bytes"], runs)
            for run in runs:
                for key, value in state["model_stats"][run.name].items():
                    setattr(run, key, value)
            os.truncate(checkpoint.rows_path, state["rows_bytes"])
        rows_file = open(checkpoint.rows_path, "ab" if state else "wb")
    timings = {"read_prepare_s": 0.0, "prepare_wait_s": 0.0, "inference_s": 0.0, "write_s": 0.0}
    work: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce():
        try:
            seen = 0
            for source in inputs:
                for chunk in formats.read_chunks(source, chunk_rows, input_format, columns):
                    seen += 1
                    if seen <= skip:  # done before the interruption: parsed again, not prepared or scored
                        continue
                    t0 = time.perf_counter()
                    prepared = []
                    for run in runs:
                        t = time.perf_counter()
                        prepared.append(run.scorer.prepare_async(chunk.texts) if len(chunk) else None)
                        run.prepare_s += time.perf_counter() - t
                    timings["read_prepare_s"] += time.perf_counter() - t0
                    while not stop.is_set():
                        try:
                            work.put((source, chunk, prepared), timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            work.put(None)
        except BaseException as e:  # hand any reader error to the main thread
            work.put(e)

    producer = threading.Thread(target=produce, name="tsinfer-reader", daemon=True)
    producer.start()
    bar = _progress(progress, inputs)

    def advance(rows: int) -> None:
        bar.update(rows / len(runs))
    rows_read = state["rows_read"] if state else 0
    rows_scored = state["rows_scored"] if state else 0
    chunks_done = skip
    ok = False
    try:
        while True:
            item = work.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            source, chunk, prepared = item
            if bar.total_bytes and chunk.bytes_read:  # estimate the row count from bytes read so far, for ETA
                seen = rows_read + len(chunk) + len(chunk.rejects)
                bar.total = max(seen, int(seen * bar.total_bytes / chunk.bytes_read))
            if strict and chunk.rejects:
                bad = chunk.rejects[0]
                raise StrictError(f"{source}, line {bad.line}: {bad.reason} (--strict stops at the first bad row; "
                                  "without it bad rows go to the rejects file)")
            rejects.write(source, chunk)
            results, bins = [], []
            for run, prep in zip(runs, prepared):
                if not len(chunk):
                    continue
                t = time.perf_counter()
                prep = prep.result()  # tokenizer processes (if any) finishing this chunk
                run.prepare_s += time.perf_counter() - t
                timings["prepare_wait_s"] += time.perf_counter() - t
                t = time.perf_counter()
                out = run.scorer.score(prep, sort=sort, on_batch=advance)
                dt = time.perf_counter() - t
                run.infer_s += dt
                timings["inference_s"] += dt
                run.rows += len(chunk)
                run.tokens += out.tokens
                run.padded += out.padded
                run.truncated += out.truncated
                labels = chunk.label_array()
                has = labels != NO_LABEL
                written = score_bins(out.score)  # the scores as written: the metrics are the file's
                if has.any():
                    run.metrics.add(labels[has], out.pred[has], written[has])
                if rows_file:
                    _append_rows(rows_file, labels[has], out.pred[has], written[has])
                results.append(out)
                bins.append(written)
            t = time.perf_counter()
            if len(chunk):
                writer.write(chunk, results, bins)
            timings["write_s"] += time.perf_counter() - t
            rows_scored += len(chunk)
            rows_read += len(chunk) + len(chunk.rejects)
            chunks_done += 1
            if checkpoint:
                rows_file.flush()
                checkpoint.save({
                    "chunks_done": chunks_done, "rows_read": rows_read, "rows_scored": rows_scored,
                    "rejects_count": rejects.count, "output_bytes": writer.position(),
                    "rejects_bytes": rejects.position(), "rows_bytes": rows_file.tell(),
                    "model_stats": {r.name: {"rows": r.rows, "tokens": r.tokens, "padded": r.padded,
                                             "truncated": r.truncated} for r in runs}})
            bar.n = rows_read  # batches advanced it by scored rows, shared among the models
            bar.refresh()
        ok = True
    except KeyboardInterrupt:
        raise Interrupted(rows_read, rows_scored, resumable=checkpoint is not None) from None
    finally:
        stop.set()
        while producer.is_alive():  # let the reader thread finish its chunk: a daemon thread killed inside
            try:                    # native tokenizer code at exit aborts the process
                work.get(timeout=0.1)
            except queue.Empty:
                pass
        bar.close()
        for run in runs:
            run.scorer.close()
        writer.close(ok, keep=checkpoint is not None)
        rejects.close()
        if rows_file:
            rows_file.close()
        if ok and checkpoint:
            checkpoint.remove()
    wall = time.perf_counter() - start
    timings = {k: round(v, 3) for k, v in timings.items()}
    summaries = {r.name: r.summary(wall) for r in runs}
    head = {"rows_read": rows_read, "rows_scored": rows_scored, "rows_rejected": rejects.count,
            "tweets_per_s": rows_scored / wall if wall else None, "wall_s": round(wall, 3),
            "load_s": round(load_s, 3), "timings": timings, "chunk_rows": chunk_rows}
    if len(runs) == 1:
        metrics = dict(next(iter(summaries.values())), **head)
    else:
        metrics = dict(head, models=summaries)
    if metrics_path:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    if roc_path and any(r.metrics.rows for r in runs):
        plot_roc(runs, summaries, roc_path)
    return ScoreResult(rows_read, rows_scored, rejects.count, wall, timings, load_s, runs, summaries, metrics)


def plot_roc(runs: list[ModelRun], summaries: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for run in runs:
        if not run.metrics.rows:
            continue
        fpr, tpr = run.roc()
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
    plt.close(fig)


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
    lines.append(f"rows read {result.rows_read:,}, scored {result.rows_scored:,}, rejected {result.rows_rejected:,}; "
                 f"{result.rows_scored / result.wall_s if result.wall_s else 0:,.0f} tweets/s overall in "
                 f"{result.wall_s:.1f} s (read+prepare {t['read_prepare_s']:.1f} s in a parallel thread, inference "
                 f"{t['inference_s']:.1f} s, write {t['write_s']:.1f} s)")
    for s in summaries:
        if s.get("padding_efficiency"):
            lines.append(f"{s['model']}: padding efficiency {s['padding_efficiency']:.3f} (real/padded tokens), "
                         f"{s['tokens_per_s']:,.0f} tokens/s, {s['rows_truncated']:,} rows truncated")
    return "\n".join(lines)
