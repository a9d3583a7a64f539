"""Real-world input files: compressed streams recognised by their first bytes, non-text files refused, and no
output path may be an input file."""
import bz2
import gzip
import lzma
import os
import zipfile

import pytest
from click.testing import CliRunner

from tsinfer.infer.cli import main
from tsinfer.infer.reader import InputError, read_all


def _score(args, **kwargs):
    return CliRunner().invoke(main, ["score", *args, "--provider", "cpu", "--no-progress"], **kwargs)


@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz", "utf-16"])
def test_compressed_and_utf16_inputs_give_the_plain_file_s_predictions(svc_artifacts, small_data, tmp_path, kind):
    plain = (small_data / "test.tsv").read_bytes()
    encode = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
              "utf-16": lambda b: b.decode("utf-8").encode("utf-16")}[kind]
    src = tmp_path / "tweets.dat"  # no telling suffix: the first bytes decide
    src.write_bytes(encode(plain))
    model = ["--model", str(svc_artifacts / "onnx" / "svc")]
    for name, path in (("plain", small_data / "test.tsv"), (kind, src)):
        result = _score([str(path), *model, "-o", str(tmp_path / f"{name}.tsv")])
        assert result.exit_code == 0, result.output
    assert (tmp_path / f"{kind}.tsv").read_bytes() == (tmp_path / "plain.tsv").read_bytes()


def test_gzip_on_stdin(svc_artifacts, small_data, tmp_path):
    data = gzip.compress((small_data / "test.tsv").read_bytes())
    result = _score(["-", "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(tmp_path / "p.tsv")], input=data)
    assert result.exit_code == 0, result.output
    assert len(read_all(tmp_path / "p.tsv")) == 300


def test_a_zip_archive_is_refused_not_scored(svc_artifacts, small_data, tmp_path):
    src = tmp_path / "tweets.tsv"
    with zipfile.ZipFile(src, "w") as z:
        z.write(small_data / "test.tsv", "test.tsv")
    result = _score([str(src), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(tmp_path / "p.tsv")])
    assert result.exit_code == 2 and "is a zip archive, not text" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "p.tsv").exists()


def test_a_truncated_gzip_is_a_clean_error(small_data, tmp_path):
    src = tmp_path / "cut.tsv.gz"
    src.write_bytes(gzip.compress((small_data / "test.tsv").read_bytes())[:2000])
    with pytest.raises(InputError, match="gzip stream is damaged or cut short"):
        read_all(src)


@pytest.mark.parametrize("which", ["-o", "--rejects", "--metrics"])
def test_an_output_path_that_is_the_input_is_refused_and_the_input_kept(svc_artifacts, small_data, tmp_path,
                                                                         which):
    src = tmp_path / "in.tsv"
    src.write_bytes((small_data / "test.tsv").read_bytes())
    before = src.read_bytes()
    link = tmp_path / "link.tsv"
    os.symlink(src, link)
    args = [str(src), "--model", str(svc_artifacts / "onnx" / "svc")]
    args += [which, str(link)] if which == "-o" else ["-o", str(tmp_path / "p.tsv"), which, str(link)]
    result = _score(args)
    assert result.exit_code == 2 and "would destroy the input" in result.stderr, result.output
    assert src.read_bytes() == before and link.is_symlink()


def test_a_second_run_on_the_same_output_stops_at_once(svc_artifacts, small_data, tmp_path):
    import fcntl

    from tsinfer.infer.score import sidecar

    out = tmp_path / "p.tsv"
    with open(sidecar(str(out), "lock"), "a") as held:  # a first run, holding the output
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _score([str(small_data / "test.tsv"), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(out)])
    assert result.exit_code == 2 and "another tsinfer run is writing" in result.stderr
    assert not out.exists()
    result = _score([str(small_data / "test.tsv"), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(out)])
    assert result.exit_code == 0 and out.exists()
