"""Distillation: the loss pulls a student toward its teacher; targets files are written in the training rows' order
with their fingerprint, and refused for other rows; `tsinfer train bert --teacher-targets` trains on them."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from conftest import head_lines, tiny_bert
from tsinfer.cli import main
from tsinfer.train.bert import train_bert
from tsinfer.train.data import seed_data
from tsinfer.train.distill import (TARGETS_FORMAT, distillation_loss, load_targets, rows_fingerprint, sidecar)
from tsinfer.train.errors import TrainError
from tsinfer.train.report import record_training_data
from tsinfer.train.teacher import write_teacher_targets


def test_the_loss_is_the_weighted_sum_of_the_tempered_kl_and_the_cross_entropy():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g) * 3
    labels = torch.randint(0, 2, (8,), generator=g)
    t, a = 3.0, 0.7
    p = F.softmax(teacher / t, dim=-1)
    kl = (p * (p.log() - F.log_softmax(student / t, dim=-1))).sum(-1).mean()
    expected = a * t * t * kl + (1 - a) * F.cross_entropy(student, labels)
    got = distillation_loss(student, teacher, labels, temperature=t, alpha=a)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(distillation_loss(student, teacher, labels, temperature=t, alpha=0.0),
                          F.cross_entropy(student, labels))
    assert distillation_loss(teacher, teacher, labels, temperature=t, alpha=1.0).abs() < 1e-6


def test_a_tiny_model_trained_on_the_loss_moves_toward_the_teachers_probabilities():
    model, tokenizer = tiny_bert()
    torch.manual_seed(0)
    texts = [f"tweet number {i} is {'great' if i % 2 else 'awful'}" for i in range(32)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = torch.tensor([i % 2 for i in range(32)])
    # a teacher that disagrees with the labels on half the rows, with graded confidence
    teacher = torch.stack([torch.zeros(32), torch.linspace(-3, 3, 32)], dim=1)

    def distance():
        model.eval()
        with torch.no_grad():
            p = F.softmax(model(**enc).logits, dim=-1)[:, 1]
        model.train()
        return (p - F.softmax(teacher, dim=-1)[:, 1]).abs().mean().item()

    before = distance()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = distillation_loss(model(**enc).logits, teacher, labels, temperature=2.0, alpha=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert distance() < before / 2


@pytest.fixture
def teacher_dir(tmp_path):
    """A tiny random teacher saved as `tsinfer train bert` saves one (with its training record)."""
    model, tokenizer = tiny_bert()
    d = tmp_path / "teacher"
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    record_training_data(d, {"text_normalization": "tweet-v1"})
    return d


def test_targets_are_the_teachers_logits_in_the_training_rows_order(teacher_dir, small_data, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tsinfer.infer.preprocess import normalize_tweets

    out = tmp_path / "targets.npz"
    r = write_teacher_targets(teacher_dir, small_data, out, command="tsinfer train teacher-targets ...",
                              batch_size=16, precision="fp32")
    data = seed_data(small_data)
    with np.load(out) as npz:
        train_logits, val_logits = npz["train_logits"], npz["val_logits"]
    assert train_logits.shape == (len(data.train.texts), 2) and val_logits.shape == (len(data.val.texts), 2)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    for i in (0, 7, len(data.train.texts) - 1):  # each row alone, unpadded, gives its row's logits
        with torch.no_grad():
            alone = model(**tokenizer(normalize_tweets([data.train.texts[i]]), return_tensors="pt")).logits[0]
        np.testing.assert_allclose(train_logits[i], alone.numpy(), atol=1e-4)
    record = json.loads(sidecar(out).read_text())
    assert record["format"] == TARGETS_FORMAT and record["command"].startswith("tsinfer train teacher-targets")
    assert record["data"] == json.loads(json.dumps(rows_fingerprint(data)))
    assert {f["name"] for f in record["data"]["files"]} == {"dev.tsv", "test.tsv"}
    assert 0 <= record["teacher"]["val_accuracy"] <= 1 and 0 <= record["teacher"]["test_accuracy"] <= 1
    assert r == record
    with pytest.raises(TrainError, match="already exists"):
        write_teacher_targets(teacher_dir, small_data, out, command="again")


def test_with_the_teachers_training_report_its_figures_are_recorded_and_test_is_not_scored(teacher_dir, small_data,
                                                                                           tmp_path):
    report = tmp_path / "train_bert.json"
    report.write_text(json.dumps({"model": "bert", "val_accuracy": 0.84, "test_accuracy": 0.85, "test_mcc": 0.7,
                                  "base_model": "/models/mpnet"}))
    r = write_teacher_targets(teacher_dir, small_data, tmp_path / "t.npz", command="c", teacher_report=report,
                              precision="fp32")
    assert "test_accuracy" not in r["teacher"] and "val_accuracy" in r["teacher"]
    assert r["teacher"]["training_report"]["test_accuracy"] == 0.85 and r["inference"]["seconds"].keys() == {
        "train", "val"}
    report.write_text(json.dumps({"model": "svc", "val_accuracy": 0.7}))
    with pytest.raises(TrainError, match="is not a `tsinfer train bert` report"):
        write_teacher_targets(teacher_dir, small_data, tmp_path / "t2.npz", command="c", teacher_report=report)


def constant_targets(data_dir, path, p_positive: float):
    """A targets file whose teacher gives every training row the same P(positive)."""
    data = seed_data(data_dir)
    logits = np.tile([0.0, np.log(p_positive / (1 - p_positive))], (len(data.train.texts), 1)).astype(np.float32)
    np.savez(path, train_logits=logits, val_logits=logits[:len(data.val.texts)])
    sidecar(path).write_text(json.dumps({"format": TARGETS_FORMAT, "command": "test", "teacher": {},
                                         "data": rows_fingerprint(data)}))
    return path


def test_a_student_distilled_through_the_trainer_learns_the_teachers_probabilities(small_data, tmp_path):
    """A teacher that says P(positive) 0.9 for every row, distilled alone (alpha 1): the student's validation
    probabilities go to about 0.9, where the labels (43% of the validation rows are positive) would not put them."""
    targets = constant_targets(small_data, tmp_path / "t.npz", 0.9)
    model, tokenizer = tiny_bert()
    r = train_bert(small_data, tmp_path / "bert", tmp_path / "reports" / "r.json", model=model, tokenizer=tokenizer,
                   overrides={"epochs": 1, "learning_rate": 3e-3, "distill_alpha": 1.0, "distill_temperature": 1.0,
                              "batch_size": 8, "average_last": 0, "text_normalization": "none"},
                   limit=160, precision="fp32", teacher_targets=targets)
    with np.load(tmp_path / "reports" / "train_bert_logits.npz") as npz:
        p = F.softmax(torch.from_numpy(npz["val_logits"]), dim=-1)[:, 1].numpy()
    assert 0.75 < p.mean() < 0.95 and p.std() < 0.05  # a student of the labels alone stays near their 0.43
    assert r["distillation"]["teacher_targets"] == str(targets) and r["distillation"]["alpha"] == 1.0
    record = json.loads((tmp_path / "bert" / "training_data.json").read_text())
    assert record["distillation"]["sha256"] == r["distillation"]["sha256"]


def test_targets_of_other_rows_are_refused_with_one_line(small_data, tmp_path):
    targets = constant_targets(small_data, tmp_path / "t.npz", 0.9)
    other = tmp_path / "other"
    other.mkdir()
    head_lines(small_data / "dev.tsv", other / "dev.tsv", 590)  # ten rows fewer: another file, another split
    head_lines(small_data / "test.tsv", other / "test.tsv", 301)
    with pytest.raises(TrainError, match=r"was made from dev.tsv sha256 \w{12}\.\.\., the training file is dev.tsv"):
        load_targets(targets, seed_data(other))
    result = CliRunner().invoke(main, ["train", "bert", "--data", str(other), "--teacher-targets", str(targets),
                                       "--out", str(tmp_path / "bert"), "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "train without --teacher-targets" in result.stderr
    assert not (tmp_path / "bert").exists()
    data = seed_data(small_data)
    assert load_targets(targets, data.limited(100))[0].shape == (100, 2)  # a smoke run's first rows


def test_a_missing_targets_file_is_one_line(tmp_path, small_data):
    result = CliRunner().invoke(main, ["train", "bert", "--data", str(small_data), "--teacher-targets",
                                       str(tmp_path / "none.npz"), "--out", str(tmp_path / "bert")])
    assert result.exit_code == 2 and "not found" in result.stderr and "Traceback" not in result.output
