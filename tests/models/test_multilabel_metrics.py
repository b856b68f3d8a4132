"""Multi-label metrics equal scikit-learn's on random data; decision rules and threshold tuning."""

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ana_lightning.metrics_multilabel import (
    SCALAR_KEYS,
    at_least_n_correct,
    error_cooccurrence,
    errors_per_image,
    multilabel_details,
    multilabel_scalar_metrics,
    off_by_n,
)
from ana_lightning.models.multilabel import decide, tune_thresholds


def _random(seed: int, n: int = 300, k: int = 6, absent: int | None = None):
    """Random multi-label data; ``absent``: a class with no positive in the ground truth that the
    predictions still name sometimes (predicted, never true)."""
    rng = np.random.default_rng(seed)
    target = (rng.random((n, k)) < rng.uniform(0.1, 0.5, k)).astype(int)
    target[:k, :] = np.eye(k, dtype=int)  # every class has positives and negatives ...
    if absent is not None:
        target[:, absent] = 0  # ... except this one: absent from the evaluated images
    probs = np.clip(0.45 * target + 0.7 * rng.random((n, k)), 0, 1).astype(np.float32)
    preds = (probs >= 0.5).astype(int)
    if absent is not None:
        assert preds[:, absent].sum() > 0  # predicted but never true
    return torch.from_numpy(probs), torch.from_numpy(preds), torch.from_numpy(target), probs, preds, target


@pytest.mark.parametrize(("seed", "absent"), [(0, None), (1, None), (2, 3), (4, 0)])
def test_scalars_equal_sklearn(seed, absent):
    tp, tpred, tt, probs, preds, target = _random(seed, absent=absent)
    m = multilabel_scalar_metrics(tp, tpred, tt)
    assert set(m) == set(SCALAR_KEYS)
    present = np.flatnonzero(target.sum(0) > 0)  # MCA / macro-F1: over the classes in the ground truth
    assert len(present) == target.shape[1] - (absent is not None)
    assert m["exact_match"] == pytest.approx(skm.accuracy_score(target, preds))
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(target, preds))
    for avg in ("micro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(
            skm.f1_score(target, preds, average=avg, zero_division=0), abs=1e-6
        )
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(target, preds, labels=present, average="macro", zero_division=0)
    )
    assert m["micro_precision"] == pytest.approx(skm.precision_score(target, preds, average="micro"))
    assert m["micro_recall"] == pytest.approx(skm.recall_score(target, preds, average="micro"))
    assert m["mca"] == pytest.approx(skm.recall_score(target, preds, labels=present, average="macro"))
    if absent is not None:  # the all-classes average would differ: the absent class does not count
        assert m["mca"] != pytest.approx(skm.recall_score(target, preds, average="macro", zero_division=0))
    assert m["macro_auroc"] == pytest.approx(
        skm.roc_auc_score(target[:, present], probs[:, present], average="macro"), abs=1e-5
    )
    assert m["mean_ap"] == pytest.approx(
        skm.average_precision_score(target[:, present], probs[:, present], average="macro"), abs=1e-5
    )
    assert m["label_cardinality_true"] == pytest.approx(target.sum(1).mean())
    assert m["label_cardinality_pred"] == pytest.approx(preds.sum(1).mean())


def test_per_class_details_equal_sklearn():
    tp, tpred, tt, probs, preds, target = _random(5)
    d = multilabel_details(tp, tpred, tt)
    p, r, f, s = skm.precision_recall_fscore_support(target, preds, average=None, zero_division=0)
    np.testing.assert_allclose(d["precision"].numpy(), p, atol=1e-6)
    np.testing.assert_allclose(d["recall"].numpy(), r, atol=1e-6)
    np.testing.assert_allclose(d["f1"].numpy(), f, atol=1e-6)
    np.testing.assert_array_equal(d["support"].numpy(), s)
    np.testing.assert_allclose(d["auroc"].numpy(), skm.roc_auc_score(target, probs, average=None), atol=1e-5)
    np.testing.assert_allclose(
        d["ap"].numpy(), skm.average_precision_score(target, probs, average=None), atol=1e-5
    )
    for i in range(target.shape[1]):  # the PR curves are scikit-learn's curves
        prec, rec, _ = skm.precision_recall_curve(target[:, i], probs[:, i])
        cp, cr = d["pr_curves"][i]
        assert set(np.round(cr.numpy().astype(float), 4)) == set(np.round(rec, 4))
        assert set(np.round(cp.numpy().astype(float), 4)) == set(np.round(prec, 4))


