import json

import numpy as np
import onnxruntime as ort
import pytest

from tsinfer.export.svc import build_svc_onnx, dense_svc_bytes
from tsinfer.infer.preprocess import preprocess
from tsinfer.train.data import dev_split
from tsinfer.train.svc import SvcModel

REPORT_KEYS = {"val_accuracy", "val_mcc", "val_roc_auc", "test_accuracy", "test_mcc", "test_roc_auc",
               "train_seconds", "n_train", "n_val", "base_model", "hyperparameters"}


@pytest.fixture(scope="module")
def fitted(small_data):
    train, val = dev_split(small_data)
    model = SvcModel().fit(preprocess(train.texts), train.labels)
    return model, preprocess(val.texts) + ["", "zzz-unknown-term"]


def test_float64_formula_equals_sklearn_decision_function(fitted):
    model, docs = fitted
    ours = model.decision_function(docs)
    theirs = model.sklearn_model.decision_function(model.transform(docs))
    np.testing.assert_allclose(ours, theirs, atol=1e-10)


def test_save_load_roundtrip_without_pickle(fitted, tmp_path):
    model, docs = fitted
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz", "config.json", "vocabulary.json"]
    loaded = SvcModel.load(tmp_path)  # np.load(allow_pickle=False) inside: an object array would raise
    np.testing.assert_array_equal(loaded.decision_function(docs), model.decision_function(docs))


def test_onnx_graph_parity_and_compactness(fitted):
    model, docs = fitted
    onx = build_svc_onnx(model)
    assert not any(n.op_type in ("SVMClassifier", "StringNormalizer") for n in onx.graph.node)
    data = onx.SerializeToString()
    assert len(data) < dense_svc_bytes(model) / 5
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    label, decision, prob = sess.run(None, {"text": np.array(docs, dtype=object).reshape(-1, 1)})
    ref = model.sklearn_model.decision_function(model.transform(docs))
    np.testing.assert_array_equal(label, model.sklearn_model.predict(model.transform(docs)))
    assert np.abs(decision - ref).max() <= 1e-4
    np.testing.assert_allclose(prob, model.probability(ref), atol=1e-6)


def test_sublinear_bigram_variant_stays_exact(small_data):
    train, val = dev_split(small_data)
    model = SvcModel({"sublinear_tf": True, "ngram_range": [1, 2], "C": 3.0}).fit(preprocess(train.texts),
                                                                                  train.labels)
    docs = preprocess(val.texts)
    sess = ort.InferenceSession(build_svc_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    _, decision, _ = sess.run(None, {"text": np.array(docs, dtype=object).reshape(-1, 1)})
    ref = model.sklearn_model.decision_function(model.transform(docs))
    assert np.abs(decision - ref).max() <= 1e-4


def test_training_report_and_export_folder(svc_artifacts):
    report = json.loads((svc_artifacts / "reports" / "train_svc.json").read_text())
    assert REPORT_KEYS <= report.keys()
    assert report["n_train"] == 540 and report["n_val"] == 60
    assert 0.5 < report["test_roc_auc"] <= 1.0
    meta = json.loads((svc_artifacts / "onnx" / "svc" / "meta.json").read_text())
    assert meta["kind"] == "svc" and meta["files"] == {"fp64": "model.onnx"}
    assert set(meta["sha256"]) == {"model.onnx"}
    assert meta["model_bytes"] < meta["dense_svc_bytes_avoided"]
    parity = json.loads((svc_artifacts / "reports" / "parity.json").read_text())
    entry = parity["models"]["svc"]["variants"][0]
    assert entry["rows"] == 300 and entry["agreement"] == 1.0 and entry["meets_target"]


def test_batches_of_only_empty_or_unknown_texts(fitted):
    model, _ = fitted
    sess = ort.InferenceSession(build_svc_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    for docs in ([""], ["", "zzz-unknown"], ["zzz-unknown"]):
        label, decision, _ = sess.run(None, {"text": np.array(docs, dtype=object).reshape(-1, 1)})
        np.testing.assert_allclose(decision, model.sklearn_model.decision_function(model.transform(docs)), atol=1e-10)
