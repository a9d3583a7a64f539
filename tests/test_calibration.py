"""Tweet normalisation (training and runtime alike), ECE, temperature scaling and their path into meta.json."""
import json
import shutil

import numpy as np
import pytest

from tsinfer.infer.metrics import StreamingMetrics, expected_calibration_error, score_bins
from tsinfer.infer.models import ModelError, ScorerSettings, load_scorer, positive_probability
from tsinfer.infer.preprocess import TEXT_NORMALIZATION, normalization_for, normalize_tweet, normalize_tweets
from tsinfer.train.calibration import calibrate, fit_temperature, nll


@pytest.mark.parametrize("text, expected", [
    ("@Bob_1 I &lt;3 you &quot;all&quot;", "@user I <3 you \"all\""),
    ("doubly &amp;quot;escaped&amp;quot; &amp;amp; more", "doubly \"escaped\" & more"),
    ("see http://bit.ly/x1?y=2 and www.Example.com/a now", "see http and http now"),
    ("HTTPS://T.CO/abc!", "http"),
    ("  spaced \t out\n text  ", "spaced out text"),
    ("mail me@example.com", "mail me@user.com"),  # a mention pattern inside an address: replaced alike
    ("plain text, no changes", "plain text, no changes"),
    # every character regex \s matches is a separator, as tweet-v1 was defined: no-break, ideographic and
    # em spaces, the C0 separators, NEL; the zero-width space is not one
    ("a\u00a0b\u3000c\u2003d\x1ce\x85f", "a b c d e f"), ("zero\u200bwidth", "zero\u200bwidth"),
])
def test_normalize_tweet_known_inputs(text, expected):
    assert normalize_tweet(text) == expected


def test_normalization_is_named_by_the_model_folder_and_unknown_names_fail():
    assert normalization_for({}) is None  # folders from before normalisation score as they always did
    assert normalization_for({"text_normalization": TEXT_NORMALIZATION}) is normalize_tweets
    with pytest.raises(ValueError, match="tweet-v9"):
        normalization_for({"text_normalization": "tweet-v9"})


def test_ece_equals_a_hand_computation():
    # 15 bins of width 1/15: 0.1 -> bin 1, 0.3 and 0.32 -> bin 4, 0.9 -> bin 13.
    # bin 1: |0 - 0.1| = 0.1 (1 row); bin 4: |1/2 - 0.31| = 0.19 (2 rows); bin 13: |1 - 0.9| = 0.1 (1 row)
    # ECE = (1 * 0.1 + 2 * 0.19 + 1 * 0.1) / 4 = 0.145
    assert expected_calibration_error([0, 1, 0, 1], [0.1, 0.3, 0.32, 0.9]) == pytest.approx(0.145)
    # P(positive) 1.0 falls in the last bin, calibrated there (contributes 0); bin 7 holds three rows at 0.5 of
    # which two are positive: 3/4 * |2/3 - 1/2| = 0.125
    assert expected_calibration_error([1, 1, 0, 1], [1.0, 0.5, 0.5, 0.5]) == pytest.approx(0.125)
    assert expected_calibration_error([], []) is None


def test_streaming_ece_equals_the_direct_computation_on_the_written_scores():
    rng = np.random.default_rng(0)
    p = rng.random(5000) ** 0.5
    y = rng.random(5000) < p ** 2
    bins = score_bins(p)
    m = StreamingMetrics()
    for part in np.array_split(np.arange(5000), 7):  # chunks add up
        m.add(y[part], (p[part] > 0.5).astype(int), bins[part])
    direct = expected_calibration_error(y, bins / 10 ** 6)
    assert m.ece() == pytest.approx(direct, rel=1e-12, abs=1e-15)
    assert m.summary()["ece"] == m.ece() and m.ece() > 0.05  # miscalibrated on purpose: P(y) = p**2


