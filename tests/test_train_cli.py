"""`tsinfer train svc|bert` and `tsinfer export` on the user's own labelled files, and their refusals."""
import csv
import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from sklearn import metrics as skm
from sklearn.model_selection import train_test_split

from conftest import tiny_bert, write_csv
from tsinfer.cli import main
from tsinfer.infer.reader import read_all
from tsinfer.train.data import SPLIT_SEED, dev_split, load_training_data
from tsinfer.export import run as export_run
from tsinfer.train.errors import DataError, ExportError, ParityError, TrainError

WORDS = {0: ("negative", "NEGATIVE", "Negative"), 1: ("positive", "Positive", "POSITIVE")}


def own_rows(small_data, n=300):
    """The seed's rows with word labels in mixed case, as a user's export might have them."""
    dev = read_all(small_data / "dev.tsv")
    return [(i, text, WORDS[label][i % 3]) for i, (text, label) in enumerate(zip(dev.texts[:n], dev.labels[:n]))]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def own_run(small_data, tmp_path_factory):
    """Both models trained on a CSV with text/sentiment columns and word labels, no test file, then exported."""
    d = tmp_path_factory.mktemp("own")
    rows = own_rows(small_data) + [(999, "   ", "positive")]  # an empty text: dropped and counted
    src = write_csv(d / "my_tweets.csv", rows)
    art = d / "artifacts"
    common = ["--train", src, "--val-fraction", "0.2"]
    svc = run("train", "svc", *common, "--out", art / "svc", "--report", art / "reports" / "train_svc.json")
    assert svc.exit_code == 0, svc.output
    model, tokenizer = tiny_bert()
    model.save_pretrained(d / "tiny")
    tokenizer.save_pretrained(d / "tiny")
    bert = run("train", "bert", *common, "--base-model", d / "tiny", "--max-steps", 3, "--batch-size", 16,
               "--max-length", 64, "--layer-decay", 0.9, "--label-smoothing", 0.1, "--average-last", 2,
               "--text-normalization", "none", "--precision", "bf16", "--out", art / "bert", "--report",
               art / "reports" / "train_bert.json")
    assert bert.exit_code == 0, bert.output
    assert "validation ECE" in bert.stderr
    export = run("export", "--artifacts", art, "--parity-file", src)
    assert export.exit_code == 0, export.output
    return d, src, art, rows, svc


def test_a_parity_miss_exits_4_after_the_report_unless_allowed(own_run, tmp_path, monkeypatch):
    d, src, art, rows, svc = own_run
    shutil.copytree(art / "svc", tmp_path / "svc")
    monkeypatch.setitem(export_run.PARITY_TARGETS, "svc", {"agreement": 1.0, "max_abs_delta": -1.0})  # unreachable
    r = run("export", "--artifacts", tmp_path, "--only", "svc", "--parity-file", src)
    assert r.exit_code == 4 and "Traceback" not in r.output
    assert "-> MISSES TARGET" in r.stdout  # the report's lines come first
    assert r.stderr.splitlines()[-1] == ("Error: 1 exported graph misses its parity target (svc fp64): see "
                                         "reports/parity.json, or pass --allow-parity-miss to accept them")
    parity = json.loads((tmp_path / "reports" / "parity.json").read_text())
    assert parity["models"]["svc"]["variants"][0]["meets_target"] is False
    assert (tmp_path / "onnx" / "svc" / "meta.json").exists()  # written all the same, for a look
    with pytest.raises(ParityError) as e:
        export_run.require_parity(parity)
    assert isinstance(e.value, ExportError) and e.value.misses == ["svc fp64"]
    r = run("export", "--artifacts", tmp_path, "--only", "svc", "--parity-file", src, "--allow-parity-miss")
    assert r.exit_code == 0 and "-> MISSES TARGET" in r.stdout


