"""Every input row ends in exactly one place: the output or the rejects file; nothing crashes the reader."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tsinfer.cli import main
from tsinfer.infer.reader import InputError, iter_chunks, read_all, write_rows

MESSY = b"".join([
    b"\xef\xbb\xbf1\t0\ta\tfine first row with a BOM before it\r\n",
    b"2\t4\ta\tmixed line ends\n",
    b"3\t0\ta\ttoo\tmany\ttabs stay in the text\n",
    b"4\t0\n",                                     # wrong column count
    b"5\t9\ta\tlabel is not 0/1/4\n",
    b"6\t0\ta\t   \n",                             # empty text
    b"7\t4\ta\tinvalid utf-8 \xff\xfe here\n",
    b"8\t0\ta\tNUL \x00 byte\n",
    b"id\tlabel\ta\ttext\n",                        # a header in the middle: label 'label' is rejected
    b"9\t4\ta\t" + b"long " * 150_000 + b"\n",  # a single 750 kB line: scored, cut to what the model reads
    b"\x00\x01\x02\x03binary\xff\xfe\xfd garbage\n",
    b"10\t0\ta\t\"unterminated quote runs to EOF\n",
    b"11\t4\ta\tstill read after it\n",
    b"12\t0\ta\tno trailing newline",
])
GOOD_IDS = ["1", "2", "3", "7", "8", "9", "10", "11", "12"]


@pytest.fixture(scope="module")
def messy_run(all_artifacts, tmp_path_factory):
    d = tmp_path_factory.mktemp("messy")
    (d / "messy.tsv").write_bytes(MESSY)
    r = CliRunner().invoke(main, ["score", str(d / "messy.tsv"), "--model", str(all_artifacts / "onnx" / "bert"),
                                  "--provider", "cpu", "-o", str(d / "p.tsv"), "--metrics", str(d / "m.json")])
    assert r.exit_code == 0, r.output
    return d


def test_every_row_is_scored_or_rejected_exactly_once(messy_run):
    metrics = json.loads((messy_run / "m.json").read_text())
    with open(messy_run / "p.tsv", newline="") as fh:
        scored = list(csv.reader(fh, delimiter="\t"))[1:]
    with open(messy_run / "p.tsv.rejects.tsv", newline="") as fh:
        rejected = list(csv.reader(fh, delimiter="\t"))[1:]
    assert [r[0] for r in scored] == GOOD_IDS  # input order, each once
    assert [int(r[1]) for r in rejected] == [4, 5, 6, 9, 11]  # line numbers
    assert metrics["rows_read"] == metrics["rows_scored"] + metrics["rows_rejected"] == 14
    assert metrics["rows_scored"] == len(scored) and metrics["rows_rejected"] == len(rejected)
    assert metrics["rows_truncated"] >= 1  # the 750 kB line, cut at max_length, not rejected


def test_the_messy_rows_keep_their_text():
    chunk = read_all_bytes(MESSY)
    rows = dict(zip(chunk.ids, chunk.texts))
    assert rows["3"] == "too\tmany\ttabs stay in the text"
    assert rows["7"] == "invalid utf-8 \ufffd\ufffd here"
    assert rows["8"] == "NUL  byte"
    assert rows["10"] == '"unterminated quote runs to EOF'


def read_all_bytes(data: bytes):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".tsv", delete=False) as fh:
        fh.write(data)
    try:
        return read_all(fh.name)
    finally:
        os.unlink(fh.name)


def test_strict_stops_at_the_first_bad_row_with_exit_3(all_artifacts, tmp_path):
    (tmp_path / "m.tsv").write_bytes(MESSY)
    r = CliRunner().invoke(main, ["score", str(tmp_path / "m.tsv"), "--strict", "--model",
                                  str(all_artifacts / "onnx" / "bert"), "-o", str(tmp_path / "p.tsv")])
    assert r.exit_code == 3 and "line 4" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "p.tsv").exists()


def test_empty_file_and_stdin(all_artifacts, tmp_path):
    (tmp_path / "empty.tsv").write_bytes(b"")
    r = CliRunner().invoke(main, ["score", str(tmp_path / "empty.tsv"), "--model",
                                  str(all_artifacts / "onnx" / "bert"), "-o", str(tmp_path / "p.tsv")])
    assert r.exit_code == 0 and (tmp_path / "p.tsv").read_text() == "id\tlabel\tpred\tscore\n"
    r = subprocess.run([sys.executable, "-m", "tsinfer.cli", "score", "-", "--model",
                        str(all_artifacts / "onnx" / "bert")], input="good\nbad\n", capture_output=True, text=True)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3


def test_sigterm_leaves_no_output_under_the_final_name(all_artifacts, tmp_path):
    big = tmp_path / "big.tsv"
    big.write_text("".join(f"{i}\t0\ta\tsome tweet number {i} about nothing much\n" for i in range(400_000)))
    proc = subprocess.Popen([sys.executable, "-m", "tsinfer.cli", "score", str(big), "--model",
                             str(all_artifacts / "onnx" / "bert"), "-o", str(tmp_path / "p.tsv")],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120  # signal only once rows are being written (the handler is set by then)
    while time.time() < deadline and not (tmp_path / ".p.tsv.checkpoint.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted after" in err and "--resume" in err
    assert not (tmp_path / "p.tsv").exists()
    assert (tmp_path / ".p.tsv.partial").exists() and (tmp_path / ".p.tsv.checkpoint.json").exists()


def test_resume_after_a_hard_kill_is_byte_identical(all_artifacts, tmp_path):
    big = tmp_path / "big.tsv"
    big.write_text("".join(f"{i}\t{i % 2}\ta\ttweet {i} {'good' if i % 3 else 'bad'} day\n" for i in range(60_000))
                   + "oops\n")
    model = str(all_artifacts / "onnx" / "bert")

    def cmd(out, *extra):
        return [sys.executable, "-m", "tsinfer.cli", "score", str(big), "--model", model, "--chunk-rows",
                "2000", "-o", str(tmp_path / out), "--metrics", str(tmp_path / f"{out}.json"), *extra]

    subprocess.run(cmd("whole.tsv"), check=True, capture_output=True)
    proc = subprocess.Popen(cmd("cut.tsv"), stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / ".cut.tsv.checkpoint.json"
    deadline = time.time() + 120
    # a known point: a checkpoint with at least 5 of the 30 chunks done and most of the file still to do
    while time.time() < deadline and proc.poll() is None and _rows_checkpointed(checkpoint) < 10_000:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail("the run ended before it could be killed mid-way: give it a larger input")
    proc.kill()  # SIGKILL: no handler runs, only the checkpoint of the last completed chunk is left
    proc.wait()
    assert not (tmp_path / "cut.tsv").exists()
    done = json.loads(checkpoint.read_text())["rows_read"]
    assert 0 < done < 60_001
    r = subprocess.run(cmd("cut.tsv", "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cut.tsv").read_bytes() == (tmp_path / "whole.tsv").read_bytes()
    assert (tmp_path / "cut.tsv.rejects.tsv").read_bytes() == (tmp_path / "whole.tsv.rejects.tsv").read_bytes()
    whole, cut = (json.loads((tmp_path / f"{n}.tsv.json").read_text()) for n in ("whole", "cut"))
    for key in ("rows_read", "rows_scored", "rows_rejected", "accuracy", "mcc", "roc_auc", "confusion_matrix"):
        assert cut[key] == whole[key], key
    assert not checkpoint.exists()


def _rows_checkpointed(path) -> int:
    try:
        return json.loads(path.read_text())["rows_read"]
    except (FileNotFoundError, ValueError, KeyError):  # not written yet, or caught mid-replace
        return 0


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                max_size=60).filter(lambda t: t.strip())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(0, 10**12), st.sampled_from([0, 1, None]), texts), max_size=20))
def test_writer_reader_roundtrip(tmp_path, rows):
    path = tmp_path / "rt.tsv"
    write_rows(path, [str(i) for i, _, _ in rows], [lab for _, lab, _ in rows], [t for _, _, t in rows])
    back = read_all(path)
    assert not back.rejects
    assert back.ids == [str(i) for i, _, _ in rows]
    assert back.labels == [-1 if lab is None else lab for _, lab, _ in rows]
    assert back.texts == [t for _, _, t in rows]


# The starts the reader treats apart, given as examples so that every run meets them whatever Hypothesis draws:
# compressed streams (whole and cut short), files that are not text, byte-order marks, bare CRs, quotes and NULs.
EDGE_STARTS = [b"", b"\x1f\x8b", b"\x1f\x8b\x08\x00garbage", b"BZh9", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd\x00",
               b"PK\x03\x04rest", b"PAR1", b"\xff\xfe1\x00\t\x000\x00\n\x00", b"\x00\x00\xfe\xff\x00\x00\x00a",
               b"\xef\xbb\xbfid\tlabel\ttext\n1\t0\thi\n", b"1\t0\ta\rb\r\n2\t4\t\"open quote\n\r",
               b"\x00" * 80, b"\xc3\x28\xa0\xa1" * 30 + b"\n"]


def edge_starts(test):
    """Hypothesis runs each of EDGE_STARTS as an explicit example before the ones it draws."""
    for start in EDGE_STARTS:
        test = example(data=start)(test)
    return test


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@edge_starts
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_reader(tmp_path, data):
    path = tmp_path / "fuzz.tsv"
    path.write_bytes(data)
    n_lines = 0
    try:
        for chunk in iter_chunks(path, chunk_rows=7):
            assert len(chunk.ids) == len(chunk.texts) == len(chunk.labels)
            n_lines += len(chunk) + len(chunk.rejects)
    except InputError as e:  # bytes that start like a compressed or non-text file: one clean error, no crash
        assert str(e)
        return
    if data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        return  # read as UTF-16/32: its line breaks are not these bytes
    assert n_lines <= data.count(b"\n") + data.count(b"\r") + 1


def test_a_line_past_the_limit_is_rejected_in_bounded_memory(tmp_path):
    from tsinfer.infer.reader import MAX_LINE_CHARS

    path = tmp_path / "long.tsv"
    with open(path, "wb") as fh:
        fh.write(b"1\t0\tbefore\n2\t4\t")
        for _ in range(3 * MAX_LINE_CHARS // 100_000):  # three limits' worth, without a line break
            fh.write(b"x" * 100_000)
        fh.write(b"\n3\t4\tafter\n")
    chunk = read_all(path)
    assert chunk.texts == ["before", "after"] and chunk.lines == [1, 3]
    assert [(r.line, r.reason) for r in chunk.rejects] == [(2, f"line longer than {MAX_LINE_CHARS:,} characters")]
    assert len(chunk.rejects[0].raw) <= 200
