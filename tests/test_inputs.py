"""Real-world input files: compressed streams recognised by their first bytes, non-text files refused, and no
output path may be an input file."""
import bz2
import gzip
import json
import lzma
import os
import zipfile

import pytest
from click.testing import CliRunner

from conftest import full_disk_at_write
from tsinfer.cli import main
from tsinfer.infer.reader import InputError, read_all


def _score(args, **kwargs):
    return CliRunner().invoke(main, ["score", *args, "--provider", "cpu", "--no-progress"], **kwargs)


@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz", "zstd", "utf-16"])
def test_compressed_and_utf16_inputs_give_the_plain_file_s_predictions(svc_artifacts, small_data, tmp_path, kind):
    plain = (small_data / "test.tsv").read_bytes()
    import zstandard

    encode = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
              "zstd": zstandard.ZstdCompressor().compress,
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

    from tsinfer.infer.writers import sidecar

    out = tmp_path / "p.tsv"
    with open(sidecar(str(out), "lock"), "a") as held:  # a first run, holding the output
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _score([str(small_data / "test.tsv"), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(out)])
    assert result.exit_code == 2 and "another tsinfer run is writing" in result.stderr
    assert not out.exists()
    result = _score([str(small_data / "test.tsv"), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(out)])
    assert result.exit_code == 0 and out.exists()


def _as_records(small_data):
    rows = read_all(small_data / "test.tsv")
    return [{"id_str": i, "full_text": t, "label": 4 if y == 1 else 0} for i, t, y in zip(rows.ids, rows.texts,
                                                                                         rows.labels)]


def _write_formats(records, folder):
    import csv
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(folder / "t.jsonl", "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    (folder / "t.jsonl.gz").write_bytes(gzip.compress((folder / "t.jsonl").read_bytes()))
    with open(folder / "t.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id_str", "label", "full_text"])
        w.writeheader()
        w.writerows(records)
    pq.write_table(pa.Table.from_pylist(records), folder / "t.parquet", row_group_size=97)


def test_jsonl_csv_and_parquet_give_the_tsv_s_predictions(svc_artifacts, small_data, tmp_path):
    _write_formats(_as_records(small_data), tmp_path)
    model = ["--model", str(svc_artifacts / "onnx" / "svc")]
    result = _score([str(small_data / "test.tsv"), *model, "-o", str(tmp_path / "tsv.out")])
    assert result.exit_code == 0, result.output
    for name in ("t.jsonl", "t.jsonl.gz", "t.csv", "t.parquet"):
        result = _score([str(tmp_path / name), *model, "-o", str(tmp_path / f"{name}.out"), "--chunk-rows", "64",
                         "--metrics", str(tmp_path / f"{name}.json")])
        assert result.exit_code == 0, (name, result.output)
        assert (tmp_path / f"{name}.out").read_bytes() == (tmp_path / "tsv.out").read_bytes(), name
        m = json.loads((tmp_path / f"{name}.json").read_text())
        assert m["rows_read"] == m["rows_scored"] + m["rows_rejected"] == 300, name


