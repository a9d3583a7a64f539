"""Hostile or broken model folders: a one-line error naming the file, exit 2; nothing is ever unpickled."""
import json
import shutil

import pytest
from click.testing import CliRunner

from tsinfer.cli import main
from tsinfer.infer.engines import openvino_version

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@pytest.fixture
def bert_copy(all_artifacts, tmp_path):
    dst = tmp_path / "bert"
    shutil.copytree(all_artifacts / "onnx" / "bert", dst)
    return dst


def run_score(model, data, *extra):
    return CliRunner().invoke(main, ["score", str(data / "test.tsv"), "--model", str(model), "-o", "/dev/null",
                                     *extra])


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


NEEDS_OPENVINO = pytest.mark.skipif(openvino_version() is None, reason="the openvino extra is not installed")


@pytest.mark.parametrize("damage, backend, message", [
    (lambda d: (d / "meta.json").unlink(), "auto", "meta.json is missing"),
    (lambda d: (d / "meta.json").write_text("{not json"), "auto", "meta.json is not valid JSON"),
    (lambda d: (d / "model_int8.onnx").unlink(), "onnxruntime", "model_int8.onnx is missing"),
    (lambda d: _truncate(d / "model_int8.onnx"), "onnxruntime", "model_int8.onnx does not match its sha256"),
    pytest.param(lambda d: _truncate(d / "model_int8_ov.bin"), "openvino",
                 "model_int8_ov.bin does not match its sha256", marks=NEEDS_OPENVINO),
    (lambda d: (d / "tokenizer.json").write_text("garbage"), "auto", "tokenizer.json does not match its sha256"),
])
def test_damaged_folder_is_a_clean_error(bert_copy, small_data, damage, backend, message):
    damage(bert_copy)
    r = run_score(bert_copy, small_data, "--backend", backend)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and "Traceback" not in r.output


def test_a_run_hashes_the_graph_it_reads_not_the_folders_other_graphs(bert_copy, small_data):
    """The int8 run reads one graph: a damaged fp32 graph beside it is no reason to refuse it, and is refused
    by the run that reads it."""
    _truncate(bert_copy / "model.onnx")
    assert run_score(bert_copy, small_data, "--provider", "cpu").exit_code == 0
    r = run_score(bert_copy, small_data, "--provider", "cpu", "--precision", "fp32")
    assert r.exit_code == 2 and "model.onnx does not match its sha256" in r.stderr, r.output


@pytest.mark.parametrize("backend, damaged, named", [
    ("onnxruntime", "model_int8.onnx", "model_int8.onnx"),
    pytest.param("openvino", "model_int8_ov.bin", "model_int8_ov.xml", marks=NEEDS_OPENVINO),
])
def test_no_verify_loads_past_the_hash_but_still_refuses_a_truncated_graph(bert_copy, small_data, backend, damaged,
                                                                           named):
    _truncate(bert_copy / damaged)
    r = run_score(bert_copy, small_data, "--no-verify", "--backend", backend)
    assert r.exit_code == 2 and "cannot load" in r.stderr and named in r.stderr, r.output
    assert "Traceback" not in r.output


def test_no_verify_accepts_a_changed_but_valid_file(bert_copy, small_data):
    (bert_copy / "tokenizer_config.json").write_text((bert_copy / "tokenizer_config.json").read_text() + "\n")
    assert run_score(bert_copy, small_data).exit_code == 2
    assert run_score(bert_copy, small_data, "--no-verify").exit_code == 0


def test_model_folders_hold_no_pickle(all_artifacts, bert_artifacts, svc_artifacts):
    folders = [all_artifacts / "onnx", bert_artifacts / "bert", svc_artifacts / "svc"]
    files = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        head = p.read_bytes()[:2]
        assert head not in PICKLE_MAGIC, p
        if p.suffix == ".bin":  # only as an OpenVINO IR's raw weights, never PyTorch's pickled or zipped kind
            assert p.with_suffix(".xml").exists() and head != b"PK", p
            continue
        assert p.suffix not in (".pkl", ".pickle", ".joblib", ".pt", ".pth"), p


def _rewrite_meta(folder, change):
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def _point_int8_at(target):
    def change(meta):
        meta["files"]["int8"] = target
        meta["sha256"].pop("model_int8.onnx")  # a received folder need not hash what it points at
    return change


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked_hashed_file"])
@pytest.mark.parametrize("verify", [[], ["--no-verify"]])
def test_a_meta_json_naming_a_file_out_of_the_folder_is_refused(bert_copy, small_data, tmp_path, how, verify):
    outside = tmp_path / "outside.onnx"
    shutil.copy(bert_copy / "model_int8.onnx", outside)  # a valid graph: only the rule can stop it
    if how == "dotdot":
        _rewrite_meta(bert_copy, _point_int8_at("../outside.onnx"))
    elif how == "absolute":
        _rewrite_meta(bert_copy, _point_int8_at(str(outside)))
    else:
        name = "model_int8.onnx" if how == "symlink" else "vocab.txt"
        (bert_copy / name).unlink()
        (bert_copy / name).symlink_to(outside)
    r = run_score(bert_copy, small_data, "--provider", "cpu", *verify)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1, r.output
    assert "leaves the model folder" in r.stderr or "outside the model folder" in r.stderr
    assert CliRunner().invoke(main, ["info", str(bert_copy)]).exit_code == 2


def test_a_folder_without_hashes_is_flagged_by_info_and_refused_by_verify(bert_copy, small_data):
    _rewrite_meta(bert_copy, lambda meta: meta.update(sha256={}))
    info = CliRunner().invoke(main, ["info", str(bert_copy)])
    assert info.exit_code == 0 and "WARNING: meta.json has no sha256 for model.onnx" in info.output
    r = run_score(bert_copy, small_data, "--provider", "cpu")
    assert r.exit_code == 2 and "cannot be verified" in r.stderr and "--no-verify" in r.stderr, r.output
    assert run_score(bert_copy, small_data, "--provider", "cpu", "--no-verify").exit_code == 0
