"""The CPU budget (infer/cpus.py) on made-up cgroup trees, and the lanes, threads and metrics that follow it."""
import json

import pytest
from click.testing import CliRunner

from tsinfer.infer.batching import default_tokenizer_workers, usable_cores
from tsinfer.cli import main
from tsinfer.infer.cpus import CpuBudget, CpuBudgetError, cpu_budget, read_cpu_flags, read_cpuinfo
from tsinfer.infer.models import MAX_CPU_LANES, cpu_lanes

HOST = 64  # the affinity count the tests pretend to see


def v2_tree(tmp_path, cpu_max: dict[str, str], own: str = "/kubepods/pod1/ctr"):
    """A cgroup v2 root with cpu.max files at the given folders (relative to the root) and a /proc/self/cgroup
    naming `own` as this process's cgroup."""
    root = tmp_path / "cgroup"
    (root / own.strip("/")).mkdir(parents=True)
    for folder, text in cpu_max.items():
        (root / folder / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def budget(root, proc, env=None, affinity=HOST) -> CpuBudget:
    return cpu_budget(cgroup_root=root, proc_cgroup=proc, environ=env or {}, affinity=affinity)


@pytest.mark.parametrize("text, count, source", [
    ("200000 100000", 2, "cgroup v2 quota"),
    ("max 100000", HOST, "affinity"),
    ("50000 100000", 1, "cgroup v2 quota"),     # below one CPU: still one
    ("150000 100000", 1, "cgroup v2 quota"),    # rounded down
    ("6400000 100000", HOST, "affinity"),       # a quota above the mask does not raise it
])
def test_v2_quota(tmp_path, text, count, source):
    root, proc = v2_tree(tmp_path, {"kubepods/pod1/ctr": text})
    assert budget(root, proc) == CpuBudget(count, source)


def test_a_parents_quota_limits_the_child(tmp_path):
    root, proc = v2_tree(tmp_path, {"kubepods/pod1": "300000 100000", "kubepods/pod1/ctr": "max 100000"})
    assert budget(root, proc) == CpuBudget(3, "cgroup v2 quota")
    root, proc = v2_tree(tmp_path / "b", {"kubepods": "400000 100000", "kubepods/pod1/ctr": "200000 100000"})
    assert budget(root, proc).count == 2  # the tightest of them


def test_a_container_sees_its_own_cgroup_at_the_root(tmp_path):
    """/proc/self/cgroup names a path the container's mount does not have: the root's cpu.max still counts."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cpu.max").write_text("200000 100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/docker/abc123\n")
    assert budget(root, proc) == CpuBudget(2, "cgroup v2 quota")


@pytest.mark.parametrize("quota, count, source", [("200000", 2, "cgroup v1 quota"), ("-1", HOST, "affinity"),
                                                  ("20000", 1, "cgroup v1 quota")])
def test_v1_quota(tmp_path, quota, count, source):
    root = tmp_path / "cgroup"
    ctr = root / "cpu,cpuacct" / "docker" / "abc"
    ctr.mkdir(parents=True)
    (ctr / "cpu.cfs_quota_us").write_text(quota + "\n")
    (ctr / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n")
    assert budget(root, proc) == CpuBudget(count, source)


def test_no_cgroup_files_leave_the_affinity_count(tmp_path):
    assert budget(tmp_path, tmp_path / "no_such_file") == CpuBudget(HOST, "affinity")
    assert cpu_budget(cgroup_root=tmp_path, proc_cgroup=tmp_path / "none", environ={}).count >= 1  # the real mask


def test_the_override_wins_as_given(tmp_path):
    root, proc = v2_tree(tmp_path, {"kubepods/pod1/ctr": "200000 100000"})
    assert budget(root, proc, {"TSINFER_CPUS": "6"}) == CpuBudget(6, "TSINFER_CPUS")
    assert budget(root, proc, {"TSINFER_CPUS": "128"}).count == 128  # even above the affinity count
    assert budget(root, proc, {"TSINFER_CPUS": ""}) == CpuBudget(2, "cgroup v2 quota")  # empty = unset


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_override_is_a_clear_error(tmp_path, value):
    with pytest.raises(CpuBudgetError, match=f"TSINFER_CPUS='{value}' is not a positive integer"):
        budget(tmp_path, tmp_path / "none", {"TSINFER_CPUS": value})


def test_lanes_threads_and_tokenizer_processes_follow_the_budget(monkeypatch):
    monkeypatch.setenv("TSINFER_CPUS", "2")
    assert usable_cores() == 2
    assert cpu_lanes() == (2, 1)
    assert default_tokenizer_workers("cuda") == 0  # too few CPUs to spare any beside a GPU
    monkeypatch.setenv("TSINFER_CPUS", "64")
    assert cpu_lanes() == (MAX_CPU_LANES, 64 // MAX_CPU_LANES)
    assert default_tokenizer_workers("cuda") == 8
    assert cpu_lanes(threads=3) == (3, 1) and cpu_lanes(lanes=2) == (2, 32)  # --threads and lanes= still decide


def test_the_bert_policy_differs_by_provider_and_keeps_what_the_settings_name(monkeypatch):
    """The per-provider policy is decided before any session exists, so the GPU's is checkable here: whole batches
    on single-threaded CPU lanes of one row length, and on a GPU mixed lengths, IO binding and tokenizer processes."""
    from tsinfer.infer.models import BertPolicy, ScorerSettings

    monkeypatch.setenv("TSINFER_CPUS", "4")
    cpu = BertPolicy.decide("cpu", ScorerSettings())
    assert (cpu.lanes, cpu.threads, cpu.same_length, cpu.io_binding, cpu.tokenizer_workers) == (4, 1, True, False, 0)
    cuda = BertPolicy.decide("cuda", ScorerSettings())
    assert cuda.lanes > 1 and cuda.threads is None and not cuda.same_length and cuda.io_binding
    assert cuda.tokenizer_workers == 2 and cuda.max_batch > cpu.max_batch
    assert cpu.batch_tokens is None  # left to the engine's own budget, then the provider's default
    named = BertPolicy.decide("cuda", ScorerSettings(lanes=3, batch_tokens=500, max_batch=7, tokenizer_workers=0))
    assert (named.lanes, named.batch_tokens, named.max_batch, named.tokenizer_workers) == (3, 500, 7, 0)


def fake_model_folder(tmp_path):
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"kind": "svc", "files": {"fp64": "model.onnx"}}))
    return folder


def test_info_shows_the_budget_and_a_bad_override_is_one_line(tmp_path, monkeypatch):
    folder = fake_model_folder(tmp_path)
    monkeypatch.setenv("TSINFER_CPUS", "3")
    r = CliRunner().invoke(main, ["info", str(folder)])
    assert r.exit_code == 0 and "CPUs this process may use: 3 (TSINFER_CPUS)" in r.stdout
    monkeypatch.setenv("TSINFER_CPUS", "lots")
    r = CliRunner().invoke(main, ["info", str(folder)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip() == ("Error: TSINFER_CPUS='lots' is not a positive integer: set it to the number of CPUs "
                                "to use (e.g. TSINFER_CPUS=2), or unset it to count them")


def test_the_session_threads_and_metrics_follow_the_budget(svc_artifacts, small_data, tmp_path, monkeypatch):
    from tsinfer.infer.models import ScorerSettings, load_scorer
    from tsinfer.infer.request import OutputSpec, ScoreRequest
    from tsinfer.infer.score import score_files

    monkeypatch.setenv("TSINFER_CPUS", "3")
    scorer = load_scorer(svc_artifacts / "onnx" / "svc", ScorerSettings(provider="cpu"))
    # the budget, not onnxruntime's host count: one single-threaded lane per CPU
    assert (scorer.lanes, scorer.session.get_session_options().intra_op_num_threads) == (3, 1)
    score_files(ScoreRequest([small_data / "test.tsv"], [svc_artifacts / "onnx" / "svc"],
                             OutputSpec(tmp_path / "p.tsv", metrics=tmp_path / "m.json"),
                             ScorerSettings(provider="cpu")))
    assert json.loads((tmp_path / "m.json").read_text())["cpus"] == {"count": 3, "source": "TSINFER_CPUS"}


def test_cpuinfo_gives_the_first_processors_fields(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC\n"
                       "flags\t\t: fpu avx512_vnni\n\nprocessor\t: 1\nvendor_id\t: Other\nflags\t\t: fpu sse\n")
    info = read_cpuinfo(cpuinfo)
    assert (info["vendor_id"], info["cpu family"], info["model name"]) == ("AuthenticAMD", "25", "AMD EPYC")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx512_vnni"}  # the first processor's, not the second's
    assert read_cpuinfo(tmp_path / "absent") == {} and read_cpuinfo(tmp_path) == {}