def test_reports_trace_the_data_and_the_stratified_split(own_run):
    d, src, art, rows, svc = own_run
    labels = [0 if r[2].lower() == "negative" else 1 for r in rows[:-1]]
    for kind in ("svc", "bert"):
        report = json.loads((art / "reports" / f"train_{kind}.json").read_text())
        data = report["data"]
        assert data["files"][0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert data["files"][0]["bytes"] == src.stat().st_size and data["files"][0]["name"] == "my_tweets.csv"
        assert data["empty_texts_dropped"] == 1 and data["files"][0]["empty_text_lines"] == [302]
        assert data["split"] == {"validation": "fraction", "val_fraction": 0.2, "seed": SPLIT_SEED,
                                 "stratified": True}
        assert report["n_train"] == 240 and report["n_val"] == 60 and report["n_test"] == 0
        assert report["test_accuracy"] is None and report["val_accuracy"] is not None
        # stratified: the validation rows hold the classes in the file's proportions, to the row
        assert data["class_counts"]["validation"]["positive"] == round(60 * sum(labels) / len(labels))
        assert data["label_mapping"]["positive"] == "positive" and data["label_mapping"]["4"] == "positive"
    assert "1 row with an empty text dropped (line 302)" in svc.stderr


def test_exported_meta_carries_the_label_mapping_and_training_data(own_run):
    _, src, art, _, _ = own_run
    for kind in ("svc", "bert"):
        meta = json.loads((art / "onnx" / kind / "meta.json").read_text())
        assert meta["labels"] == ["negative", "positive"]
        assert meta["label_mapping"]["negative"] == "negative" and meta["label_mapping"]["0"] == "negative"
        assert meta["training_data"]["files"][0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    bert = json.loads((art / "onnx" / "bert" / "meta.json").read_text())
    assert "text_normalization" not in bert  # trained with --text-normalization none: the runtime leaves texts raw
    report = json.loads((art / "reports" / "train_bert.json").read_text())
    hp = report["hyperparameters"]
    assert (hp["layer_decay"], hp["label_smoothing"], hp["average_last"]) == (0.9, 0.1, 2)
    # trained with --precision bf16: the report and meta.json say so
    assert (report["precision"], report["precision_source"]) == ("bf16", "--precision")
    assert bert["training_data"]["training_run"] == {"device": "cpu", "precision": "bf16",
                                                     "precision_source": "--precision",
                                                     "dropout_masks": "numpy (train/dropout.py)"}
    parity = json.loads((art / "reports" / "parity.json").read_text())
    assert parity["data"] == str(src) and parity["models"]["svc"]["variants"][0]["rows"] == 300


def test_score_reads_word_labels_of_a_jsonl_file_with_the_same_mapping(own_run, tmp_path):
    _, _, art, rows, _ = own_run
    src = tmp_path / "new.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t, "sentiment": s}) + "\n" for i, t, s in rows[:80]))
    out = tmp_path / "p.tsv"
    r = run("score", src, "--model", art / "onnx" / "svc", "--model", art / "onnx" / "bert", "--provider", "cpu",
            "-o", out, "--metrics", tmp_path / "m.json")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["rows_scored"] == 80 and metrics["rows_rejected"] == 0
    with open(out, newline="") as fh:
        written = list(csv.DictReader(fh, delimiter="\t"))
    truth = [0 if s.lower() == "negative" else 1 for _, _, s in rows[:80]]
    assert [int(w["label"]) for w in written] == truth
    for name in ("svc", "bert"):
        pred = [int(w[f"pred_{name}"]) for w in written]
        assert metrics["models"][name]["accuracy"] == pytest.approx(skm.accuracy_score(truth, pred))
        assert 0.0 <= metrics["models"][name]["ece"] <= 1.0


def test_labels_mixing_numbers_and_words_stop_in_one_line(small_data, tmp_path):
    """A third class trains (tests/test_classes.py), but a stray number among word labels is refused, naming both
    kinds, rather than becoming a class of its own."""
    rows = own_rows(small_data, 60)
    for i in (4, 10, 11):
        rows[i] = (rows[i][0], rows[i][1], "neutral")
    rows[20] = (20, rows[20][1], "2")
    src = write_csv(tmp_path / "three.csv", rows)
    r = run("train", "svc", "--train", src, "--out", tmp_path / "svc", "--report", tmp_path / "r.json")
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1
    assert "labels mix numbers and words (2, negative, neutral, positive): use one kind" in r.stderr
    assert not (tmp_path / "svc").exists() and not (tmp_path / "r.json").exists()


def test_a_file_without_labels_names_the_label_column_option(small_data, tmp_path):
    rows = [(i, text) for i, text, _ in own_rows(small_data, 20)]
    src = write_csv(tmp_path / "unlabelled.csv", rows, header=("id", "body"))
    r = run("train", "svc", "--train", src, "--text-column", "body")
    assert r.exit_code == 2 and "20 rows without a label (lines 2, 3" in r.stderr
    assert "--label-column" in r.stderr


def test_duplicates_and_a_rare_class_are_reported(small_data, tmp_path):
    rows = [(i, f"tweet number {i} about nothing", "negative") for i in range(400)]
    rows[7] = (7, "a rare happy one", "positive")
    rows[300] = (300, "another rare happy one", "positive")
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", [(1, "Tweet  number 3 about NOTHING", "0"), (2, "fresh text", "1"),
                                             (3, "tweet number 5 about nothing", "negative")])
    data = load_training_data(train=train, test=test)
    report = data.report()
    assert report["duplicates"]["train_test"] == 2
    assert report["class_counts"]["test"] == {"negative": 2, "positive": 1}
    assert any("class positive is 0.50% of the rows (2 of 400)" in w for w in report["warnings"])
    assert any("test: 2 rows with the same text as a training row" in w for w in report["warnings"])


