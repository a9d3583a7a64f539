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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_and_merged_metrics_equal_all_at_once(seed):
    """Chunked accumulation (the local scorer) and merged partial counts (the Ray engine) give the one-shot
    figures on the written (6-decimal) scores exactly, ties included."""
    from tsinfer.infer.metrics import StreamingMetrics, format_score_bins, score_bins

    rng = np.random.default_rng(seed)
    n = 5000
    y = rng.integers(0, 2, n)
    s = rng.random(n) * 0.7 + y * 0.3
    s[::7] = np.round(s[::7], 2)  # many ties
    p = (s > 0.5).astype(int)
    bins = score_bins(s)
    written = np.array([float(x) for x in format_score_bins(bins)])
    assert np.abs(written - s).max() <= 5e-7 + 1e-12
    want = binary_metrics(y, p, written)
    stream, merged = StreamingMetrics(), StreamingMetrics()
    for a, b in zip([0, 7, 1000, 2500], [7, 1000, 2500, n]):
        stream.add(y[a:b], p[a:b], bins[a:b])
        triples, counts = np.unique(np.stack([y[a:b], p[a:b], bins[a:b]]), axis=1, return_counts=True)
        merged.add(*triples, counts)
    for got in (stream.result(), merged.result()):
        for key in ("accuracy", "mcc", "f1", "confusion_matrix", "per_class", "roc_auc"):
            assert got[key] == want[key], key
    assert want["roc_auc"] == pytest.approx(skm.roc_auc_score(y, written), abs=1e-12)
    fpr, tpr = stream.roc_curve()
    ref_fpr, ref_tpr, _ = skm.roc_curve(y, written, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def _greedy_plan(lengths, batch_tokens, max_batch, sort, same_length):
    """plan_batches' definition, row by row: add the next row while the padded batch stays within the budget
    (and, with same_length, while the row is as long as the batch's first)."""
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(lengths))
    batches, start = [], 0
    while start < len(order):
        end, longest = start + 1, int(lengths[order[start]])
        while end < len(order) and end - start < max_batch:
            longest_next = max(longest, int(lengths[order[end]]))
            if longest_next * (end - start + 1) > batch_tokens:
                break
            if same_length and lengths[order[end]] != lengths[order[start]]:
                break
            longest, end = longest_next, end + 1
        batches.append(order[start:end])
        start = end
    return batches


@pytest.mark.parametrize("seed", range(6))
def test_batch_plan_is_the_greedy_row_by_row_plan(seed):
    from tsinfer.infer.batching import plan_batches

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 129, int(rng.integers(0, 2000)))
    for batch_tokens, max_batch in ((1, 5), (300, 7), (512, 256), (262144, 8192)):
        for sort, same_length in ((True, False), (False, False), (True, True), (False, True)):
            got = plan_batches(lengths, batch_tokens, max_batch, sort=sort, same_length=same_length)
            want = _greedy_plan(lengths, batch_tokens, max_batch, sort, same_length)
            assert [b.tolist() for b in got] == [b.tolist() for b in want]
            if len(lengths):
                assert np.array_equal(np.sort(np.concatenate(got)), np.arange(len(lengths)))


def test_largest_first_keeps_the_batches_and_orders_them_by_padded_tokens():
    from tsinfer.infer.batching import largest_first, plan_batches

    lengths = np.random.default_rng(0).integers(1, 80, 3000)
    plan = plan_batches(lengths, 4096, 256, same_length=True)
    ordered = largest_first(plan, lengths)
    work = [len(rows) * int(lengths[rows].max()) for rows in ordered]
    assert work == sorted(work, reverse=True) and work[0] > work[-1]
    assert sorted(b.tolist() for b in ordered) == sorted(b.tolist() for b in plan)  # the same batches, reordered
    ties = [b.tolist() for b in ordered if len(b) * int(lengths[b].max()) == work[0]]
    assert ties == [b.tolist() for b in plan if len(b) * int(lengths[b].max()) == work[0]]  # ties keep plan order
