"""meta.json through ModelMeta: what export writes reads back whole, and a broken file is one clear ModelError."""
import json

import pytest

from tsinfer.infer.meta import DEFAULT_MAX_LENGTH, ModelError, ModelMeta


def folder_with(tmp_path, meta: dict | str):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "model.onnx").write_bytes(b"not really a graph")
    (tmp_path / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return tmp_path


@pytest.mark.parametrize("kind", ["svc", "bert"])
def test_exported_folders_read_back_whole(all_artifacts, kind):
    folder = all_artifacts / "onnx" / kind
    meta = ModelMeta.read(folder)
    assert meta.to_dict() == json.loads((folder / "meta.json").read_text())  # nothing lost, nothing added
    assert meta.kind == kind and meta.labels == ["negative", "positive"] and meta.sha256
    assert (meta.max_length == 128) if kind == "bert" else (meta.max_length is None)


def test_write_then_read_is_the_same_meta_with_the_files_hashes(tmp_path):
    meta = ModelMeta(kind="bert", files={"fp32": "model.onnx"}, providers={"fp32": ["cpu"]},
                     default_precision={"cpu": "fp32"}, max_length=64, temperature=1.5,
                     extra={"notes": {"fp32": "plain"}})
    folder_with(tmp_path, "{}")
    written = meta.write(tmp_path)
    assert set(written.sha256) == {"model.onnx"}
    assert ModelMeta.read(tmp_path) == written
    on_disk = json.loads((tmp_path / "meta.json").read_text())
    assert "text_normalization" not in on_disk and "cuda_options" not in on_disk  # unset: left out
    assert list(on_disk)[-1] == "sha256" and on_disk["notes"] == {"fp32": "plain"}


def test_an_older_bert_folder_gets_the_default_max_length(tmp_path):
    folder_with(tmp_path, {"kind": "bert", "files": {"fp32": "model.onnx"}})
    assert ModelMeta.read(tmp_path, verify=False).max_length == DEFAULT_MAX_LENGTH


@pytest.mark.parametrize("meta, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is not a JSON object"),
    ({"kind": "gpt", "files": {"fp32": "model.onnx"}}, "unknown model kind 'gpt'"),
    ({"kind": "bert"}, "no model files listed"),
    ({"kind": "bert", "files": {"fp32": "model.onnx"}, "max_length": 0}, "max_length 0 is not a positive integer"),
    ({"kind": "bert", "files": {"fp32": "model.onnx"}, "temperature": -1}, "temperature -1 is not a positive"),
    ({"kind": "svc", "files": {"fp64": "model.onnx"}, "sha256": {"model.onnx": "0" * 64}}, "does not match its sha256"),
    ({"kind": "svc", "files": {"fp64": "model.onnx"}, "sha256": {"gone.onnx": "0" * 64}}, "gone.onnx is missing"),
])
def test_a_broken_meta_is_one_model_error(tmp_path, meta, message):
    folder_with(tmp_path, meta)
    with pytest.raises(ModelError, match=message):
        ModelMeta.read(tmp_path)


def test_a_missing_folder_or_meta_says_what_to_run(tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        ModelMeta.read(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="this is not an exported model folder"):
        ModelMeta.read(tmp_path)


@pytest.mark.parametrize("files", [{"fp64": "../outside.onnx"}, {"fp64": "/etc/passwd"}, {"fp64": "a/../../x.onnx"}])
def test_a_file_name_out_of_the_folder_is_refused_before_anything_opens(tmp_path, files):
    folder_with(tmp_path / "m", {"kind": "svc", "files": files})
    with pytest.raises(ModelError, match="leaves the model folder"):
        ModelMeta.read(tmp_path / "m", verify=False)  # refused even without --verify


@pytest.mark.parametrize("meta", [
    {"kind": "bert", "files": {"fp32": "model.onnx"}, "openvino_files": {"int8": "../ov.xml"}},
    {"kind": "bert", "files": {"fp32": "model.onnx"}, "sha256": {"/tmp/x": "0" * 64}},
])
def test_openvino_files_and_hashed_names_are_held_to_the_same_rule(tmp_path, meta):
    folder_with(tmp_path, meta)
    with pytest.raises(ModelError, match="leaves the model folder"):
        ModelMeta.read(tmp_path, verify=False)


@pytest.mark.parametrize("link", ["model.onnx", "ov.bin"])
def test_a_symlink_out_of_the_folder_is_refused(tmp_path, link):
    (tmp_path / "elsewhere.onnx").write_bytes(b"x")
    folder = tmp_path / "m"
    folder_with(folder, {"kind": "bert", "files": {"fp32": "model.onnx"}, "openvino_files": {"int8": "ov.xml"}})
    (folder / link).unlink(missing_ok=True)
    (folder / link).symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(ModelError, match=f"'{link}' resolves to .*outside the model folder"):
        ModelMeta.read(folder, verify=False)


def test_a_symlink_inside_the_folder_is_fine_and_openvino_files_is_typed(tmp_path):
    folder = tmp_path / "m"
    folder_with(folder, {"kind": "bert", "files": {"fp32": "model.onnx"}, "openvino_files": {"int8": "ov.xml"}})
    (folder / "model.onnx").rename(folder / "real.onnx")
    (folder / "model.onnx").symlink_to(folder / "real.onnx")
    meta = ModelMeta.read(folder, verify=False)
    assert meta.openvino_files == {"int8": "ov.xml"} and "openvino_files" not in meta.extra
    assert meta.unhashed() == ["model.onnx", "ov.xml", "ov.bin"]


def test_verify_refuses_a_folder_whose_model_files_have_no_hash(tmp_path):
    folder_with(tmp_path, {"kind": "svc", "files": {"fp64": "model.onnx"}})
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match="no sha256 for model.onnx, so it cannot be verified.*--no-verify"):
        ModelMeta.read(tmp_path)
    assert ModelMeta.read(tmp_path, verify=False).files == {"fp64": "model.onnx"}
