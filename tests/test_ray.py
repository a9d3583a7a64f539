"""--engine ray: a local 2-CPU Ray Data run over shards gives the local path's predictions, rejects and metrics."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tsinfer.infer.models import ScorerSettings
from tsinfer.infer.pipeline import default_chunk_rows
from tsinfer.infer.request import OutputSpec, RayOptions, RunOptions, ScoreRequest

pytest.importorskip("ray.data")
FP32 = ScorerSettings(provider="cpu", precision="fp32")
RAY_CHUNK_ROWS = 700  # not the local engine's chunk size: the chunks and batches differ, the answers may not


def write_shards(d: Path, test_tsv: Path, rows: int) -> list[Path]:
    """The first `rows` rows of test.tsv split into 4 shards, plus a fifth with bad rows."""
    from tsinfer.infer.reader import read_all, write_rows

    data = read_all(test_tsv)
    bounds = np.linspace(0, min(rows, len(data.texts)), 5).astype(int)
    paths = []
    for k in range(4):
        a, b = bounds[k], bounds[k + 1]
        write_rows(d / f"part{k}.tsv", data.ids[a:b], data.labels[a:b], data.texts[a:b])
        paths.append(d / f"part{k}.tsv")
    (d / "part4.tsv").write_text("id\tlabel\ttext\n1\t0\tfine text\n2\t7\tbad label\n3\t1\t\nonly-one-column\n"
                                 '4\t1\t"a quoted\ttab"\n\n5\t\tno label here\n', encoding="utf-8")
    paths.append(d / "part4.tsv")
    return paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory, full_data) -> list[Path]:
    """2,000 rows: the engines' plumbing is under test here (the rows every CPU engine scores alike in any batch are
    in test_score.py)."""
    return write_shards(tmp_path_factory.mktemp("shards"), full_data / "test.tsv", 2000)


def read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh, delimiter="\t"))[1:]


def test_ray_equals_local(shards, all_artifacts, local_ray, tmp_path):
    """The default CPU model file (int8, on the default engine) through both engines, once: precision and engine are
    passed through the same request and ScorerSettings to the same load_scorers, which the local tests cover. The
    SVC through Ray: the node-lost test below and tests/test_classes.py."""
    import pandas as pd

    from tsinfer.infer.ray_engine import score_with_ray
    from tsinfer.infer.score import score_files

    settings = ScorerSettings(provider="cpu", precision="int8")
    models = [str(all_artifacts / "onnx" / "bert")]
    local = score_files(ScoreRequest(shards, models, OutputSpec(tmp_path / "local.tsv",
                                                                rejects=tmp_path / "local_rejects.tsv"), settings))
    assert default_chunk_rows("cpu") != RAY_CHUNK_ROWS
    out = tmp_path / "ray"
    progress = []
    request = ScoreRequest([str(shards[0].parent / "part*.tsv")], models, OutputSpec(out, "parquet"), settings,
                           RunOptions(chunk_rows=RAY_CHUNK_ROWS), engine="ray",
                           ray=RayOptions(num_cpus=2, actors=2, cpus_per_actor=0.5))
    m = score_with_ray(request, on_progress=lambda rows, nbytes: progress.append((rows, nbytes)))

    assert (m["rows_read"], m["rows_scored"], m["rows_rejected"]) == \
        (local.rows_read, local.rows_scored, local.rows_rejected)
    assert m["rows_rejected"] == 3 and local.blank_lines_skipped == 1  # part4's blank line is skipped, not a row
    # the actors' progress reports add up to every row read and every byte of the shards
    assert progress[-1] == (m["rows_read"], sum(p.stat().st_size for p in shards))
    # every prediction identical, in the same row order once sorted by shard and line
    got = pd.read_parquet(out / "predictions").sort_values(["shard", "line"]).reset_index(drop=True)
    want = read_tsv(tmp_path / "local.tsv")
    assert len(got) == len(want)
    assert got["id"].tolist() == [r[0] for r in want]
    assert [None if pd.isna(v) else str(int(v)) for v in got["label"]] == [r[1] or None for r in want]
    assert got["pred"].astype(int).tolist() == [int(r[2]) for r in want]
    assert got["score"].tolist() == [float(r[3]) for r in want]  # the written 6 decimals
    # metrics from the merged confusion matrices and score counts: the same numbers (one model's: flat in m)
    for key in ("accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "confusion_matrix", "per_class"):
        assert m[key] == local.summaries["bert"][key], key
    # the bad shard's rows: the same lines and reasons as the local rejects file
    rejects = pd.read_parquet(out / "rejects").sort_values(["shard", "line"])
    local_rejects = read_tsv(tmp_path / "local_rejects.tsv")
    assert [(Path(s).name, int(n), r) for s, n, r in zip(rejects["shard"], rejects["line"], rejects["reason"])] == \
        [(Path(f).name, int(n), r) for f, n, r, _ in local_rejects]
    assert (out / "metrics.json").exists()


@pytest.fixture
def two_nodes():
    """A simulated 2-node Ray cluster (head 2 CPUs, worker 2 CPUs), joined by this process; (cluster, worker)."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the local Ray other tests share (conftest.local_ray), if it runs
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_node_lost_mid_run_loses_no_row_and_writes_none_twice(full_data, svc_artifacts, two_nodes, tmp_path):
    """The worker node is removed as soon as the first chunk is reported scored: Ray restarts its actor on the head,
    retries its chunks and tasks, and every row is written once, as the local engine reads them."""
    import pandas as pd
    import ray.data
    from ray._private.state import available_resources_per_node  # no public per-node view without the dashboard

    from tsinfer.infer.ray_engine import score_with_ray
    from tsinfer.infer.score import score_files

    cluster, worker = two_nodes
    # all of test.tsv through the SVC: seconds of work after the first chunk, so the node goes while most rows are
    # left (of 8,000 rows up to 3,900 were done by the first progress report; of 2,000, all of them once)
    shards = write_shards(tmp_path, full_data / "test.tsv", 20000)
    models = [str(svc_artifacts / "onnx" / "svc")]
    local = score_files(ScoreRequest(shards, models, OutputSpec(tmp_path / "local.tsv",
                                                                rejects=tmp_path / "local_rejects.tsv"), FP32))
    removed = {}

    def remove_worker_once_scoring(rows: int, nbytes: int) -> None:
        if rows and not removed:
            # the worker is busy with this run (an actor or a task holds a CPU there), else the test proves nothing
            removed["worker_cpus_free"] = available_resources_per_node()[worker.node_id].get("CPU", 0)
            removed["rows_done"] = rows
            cluster.remove_node(worker)

    # a run that stops moving (as when actors starved the reads they wait for) fails in minutes, not Ray's half hour
    ray.data.DataContext.get_current().execution_no_progress_timeout_s = 180
    out = tmp_path / "ray"
    request = ScoreRequest(shards, models, OutputSpec(out, "parquet"), FP32, RunOptions(chunk_rows=100), engine="ray",
                           ray=RayOptions(actors=2, cpus_per_actor=1))
    m = score_with_ray(request, on_progress=remove_worker_once_scoring)

    assert removed and removed["worker_cpus_free"] < 2 and removed["rows_done"] < local.rows_read, removed
    assert len([n for n in ray.nodes() if n["Alive"]]) == 1
    assert (m["rows_read"], m["rows_scored"], m["rows_rejected"]) == \
        (local.rows_read, local.rows_scored, local.rows_rejected)
    got = pd.read_parquet(out / "predictions")
    assert not got.duplicated(["shard", "line"]).any()
    got = got.sort_values(["shard", "line"])
    want = read_tsv(tmp_path / "local.tsv")
    assert got["id"].tolist() == [r[0] for r in want]
    assert got["pred"].astype(int).tolist() == [int(r[2]) for r in want]
    assert got["score"].tolist() == [float(r[3]) for r in want]
    rejects = pd.read_parquet(out / "rejects")
    assert len(rejects) == local.rows_rejected and not rejects.duplicated(["shard", "line"]).any()
    assert not list(tmp_path.glob(".ray.partial-*"))  # the staging folder became OUTPUT


