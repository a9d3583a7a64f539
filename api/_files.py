"""tsinfer.score_file: stream input files through models to a predictions file, as `tsinfer score` does."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

from tsinfer.infer.models import ScorerSettings
from tsinfer.infer.request import OutputSpec, RunOptions, ScoreRequest, rejects_beside
from tsinfer.infer.rows import Columns

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ScoreResult:
    """What a score_file run did: its counts, the rejects file, and the metrics JSON it wrote (or would have)."""

    rows_read: int            # rows_scored + rows_rejected
    rows_scored: int
    rows_rejected: int
    blank_lines_skipped: int  # blank lines are neither rows nor rejects
    wall_s: float
    rejects: str | None       # where the rejected rows went (with their line and reason)
    metrics: dict             # the metrics report: counts, throughput, and per model accuracy, MCC, ROC-AUC...
    summaries: dict           # model name -> its part of `metrics`
    timings: dict             # seconds spent reading, waiting for tokens, in inference, writing


def score_file(inputs: PathLike | Sequence[PathLike], models: PathLike | Sequence[PathLike], output: PathLike = "-",
               *, metrics: PathLike | None = None, rejects: PathLike | None = None, roc: PathLike | None = None,
               fmt: str = "tsv", input_format: str = "auto", text_column: str | None = None,
               id_column: str | None = None, label_column: str | None = None, provider: str = "auto",
               precision: str = "auto", backend: str = "auto", threads: int | None = None, verify: bool = True,
               batch_tokens: int | None = None, max_batch: int | None = None, tokenizer_workers: int | None = None,
               chunk_rows: int | None = None, strict: bool = False, resume: bool = False,
               progress: bool = False) -> ScoreResult:
    """Score input files (TSV, CSV, JSON Lines or Parquet, compressed or not; "-" for stdin) with one or more model
    folders, as `tsinfer score` does with the same options: predictions to `output` (fmt "tsv" or "jsonl"; "-" for
    stdout) in input order, columns id, label, pred, score (pred_NAME, score_NAME with several models; for models
    of more than two classes, label and pred as class names and p_CLASS per class in place of score); rows that
    cannot be read to `rejects` (default OUTPUT.rejects.tsv, or rejects.tsv for stdout); the metrics JSON to
    `metrics` and the ROC PNG to `roc` for labelled input. The output is written under a temporary name and
    renamed when complete; `resume` continues an interrupted run on the same output.

    Raises InputError (an input cannot be read), ModelError (a model folder cannot be used), StrictError (strict and
    a row could not be read) or Interrupted (Ctrl-C or SIGTERM). Prints nothing unless progress=True (a bar on
    stderr).
    """
    from tsinfer.infer.score import score_files

    output = os.fspath(output)
    request = ScoreRequest(
        inputs, models,
        OutputSpec(output, fmt, rejects=rejects_beside(output) if rejects is None else rejects, metrics=metrics,
                   roc=roc),
        ScorerSettings(provider=provider, precision=precision, backend=backend, threads=threads, verify=verify,
                       batch_tokens=batch_tokens, max_batch=max_batch, tokenizer_workers=tokenizer_workers),
        RunOptions(chunk_rows=chunk_rows, input_format=input_format,
                   columns=Columns(text_column, id_column, label_column), strict=strict, resume=resume,
                   progress=progress))
    return result_of(score_files(request), request)


def result_of(done, request: ScoreRequest) -> ScoreResult:
    """The public result of a local run (infer.report.ScoreResult, less its live model objects)."""
    return ScoreResult(done.rows_read, done.rows_scored, done.rows_rejected, done.blank_lines_skipped, done.wall_s,
                       request.output.rejects, done.metrics, done.summaries, done.timings)
