"""The local engine: stream input files through one or more exported models to predictions, metrics and a ROC.

Three threads, so that the model never waits on the host: a reader thread parses chunk k+2 and starts its
preparation (the HF tokenizer, in worker processes beside a GPU; the spaCy step for the SVC), the main thread
scores chunk k+1 (infer/pipeline.py, shared with the Ray engine), and a writer thread writes chunk k, its metrics
rows and the checkpoint. Inside a chunk, BERT rows are sorted by token length and batched by a token budget;
predictions are written back in input order.
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

from tsinfer.infer import formats
from tsinfer.infer.cpus import cpu_budget
from tsinfer.infer.formats import Columns
from tsinfer.infer.metrics import StreamingMetrics
from tsinfer.infer.models import Scorer
from tsinfer.infer.pipeline import (ChunkScores, ScorerSettings, close_scorers, default_chunk_rows, estimate_total,
                                    load_scorers, metrics_report, model_names, prediction_columns, progress_bar,
                                    score_chunk, write_json, written_scores)
from tsinfer.infer.reader import tsv_field, tsv_line
from tsinfer.infer.rows import NO_LABEL, Chunk, InputError
from tsinfer.infer.textio import open_text, refuse_input_as_output


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

    def write(self, chunk: Chunk, results: list[ChunkScores]) -> None:
        labels = ["" if lab == NO_LABEL else str(lab) for lab in chunk.labels]
        cols = []
        for r in results:
            cols.append(list(map(str, r.pred.tolist())))
            cols.append(written_scores(r.bins, self.fmt))
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
    blank_lines_skipped: int = 0


def check_inputs(inputs: list[str], input_format: str, outputs: dict[str, str | None]) -> None:
    """Fail on a missing or unreadable input, or an output that would overwrite one, before any model loads."""
    for source in inputs:
        if source != "-" and formats.input_format(source, input_format) != "parquet":
            open_text(source).close()
        elif source != "-" and not Path(source).is_file():
            raise InputError(f"input file not found: {source}")
    refuse_input_as_output(inputs, outputs)


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


def score_files(inputs: list[str], models: list[str], *, settings: ScorerSettings = ScorerSettings(),
                output: str | None = "-", fmt: str = "tsv", metrics_path: str | None = None,
                roc_path: str | None = None, rejects_path: str | None = None, progress: bool = False,
                chunk_rows: int | None = None, sort: bool = True, strict: bool = False, resume: bool = False,
                input_format: str = "auto", columns: Columns | None = None) -> ScoreResult:
    """Score the input files with every model: predictions to `output` (TSV or JSONL; - for stdout), unreadable
    rows to `rejects_path`, metrics JSON and ROC PNG for labelled input. With `resume`, continue an interrupted
    run on the same output from its last checkpoint."""
    check_inputs(inputs, input_format, {"output": output, "rejects": rejects_path, "metrics": metrics_path,
                                        "ROC": roc_path})
    with output_lock(output):
        start = time.perf_counter()
        scorers = load_scorers(models, settings)
        try:
            runs = [ModelRun(name, scorer) for name, scorer in zip(model_names(models), scorers)]
            job = LocalRun(runs, inputs=inputs, models=models, output=output, fmt=fmt, rejects_path=rejects_path,
                           chunk_rows=chunk_rows or default_chunk_rows(scorers[0].provider), sort=sort,
                           settings=settings, input_format=input_format, columns=columns or Columns())
            job.load_s = time.perf_counter() - start
            job.restore(resume)
            job.run(strict=strict, progress=progress)
        finally:
            close_scorers(scorers)
        return job.report(time.perf_counter() - start, metrics_path=metrics_path, roc_path=roc_path)


@dataclass
class Prepared:
    """A chunk read by the reader thread, its preparation started for every model."""

    source: str
    chunk: Chunk
    prepared: list


class LocalRun:
    """One local scoring run's state and its steps: restore a checkpoint, read, score, write, report."""

    def __init__(self, runs: list[ModelRun], *, inputs: list[str], models: list[str], output: str | None, fmt: str,
                 rejects_path: str | None, chunk_rows: int, sort: bool, settings: ScorerSettings,
                 input_format: str, columns: Columns):
        self.runs, self.inputs, self.output, self.fmt = runs, inputs, output, fmt
        self.rejects_path, self.chunk_rows, self.sort = rejects_path, chunk_rows, sort
        self.input_format, self.columns = input_format, columns
        self.rows_read = self.rows_scored = self.chunks_done = self.blank_lines = 0
        self.load_s = 0.0
        self.timings = {"read_prepare_s": 0.0, "prepare_wait_s": 0.0, "inference_s": 0.0, "write_s": 0.0}
        self.checkpoint = self.state = None
        to_file = output not in (None, "-")
        self.compressed = to_file and str(output).endswith(COMPRESSED_OUTPUT)
        if to_file and not self.compressed:
            self.checkpoint = Checkpoint(output, {
                # an input edited since the checkpoint must not be continued: its size and mtime are part of the key
                "inputs": [[str(Path(i).resolve()), Path(i).stat().st_size, Path(i).stat().st_mtime_ns]
                           if i != "-" else ["-"] for i in inputs],
                "models": [str(Path(m).resolve()) for m in models],
                "provider": runs[0].scorer.provider, "precisions": [r.scorer.precision for r in runs],
                "format": fmt, "chunk_rows": chunk_rows, "batch_tokens": settings.batch_tokens,
                "max_batch": settings.max_batch, "sort": sort, "input_format": input_format,
                "columns": [columns.text, columns.id, columns.label]})

    def restore(self, resume: bool) -> None:
        """Open the outputs: fresh, or (resume) cut back to the last checkpoint with the figures it recorded."""
        if resume and self.compressed:
            raise InputError(f"--resume cannot continue a compressed output ({self.output}): a compressed stream "
                             "cannot be cut back to its last chunk; write plain text to be able to resume, or run "
                             "without --resume")
        if resume and self.checkpoint is None:
            raise InputError("--resume needs --output FILE (stdout cannot be continued)")
        state = self.checkpoint.load() if resume else None
        if self.checkpoint and state is None:
            self.checkpoint.remove()
        self.state = state or {}
        self.writer = PredictionWriter(self.output, [r.name for r in self.runs], self.fmt,
                                       resume_bytes=state and state["output_bytes"])
        self.rejects = RejectWriter(self.rejects_path, self.state.get("rejects_bytes", 0),
                                    self.state.get("rejects_count", 0))
        self.rows_file = None
        if self.checkpoint:
            if state:
                _read_rows(self.checkpoint.rows_path, state["rows_bytes"], self.runs)
                for run in self.runs:
                    for key, value in state["model_stats"][run.name].items():
                        setattr(run, key, value)
                os.truncate(self.checkpoint.rows_path, state["rows_bytes"])
            self.rows_file = open(self.checkpoint.rows_path, "ab" if state else "wb")
        self.rows_read = self.state.get("rows_read", 0)
        self.rows_scored = self.state.get("rows_scored", 0)
        self.chunks_done = self.state.get("chunks_done", 0)
        self.blank_lines = self.state.get("blank_lines_skipped", 0)

    def run(self, *, strict: bool, progress: bool) -> None:
        """Chunks from the reader thread, scored here, handed to the writer thread in order."""
        self.bar = progress_bar(progress, self.inputs)
        self.started = time.perf_counter()
        reader = Pipe(self._read, name="tsinfer-reader", depth=3)
        sink = Sink(self._write, name="tsinfer-writer")
        ok = interrupted = False
        try:
            try:
                for item in reader:
                    self._estimate_total(item.chunk)
                    if strict and item.chunk.rejects:
                        bad = item.chunk.rejects[0]
                        raise StrictError(f"{item.source}, line {bad.line}: {bad.reason} (--strict stops at the "
                                          "first bad row; without it bad rows go to the rejects file)")
                    sink.put((item, self._score(item)))
            finally:
                reader.stop()
                sink.close()  # even on an error, the chunks already scored are written: the checkpoint stays true
            ok = True
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self._finish(ok)
        if interrupted:
            raise Interrupted(self.rows_read, self.rows_scored, resumable=self.checkpoint is not None)

    def _read(self, emit) -> None:
        """Reader thread: parse every chunk, skip those a checkpoint has done, start their preparation."""
        seen = 0
        for source in self.inputs:
            for chunk in formats.read_chunks(source, self.chunk_rows, self.input_format, self.columns):
                seen += 1
                if seen <= self.chunks_done:  # done before the interruption: parsed again, not prepared or scored
                    continue
                t = time.perf_counter()
                prepared = [run.scorer.prepare_async(chunk.texts) for run in self.runs] if len(chunk) else []
                self.timings["read_prepare_s"] += time.perf_counter() - t
                if not emit(Prepared(source, chunk, prepared)):
                    return

    def _score(self, item: Prepared) -> list[ChunkScores]:
        if not len(item.chunk):
            return []
        received = time.perf_counter()
        results = score_chunk([r.scorer for r in self.runs], item.chunk.texts, prepared=item.prepared,
                              sort=self.sort, on_batch=lambda rows: self.bar.update(rows / len(self.runs)))
        if "first_chunk_ready_s" not in self.timings:  # the models' first wait: how soon a run gets going
            self.timings["first_chunk_ready_s"] = received - self.started + results[0].wait_s
        for r in results:
            self.timings["prepare_wait_s"] += r.wait_s
            self.timings["inference_s"] += r.infer_s
        return results

    def _write(self, job: tuple[Prepared, list[ChunkScores]]) -> None:
        """Writer thread: the chunk's rows, rejects and metrics, then the checkpoint that covers them."""
        item, results = job
        t = time.perf_counter()
        chunk = item.chunk
        self.rejects.write(item.source, chunk)
        labels = chunk.label_array()
        for run, scores in zip(self.runs, results):
            run.add(scores, labels)
            if self.rows_file:
                has = labels != NO_LABEL
                _append_rows(self.rows_file, labels[has], scores.pred[has], scores.bins[has])
        if len(chunk):
            self.writer.write(chunk, results)
        self.rows_scored += len(chunk)
        self.rows_read += len(chunk) + len(chunk.rejects)
        self.blank_lines += chunk.blank_lines
        self.chunks_done += 1
        self._save_checkpoint()
        self.timings["write_s"] += time.perf_counter() - t
        self.bar.n = self.rows_read  # batches advanced it by scored rows, shared among the models
        self.bar.refresh()

    def _save_checkpoint(self) -> None:
        if not self.checkpoint:
            return
        self.rows_file.flush()
        self.checkpoint.save({
            "chunks_done": self.chunks_done, "rows_read": self.rows_read, "rows_scored": self.rows_scored,
            "blank_lines_skipped": self.blank_lines,
            "rejects_count": self.rejects.count, "output_bytes": self.writer.position(),
            "rejects_bytes": self.rejects.position(), "rows_bytes": self.rows_file.tell(),
            "model_stats": {r.name: r.counts() for r in self.runs}})

    def _estimate_total(self, chunk: Chunk) -> None:
        """The progress bar's total, from the bytes read so far (for its ETA)."""
        estimate_total(self.bar, self.rows_read + len(chunk) + len(chunk.rejects), chunk.bytes_read)

    def _finish(self, ok: bool) -> None:
        self.bar.close()
        self.writer.close(ok, keep=self.checkpoint is not None)
        self.rejects.close()
        if self.rows_file:
            self.rows_file.close()
        if ok and self.checkpoint:
            self.checkpoint.remove()

    def report(self, wall: float, *, metrics_path: str | None, roc_path: str | None) -> ScoreResult:
        timings = {k: round(v, 3) for k, v in self.timings.items()}
        summaries = {r.name: r.summary(wall) for r in self.runs}
        # blank lines are not rows (rows_read = rows_scored + rows_rejected holds): they are counted on their own
        head = {"rows_read": self.rows_read, "rows_scored": self.rows_scored, "rows_rejected": self.rejects.count,
                "blank_lines_skipped": self.blank_lines,
                "tweets_per_s": self.rows_scored / wall if wall else None, "wall_s": round(wall, 3),
                "load_s": round(self.load_s, 3), "timings": timings, "chunk_rows": self.chunk_rows,
                "cpus": cpu_budget().as_dict()}  # what the lanes and threads were sized by, and why
        metrics = metrics_report(summaries, head)
        if metrics_path:
            write_json(metrics_path, metrics)
        if roc_path and any(r.metrics.rows for r in self.runs):
            plot_roc(self.runs, summaries, roc_path)
        return ScoreResult(self.rows_read, self.rows_scored, self.rejects.count, wall, timings, self.load_s,
                           self.runs, summaries, metrics, self.blank_lines)


class Pipe:
    """Items made by a producer function in its own thread, iterated here in order (at most `depth` ahead).

    The producer gets emit(item) -> bool, False once the consumer has stopped; its error is raised here.
    """

    _END = object()

    def __init__(self, produce, *, name: str, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def _main(self, produce) -> None:
        try:
            produce(self._emit)
            self._emit(self._END)
        except BaseException as e:  # handed to the consumer
            self._emit(e)

    def _emit(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """Stop the producer and wait for it: a daemon thread killed inside native tokenizer code at exit aborts
        the process, so it is let finish its chunk."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass


class Sink:
    """Items consumed in order by a function in its own thread; put() raises the consumer's error, if any."""

    _END = object()

    def __init__(self, consume, *, name: str, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(consume,), name=name, daemon=True)
        self._thread.start()

    def _main(self, consume) -> None:
        while (item := self._queue.get()) is not self._END:
            if self.error is None:
                try:
                    consume(item)
                except BaseException as e:  # kept for the producer; later items are drained, not consumed
                    self.error = e

    def put(self, item) -> None:
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Consume what was put, stop the thread, raise its error (once)."""
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error


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
