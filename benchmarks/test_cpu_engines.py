"""The CPU inference engines a user would reach for instead of tsinfer: OpenVINO (fp32, bf16, NNCF int8) and
CTranslate2 (int8, fp32), each run as its documentation shows, on the rows, weights and text normalisation that
tsinfer scores in test_cpu.py, tokenization included, model load and conversion left out."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from benchmarks.conftest import ROWS, cpu_has, record
from benchmarks.test_cpu import BERT_ROUNDS, CORES, _accuracy, _sorted_batches, timed

ENGINE_BUDGET = 2048  # tokens per padded batch for the engines (about 64 tweets, the batches their docs use)
CALIBRATION_ROWS = 300


def _model_texts(artifacts, texts: list[str]) -> list[str]:
    """The texts as the model was trained on them (its tweet normalisation), as tsinfer's scorer feeds them."""
    from tsinfer.infer.meta import ModelMeta
    from tsinfer.infer.preprocess import normalization_for

    normalize = normalization_for(ModelMeta.read(artifacts / "onnx" / "bert", verify=False).to_dict())
    return normalize(texts) if normalize else texts


@pytest.fixture(scope="module")
def tokenizer(artifacts):
    from tsinfer.infer.batching import load_tokenizer

    return load_tokenizer(artifacts / "onnx" / "bert", 128)


@pytest.fixture(scope="module")
def openvino_models(artifacts, tokenizer):
    """The fine-tuned classifier through ov.convert_model (dynamic batch and length), and NNCF's post-training
    int8 of it with the transformer preset on 300 dev rows: what OpenVINO's and NNCF's guides show."""
    ov = pytest.importorskip("openvino")
    nncf = pytest.importorskip("nncf")
    import torch
    from transformers import AutoModelForSequenceClassification

    from tsinfer.infer.batching import encode
    from tsinfer.infer.reader import read_all
    from benchmarks.conftest import DATA

    from tsinfer.export.openvino import silence_openvino_telemetry

    silence_openvino_telemetry()  # as tsinfer's export: no forked telemetry sender left behind at exit
    model = AutoModelForSequenceClassification.from_pretrained(artifacts / "bert").eval()
    example = {"input_ids": torch.ones((2, 8), dtype=torch.int64), "attention_mask": torch.ones((2, 8), dtype=torch.int64)}
    fp32 = ov.convert_model(model, example_input=example)
    dev = _model_texts(artifacts, read_all(DATA / "dev.tsv").texts[:CALIBRATION_ROWS])
    enc = encode(tokenizer, dev)
    items = [{"input_ids": enc.ids[None, enc.offsets[i]:enc.offsets[i + 1]],
              "attention_mask": np.ones((1, int(enc.lengths[i])), dtype=np.int64)} for i in range(len(enc))]
    int8 = nncf.quantize(fp32, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
    return {"fp32": fp32, "int8": int8}


def _requests(compiled) -> list:
    return [compiled.create_infer_request() for _ in range(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))]


def _run_async(requests, tokenizer, texts: list[str], pred: np.ndarray) -> None:
    """Round-robin over the throughput hint's requests, each started asynchronously: AsyncInferQueue's Python
    callbacks deadlocked at the compiled model's teardown here (an OpenVINO thread waiting on the GIL)."""
    pending = [None] * len(requests)
    for k, (rows, ids, mask) in enumerate(_sorted_batches(tokenizer, texts, ENGINE_BUDGET)):
        slot = k % len(requests)
        if pending[slot] is not None:
            requests[slot].wait()
            pred[pending[slot]] = requests[slot].get_output_tensor(0).data.argmax(-1)
        requests[slot].start_async({"input_ids": ids, "attention_mask": mask})
        pending[slot] = rows
    for slot, rows in enumerate(pending):
        if rows is not None:
            requests[slot].wait()
            pred[rows] = requests[slot].get_output_tensor(0).data.argmax(-1)


@pytest.mark.parametrize("variant", ["fp32", "bf16", "int8"])
def test_openvino(benchmark, artifacts, openvino_models, tokenizer, test_rows, variant):
    """THROUGHPUT hint, its optimal number of infer requests run asynchronously, length-sorted padded batches."""
    import openvino as ov

    if variant == "bf16" and not cpu_has("avx512_bf16", "amx_bf16"):
        pytest.skip("this CPU has no bf16 instructions")
    config = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if variant != "int8":  # int8 runs what NNCF left in floating point at OpenVINO's default for this CPU
        config["INFERENCE_PRECISION_HINT"] = "f32" if variant == "fp32" else "bf16"
    compiled = ov.Core().compile_model(openvino_models["int8" if variant == "int8" else "fp32"], "CPU", config)
    texts = _model_texts(artifacts, test_rows.texts[:ROWS])
    pred = np.zeros(len(texts), dtype=np.int64)
    requests = _requests(compiled)

    def run():
        _run_async(requests, tokenizer, texts, pred)

    run()
    seconds = timed(benchmark, run, rounds=BERT_ROUNDS)
    how = {"fp32": "fp32", "bf16": "bf16 inference precision", "int8": "NNCF int8 (transformer preset)"}[variant]
    record(benchmark, "bert", f"OpenVINO {ov.__version__.split('-')[0]} {how}, throughput hint, async requests, "
           f"length-sorted {ENGINE_BUDGET}-token batches", len(texts), seconds, accuracy=_accuracy(pred, test_rows))


