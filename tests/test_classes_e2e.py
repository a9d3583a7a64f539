"""More than two classes end to end: a three-class CSV with word labels trained (SVC and a tiny BERT), exported
and scored, the written predictions and metrics against sklearn, JSON lines, Ray, resume; and two classes of other
names kept in the binary format."""
import csv
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import CPU_ENGINES, NAMES, full_disk_at_write, made_up_rows, tiny_bert, write_csv
from tsinfer.infer.meta import ModelMeta
from tsinfer.train.data import load_training_data


# a three-class CSV with word labels: trained (SVC and a tiny BERT), exported, scored


def run_cli(*args):
    from click.testing import CliRunner

    from tsinfer.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    """Both models trained through `tsinfer train` on a three-class CSV (a test file beside it), from a tiny BERT
    saved with a two-class head (replaced by a three-class one), then `tsinfer export` with parity."""
    d = tmp_path_factory.mktemp("three")
    rows = made_up_rows(360)
    train = write_csv(d / "train.csv", rows[:300])
    test = write_csv(d / "test.csv", rows[300:])
    art = d / "artifacts"
    common = ["--train", train, "--val-fraction", 0.2, "--test", test]
    svc = run_cli("train", "svc", *common, "--out", art / "svc", "--report", art / "reports" / "train_svc.json")
    assert svc.exit_code == 0, svc.output
    import torch

    torch.manual_seed(0)  # the tiny model's start, whatever ran before: its parity must not depend on test order
    model, tokenizer = tiny_bert(2)
    model.save_pretrained(d / "tiny")
    tokenizer.save_pretrained(d / "tiny")
    bert = run_cli("train", "bert", *common, "--base-model", d / "tiny", "--max-steps", 120, "--batch-size", 16,
                   "--lr", 3e-3, "--max-length", 32, "--precision", "fp32", "--out", art / "bert",
                   "--report", art / "reports" / "train_bert.json")
    assert bert.exit_code == 0, bert.output
    export = run_cli("export", "--artifacts", art, "--parity-file", test)
    assert export.exit_code == 0, export.output
    return d, train, test, art, svc.stderr + bert.stderr


def test_three_classes_in_the_same_order_in_training_meta_and_models(three_class):
    from transformers import AutoConfig

    d, train, test, art, lines = three_class
    assert "macro-F1" in lines and "macro-recall" in lines
    for kind in ("svc", "bert"):
        report = json.loads((art / "reports" / f"train_{kind}.json").read_text())
        assert report["data"]["labels"] == list(NAMES)
        assert report["val_macro_f1"] == pytest.approx(report["val_metrics"]["macro_f1"])
        assert set(report["test_metrics"]["roc_auc_per_class"]) == set(NAMES)
        meta = ModelMeta.read(art / "onnx" / kind)
        assert meta.labels == list(NAMES) and meta.label_set().names == NAMES
    assert json.loads((art / "svc" / "config.json").read_text())["labels"] == list(NAMES)
    config = AutoConfig.from_pretrained(art / "bert")
    assert config.num_labels == 3 and [config.id2label[i] for i in range(3)] == list(NAMES)
    info = run_cli("info", art / "onnx" / "bert")
    assert "classes (3, in output order): negative, neutral, positive" in info.stdout


def test_three_class_exports_keep_parity(three_class):
    d, train, test, art, _ = three_class
    parity = json.loads((art / "reports" / "parity.json").read_text())
    (svc,) = parity["models"]["svc"]["variants"]
    assert svc["rows"] == 60 and svc["agreement"] == 1.0 and svc["meets_target"]
    assert svc["max_abs_delta"] < 1e-9 and svc["max_abs_probability_delta"] < 1e-9
    measured = {v["variant"]: v for v in parity["models"]["bert"]["variants"] if v["measured"]}
    assert measured["fp32"]["agreement"] == 1.0 and measured["fp32"]["max_abs_delta"] < 1e-4
    assert measured["fp32"]["compared_value"] == "probabilities"
    assert all(v["meets_target"] for v in measured.values())


def read_written(path):
    """The predictions file as pandas reads it: labels and preds as class names."""
    import pandas as pd

    if str(path).endswith(".jsonl"):  # json's own float parsing (pandas' fast one is not exact)
        return pd.DataFrame([json.loads(line) for line in open(path, encoding="utf-8")])
    return pd.read_csv(path, sep="\t", dtype={"id": str, "label": str}, keep_default_na=False)


