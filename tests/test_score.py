import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from conftest import CPU_ENGINES, head_lines
from tsinfer.cli import main
from tsinfer.infer.models import ScorerSettings
from tsinfer.infer.reader import read_all
from tsinfer.infer.request import OutputSpec, RunOptions, ScoreRequest
from tsinfer.infer.score import score_files

CPU = ScorerSettings(provider="cpu")


def score(src, model, out, settings=CPU, *, fmt="tsv", metrics=None, **options):
    """One input, one model: score_files on a request built as the CLI builds it."""
    return score_files(ScoreRequest([str(src)], [str(model)], OutputSpec(str(out), fmt, metrics=metrics), settings,
                                    RunOptions(**options)))


def read_predictions(path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def two_model_run(all_artifacts, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("score")
    runner = CliRunner()
    result = runner.invoke(main, [
        "score", str(small_data / "test.tsv"), "--model", str(all_artifacts / "onnx" / "bert"),
        "--model", str(all_artifacts / "onnx" / "svc"), "--provider", "cpu", "--output", str(out / "p.tsv"),
        "--metrics", str(out / "m.json"), "--roc", str(out / "roc.png"), "--chunk-rows", "64",
        "--batch-tokens", "512"])
    assert result.exit_code == 0, result.output
    return out, result


def test_rows_in_input_order_with_every_model(two_model_run, small_data):
    out, _ = two_model_run
    header, rows = read_predictions(out / "p.tsv")
    assert header == ["id", "label", "pred_bert", "score_bert", "pred_svc", "score_svc"]
    source = read_all(small_data / "test.tsv")
    assert [r[0] for r in rows] == source.ids
    assert [int(r[1]) for r in rows] == source.labels
    assert all(r[2] in ("0", "1") and 0.0 <= float(r[3]) <= 1.0 for r in rows)


def test_metrics_equal_sklearn_on_the_written_predictions(two_model_run):
    out, result = two_model_run
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["rows_read"] == metrics["rows_scored"] == 300 and metrics["rows_rejected"] == 0
    _, rows = read_predictions(out / "p.tsv")
    y = np.array([int(r[1]) for r in rows])
    for name, col in (("bert", 2), ("svc", 4)):
        m = metrics["models"][name]
        pred = np.array([int(r[col]) for r in rows])
        score = np.array([float(r[col + 1]) for r in rows])
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
        assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
        # the file rounds scores to 6 decimals, which ties a tiny model's near-0.5 scores; exact AUC equality on
        # unrounded scores is tested in test_preprocess_metrics
        assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=2e-3)
        assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
        assert m["tweets_per_s"] > 0
    assert 0 < metrics["models"]["bert"]["padding_efficiency"] <= 1
    assert "bert" in result.stderr and "svc" in result.stderr and "MCC" in result.stderr  # one table
    assert (out / "roc.png").stat().st_size > 1000


def test_length_bucketing_gives_the_same_predictions_as_unbucketed(all_artifacts, small_data, tmp_path):
    runs = {}
    for sort in (True, False):
        r = score(small_data / "test.tsv", all_artifacts / "onnx" / "bert", tmp_path / f"{sort}.tsv",
                  ScorerSettings(provider="cpu", precision="fp32", batch_tokens=600), sort=sort)
        _, rows = read_predictions(tmp_path / f"{sort}.tsv")
        runs[sort] = (r, np.array([float(x[3]) for x in rows]), [x[2] for x in rows])
    assert runs[True][2] == runs[False][2]
    np.testing.assert_array_equal(runs[True][1], runs[False][1])  # one row, one answer: to the written digit
    # on the CPU a batch holds rows of one length: nothing is padded, sorted or not
    assert runs[True][0].metrics["padding_efficiency"] == runs[False][0].metrics["padding_efficiency"] == 1.0


def test_the_first_model_scores_while_the_others_are_prepared(all_artifacts, small_data, tmp_path, monkeypatch):
    """A run of BERT then SVC: BERT's batches start before the SVC's spaCy step is done (with one chunk, they used
    to wait for it), and the file is the same as when the steps run one after the other."""
    import threading

    from tsinfer.infer.models import BertScorer, SvcScorer

    bert_scoring = threading.Event()
    seen = []
    score_bert, prepare_svc = BertScorer.score, SvcScorer.prepare

    def bert(self, *args, **kwargs):
        bert_scoring.set()
        return score_bert(self, *args, **kwargs)

    def svc(self, texts):
        if texts != ["warm up"]:  # the chunk's step, not the load's warm-up
            seen.append(bert_scoring.wait(timeout=20))  # True: BERT began scoring this chunk meanwhile
        return prepare_svc(self, texts)

    models = [str(all_artifacts / "onnx" / name) for name in ("bert", "svc")]
    serial = tmp_path / "serial.tsv"
    score_files(ScoreRequest([str(small_data / "test.tsv")], models, OutputSpec(str(serial)), CPU,
                             RunOptions(progress=False)))
    monkeypatch.setattr(BertScorer, "score", bert)
    monkeypatch.setattr(SvcScorer, "prepare", svc)
    out = tmp_path / "p.tsv"
    r = score_files(ScoreRequest([str(small_data / "test.tsv")], models, OutputSpec(str(out)), CPU,
                                 RunOptions(progress=False)))
    assert seen == [True] and r.rows_scored == len(read_all(small_data / "test.tsv").texts)
    assert out.read_bytes() == serial.read_bytes()


@pytest.mark.parametrize("precision, backend", CPU_ENGINES)
def test_lanes_give_the_same_answers_as_one_session(all_artifacts, small_data, precision, backend):
    """Batches run on parallel single-threaded sessions: which lane ran a batch must not change any row."""
    from tsinfer.infer.models import load_scorer
    from tsinfer.infer.reader import read_all

    texts = read_all(small_data / "test.tsv").texts
    outs = {}
    for lanes in (1, 2):
        scorer = load_scorer(all_artifacts / "onnx" / "bert", ScorerSettings(
            provider="cpu", precision=precision, threads=lanes, batch_tokens=300, backend=backend))
        assert scorer.engine.lanes == lanes and scorer.backend == backend
        outs[lanes] = scorer.score(scorer.prepare(texts))
    assert (outs[1].pred == outs[2].pred).all()
    np.testing.assert_array_equal(outs[1].score, outs[2].score)
    assert outs[1].padded == outs[2].padded


def test_tokenizer_processes_write_the_same_file_as_one_thread(all_artifacts, small_data, tmp_path):
    """Tokenizing in worker processes (the GPU default) splits each chunk among them: the output must not change,
    whatever the split (chunks of 37 rows over 3 workers leave uneven pieces)."""
    files = {}
    for workers in (0, 3):
        out = tmp_path / f"{workers}.tsv"
        r = score(small_data / "test.tsv", all_artifacts / "onnx" / "bert", out,
                  ScorerSettings(provider="cpu", precision="fp32", tokenizer_workers=workers), chunk_rows=37)
        assert r.summaries["bert"]["settings"]["tokenizer_workers"] == workers
        files[workers] = out.read_bytes()
    assert files[0] == files[3] and files[0].count(b"\n") > 37


def test_the_metrics_record_the_lanes_that_ran(all_artifacts, small_data, tmp_path):
    """The metrics JSON's settings name the lanes each engine really ran; the SVC's batches on one lane or two
    (one per thread) give the same file."""
    for lanes in (1, 2):
        r = score(small_data / "test.tsv", all_artifacts / "onnx" / "bert", tmp_path / f"{lanes}.tsv",
                  ScorerSettings(provider="cpu", precision="fp32", lanes=lanes))
        assert r.summaries["bert"]["settings"]["lanes"] == lanes
        r = score(small_data / "test.tsv", all_artifacts / "onnx" / "svc", tmp_path / f"svc{lanes}.tsv",
                  ScorerSettings(provider="cpu", threads=lanes))
        assert r.summaries["svc"]["settings"]["lanes"] == lanes
    assert (tmp_path / "svc1.tsv").read_bytes() == (tmp_path / "svc2.tsv").read_bytes()


@pytest.mark.parametrize("precision, backend", CPU_ENGINES)
def test_one_row_one_answer_whatever_the_chunk_and_batch_sizes(all_artifacts, full_data, tmp_path, precision,
                                                               backend):
    """On the CPU a row's prediction and written score must not depend on its neighbours: 5,000 rows of test.tsv
    scored with the smallest and largest chunks, token budgets and row caps (so every row meets other batch mates)
    give the same file, to the byte. int8 included: onnxruntime's activations are quantized per token (export/int8.py), and
    OpenVINO's with static scales fitted at export (export/openvino.py)."""
    rows = tmp_path / "test5000.tsv"
    head_lines(full_data / "test.tsv", rows, 5001)
    files = []
    for chunk_rows, batch_tokens, max_batch in ((37, 96, 3), (20000, 4096, 1024)):
        out = tmp_path / f"{chunk_rows}.tsv"
        settings = ScorerSettings(provider="cpu", precision=precision, batch_tokens=batch_tokens, max_batch=max_batch,
                                  backend=backend)
        score(rows, all_artifacts / "onnx" / "bert", out, settings, chunk_rows=chunk_rows)
        files.append(out.read_bytes())
    assert files[0].count(b"\n") == 5001
    assert files[0] == files[1]


@pytest.mark.parametrize("precision, backend", CPU_ENGINES)
def test_a_rows_probability_is_the_same_bits_in_any_batch(all_artifacts, small_data, precision, backend):
    """Below the written six decimals too: each row alone, and all rows in batches of every size, give the same
    float64 P(positive) (batches of one length, never padded, and per-token int8 scales)."""
    from tsinfer.infer.models import load_scorer

    texts = read_all(small_data / "test.tsv").texts
    scorer = load_scorer(all_artifacts / "onnx" / "bert", ScorerSettings(
        provider="cpu", precision=precision, threads=1, batch_tokens=100000, max_batch=1000, backend=backend))
    assert scorer.backend == backend
    together = scorer.score(scorer.prepare(texts)).score
    alone = np.concatenate([scorer.score(scorer.prepare([t])).score for t in texts])
    np.testing.assert_array_equal(together, alone)


def test_jsonl_output_and_single_model_flat_metrics(all_artifacts, small_data, tmp_path):
    r = score(small_data / "test.tsv", all_artifacts / "onnx" / "svc", tmp_path / "p.jsonl", fmt="jsonl",
              metrics=tmp_path / "m.json")
    assert r.metrics == json.loads((tmp_path / "m.json").read_text())
    recs = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(recs) == 300 and set(recs[0]) == {"id", "label", "pred", "score"}
    assert all(isinstance(r["pred"], int) and isinstance(r["score"], float) for r in recs)
    flat = json.loads((tmp_path / "m.json").read_text())
    for key in ("model", "provider", "precision_mode", "rows_read", "rows_scored", "rows_rejected", "accuracy",
                "precision", "recall", "f1", "mcc", "roc_auc", "confusion_matrix", "tweets_per_s", "tokens_per_s",
                "padding_efficiency", "wall_s"):
        assert key in flat, key


def test_unlabelled_input_has_empty_labels_and_no_metrics(all_artifacts, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("what a lovely morning\nthis is the worst\n")
    r = score(src, all_artifacts / "onnx" / "svc", tmp_path / "p.tsv")
    _, rows = read_predictions(tmp_path / "p.tsv")
    assert [(x[0], x[1]) for x in rows] == [("1", ""), ("2", "")]
    assert "accuracy" not in r.metrics


@pytest.mark.parametrize("engine, output, options, message", [
    ("local", OutputSpec("p.parquet", "parquet"), RunOptions(), "the local engine writes tsv or jsonl"),
    ("ray", OutputSpec("-", "parquet"), RunOptions(), "--engine ray needs --output FOLDER"),
    ("ray", OutputSpec("out", "jsonl"), RunOptions(), "--engine ray writes parquet or tsv shards, not jsonl"),
    ("ray", OutputSpec("out", "parquet"), RunOptions(resume=True, strict=True), "--resume, --strict: not available"),
    ("ray", OutputSpec("out", "parquet"), RunOptions(input_format="csv"), "--engine ray reads TSV shards"),
    ("spark", OutputSpec("out"), RunOptions(), "engine 'spark'"),
])
def test_a_request_whose_options_do_not_go_together_is_refused_on_construction(engine, output, options, message):
    from tsinfer.infer.request import RequestError

    with pytest.raises(RequestError, match=message):
        ScoreRequest(["in.tsv"], ["model"], output, CPU, options, engine=engine)
    ScoreRequest(["in.tsv"], ["model"], OutputSpec("p.tsv"), CPU, RunOptions(), engine="local")  # one that does


@pytest.mark.parametrize("args, message", [
    (["--provider", "cuda"], "provider 'cuda' is not available"),
    (["--precision", "fp16", "--provider", "cpu"], "cannot run on the cpu provider"),
    (["--model", "/nonexistent/model"], "model folder not found"),
])
def test_errors_are_one_clean_line_and_exit_2(all_artifacts, small_data, args, message):
    if "--model" not in args:
        args = args + ["--model", str(all_artifacts / "onnx" / "bert")]
    result = CliRunner().invoke(main, ["score", str(small_data / "test.tsv"), "-o", "/dev/null"] + args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_missing_input_is_a_clean_error(all_artifacts, tmp_path):
    result = CliRunner().invoke(main, ["score", str(tmp_path / "nope.tsv"), "--model",
                                       str(all_artifacts / "onnx" / "svc")])
    assert result.exit_code == 2 and "input file not found" in result.stderr


def test_predict_and_info(all_artifacts):
    runner = CliRunner()
    r = runner.invoke(main, ["predict", "--model", str(all_artifacts / "onnx" / "bert"), "good day", "bad day"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2
    assert all(line.split("\t")[0] in ("negative", "positive") for line in r.stdout.splitlines())
    r = runner.invoke(main, ["info", str(all_artifacts / "onnx" / "bert")])
    assert r.exit_code == 0 and "model_int8.onnx" in r.stdout and "providers on this machine: cpu" in r.stdout


def test_after_the_writer_fails_no_later_chunk_is_written():
    """The writer thread's error reaches the main thread once; the chunks queued behind the failed one, or put after,
    are never written: one written after the failure would sit in the partial file under a checkpoint that counts
    the failed chunk as done, and --resume would skip that one and write the other twice."""
    import time

    from tsinfer.infer.pipes import Sink

    written = []

    def write(item):
        if item == "full disk":
            raise OSError("No space left on device")
        written.append(item)

    sink = Sink(write, name="test-writer", depth=8)
    sink.put("full disk")
    deadline = time.monotonic() + 30
    with pytest.raises(OSError, match="No space"):
        while time.monotonic() < deadline:  # raises once the writer thread has failed
            sink.put("queued behind it")
            time.sleep(0.01)
    sink.put("put after the error was reported")
    sink.close()
    assert written == []