def test_openvino_int8_fresh_model(benchmark, artifacts, openvino_models, tokenizer, test_rows):
    """The int8 contender timed as tsinfer's whole run is: each round on a freshly compiled model, warmed by one
    short row per request (tsinfer's load does the same), so the shapes of the rows are met for the first time
    inside the timed part. For the record beside the warm figure above, which the targets use."""
    import openvino as ov

    from tsinfer.infer.models import CPU_WARM_UP_TOKENS

    texts = _model_texts(artifacts, test_rows.texts[:ROWS])
    pred = np.zeros(len(texts), dtype=np.int64)
    short = np.ones((1, CPU_WARM_UP_TOKENS), dtype=np.int64)
    state = {}

    def load():  # left out of the time, as every contender's model load
        compiled = ov.Core().compile_model(openvino_models["int8"], "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
        state["requests"] = _requests(compiled)
        for request in state["requests"]:
            request.infer({"input_ids": short, "attention_mask": short})
        return (), {}

    benchmark.pedantic(lambda: _run_async(state["requests"], tokenizer, texts, pred), setup=load,
                       rounds=BERT_ROUNDS, iterations=1)
    record(benchmark, "bert", f"OpenVINO {ov.__version__.split('-')[0]} NNCF int8, first pass on a freshly compiled "
           "model (one short warm-up row per request, as tsinfer's whole run)", len(texts), benchmark.stats.stats.min,
           accuracy=_accuracy(pred, test_rows))


@pytest.fixture(scope="module")
def ctranslate2_dir(artifacts, tmp_path_factory):
    """The encoder (BertModel with its pooler) through CTranslate2's TransformersConverter; the classifier's
    weights, which CTranslate2 has no layer for, applied in numpy on its pooler output."""
    ct2 = pytest.importorskip("ctranslate2")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    d = tmp_path_factory.mktemp("ct2")
    model = AutoModelForSequenceClassification.from_pretrained(artifacts / "bert")
    model.bert.save_pretrained(d / "encoder")
    AutoTokenizer.from_pretrained(artifacts / "bert").save_pretrained(d / "encoder")
    out = {}
    for quantization in ("int8", "float32"):
        out[quantization] = str(d / quantization)
        ct2.converters.TransformersConverter(str(d / "encoder")).convert(out[quantization], quantization=quantization)
    head = model.classifier
    return out, head.weight.detach().numpy().T, head.bias.detach().numpy()


@pytest.mark.parametrize("compute_type", ["int8", "float32"])
def test_ctranslate2(benchmark, artifacts, ctranslate2_dir, tokenizer, test_rows, compute_type):
    """One worker per core (inter_threads) with one thread each, fed from as many Python threads."""
    import ctranslate2

    paths, weight, bias = ctranslate2_dir
    encoder = ctranslate2.Encoder(paths[compute_type], device="cpu", compute_type=compute_type,
                                  inter_threads=CORES, intra_threads=1)
    texts = _model_texts(artifacts, test_rows.texts[:ROWS])
    pred = np.zeros(len(texts), dtype=np.int64)

    def one(batch):
        rows, ids, mask = batch
        lengths = mask.sum(1).astype(np.int32)
        out = encoder.forward_batch([list(r[:n]) for r, n in zip(ids.tolist(), lengths)])
        pred[rows] = (np.asarray(out.pooler_output) @ weight + bias).argmax(-1)

    def run():
        with ThreadPoolExecutor(CORES) as pool:
            list(pool.map(one, _sorted_batches(tokenizer, texts, ENGINE_BUDGET)))

    run()
    seconds = timed(benchmark, run, rounds=BERT_ROUNDS)
    record(benchmark, "bert", f"CTranslate2 {ctranslate2.__version__} {compute_type}, {CORES} workers x 1 thread, "
           f"length-sorted {ENGINE_BUDGET}-token batches", len(texts), seconds, accuracy=_accuracy(pred, test_rows))
