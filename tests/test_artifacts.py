"""Hostile or broken model folders: a one-line error naming the file, exit 2; nothing is ever unpickled."""
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


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
    (lambda d: (d / "meta.json").write_text("{not json"), "meta.json is not valid JSON"),
    (lambda d: (d / "model_int8.onnx").unlink(), "model_int8.onnx is missing"),
    (lambda d: (d / "model_int8.onnx").write_bytes((d / "model_int8.onnx").read_bytes()[:1000]),
     "does not match its sha256"),
    (lambda d: (d / "tokenizer.json").write_text("garbage"), "tokenizer.json does not match its sha256"),
])
def test_damaged_folder_is_a_clean_error(bert_copy, small_data, damage, message):
    damage(bert_copy)
    r = run_score(bert_copy, small_data)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("backend, damaged, named", [
    ("onnxruntime", "model_int8.onnx", "model_int8.onnx"),
    pytest.param("openvino", "model_int8_ov.bin", "model_int8_ov.xml",
                 marks=pytest.mark.skipif(openvino_version() is None, reason="the openvino extra is not installed")),
])
def test_no_verify_loads_past_the_hash_but_still_refuses_a_truncated_graph(bert_copy, small_data, backend, damaged,
                                                                           named):
    path = bert_copy / damaged
    path.write_bytes(path.read_bytes()[:1000])
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