def test_own_counts_equal_sklearn_samplewise_confusion():
    tp, tpred, tt, probs, preds, target = _random(7)
    mcm = skm.multilabel_confusion_matrix(target, preds, samplewise=True)  # per image [[tn, fp], [fn, tp]]
    fp, fn, tpos = mcm[:, 0, 1], mcm[:, 1, 0], mcm[:, 1, 1]
    np.testing.assert_array_equal(errors_per_image(tpred, tt).numpy(), fp + fn)
    np.testing.assert_array_equal(
        off_by_n(tpred, tt).numpy(), np.bincount(fp + fn, minlength=target.shape[1] + 1)
    )
    assert off_by_n(tpred, tt)[0] / len(target) == pytest.approx(skm.accuracy_score(target, preds))
    assert (fp + fn).mean() / target.shape[1] == pytest.approx(skm.hamming_loss(target, preds))
    for n in (1, 2, 3):
        frac, m = at_least_n_correct(tpred, tt, n)
        eligible = target.sum(1) >= n
        assert m == eligible.sum() and frac == pytest.approx((tpos[eligible] >= n).mean())
        # the reference repository's evaluate_multilabel.py: over all images
        frac_all, m_all = at_least_n_correct(tpred, tt, n, over="all")
        assert m_all == len(target) and frac_all == pytest.approx((tpos >= n).sum() / len(target))
        assert frac_all < frac  # some images have fewer than n labels, so the two differ on this data
    m = multilabel_scalar_metrics(tp, tpred, tt)
    counts = np.bincount(fp + fn, minlength=10) / len(target)
    assert [m["off_by_0"], m["off_by_1"], m["off_by_2"], m["off_by_3plus"]] == pytest.approx(
        [counts[0], counts[1], counts[2], counts[3:].sum()]
    )


def test_error_cooccurrence_by_brute_force():
    _, tpred, tt, _, preds, target = _random(3, n=80, k=4)
    got = error_cooccurrence(tpred, tt).numpy()
    want = np.zeros((5, 5))
    for p, t in zip(preds, target, strict=True):
        missed, added = np.flatnonzero(t & ~p.astype(bool)), np.flatnonzero(p & ~t.astype(bool))
        for i in missed:
            for j in added:
                want[i, j] += 1
        if len(missed) and not len(added):
            want[missed, 4] += 1
        if len(added) and not len(missed):
            want[4, added] += 1
    np.testing.assert_array_equal(got, want)


def test_undefined_ranking_metrics_are_nan():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.3], [0.7, 0.4]])
    target = torch.tensor([[1, 0], [0, 0], [1, 0]])  # class 1 has no positive
    d = multilabel_details(probs, decide(probs, 0.5), target)
    assert torch.isnan(d["auroc"][1]) and torch.isnan(d["ap"][1]) and not torch.isnan(d["auroc"][0])
    assert d["scalars"]["macro_auroc"] == pytest.approx(1.0)


def test_reference_rule_and_global_threshold():
    probs = torch.tensor([[0.25, 0.1, 0.2], [0.35, 0.31, 0.9], [0.1, 0.6, 0.29]])
    assert decide(probs, 0.5).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0]]
    # the reference repository: 0.3, and the top-1 class when nothing reaches it
    assert decide(probs, 0.3, top1_fallback=True).tolist() == [[1, 0, 0], [1, 1, 1], [0, 1, 0]]
    assert decide(probs, torch.tensor([0.2, 0.9, 0.25])).tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 1]]


def test_tuned_thresholds_maximise_each_class_f1():
    tp, _, tt, probs, _, target = _random(11, n=120, k=5)
    th = tune_thresholds(tp, tt)
    grid = np.round(np.linspace(0.05, 0.95, 91), 4)
    for c in range(5):
        best = max(skm.f1_score(target[:, c], probs[:, c] >= g, zero_division=0) for g in grid)
        got = skm.f1_score(target[:, c], probs[:, c] >= float(th[c]), zero_division=0)
        assert got == pytest.approx(best)
    no_pos = tune_thresholds(tp, torch.zeros_like(tt), default=0.4)
    assert no_pos.tolist() == pytest.approx([0.4] * 5)