def overconfident(n=4000, scale=4.0, seed=1):
    """Logits `scale` times the true log-odds, labels drawn from the true probabilities: the best T is `scale`."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(int)
    return np.stack([np.zeros(n), scale * margin], axis=1), labels


def test_temperature_fitting_lowers_nll_and_ece_on_an_overconfident_model():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert 3.0 < t < 5.0
    assert nll(logits, labels, t) < nll(logits, labels) - 0.1
    result = calibrate({"val": (logits, labels), "test": overconfident(seed=2)})
    assert result["temperature"] == pytest.approx(t)
    for split in ("val", "test"):
        assert result[split]["ece_scaled"] < result[split]["ece"] and result[split]["nll_scaled"] < result[split]["nll"]


def test_a_temperature_that_does_not_lower_validation_ece_is_not_kept():
    logits, labels = overconfident(scale=1.0)  # already calibrated: T near 1, ECE no better
    result = calibrate({"val": (logits, labels)})
    assert abs(result["fitted_temperature"] - 1.0) < 0.15
    assert (result["temperature"] is None) == (result["val"]["ece_scaled"] >= result["val"]["ece"])


def test_temperature_changes_scores_never_the_predicted_class():
    logits = np.array([[0.0, 3.0], [2.0, -1.0], [0.5, 0.4]])
    p1, p2 = positive_probability(logits), positive_probability(logits, 2.0)
    assert np.array_equal(p1 > 0.5, p2 > 0.5)
    np.testing.assert_allclose(p2, 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0]) / 2.0)))
    assert p2[0] < p1[0] and p2[1] > p1[1]


def test_training_and_runtime_apply_the_same_normalisation(bert_artifacts, tmp_path):
    from transformers import AutoTokenizer

    from tsinfer.train.bert import _tokenized
    from tsinfer.train.data import Texts, TrainingData

    folder = bert_artifacts / "onnx" / "bert"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["text_normalization"] == TEXT_NORMALIZATION  # trained with it, copied to meta.json by export
    raw = ["@Somebody I &lt;3 this &amp; that http://t.co/x", "no change here"]
    scorer = load_scorer(folder, ScorerSettings(provider="cpu", precision="fp32", tokenizer_workers=0))
    try:
        served = scorer.prepare(raw)
        assert np.array_equal(served.ids, scorer.prepare(normalize_tweets(raw)).ids)
        assert np.array_equal(scorer.prepare_async(raw).result().ids, served.ids)
        on_raw = scorer.score(served).score
        assert np.array_equal(on_raw, scorer.score(scorer.prepare(normalize_tweets(raw))).score)
    finally:
        scorer.close()
    rows = Texts(raw, [1, 0])
    data = TrainingData(rows, rows, None, [], {})
    tokenizer = AutoTokenizer.from_pretrained(bert_artifacts / "bert")
    trained = _tokenized(data, tokenizer, 128, lambda _: None, TEXT_NORMALIZATION)["train"]
    assert [r["input_ids"] for r in trained.rows] == [served.ids[a:b].tolist()
                                                      for a, b in zip(served.offsets[:-1], served.offsets[1:])]
    # an older folder (no text_normalization in meta.json) tokenizes the raw text, unchanged
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    meta.pop("text_normalization")
    (old / "meta.json").write_text(json.dumps(meta))
    unverified = ScorerSettings(provider="cpu", precision="fp32", verify=False, tokenizer_workers=0)
    plain = load_scorer(old, unverified)
    assert not np.array_equal(plain.prepare(raw).ids, served.ids)
    meta["text_normalization"] = "tweet-v9"
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="tweet-v9"):
        load_scorer(old, unverified)


def test_export_copies_normalisation_and_temperature_to_the_top_of_meta(tmp_path):
    from tsinfer.export.run import _training_record

    (tmp_path / "training_data.json").write_text(json.dumps(
        {"labels": ["negative", "positive"], "rows": {"train": 3}, "text_normalization": TEXT_NORMALIZATION,
         "temperature": 1.7}))
    record = _training_record(tmp_path)
    assert record["text_normalization"] == TEXT_NORMALIZATION and record["temperature"] == 1.7
    assert record["training_data"] == {"rows": {"train": 3}}
    (tmp_path / "training_data.json").write_text(json.dumps({"rows": {"train": 3}, "temperature": None}))
    assert "temperature" not in _training_record(tmp_path)  # none kept: the runtime's softmax stays plain


def test_layer_decay_gives_lower_layers_lower_learning_rates():
    from conftest import tiny_bert

    from tsinfer.train.bert import layerwise_optimizer
    from tsinfer.train.recipe import BertRecipe

    model, _ = tiny_bert()  # 2 encoder layers
    hp = BertRecipe(learning_rate=1e-4, weight_decay=0.01, adam_epsilon=1e-8, layer_decay=0.5)
    opt = layerwise_optimizer(model, hp)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert lr_of[id(params["classifier.weight"])] == pytest.approx(1e-4)
    assert lr_of[id(params["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(5e-5)
    assert lr_of[id(params["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(2.5e-5)
    assert lr_of[id(params["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1.25e-5)
    assert wd_of[id(params["bert.encoder.layer.0.output.LayerNorm.weight"])] == 0.0
    assert wd_of[id(params["bert.encoder.layer.0.output.dense.weight"])] == 0.01
    assert len(lr_of) == len(params)
    assert layerwise_optimizer(model, hp.overridden({"layer_decay": 1.0})) is None  # the Trainer's own AdamW
