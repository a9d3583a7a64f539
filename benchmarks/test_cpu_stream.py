"""tsinfer's whole runs beyond test_cpu.py's: a longer stream than its 4,000 rows, on the default CPU path (what
the CPU's default chunk size was chosen by: the summary's "long stream" line in conftest.py), and `tsinfer score`
as one process, start to exit (what a user of the command waits for: imports and model load included)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.conftest import DATA, record
from benchmarks.test_cpu import BERT_ROUNDS, best_scoring_run, timed
from tsinfer.infer.models import ScorerSettings


@pytest.mark.parametrize("chunk_rows", [4096, None], ids=["chunk-4096", "chunk-default"])
def test_long_stream_chunk_size(benchmark, artifacts, tmp_path, chunk_rows):
    """A longer stream on the default CPU path: test.tsv then dev.tsv. OpenVINO prepares each new (rows, length)
    batch shape once, and a chunk's last batch of each length is a new shape almost every chunk, so the default
    chunk pays that less often per row than 4,096 rows (the CPU default before)."""
    from tsinfer.infer.pipeline import default_chunk_rows
    from tsinfer.infer.reader import read_all, write_rows
    from tsinfer.infer.request import OutputSpec, RunOptions, ScoreRequest
    from tsinfer.infer.score import score_files

    stream = tmp_path / "stream.tsv"
    parts = [read_all(DATA / name) for name in ("test.tsv", "dev.tsv")]
    write_rows(stream, [i for p in parts for i in p.ids], [lab for p in parts for lab in p.labels],
               [t for p in parts for t in p.texts])

    def run():
        return score_files(ScoreRequest([str(stream)], [str(artifacts / "onnx" / "bert")],
                                        OutputSpec(str(tmp_path / "p.tsv")), ScorerSettings(provider="cpu"),
                                        RunOptions(chunk_rows=chunk_rows)))

    r = best_scoring_run(benchmark, run)
    rows = chunk_rows or default_chunk_rows("cpu")
    record(benchmark, "stream", f"tsinfer score, default CPU path, test.tsv + dev.tsv, chunks of {rows:,} rows"
           f"{'' if chunk_rows else ' (the default)'}", r.rows_scored, r.wall_s - r.load_s,
           backend=r.summaries["bert"]["backend"])


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_whole_process(benchmark, artifacts, bench_tsv, tmp_path, backend):
    """`tsinfer score` on the 4,000 rows as a user runs it: a new Python process each round, its interpreter start,
    imports, model load, scoring, predictions and metrics written, exit."""
    cmd = [sys.executable, "-m", "tsinfer.cli", "score", str(bench_tsv), "--model", str(artifacts / "onnx" / "bert"),
           "--provider", "cpu", "--backend", backend, "--no-progress", "-o", str(tmp_path / "p.tsv"),
           "--metrics", str(tmp_path / "m.json")]
    seconds = timed(benchmark, lambda: subprocess.run(cmd, capture_output=True, check=True), rounds=BERT_ROUNDS)
    metrics = json.loads((tmp_path / "m.json").read_text())
    record(benchmark, "process", f"`tsinfer score` as one process (start to exit), --backend {backend}: "
           f"{metrics['backend']} {metrics['precision_mode']}", metrics["rows_scored"], seconds,
           load_s=metrics["load_s"])