def sklearn_figures(frame, suffix: str) -> dict:
    """Every N-class figure of one model, by sklearn (numpy for the ECE) from the written columns alone."""
    y = frame["label"].map(NAMES.index).to_numpy()
    pred = frame[f"pred{suffix}"].map(NAMES.index).to_numpy()
    proba = frame[[f"p_{n}{suffix}" for n in NAMES]].to_numpy(dtype=np.float64)
    p, r, f, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    top, right = proba.max(axis=1), proba.argmax(axis=1) == y
    edges = np.minimum((top * 15).astype(int), 14)
    ece = sum(abs(right[edges == b].sum() - top[edges == b].sum()) for b in range(15)) / len(y)
    return {"accuracy": skm.accuracy_score(y, pred), "macro_f1": skm.f1_score(y, pred, average="macro"),
            "macro_recall": skm.recall_score(y, pred, average="macro"), "mcc": skm.matthews_corrcoef(y, pred),
            "confusion_matrix": skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist(),
            "per_class": {n: {"precision": p[c], "recall": r[c], "f1": f[c], "support": support[c]}
                          for c, n in enumerate(NAMES)},
            "roc_auc_per_class": {n: skm.roc_auc_score(y == c, proba[:, c]) for c, n in enumerate(NAMES)},
            "roc_auc": skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"), "ece": ece}


@pytest.fixture(scope="module")
def scored(three_class):
    """The three-class test file scored locally by both models, in TSV and JSON Lines."""
    import tsinfer

    d, train, test, art, _ = three_class
    models = [art / "onnx" / "bert", art / "onnx" / "svc"]
    runs = {fmt: tsinfer.score_file(test, models, d / f"pred.{fmt}", metrics=d / f"m.{fmt}.json", fmt=fmt,
                                    roc=d / f"roc.{fmt}.png", provider="cpu") for fmt in ("tsv", "jsonl")}
    return d, test, models, runs


def test_three_class_scores_name_the_classes_and_equal_sklearn_on_the_written_file(scored):
    d, test, models, runs = scored
    frame = read_written(d / "pred.tsv")
    assert list(frame.columns) == ["id", "label", "pred_bert", "p_negative_bert", "p_neutral_bert",
                                   "p_positive_bert", "pred_svc", "p_negative_svc", "p_neutral_svc", "p_positive_svc"]
    assert set(frame["label"]) == set(NAMES) and set(frame["pred_svc"]) <= set(NAMES)
    assert len(frame) == 60
    for name in ("bert", "svc"):
        np.testing.assert_allclose(frame[[f"p_{n}_{name}" for n in NAMES]].sum(axis=1), 1.0, atol=2e-6)
        got, want = runs["tsv"].summaries[name], sklearn_figures(frame, f"_{name}")
        assert got["classes"] == list(NAMES) and got["rows_labelled"] == 60
        assert got["confusion_matrix"] == want["confusion_matrix"]
        for key in ("accuracy", "macro_f1", "macro_recall", "mcc", "roc_auc", "ece"):
            assert got[key] == pytest.approx(want[key], abs=1e-12), (name, key)
        assert got["roc_auc_per_class"] == pytest.approx(want["roc_auc_per_class"], abs=1e-12)
        for n in NAMES:
            assert got["per_class"][n] == pytest.approx(want["per_class"][n], abs=1e-12)
    assert runs["tsv"].summaries["svc"]["accuracy"] > 0.9  # the made-up classes are learnable
    assert (d / "roc.tsv.png").stat().st_size > 0
    saved = json.loads((d / "m.tsv.json").read_text())
    assert saved["models"]["svc"]["macro_f1"] == runs["tsv"].summaries["svc"]["macro_f1"]


def test_json_lines_holds_the_same_answers(scored):
    d, test, models, runs = scored
    tsv, jsonl = read_written(d / "pred.tsv"), read_written(d / "pred.jsonl")
    assert list(jsonl.columns) == list(tsv.columns)
    first = json.loads((d / "pred.jsonl").read_text().splitlines()[0])
    assert isinstance(first["pred_bert"], str) and isinstance(first["p_neutral_svc"], float)
    for column in tsv.columns:
        assert jsonl[column].tolist() == tsv[column].tolist(), column
    for name in ("bert", "svc"):
        for key in ("confusion_matrix", "macro_f1", "macro_recall", "roc_auc_per_class", "ece"):
            assert runs["jsonl"].summaries[name][key] == runs["tsv"].summaries[name][key], (name, key)


@pytest.mark.parametrize("precision, backend", CPU_ENGINES)
def test_one_row_one_answer_for_three_classes(scored, tmp_path, precision, backend):
    """The BERT's probabilities are the same bits in any chunk, on every CPU engine: scored in chunks of 7 rows
    and in one chunk, the files are the same."""
    import tsinfer

    d, test, models, runs = scored
    for name, rows in (("small", 7), ("whole", None)):
        tsinfer.score_file(test, models[0], tmp_path / f"{name}.tsv", chunk_rows=rows, provider="cpu",
                           precision=precision, backend=backend)
    assert (tmp_path / "small.tsv").read_bytes() == (tmp_path / "whole.tsv").read_bytes()


def test_the_python_api_names_the_classes(three_class):
    import pandas as pd

    import tsinfer

    d, train, test, art, _ = three_class
    texts = ["love this great day", "meeting on tuesday", "awful broken train"]
    with tsinfer.load(art / "onnx" / "svc", provider="cpu") as model:
        assert model.labels == NAMES and model.classes_.tolist() == [0, 1, 2]
        proba = model.predict_proba(texts)
        pred = model.predict(texts)
        frame = model.score_frame(pd.DataFrame({"text": texts}))
    assert proba.shape == (3, 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert [NAMES[p] for p in pred] == ["positive", "neutral", "negative"]
    assert frame["pred"].tolist() == ["positive", "neutral", "negative"]
    assert frame[[f"p_{n}" for n in NAMES]].to_numpy() == pytest.approx(proba)


def test_models_of_other_classes_are_not_scored_together(three_class, svc_artifacts, tmp_path):
    d, train, test, art, _ = three_class
    r = run_cli("score", test, "--model", art / "onnx" / "svc", "--model", svc_artifacts / "onnx" / "svc",
                "-o", tmp_path / "p.tsv")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.splitlines()[-1].endswith("score models of the same classes together")
    assert not (tmp_path / "p.tsv").exists()


def test_ray_equals_local_for_three_classes(scored, local_ray, tmp_path):
    """TSV shards, whose class names must come back as strings (Parquet's typed columns: tests/test_ray.py)."""
    import pandas as pd

    from tsinfer.infer.models import ScorerSettings
    from tsinfer.infer.ray_engine import score_with_ray
    from tsinfer.infer.request import OutputSpec, RayOptions, RunOptions, ScoreRequest

    d, test, models, runs = scored
    shard = tmp_path / "shard.tsv"  # the Ray engine reads TSV shards: the test file with its labels as words
    with open(test, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    shard.write_text("id\tlabel\ttext\n" + "".join(f"{i}\t{lab}\t{text}\n" for i, text, lab in rows))
    local = read_written(d / "pred.tsv")
    m = score_with_ray(ScoreRequest([shard], models, OutputSpec(tmp_path / "ray", "tsv"), ScorerSettings(provider="cpu"),
                                    RunOptions(chunk_rows=17), engine="ray", ray=RayOptions(num_cpus=2, actors=1)))
    got = pd.concat(pd.read_csv(p, sep="\t", dtype={"id": str, "label": str})
                    for p in (tmp_path / "ray" / "predictions").iterdir())
    got = got.sort_values("line").reset_index(drop=True)
    assert len(got) == 60
    for column in local.columns:
        assert got[column].tolist() == local[column].tolist(), column
    for name in ("bert", "svc"):
        for key in ("accuracy", "macro_f1", "macro_recall", "mcc", "roc_auc", "roc_auc_per_class", "ece",
                    "confusion_matrix", "per_class"):
            assert m["models"][name][key] == runs["tsv"].summaries[name][key], (name, key)


def test_two_classes_of_other_names_keep_the_binary_format(tmp_path):
    """Two word classes other than negative/positive: sorted (ham, spam), written as tsinfer always wrote two
    classes (pred 0/1, score = P(class 1)), with the metrics naming them."""
    import tsinfer
    from tsinfer.export.run import run_export
    from tsinfer.train.svc import train_svc

    rows = [(i, t, {"negative": "Spam", "neutral": "ham", "positive": "HAM"}[lab.strip().lower()])
            for i, t, lab in made_up_rows(160)]
    data = load_training_data(train=write_csv(tmp_path / "t.csv", rows[:120]), val_fraction=0.25)
    assert data.labels.names == ("ham", "spam")
    train_svc(data, tmp_path / "art" / "svc", tmp_path / "art" / "reports" / "train_svc.json")
    run_export(tmp_path / "art", tmp_path, parity=False, which=("svc",))
    test = write_csv(tmp_path / "test.csv", rows[120:])
    result = tsinfer.score_file(test, tmp_path / "art" / "onnx" / "svc", tmp_path / "p.tsv", provider="cpu")
    frame = read_written(tmp_path / "p.tsv")
    assert list(frame.columns) == ["id", "label", "pred", "score"]
    y = frame["label"].astype(int).to_numpy()
    assert set(y) == {0, 1} and (y == 1).sum() == sum(lab == "Spam" for _, _, lab in rows[120:])
    assert set(result.summaries["svc"]["per_class"]) == {"ham", "spam"}
    assert result.summaries["svc"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y, frame["score"]), abs=1e-12)


def test_a_three_class_run_cut_short_resumes_to_the_same_file_and_figures(three_class, tmp_path, monkeypatch):
    d, train, test, art, _ = three_class
    common = [test, "--model", art / "onnx" / "bert", "--model", art / "onnx" / "svc", "--chunk-rows", 8,
              "--provider", "cpu"]
    assert run_cli("score", *common, "-o", tmp_path / "whole.tsv", "--metrics", tmp_path / "whole.json").exit_code == 0
    full_disk_at_write(monkeypatch, 4)
    out = tmp_path / "p.tsv"
    assert run_cli("score", *common, "-o", out).exit_code == 1
    monkeypatch.undo()
    r = run_cli("score", *common, "-o", out, "--resume", "--metrics", tmp_path / "resumed.json")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == (tmp_path / "whole.tsv").read_bytes()
    whole, resumed = (json.loads((tmp_path / f"{n}.json").read_text())["models"] for n in ("whole", "resumed"))
    for name in ("bert", "svc"):
        for key in ("confusion_matrix", "macro_f1", "roc_auc_per_class", "ece", "rows_labelled"):
            assert resumed[name][key] == whole[name][key], (name, key)