def test_one_class_only_is_refused(tmp_path):
    src = write_csv(tmp_path / "neg.csv", [(i, f"text {i}", "negative") for i in range(50)])
    with pytest.raises(DataError, match="no positive example"):
        load_training_data(train=src)


def test_seed_split_is_still_the_notebooks_unstratified_one(small_data):
    """`make train` (--data) keeps the seed's split: 90/10 of dev.tsv, random_state=213, no stratification."""
    dev = read_all(small_data / "dev.tsv")
    x_tr, x_val, _, _ = train_test_split(dev.texts, dev.labels, test_size=0.1, random_state=SPLIT_SEED)
    train, val = dev_split(small_data)
    assert train.texts == x_tr and val.texts == x_val


def test_options_that_do_not_go_together_are_usage_errors(small_data, tmp_path):
    src = write_csv(tmp_path / "a.csv", own_rows(small_data, 20))
    for args, message in ((["--data", small_data, "--train", src], "go with --train FILE"),
                          (["--train", src, "--validation", src, "--val-fraction", "0.2"], "not both"),
                          ([], "give --train FILE")):
        r = run("train", "svc", *args)
        assert r.exit_code == 2 and message in r.stderr, r.output


def test_a_validation_file_replaces_the_held_out_fraction(small_data, tmp_path):
    rows = own_rows(small_data, 120)
    train = write_csv(tmp_path / "train.csv", rows[:100])
    val = tmp_path / "val.tsv"
    val.write_text("id\tlabel\ttext\n" + "".join(f"{i}\t{s}\t{t}\n" for i, t, s in rows[100:]))
    data = load_training_data(train=train, validation=val)
    assert len(data.train.texts) == 100 and len(data.val.texts) == 20
    assert data.report()["split"] == {"validation": "file"}
    assert [f["role"] for f in data.files] == ["train", "validation"]


def test_without_the_train_extra_the_command_says_which_extra_to_install(tmp_path):
    code = ("import sys; sys.modules['sklearn'] = None; from tsinfer.cli import main; "
            f"main(['train', 'svc', '--train', {str(tmp_path / 'x.csv')!r}], prog_name='tsinfer')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("Error: tsinfer train svc needs the train extra (sklearn is not installed): "
                                "pip install 'tsinfer-sentiment[train]'")


def test_the_bert_command_offers_the_recipes_presets_and_fields():
    """The command's preset choices and hyperparameter options come from train/recipe.py (torch-free); an unset
    option leaves the preset's value, and the help shows each preset's."""
    from tsinfer.cli.train import train_bert_command
    from tsinfer.train.recipe import PRESETS, BertRecipe, offered_fields

    params = {p.name: p for p in train_bert_command.params}
    assert sorted(params["preset"].type.choices) == sorted(PRESETS)
    offered = dict(offered_fields())
    assert set(offered) == {"learning_rate", "epochs", "batch_size", "max_length", "text_normalization",
                            "label_smoothing", "layer_decay", "average_last", "distill_temperature", "distill_alpha"}
    for name, option in offered.items():
        assert params[name].opts == [option.flag] and params[name].default is None
    assert "[seed 2e-05, minilm 8e-05]" in params["learning_rate"].help
    assert PRESETS["minilm"].overridden({"epochs": 1, "lr": None, "learning_rate": None}) == BertRecipe(
        learning_rate=8e-5, epochs=1, warmup_ratio=0.06, weight_decay=0.01, layer_decay=0.9, average_last=4)
    assert PRESETS["seed"].overridden({"text_normalization": "none"}).text_normalization is None
    with pytest.raises(TrainError, match="unknown hyperparameter lr"):
        PRESETS["seed"].overridden({"lr": 1e-4})


def test_the_bert_command_offers_exactly_the_trainers_precisions(small_data, tmp_path):
    """--precision's choices are named without importing torch too; fp16 on the CPU stops with one line."""
    from tsinfer.cli.train import train_bert_command
    from tsinfer.train.precision import PRECISIONS

    option = next(p for p in train_bert_command.params if p.name == "precision")
    assert tuple(option.type.choices) == PRECISIONS and option.default == "auto"
    src = write_csv(tmp_path / "a.csv", own_rows(small_data, 40))
    r = run("train", "bert", "--train", src, "--precision", "fp16", "--out", tmp_path / "bert")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip() == "Error: --precision fp16 needs a GPU; on the CPU use bf16 or fp32"
    assert not (tmp_path / "bert").exists()