def test_ray_cli_errors(tmp_path):
    from click.testing import CliRunner

    from tsinfer.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["score", str(tmp_path / "nothing*.tsv"), "--engine", "ray", "--output",
                             str(tmp_path / "o"), "--model", str(tmp_path)])
    assert r.exit_code == 2 and "meta.json" in r.output
    r = runner.invoke(main, ["score", "x.tsv", "--engine", "ray"])
    assert r.exit_code == 2 and "--output FOLDER" in r.output
    r = runner.invoke(main, ["score", "x.tsv", "--engine", "ray", "--output", str(tmp_path / "o"), "--resume"])
    assert r.exit_code == 2 and "--resume" in r.output


def test_an_unreachable_cluster_is_one_line_within_the_timeout(svc_artifacts, small_data, tmp_path):
    from click.testing import CliRunner

    from tsinfer.cli import main

    import socket
    import time

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["score", str(small_data / "test.tsv"), "--engine", "ray", "--model",
                                       str(svc_artifacts / "onnx" / "svc"), "--output", str(tmp_path / "out"),
                                       "--address", f"127.0.0.1:{port}", "--connect-timeout", "2"])
    assert result.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:" in result.stderr, result.output
    assert "Traceback" not in result.output and time.perf_counter() - start < 30


def test_a_local_ray_gets_the_cpus_asked_for_else_those_this_process_may_use(monkeypatch):
    """What connect() gives ray.init and reports for the metrics' "cpus" (the engine tests join a Ray that is
    already running, so they do not see it)."""
    import ray

    from tsinfer.infer.cpus import cpu_budget
    from tsinfer.infer.ray_engine import connect

    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    assert connect(None, num_cpus=3, timeout_s=1).as_dict() == {"count": 3, "source": "num_cpus argument"}
    assert (seen["address"], seen["num_cpus"]) == ("local", 3)
    assert connect(None, num_cpus=None, timeout_s=1).as_dict() == cpu_budget().as_dict()
    assert seen["num_cpus"] == cpu_budget().count  # never Ray's own count of the host's cores
    assert connect("auto", num_cpus=None, timeout_s=1) is None and seen["num_cpus"] is None  # a cluster's own CPUs
