"""The local engine: stream input files through one or more exported models to predictions, metrics and a ROC.

Three threads, so that the model never waits on the host: a reader thread parses chunk k+2 and starts its
preparation (the HF tokenizer, in worker processes beside a GPU; the spaCy step for the SVC), the main thread
scores chunk k+1 (infer/pipeline.py, shared with the Ray engine), and a writer thread writes chunk k, its metrics
rows and the checkpoint. Inside a chunk, BERT rows are sorted by token length and batched by a token budget;
predictions are written back in input order. The pieces: infer/writers.py (the files), infer/checkpoint.py
(--resume), infer/pipes.py (the threads), infer/report.py (figures, metrics JSON, ROC, table).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tsinfer.infer import formats
from tsinfer.infer.checkpoint import RunFiles, run_key
from tsinfer.infer.pipeline import (ChunkScores, close_scorers, default_chunk_rows, estimate_total,
                                    load_scorers, metrics_report, model_names, progress_bar, run_classes, score_chunk,
                                    write_json)
from tsinfer.infer.pipes import Later, Pipe, Sink
from tsinfer.infer.report import ModelRun, ScoreResult, plot_roc, run_head
from tsinfer.infer.request import ScoreRequest
from tsinfer.infer.rows import Chunk, InputError
from tsinfer.infer.textio import open_text, refuse_input_as_output
from tsinfer.infer.writers import output_lock


class StrictError(Exception):
    """--strict and a row could not be read."""


class Interrupted(Exception):
    """SIGINT/SIGTERM during a run: how far it got; no output file was left under its final name."""

    def __init__(self, rows_read: int, rows_scored: int, resumable: bool = False):
        how = "; run the same command with --resume to continue" if resumable else ""
        super().__init__(f"interrupted after {rows_read:,} rows read, {rows_scored:,} scored{how}")
        self.rows_read, self.rows_scored = rows_read, rows_scored


def check_inputs(request: ScoreRequest) -> None:
    """Fail on a missing or unreadable input, or an output that would overwrite one, before any model loads."""
    for source in request.inputs:
        if source != "-" and formats.input_format(source, request.options.input_format) != "parquet":
            open_text(source).close()
        elif source != "-" and not Path(source).is_file():
            raise InputError(f"input file not found: {source}")
    out = request.output
    refuse_input_as_output(list(request.inputs), {"output": out.path, "rejects": out.rejects,
                                                  "metrics": out.metrics, "ROC": out.roc})


def score_files(request: ScoreRequest) -> ScoreResult:
    """Score the input files with every model: predictions to the output (TSV or JSONL; - for stdout), unreadable
    rows to its rejects file, metrics JSON and ROC PNG for labelled input. With options.resume, continue an
    interrupted run on the same output from its last checkpoint."""
    check_inputs(request)
    with output_lock(request.output.path):
        start = time.perf_counter()
        scorers = load_scorers(list(request.models), request.settings)
        try:
            runs = [ModelRun(name, scorer) for name, scorer in zip(model_names(list(request.models)), scorers)]
            job = LocalRun(runs, request, request.options.chunk_rows or default_chunk_rows(scorers[0].provider))
            job.load_s = time.perf_counter() - start
            job.restore()
            job.run()
        finally:
            close_scorers(scorers)
        return job.report(time.perf_counter() - start)


@dataclass
class Prepared:
    """A chunk read by the reader thread, its preparation started for the first model (for the others it starts
    once the chunk is handed over: pipes.Later)."""

    source: str
    chunk: Chunk
    prepared: list


class LocalRun:
    """One local scoring run and its steps: restore a checkpoint, read, score, write, report."""

    def __init__(self, runs: list[ModelRun], request: ScoreRequest, chunk_rows: int):
        self.runs, self.request, self.chunk_rows = runs, request, chunk_rows
        self.classes = run_classes([run.scorer.meta for run in runs], list(request.models))  # how labels read
        self.load_s = 0.0
        self.timings = {"read_prepare_s": 0.0, "prepare_wait_s": 0.0, "inference_s": 0.0, "write_s": 0.0}
        self.files = RunFiles(request.output, key=lambda: run_key(request, runs, chunk_rows), classes=self.classes)

    def restore(self) -> None:
        """Open the outputs: fresh, or (resume) cut back to the last checkpoint with the figures it recorded."""
        self.counts = self.files.open(self.request.options.resume, self.runs)

    def run(self) -> None:
        """Chunks from the reader thread, scored here, handed to the writer thread in order."""
        self.bar = progress_bar(self.request.options.progress, list(self.request.inputs))
        self.started = time.perf_counter()
        reader = Pipe(self._read, name="tsinfer-reader", depth=3)
        sink = Sink(self._write, name="tsinfer-writer")
        ok = interrupted = False
        try:
            try:
                for item in reader:
                    self._estimate_total(item.chunk)
                    if self.request.options.strict and item.chunk.rejects:
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
            self.bar.close()
            self.files.close(ok)
        if interrupted:
            raise Interrupted(self.counts.rows_read, self.counts.rows_scored,
                              resumable=self.files.checkpoint is not None)

    def _read(self, emit) -> None:
        """Reader thread: parse every chunk, skip those a checkpoint has done, start their preparation."""
        seen, options = 0, self.request.options
        for source in self.request.inputs:
            for chunk in formats.read_chunks(source, self.chunk_rows, options.input_format, options.columns,
                                             self.classes):
                seen += 1
                if seen <= self.counts.chunks_done:  # done before the interruption: parsed again, not prepared
                    continue
                t = time.perf_counter()
                # the first model's preparation before the hand-over, the others' after it: the first model scores
                # while they are made (a BERT's lanes need not wait for the spaCy step of an SVC scored after it)
                later = [Later() for _ in self.runs[1:]] if len(chunk) else []
                prepared = [self.runs[0].scorer.prepare_async(chunk.texts), *later] if len(chunk) else []
                self.timings["read_prepare_s"] += time.perf_counter() - t
                if not emit(Prepared(source, chunk, prepared)):
                    return
                t = time.perf_counter()
                for run, pending in zip(self.runs[1:], later):
                    pending.start(lambda scorer=run.scorer: scorer.prepare_async(chunk.texts))
                self.timings["read_prepare_s"] += time.perf_counter() - t

    def _score(self, item: Prepared) -> list[ChunkScores]:
        if not len(item.chunk):
            return []
        received = time.perf_counter()
        results = score_chunk([r.scorer for r in self.runs], item.chunk.texts, prepared=item.prepared,
                              sort=self.request.options.sort,
                              on_batch=lambda rows: self.bar.update(rows / len(self.runs)))
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
        labels = item.chunk.label_array()
        for run, scores in zip(self.runs, results):
            run.add(scores, labels)
        self.files.write(item.source, item.chunk, results)
        self.counts.add(item.chunk)
        self.files.save(self.counts, self.runs)
        self.timings["write_s"] += time.perf_counter() - t
        self.bar.n = self.counts.rows_read  # batches advanced it by scored rows, shared among the models
        self.bar.refresh()

    def _estimate_total(self, chunk: Chunk) -> None:
        """The progress bar's total, from the bytes read so far (for its ETA)."""
        estimate_total(self.bar, self.counts.rows_read + len(chunk) + len(chunk.rejects), chunk.bytes_read)

    def report(self, wall: float) -> ScoreResult:
        timings = {k: round(v, 3) for k, v in self.timings.items()}
        summaries = {r.name: r.summary(wall) for r in self.runs}
        rejected = self.files.rejects.count
        metrics = metrics_report(summaries, run_head(self.counts, rows_rejected=rejected, wall=wall,
                                                     load_s=self.load_s, timings=timings,
                                                     chunk_rows=self.chunk_rows))
        out = self.request.output
        if out.metrics:
            write_json(out.metrics, metrics)
        if out.roc and any(r.metrics.rows for r in self.runs):
            plot_roc(self.runs, summaries, out.roc)
        return ScoreResult(self.counts.rows_read, self.counts.rows_scored, rejected, wall, timings, self.load_s,
                           self.runs, summaries, metrics, self.counts.blank_lines)
