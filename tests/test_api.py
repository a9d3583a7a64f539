"""The Python API (`import tsinfer`): a list, a DataFrame, an Arrow table and a file get the answers `tsinfer score`
writes for the same rows (the same bits on the CPU, before the file's 6-decimal rounding), and its errors are the
documented classes."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import tsinfer
from tsinfer.cli import main
from tsinfer.infer.metrics import format_score_bins, score_bins
from tsinfer.infer.models import ScorerSettings, load_scorer
from tsinfer.infer.reader import read_all


def cli_score(args):
    r = CliRunner().invoke(main, ["score", *args, "--provider", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    return r


def read_tsv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    return rows[0], rows[1:]


def written(p) -> list[str]:
    """P(positive) as `tsinfer score` writes it."""
    return format_score_bins(score_bins(p))


@pytest.fixture(scope="module", params=[("bert", "int8"), ("bert", "fp32"), ("svc", "auto")],
                ids=["bert-int8", "bert-fp32", "svc"])
def cli_run(request, all_artifacts, small_data, tmp_path_factory):
    """`tsinfer score` on test.tsv with one model: (model folder, precision, texts, pred column, score column)."""
    kind, precision = request.param
    folder = all_artifacts / "onnx" / kind
    out = tmp_path_factory.mktemp("cli") / "p.tsv"
    cli_score([str(small_data / "test.tsv"), "--model", str(folder), "--precision", precision, "-o", str(out)])
    _, rows = read_tsv(out)
    return folder, precision, read_all(small_data / "test.tsv").texts, [r[2] for r in rows], [r[3] for r in rows]


def test_a_list_gets_the_cli_s_answers_and_the_scorer_s_own_bits(cli_run):
    folder, precision, texts, preds, scores = cli_run
    with tsinfer.load(folder, provider="cpu", precision=precision) as model:
        got = model.score(texts)
        proba = model.predict_proba(texts)
        assert np.array_equal(model.predict(texts), got.pred)
    assert got.pred.dtype == np.int64 and got.score.dtype == np.float64 and len(got.pred) == len(texts)
    assert [str(p) for p in got.pred] == preds and written(got.score) == scores
    scorer = load_scorer(folder, ScorerSettings(provider="cpu", precision=precision))
    try:
        own = scorer.score(scorer.prepare(texts))
    finally:
        scorer.close()
    assert got.score.tobytes() == own.score.tobytes()  # no rounding or re-computing on the way
    assert proba.shape == (len(texts), 2) and proba[:, 1].tobytes() == got.score.tobytes()
    assert np.allclose(proba.sum(axis=1), 1.0)


def test_a_data_frame_and_an_arrow_table_get_the_same_columns(cli_run):
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    folder, precision, texts, preds, scores = cli_run
    frame = pd.DataFrame({"id": range(len(texts)), "tweet": texts})
    with tsinfer.load(folder, provider="cpu", precision=precision) as model:
        scored = model.score_frame(frame, text_column="tweet", prefix="m_")
        table = model.score_frame(pa.table({"text": texts}))
        expected = model.score(texts)
    assert list(frame.columns) == ["id", "tweet"]  # a new frame: the caller's is left as it was
    assert list(scored.columns) == ["id", "tweet", "m_pred", "m_score"]
    assert scored["m_score"].to_numpy().tobytes() == expected.score.tobytes()
    assert [str(p) for p in scored["m_pred"]] == preds and written(scored["m_score"].to_numpy()) == scores
    assert table.column_names == ["text", "pred", "score"]
    assert np.asarray(table.column("score")).tobytes() == expected.score.tobytes()
    assert table.column("pred").to_pylist() == expected.pred.tolist()


def test_score_file_writes_what_the_cli_writes(all_artifacts, small_data, tmp_path):
    models = [all_artifacts / "onnx" / "bert", all_artifacts / "onnx" / "svc"]
    cli_score([str(small_data / "test.tsv"), *[a for m in models for a in ("--model", str(m))], "-o",
               str(tmp_path / "cli.tsv"), "--metrics", str(tmp_path / "cli.json")])
    result = tsinfer.score_file(small_data / "test.tsv", models, tmp_path / "api.tsv", provider="cpu",
                                metrics=tmp_path / "api.json")
    assert (tmp_path / "api.tsv").read_bytes() == (tmp_path / "cli.tsv").read_bytes()
    assert isinstance(result, tsinfer.ScoreResult)
    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (300, 300, 0)
    assert result.rejects == f"{tmp_path / 'api.tsv'}.rejects.tsv"
    on_disk = json.loads((tmp_path / "api.json").read_text())
    assert on_disk["models"]["bert"]["accuracy"] == result.metrics["models"]["bert"]["accuracy"]
    assert on_disk["models"]["svc"]["mcc"] == json.loads((tmp_path / "cli.json").read_text())["models"]["svc"]["mcc"]


def test_a_jsonl_file_whose_first_record_has_no_text_scores_every_other_record(svc_artifacts, tmp_path):
    src = tmp_path / "stream.jsonl"
    records = [{"delete": {"status": {"id_str": "9"}}}] + [{"id_str": str(k), "text": f"tweet number {k}"}
                                                          for k in range(20)]
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = tsinfer.score_file(src, svc_artifacts / "onnx" / "svc", tmp_path / "p.tsv", provider="cpu")
    _, rows = read_tsv(tmp_path / "p.tsv")
    assert [r[0] for r in rows] == [str(k) for k in range(20)]
    assert (result.rows_scored, result.rows_rejected) == (20, 1)
    cli_score([str(src), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(tmp_path / "cli.tsv")])
    assert (tmp_path / "cli.tsv").read_bytes() == (tmp_path / "p.tsv").read_bytes()


@pytest.mark.parametrize("suffix", ["jsonl", "tsv"])
def test_blank_lines_between_records_report_no_rejects(svc_artifacts, tmp_path, suffix):
    src = tmp_path / f"airy.{suffix}"
    lines = ([json.dumps({"id": k, "text": f"tweet {k}"}) for k in range(10)] if suffix == "jsonl"
             else ["id\ttext"] + [f"{k}\ttweet {k}" for k in range(10)])
    src.write_text("\n\n".join(lines) + "\n  \n")
    result = tsinfer.score_file(src, svc_artifacts / "onnx" / "svc", tmp_path / "p.tsv", provider="cpu")
    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (10, 10, 0)
    assert result.blank_lines_skipped == len(lines)
    rejects = tmp_path / "p.tsv.rejects.tsv"
    assert not rejects.exists() or rejects.read_text().count("\n") <= 1  # the header at most
    r = cli_score([str(src), "--model", str(svc_artifacts / "onnx" / "svc"), "-o", str(tmp_path / "cli.tsv")])
    assert "rejected 0" in r.stderr and "rows rejected" not in r.stderr


def test_errors_are_the_documented_classes(svc_artifacts, tmp_path):
    with tsinfer.load(svc_artifacts / "onnx" / "svc") as model:
        assert model.kind == "svc" and model.provider == "cpu" and "svc" in repr(model)
        with pytest.raises(tsinfer.InputError, match="2 of 3 texts .*position 1: None.*drop or fill"):
            model.predict(["fine", None, "   "])
        with pytest.raises(tsinfer.InputError, match="not one string"):
            model.predict("one text")
        with pytest.raises(tsinfer.InputError, match="pandas DataFrame or a pyarrow Table, not dict"):
            model.score_frame({"text": ["a"]})
        pd = pytest.importorskip("pandas")
        with pytest.raises(tsinfer.InputError, match="no column 'text' .*its columns: body.*text_column="):
            model.score_frame(pd.DataFrame({"body": ["a"]}))
        assert model.predict([]).shape == (0,) and model.predict_proba([]).shape == (0, 2)
    with pytest.raises(tsinfer.ModelError, match="is closed"):
        model.predict(["a"])
    with pytest.raises(tsinfer.ModelError, match="model folder not found"):
        tsinfer.load(tmp_path / "nowhere")
    with pytest.raises(tsinfer.InputError, match="input file not found|No such file|not found"):
        tsinfer.score_file(tmp_path / "missing.tsv", svc_artifacts / "onnx" / "svc", tmp_path / "p.tsv")


def test_the_package_top_names_its_api():
    assert set(tsinfer.__all__) <= set(dir(tsinfer))
    for name in tsinfer.__all__:
        assert getattr(tsinfer, name) is not None
    assert tsinfer.ModelError is __import__("tsinfer.infer.meta", fromlist=["x"]).ModelError
    with pytest.raises(AttributeError):
        tsinfer.no_such_name
