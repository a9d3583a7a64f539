"""--resume: a checkpoint after every completed chunk, and the files of a local run that it covers.

The checkpoint JSON records how far the run got and the byte sizes of the partial output, the rejects and the
labelled-rows file (the metrics' input, in a binary file of its own) at that point. Resuming truncates them back to
those sizes, skips the chunks already done and appends, so the final output is byte-identical to an uninterrupted
run (the same chunks make the same batches).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsinfer.infer.labels import BINARY, LabelSet
from tsinfer.infer.pipeline import ChunkScores
from tsinfer.infer.request import OutputSpec, ScoreRequest
from tsinfer.infer.rows import NO_LABEL, Chunk, InputError
from tsinfer.infer.writers import COMPRESSED_OUTPUT, PredictionWriter, RejectWriter, sidecar


class Checkpoint:
    """The checkpoint file of one output; `config` is the run's key (run_key): a run with other inputs, models or
    options cannot continue it."""

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


def run_key(request: ScoreRequest, runs: list, chunk_rows: int) -> dict:
    """What a checkpoint may only be continued with: the same inputs, unchanged, models and options."""
    settings, options = request.settings, request.options
    return {
        # an input edited since the checkpoint must not be continued: its size and mtime are part of the key
        "inputs": [[str(Path(i).resolve()), Path(i).stat().st_size, Path(i).stat().st_mtime_ns]
                   if i != "-" else ["-"] for i in request.inputs],
        "models": [str(Path(m).resolve()) for m in request.models],
        "provider": runs[0].scorer.provider, "precisions": [r.scorer.precision for r in runs],
        "format": request.output.fmt, "chunk_rows": chunk_rows, "batch_tokens": settings.batch_tokens,
        "max_batch": settings.max_batch, "sort": options.sort, "input_format": options.input_format,
        "columns": [options.columns.text, options.columns.id, options.columns.label]}


def append_rows(fh, labels: np.ndarray, preds: np.ndarray, bins: np.ndarray) -> None:
    """n, then n labels, n predictions and the n rows' score bins (one a row for two classes, one per class for
    more)."""
    fh.write(np.int64(len(labels)).tobytes() + labels.astype(np.int8).tobytes() + preds.astype(np.int8).tobytes()
             + bins.astype(np.int32).tobytes())


def read_rows(path: Path, size: int, runs: list) -> None:
    """Reload the labelled rows of completed chunks (per chunk, per model, as append_rows wrote them)."""
    data = path.read_bytes()[:size]
    pos = 0
    while pos < len(data):
        for run in runs:
            n = int(np.frombuffer(data, np.int64, 1, pos)[0])
            width = 1 if len(run.metrics.names) == 2 else len(run.metrics.names)  # score bins a row
            pos += 8
            if n:
                bins = np.frombuffer(data, np.int32, n * width, pos + 2 * n)
                run.metrics.add(np.frombuffer(data, np.int8, n, pos), np.frombuffer(data, np.int8, n, pos + n),
                                bins if width == 1 else bins.reshape(n, width))
            pos += (2 + 4 * width) * n


@dataclass
class RunCounts:
    """How far a run got: what its checkpoint records and its report shows."""

    rows_read: int = 0
    rows_scored: int = 0
    chunks_done: int = 0
    blank_lines: int = 0

    def add(self, chunk: Chunk) -> None:
        self.rows_scored += len(chunk)
        self.rows_read += len(chunk) + len(chunk.rejects)
        self.blank_lines += chunk.blank_lines
        self.chunks_done += 1

    @classmethod
    def from_state(cls, state: dict) -> "RunCounts":
        return cls(state.get("rows_read", 0), state.get("rows_scored", 0), state.get("chunks_done", 0),
                   state.get("blank_lines_skipped", 0))


class RunFiles:
    """What a local run writes: predictions, rejects and, for a plain-text output file, the checkpoint with the
    labelled rows it covers (a compressed stream cannot be cut back to a chunk, nor stdout)."""

    def __init__(self, spec: OutputSpec, *, key, classes: LabelSet = BINARY):
        """key: a function giving the checkpoint's run_key, called only where there is a checkpoint; classes: the
        models' (the labels and predictions written as their names where there are more than two)."""
        output = spec.path
        self.output, self.fmt, self.rejects_path, self.classes = output, spec.fmt, spec.rejects, classes
        to_file = output not in (None, "-")
        self.compressed = to_file and str(output).endswith(COMPRESSED_OUTPUT)
        self.checkpoint = Checkpoint(output, key()) if to_file and not self.compressed else None
        self.writer = self.rejects = self.rows_file = None

    def open(self, resume: bool, runs: list) -> RunCounts:
        """Fresh, or (resume) cut back to the last checkpoint, whose figures are restored into `runs`."""
        if resume and self.compressed:
            raise InputError(f"--resume cannot continue a compressed output ({self.output}): a compressed stream "
                             "cannot be cut back to its last chunk; write plain text to be able to resume, or run "
                             "without --resume")
        if resume and self.checkpoint is None:
            raise InputError("--resume needs --output FILE (stdout cannot be continued)")
        state = self.checkpoint.load() if resume else None
        if self.checkpoint and state is None:
            self.checkpoint.remove()
        self.writer = PredictionWriter(self.output, [r.name for r in runs], self.fmt,
                                       resume_bytes=state and state["output_bytes"], classes=self.classes)
        state = state or {}
        self.rejects = RejectWriter(self.rejects_path, state.get("rejects_bytes", 0), state.get("rejects_count", 0))
        if self.checkpoint:
            if state:
                read_rows(self.checkpoint.rows_path, state["rows_bytes"], runs)
                for run in runs:
                    for key, value in state["model_stats"][run.name].items():
                        setattr(run, key, value)
                os.truncate(self.checkpoint.rows_path, state["rows_bytes"])
            self.rows_file = open(self.checkpoint.rows_path, "ab" if state else "wb")
        return RunCounts.from_state(state)

    def write(self, source: str, chunk: Chunk, results: list[ChunkScores]) -> None:
        """A chunk's rejects, its labelled rows for the metrics (checkpointed runs), and its predictions."""
        self.rejects.write(source, chunk)
        if self.rows_file:
            labels = chunk.label_array()
            has = labels != NO_LABEL
            for scores in results:
                append_rows(self.rows_file, labels[has], scores.pred[has], scores.bins[has])
        if len(chunk):
            self.writer.write(chunk, results)

    def save(self, counts: RunCounts, runs: list) -> None:
        """The checkpoint covering every chunk written so far."""
        if not self.checkpoint:
            return
        self.rows_file.flush()
        self.checkpoint.save({
            "chunks_done": counts.chunks_done, "rows_read": counts.rows_read, "rows_scored": counts.rows_scored,
            "blank_lines_skipped": counts.blank_lines,
            "rejects_count": self.rejects.count, "output_bytes": self.writer.position(),
            "rejects_bytes": self.rejects.position(), "rows_bytes": self.rows_file.tell(),
            "model_stats": {r.name: r.counts() for r in runs}})

    def close(self, ok: bool) -> None:
        """ok: the output renamed into place and the checkpoint removed; else the partial kept for --resume."""
        self.writer.close(ok, keep=self.checkpoint is not None)
        self.rejects.close()
        if self.rows_file:
            self.rows_file.close()
        if ok and self.checkpoint:
            self.checkpoint.remove()