def test_bad_jsonl_records_are_rejected_with_their_line(svc_artifacts, tmp_path):
    import json

    src = tmp_path / "dump.jsonl"
    src.write_text("\n".join([json.dumps({"id": 1, "text": "a lovely day", "sentiment": 1}), "{not json",
                              json.dumps({"id": 3, "text": "", "sentiment": 0}),
                              json.dumps({"id": 4, "text": "fine", "sentiment": "neutral"}), "",
                              json.dumps({"id": 6, "body": "no text here"}), json.dumps([1, 2]),
                              json.dumps({"id": 8, "text": "the worst", "sentiment": 0})]) + "\n")
    out = tmp_path / "p.tsv"
    result = _score([str(src), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(out),
                     "--label-column", "sentiment", "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert [r.split("\t")[0] for r in out.read_text().splitlines()[1:]] == ["1", "8"]
    rejects = [r.split("\t") for r in (tmp_path / "p.tsv.rejects.tsv").read_text().splitlines()[1:]]
    reasons = {int(r[1]): r[2] for r in rejects}
    assert reasons == {2: "not a JSON object", 3: "empty text", 4: "label 'neutral' is not 0/1, 0/4 or negative/positive",
                       6: "no 'text' field (a delete notice or limit message?)", 7: "not a JSON object"}
    import json as js
    m = js.loads((tmp_path / "m.json").read_text())
    assert m["rows_read"] == m["rows_scored"] + m["rows_rejected"] == 7 and m["blank_lines_skipped"] == 1


def test_a_named_column_that_is_missing_is_one_clean_line(svc_artifacts, small_data, tmp_path):
    _write_formats(_as_records(small_data), tmp_path)
    result = _score([str(tmp_path / "t.csv"), "--model", str(svc_artifacts / "onnx" / "svc"), "-o",
                     str(tmp_path / "p.tsv"), "--text-column", "body"])
    assert result.exit_code == 2 and "has no column 'body'" in result.stderr and "full_text" in result.stderr


def test_a_write_error_is_one_line_and_a_non_zero_exit(svc_artifacts, small_data, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output's folder should be")
    result = _score([str(small_data / "test.tsv"), "--model", str(svc_artifacts / "onnx" / "svc"), "-o",
                     str(blocker / "p.tsv")])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "not_a_folder" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and blocker.read_text().startswith("a file")


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_compressed_output_holds_the_plain_output(svc_artifacts, small_data, tmp_path, suffix):
    import zstandard

    model = ["--model", str(svc_artifacts / "onnx" / "svc")]
    for name in ("p.tsv", f"p.tsv{suffix}"):
        result = _score([str(small_data / "test.tsv"), *model, "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    packed = (tmp_path / f"p.tsv{suffix}").read_bytes()
    plain = gzip.decompress(packed) if suffix == ".gz" else zstandard.ZstdDecompressor().decompressobj().decompress(
        packed)
    assert plain == (tmp_path / "p.tsv").read_bytes()
    result = _score([str(small_data / "test.tsv"), *model, "-o", str(tmp_path / f"p.tsv{suffix}"), "--resume"])
    assert result.exit_code == 2 and "--resume cannot continue a compressed output" in result.stderr


def test_unknown_binary_data_is_refused_but_a_text_with_stray_bytes_is_read(tmp_path):
    import random

    rng = random.Random(0)
    blob = tmp_path / "blob.tsv"
    blob.write_bytes(bytes(rng.randrange(256) for _ in range(20_000)))
    with pytest.raises(InputError, match="binary data"):
        read_all(blob)
    text = tmp_path / "text.tsv"
    text.write_bytes(b"1\t0\ta fine row\n2\t4\tNUL \x00 and \x01\x02 stray bytes\n3\t4\tanother\n" * 20)
    assert len(read_all(text)) == 60


def test_cr_only_line_ends_give_no_phantom_rows(tmp_path):
    src = tmp_path / "mac.tsv"
    src.write_bytes(b"".join(f"{i}\t{i % 2}\ttweet number {i}\r".encode() for i in range(1, 2001)))
    chunk = read_all(src)
    assert len(chunk) == 2000 and not chunk.rejects and chunk.texts[-1] == "tweet number 2000"


def test_a_full_disk_mid_run_keeps_a_partial_that_resume_completes(svc_artifacts, small_data, tmp_path,
                                                                    monkeypatch):
    from tsinfer.infer import writers

    model = ["--model", str(svc_artifacts / "onnx" / "svc"), "--chunk-rows", "64"]
    assert _score([str(small_data / "test.tsv"), *model, "-o", str(tmp_path / "whole.tsv")]).exit_code == 0
    full_disk_at_write(monkeypatch, 3)
    out = tmp_path / "p.tsv"
    result = _score([str(small_data / "test.tsv"), *model, "-o", str(out)])
    assert result.exit_code == 1 and "No space left on device" in result.stderr and "Traceback" not in result.output
    assert not out.exists() and writers.sidecar(str(out), "partial").exists()
    monkeypatch.undo()
    result = _score([str(small_data / "test.tsv"), *model, "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (tmp_path / "whole.tsv").read_bytes()


def _read(path, **kwargs):
    from tsinfer.infer.formats import read_chunks
    from tsinfer.infer.rows import Chunk

    return Chunk.joined(read_chunks(str(path), kwargs.pop("chunk_rows", 2), **kwargs))


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_blank_lines_are_skipped_and_counted_not_rows(tmp_path, fmt):
    rows = [("1", "0", "first"), ("2", "4", ""), ("3", "1", "multi\n\nline"), ("4", "0", "last")]
    if fmt == "jsonl":
        lines = [json.dumps({"id": i, "label": y, "text": t}) for i, y, t in rows]
    else:
        sep = "\t" if fmt == "tsv" else ","
        lines = [sep.join(("id", "label", "text"))] + [sep.join((i, y, f'"{t}"' if "\n" in t else t))
                                                       for i, y, t in rows]
    # a blank line before everything, one of spaces, one of CRLF and two at the end
    text = "\n" + "\n  \n".join(lines[:2]) + "\r\n\r\n" + "\n".join(lines[2:]) + "\n\n\t\n"
    src = tmp_path / f"in.{fmt}"
    src.write_text(text)
    got = _read(src)
    assert got.ids == ["1", "3", "4"] and got.texts[1] == "multi\n\nline"  # blank lines inside a quote stay
    # the real line numbers: blank lines 1, 3, 5 and the last two; the header (not in JSON Lines) on line 2
    rows, reject = ([2, 6, 7], 4) if fmt == "jsonl" else ([4, 7, 10], 6)
    assert got.lines == rows and [(r.line, r.reason) for r in got.rejects] == [(reject, "empty text")]
    assert got.blank_lines == 5


def test_a_line_of_nul_bytes_is_no_blank_line(tmp_path):
    src = tmp_path / "nul.tsv"
    src.write_bytes(b"1\t0\tfine\n\x00\x00\n\n2\t4\talso fine\n")
    got = _read(src, chunk_rows=10)
    assert got.ids == ["1", "2"] and got.blank_lines == 1
    assert [(r.line, r.reason) for r in got.rejects] == [(2, "empty row")]


def test_a_stream_that_begins_with_delete_notices_is_read_and_they_are_rejects(tmp_path):
    notices = [{"delete": {"status": {"id": 1, "id_str": "1"}}}, {"limit": {"track": 5}}]
    tweets = [{"id_str": str(100 + k), "full_text": f"tweet {k}", "label": k % 2} for k in range(99)]
    src = tmp_path / "stream.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in notices + tweets))
    got = _read(src, chunk_rows=64)
    assert got.ids == [t["id_str"] for t in tweets] and got.lines == list(range(3, 102))
    assert [(r.line, r.reason) for r in got.rejects] == [
        (n, "no 'full_text' field (a delete notice or limit message?)") for n in (1, 2)]


def test_a_stream_without_any_text_field_is_one_clean_error(svc_artifacts, tmp_path):
    from tsinfer.infer.rows import InputError

    src = tmp_path / "ids.jsonl"
    src.write_text("".join(json.dumps({"id_str": str(k), "label": 0}) + "\n" for k in range(200)))
    with pytest.raises(InputError, match=r"in its first 64 lines\) has no text column .*its columns: id_str, label$"):
        _read(src, chunk_rows=10)
    result = _score([str(src), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(tmp_path / "p.tsv")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "has no text column" in result.stderr and "id_str, label" in result.stderr


def test_blank_lines_in_a_score_run_are_counted_apart_from_rows(svc_artifacts, small_data, tmp_path):
    lines = (small_data / "test.tsv").read_bytes().split(b"\n")  # not splitlines: a text holds U+0085
    src = tmp_path / "airy.tsv"
    src.write_bytes(b"".join(line + b"\n\n" for line in lines[:101]) + b"7\t8\t0\ta\t\n")  # a blank after each
    out = tmp_path / "p.tsv"
    result = _score([str(src), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(out), "--metrics",
                     str(tmp_path / "m.json"), "--chunk-rows", "32"])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["rows_read"], m["rows_scored"], m["rows_rejected"], m["blank_lines_skipped"]) == (101, 100, 1, 101)
    assert "101 blank lines skipped" in result.stderr
    rejects = (tmp_path / "p.tsv.rejects.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[1:3] for r in rejects] == [["203", "empty text"]]
