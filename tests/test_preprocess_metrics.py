import numpy as np
import pytest
from sklearn import metrics as skm

from tsinfer.infer.metrics import binary_metrics, roc_curve
from tsinfer.infer.preprocess import preprocess


def test_spacy_step_on_known_tweets():
    out = preprocess([
        "Kids up at the crack of dawn... I'm still full of cold. Bleh  Starting work... #stuckrecord",
        "@AshleyLTMSYF have fun!! ",
        "  I was RUNNING to the stores  ",
        "!!! ... ?",
    ])
    assert out == ["kid crack dawn cold bleh start work stuckrecord", "@ashleyltmsyf fun", "run store", ""]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2000)
    s = np.round(rng.normal(size=2000) + y, 1)  # rounded: many ties
    p = (s > 0.4).astype(int)
    m = binary_metrics(y, p, s)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, p))
    assert m["precision"] == pytest.approx(skm.precision_score(y, p))
    assert m["recall"] == pytest.approx(skm.recall_score(y, p))
    assert m["f1"] == pytest.approx(skm.f1_score(y, p))
    assert m["per_class"]["negative"]["f1"] == pytest.approx(skm.f1_score(y, p, pos_label=0))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p).tolist()
    fpr, tpr = roc_curve(y, s)
    ref_fpr, ref_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_auc_is_none_with_one_class_and_mcc_zero_when_degenerate():
    m = binary_metrics([1, 1, 1], [1, 1, 1], [0.2, 0.5, 0.9])
    assert m["roc_auc"] is None
    assert m["mcc"] == 0.0
