"""The CPU engine choice (onnxruntime or OpenVINO) and the OpenVINO int8 model that `tsinfer export` writes."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tsinfer.cli import main
from tsinfer.infer import engines
from tsinfer.infer.engines import EngineError, choose_backend, cpu_inference_precision
from tsinfer.infer.models import ModelError, ScorerSettings, load_scorer
from tsinfer.infer.reader import read_all

OV_FILES = {"int8": "model_int8_ov.xml"}
try:  # the telemetry sender as the library ships it, read before any export of this test run silences it
    from openvino_telemetry.utils.sender import TelemetrySender as _Sender

    _ORIGINAL_SEND = _Sender.send
except ImportError:
    _ORIGINAL_SEND = None


@pytest.mark.parametrize("requested, provider, precision, files, installed, expected", [
    ("auto", "cpu", "int8", OV_FILES, True, "openvino"),
    ("auto", "cpu", "int8", OV_FILES, False, "onnxruntime"),    # the extra is missing: fall back
    ("auto", "cpu", "int8", {}, True, "onnxruntime"),           # a folder exported without OpenVINO
    ("auto", "cpu", "fp32", OV_FILES, True, "onnxruntime"),     # no OpenVINO fp32 file
    ("auto", "cuda", "int8", OV_FILES, True, "onnxruntime"),    # OpenVINO is the CPU's engine only
    ("onnxruntime", "cpu", "int8", OV_FILES, True, "onnxruntime"),
    ("openvino", "cpu", "int8", OV_FILES, True, "openvino"),
])
def test_backend_choice(monkeypatch, requested, provider, precision, files, installed, expected):
    monkeypatch.setattr(engines, "openvino_version", lambda: "2026.0" if installed else None)
    assert choose_backend(requested, provider=provider, precision=precision, openvino_files=files) == expected


@pytest.mark.parametrize("requested, provider, files, installed, message", [
    ("openvino", "cpu", OV_FILES, False, "pip install"),
    ("openvino", "cpu", {}, True, "no OpenVINO int8 file"),
    ("openvino", "cuda", OV_FILES, True, "CPU only"),
    ("tensorflow", "cpu", OV_FILES, True, "unknown backend"),
])
def test_an_impossible_backend_is_a_one_line_error(monkeypatch, requested, provider, files, installed, message):
    monkeypatch.setattr(engines, "openvino_version", lambda: "2026.0" if installed else None)
    with pytest.raises(EngineError, match=message) as e:
        choose_backend(requested, provider=provider, precision="int8", openvino_files=files)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("flags, expected", [({"avx512_bf16", "avx512_vnni"}, "bf16"), ({"amx_bf16"}, "bf16"),
                                             ({"avx2", "avx512_vnni"}, "f32"), (set(), "f32")])
def test_openvino_float_precision_follows_the_cpu(flags, expected):
    assert cpu_inference_precision(flags) == expected


def test_without_the_extra_scoring_falls_back_to_onnxruntime(bert_artifacts, monkeypatch):
    monkeypatch.setattr(engines, "openvino_version", lambda: None)
    scorer = load_scorer(bert_artifacts / "onnx" / "bert", ScorerSettings(provider="cpu", precision="int8"))
    assert scorer.backend == "onnxruntime" and scorer.file == "model_int8.onnx"
    with pytest.raises(ModelError, match="openvino"):
        load_scorer(bert_artifacts / "onnx" / "bert",
                    ScorerSettings(provider="cpu", precision="int8", backend="openvino"))


def test_a_cpu_run_on_openvino_never_imports_onnxruntime(bert_artifacts):
    """--provider cpu on the OpenVINO engine does not need onnxruntime, whose import is a tenth of a second of a
    user's `tsinfer score` process."""
    pytest.importorskip("openvino")
    folder = str(bert_artifacts / "onnx" / "bert")
    code = ("import sys\nfrom tsinfer.infer.models import ScorerSettings, load_scorer\n"
            f"s = load_scorer({folder!r}, ScorerSettings(provider='cpu', precision='int8'))\n"
            "s.score(s.prepare(['a fine day']))\nprint(s.backend, 'onnxruntime' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["openvino", "False"]


def test_export_without_the_extra_writes_no_openvino_file(bert_artifacts, monkeypatch):
    from tsinfer.export.run import _openvino_export

    said = []
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    meta = json.loads((bert_artifacts / "onnx" / "bert" / "meta.json").read_text())
    assert _openvino_export(bert_artifacts / "bert", bert_artifacts / "onnx" / "bert", meta,
                            progress=said.append) == {}
    assert "not installed" in said[0]


openvino_only = pytest.mark.skipif(engines.openvino_version() is None, reason="the openvino extra is not installed")


@openvino_only
def test_export_writes_the_openvino_int8_model_and_its_parity(bert_artifacts):
    folder = bert_artifacts / "onnx" / "bert"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["openvino_files"] == OV_FILES
    assert {"model_int8_ov.xml", "model_int8_ov.bin"} <= set(meta["sha256"])  # both verified at load
    assert meta["openvino_calibration"]["rows"] == 300
    xml = (folder / "model_int8_ov.xml").read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml  # NNCF's quantizers are in the graph
    parity = json.loads((bert_artifacts / "reports" / "parity.json").read_text())
    entry = next(v for v in parity["models"]["bert"]["variants"] if v["variant"] == "int8 openvino")
    assert entry["measured"] and entry["backend"] == "openvino" and entry["rows"] == 300


@openvino_only
def test_the_word_embedding_table_is_stored_as_bf16(bert_artifacts):
    import openvino as ov

    model = ov.Core().read_model(bert_artifacts / "onnx" / "bert" / "model_int8_ov.xml")
    gathers = [n for n in model.get_ops()
               if n.get_type_name() == "Gather" and "word_embeddings" in n.get_friendly_name()]
    widen = gathers[0].input_value(0).get_node()
    assert widen.get_type_name() == "Convert" and widen.input_value(0).get_element_type() == ov.Type.bf16


@openvino_only
def test_the_bf16_table_gives_the_same_logits_where_openvino_runs_bf16(bert_artifacts, small_data, tmp_path,
                                                                         monkeypatch):
    """The tiny BERT's NNCF model with its packed int8 table and with the bf16 one: the same logits bits where
    OpenVINO computes in bf16 (it rounds the gathered rows to bf16 itself, to nearest even as torch does); on a CPU
    without bf16, logits as close as the rows' rounding allows."""
    import openvino as ov

    from tsinfer.export import openvino as export_ov
    from tsinfer.infer.batching import encode, load_tokenizer

    enc = encode(load_tokenizer(bert_artifacts / "onnx" / "bert", 128), read_all(small_data / "test.tsv").texts[:40])
    rows = [enc.ids[enc.offsets[i]:enc.offsets[i + 1]] for i in range(len(enc))]
    monkeypatch.setattr(export_ov, "bf16_word_embeddings", lambda model: False)  # the model as NNCF leaves it
    export_ov.export_openvino_int8(bert_artifacts / "bert", tmp_path, rows[:20])
    packed = ov.Core().read_model(tmp_path / "model_int8_ov.xml")
    monkeypatch.undo()
    rewritten = ov.Core().read_model(tmp_path / "model_int8_ov.xml")
    assert export_ov.bf16_word_embeddings(rewritten)
    precision = cpu_inference_precision()
    compiled = [ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": precision}) for m in (packed, rewritten)]
    got = [np.concatenate([c({"input_ids": r[None, :]})[0] for r in rows]) for c in compiled]
    if precision == "bf16":
        assert np.array_equal(got[0], got[1])
    else:
        np.testing.assert_allclose(got[0], got[1], atol=1e-2)


def _logits_alone(scorer, texts) -> np.ndarray:
    from tsinfer.infer.batching import pad_batch

    enc = scorer.prepare(texts)
    return np.concatenate([scorer.run_batch(*pad_batch(enc, np.array([i]))) for i in range(len(enc))])


@openvino_only
def test_openvino_int8_errs_no_more_than_onnxruntime_int8(all_artifacts, small_data):
    """A random tiny model's logits barely differ between rows (its labels flip at any rounding, and their spread
    changes from one training of it to the next), so the logits themselves are compared with the fp32 graph's:
    OpenVINO's int8 must stay as close to them as onnxruntime's int8 does. (That the conversion itself is exact is
    test_the_cls_only_conversion_equals_pytorch's.)"""
    texts = read_all(small_data / "test.tsv").texts[:120]
    folder = all_artifacts / "onnx" / "bert"
    ov = load_scorer(folder, ScorerSettings(provider="cpu", precision="int8", backend="openvino"))
    assert ov.backend == "openvino" and ov.file == "model_int8_ov.xml"
    ref = _logits_alone(load_scorer(folder, ScorerSettings(provider="cpu", precision="fp32", backend="onnxruntime")),
                        texts)
    ort_int8 = load_scorer(folder, ScorerSettings(provider="cpu", precision="int8", backend="onnxruntime"))
    ort_err = np.abs(_logits_alone(ort_int8, texts) - ref).max()
    ov_err = np.abs(_logits_alone(ov, texts) - ref).max()
    assert ov_err <= 2 * ort_err


@openvino_only
def test_the_cls_only_conversion_equals_pytorch(bert_artifacts, small_data):
    """The converted model computes the last layer for [CLS] alone and takes each row unpadded, without a mask:
    the same logits as the PyTorch classifier on padded rows with their mask."""
    import openvino as ov
    import torch
    from transformers import AutoModelForSequenceClassification

    from tsinfer.export.openvino import convert
    from tsinfer.infer.batching import encode, load_tokenizer, pad_batch

    texts = read_all(small_data / "test.tsv").texts[:64]
    enc = encode(load_tokenizer(bert_artifacts / "onnx" / "bert", 128), texts)
    ids, mask = pad_batch(enc, np.arange(len(enc)))  # PyTorch: padded rows with their mask
    compiled = ov.Core().compile_model(convert(bert_artifacts / "bert"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert [sorted(port.get_names()) for port in compiled.inputs] == [["input_ids"]]  # the rewrite: no mask
    got = np.concatenate([compiled({"input_ids": ids[i:i + 1, :enc.lengths[i]]})[0] for i in range(len(enc))])
    model = AutoModelForSequenceClassification.from_pretrained(bert_artifacts / "bert").eval()
    with torch.inference_mode():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@openvino_only
def test_a_padded_batch_through_the_unmasked_model_gives_each_row_its_logits_alone(all_artifacts, small_data):
    """The OpenVINO model takes no mask, so the engine runs a padded batch as one batch per length: the same bits
    as each row alone. A mask that is not ones-then-zeros is an error, not a silent wrong answer."""
    from tsinfer.infer.batching import pad_batch

    scorer = load_scorer(all_artifacts / "onnx" / "bert", ScorerSettings(provider="cpu", precision="int8",
                                                                         backend="openvino", threads=1))
    assert not scorer.engine.takes_mask
    texts = read_all(small_data / "test.tsv").texts[:40]
    enc = scorer.prepare(texts)
    assert len(set(enc.lengths.tolist())) > 5  # rows of many lengths share the padded batch
    ids, mask = pad_batch(enc, np.arange(len(enc)))
    np.testing.assert_array_equal(scorer.run_batch(ids, mask), _logits_alone(scorer, texts))
    holed = mask.copy()
    holed[0, 1] = 0
    with pytest.raises(EngineError, match="right-padded"):
        scorer.run_batch(ids, holed)


def test_the_folded_last_attention_equals_bert_attention_at_cls():
    """The last layer's attention folded into the [CLS] query (export/openvino.py) gives BERT's own attention
    output at token 0, with every weight and bias random (zero biases would hide a dropped bias term)."""
    import torch
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertSelfAttention

    from tsinfer.export.openvino import last_layer_attention

    torch.manual_seed(0)
    att = BertSelfAttention(BertConfig(hidden_size=48, num_attention_heads=4, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in att.parameters():
            p.normal_(0.0, 0.3)
    hidden = torch.randn(3, 9, 48)
    with torch.no_grad():
        want = att(hidden)[0][:, :1]
        got = last_layer_attention(att)(hidden)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


@openvino_only
def test_a_model_the_cls_only_rewrite_does_not_know_keeps_its_mask(tmp_path):
    """An MPNet classifier (no BERT pooler): converted whole, with input_ids and attention_mask, and the engine
    feeds it the mask, so a padded batch gives PyTorch's logits."""
    import openvino as ov
    import torch

    from conftest import tiny_mpnet
    from tsinfer.export.openvino import convert
    from tsinfer.infer.engines import OpenVinoEngine

    model, tokenizer = tiny_mpnet(tmp_path / "mpnet")
    ov.save_model(convert(tmp_path / "mpnet"), str(tmp_path / "m.xml"))
    engine = OpenVinoEngine(tmp_path / "m.xml", "m.xml", lanes=1, threads=1, inference_precision="f32")
    assert engine.takes_mask
    enc = tokenizer(["so happy today", "worst day ever, again and again"], padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    assert not mask.all()  # one row padded
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(engine.run(ids, mask), want, atol=1e-4)


@openvino_only
def test_the_openvino_export_sends_no_telemetry(bert_artifacts, monkeypatch):
    """OpenVINO's converter sends usage events through a forked process unless the user opted out; after tsinfer's
    conversion no event reaches a backend (offline, such a fork once hung a process's exit)."""
    if _ORIGINAL_SEND is None:
        pytest.skip("openvino_telemetry is not installed")
    from openvino_telemetry.utils.sender import TelemetrySender

    from tsinfer.export.openvino import convert

    monkeypatch.setattr(TelemetrySender, "send", _ORIGINAL_SEND)  # as before any export of this test run
    convert(bert_artifacts / "bert")
    sent = []

    class Backend:
        def send(self, message):
            sent.append(message)

    sender = TelemetrySender()
    sender.send(Backend(), "an event")
    sender.executor.shutdown(wait=True)
    assert sent == []


@openvino_only
def test_a_compiled_model_is_kept_between_loads_and_scores_the_same_bits(all_artifacts, small_data, tmp_path,
                                                                         monkeypatch):
    """The first load compiles and leaves the compiled form in the cache folder; the next imports it and gives every
    row the same logits to the bit. Unverified files compile every time; an empty TSINFER_CACHE_DIR turns it off."""
    texts = read_all(small_data / "test.tsv").texts[:40]
    folder = all_artifacts / "onnx" / "bert"
    cache = tmp_path / "cache"
    monkeypatch.setenv(engines.CACHE_ENV, str(cache))

    def logits(**settings):
        scorer = load_scorer(folder, ScorerSettings(provider="cpu", backend="openvino", **settings))
        try:
            return _logits_alone(scorer, texts)
        finally:
            scorer.close()

    first = logits()
    blobs = list(cache.rglob("*.blob"))
    assert len(blobs) == 1
    shown = CliRunner().invoke(main, ["info", str(folder)])  # `tsinfer info` names it, without making or pruning
    assert shown.exit_code == 0 and f"compiled-model cache: {blobs[0].parent} (1 compiled form(s)" in shown.stdout
    stamp = blobs[0].stat().st_mtime_ns
    assert np.array_equal(logits(), first)
    assert [b.stat().st_mtime_ns for b in cache.rglob("*.blob")] == [stamp]  # imported, not written again
    shutil.rmtree(cache)
    assert np.array_equal(logits(verify=False), first) and not cache.exists()
    monkeypatch.setenv(engines.CACHE_ENV, "")
    assert np.array_equal(logits(), first) and not cache.exists()


def test_the_cache_keeps_the_most_recently_used_models(tmp_path, monkeypatch):
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path))
    folders = []
    for k in range(engines.CACHED_MODELS + 2):
        folders.append(engines.openvino_cache([f"{k:064x}"]))
        os.utime(folders[-1], (k + 1, k + 1))  # used in this order, whatever the file system's clock resolution
    kept = sorted(p for p in (tmp_path / "openvino").iterdir())
    assert kept == sorted(folders[-engines.CACHED_MODELS:])
    assert engines.openvino_cache([f"{0:064x}"]) == folders[0]  # a removed one comes back when used again
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "blocked"))
    assert engines.openvino_cache(["0" * 64]) is None


def test_no_home_folder_means_no_cache_not_an_error(monkeypatch):
    monkeypatch.delenv(engines.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(engines.Path, "home", staticmethod(no_home))
    assert engines.openvino_cache(["0" * 64]) is None
