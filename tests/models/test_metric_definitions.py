"""One MCA everywhere: mean recall over the classes present in the evaluated ground truth (the HEp-2
contests' MCA), checked against scikit-learn with an absent class and a predicted-never-true class,
for single-label, multi-label, hierarchy and SVM-baseline metrics; and named in the reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ana_lightning.metrics import MCA_DEFINITION, multiclass_metrics
from ana_lightning.metrics_multilabel import at_least_n_correct, multilabel_scalar_metrics


def _single_label(seed: int = 0, k: int = 6, present: int = 4, n: int = 200):
    """A ``k``-class model evaluated on images of only ``present`` classes; it predicts the absent
    classes sometimes (predicted, never true)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, present, n)
    pred = np.where(rng.random(n) < 0.55, y, rng.integers(0, k, n))
    assert set(np.unique(pred)) - set(range(present))  # some absent class is predicted
    logits = torch.from_numpy(np.eye(k, dtype=np.float32)[pred] + 0.01 * rng.random((n, k), dtype=np.float32))
    return logits, torch.from_numpy(y), y, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_label_mca_is_recall_over_present_classes(seed):
    logits, target, y, pred = _single_label(seed)
    m = multiclass_metrics(6)
    for a, b in ((0, 70), (70, 200)):  # accumulated over batches
        m.update(logits[a:b], target[a:b])
    got = {k: float(v) for k, v in m.compute().items()}
    labels = np.unique(y)  # the 4 classes in the ground truth
    assert got["mca"] == pytest.approx(skm.recall_score(y, pred, labels=labels, average="macro"))
    assert got["macro_f1"] == pytest.approx(
        skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)
    )
    assert got["acc"] == pytest.approx(skm.accuracy_score(y, pred))
    # the definitions it replaces give other numbers on this data (the 0.210 vs 0.262)
    assert got["mca"] != pytest.approx(
        skm.recall_score(y, pred, labels=np.arange(6), average="macro", zero_division=0)
    )


def test_perfect_predictions_with_an_absent_class_score_one():
    target = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0]])  # class 3 absent
    m = multilabel_scalar_metrics(target.float(), target, target)
    assert m["mca"] == 1.0 and m["macro_f1"] == 1.0  # was 0.75: the absent class counted as 0
    logits = torch.eye(4)[[0, 1, 2, 0]]
    single = multiclass_metrics(4)
    single.update(logits, torch.tensor([0, 1, 2, 0]))
    assert float(single.compute()["mca"]) == 1.0


def test_at_least_n_correct_both_ways():
    # image 0: 2 true labels, both found; image 1: 1 label, found; image 2: 2 labels, 1 found; image 3: 1 label, missed
    target = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]])
    preds = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 0]])
    assert at_least_n_correct(preds, target, 1) == (pytest.approx(3 / 4), 4)
    assert at_least_n_correct(preds, target, 2) == (
        pytest.approx(1 / 2),
        2,
    )  # over the 2 images with >= 2 labels
    assert at_least_n_correct(preds, target, 2, over="all") == (
        pytest.approx(1 / 4),
        4,
    )  # the reference's: over all
    m = multilabel_scalar_metrics(preds.float(), preds, target)
    assert m["at_least_2_correct"] == pytest.approx(0.5) and m["at_least_2_correct_all"] == pytest.approx(
        0.25
    )
    assert np.isnan(m["at_least_3_correct"]) and m["at_least_3_correct_all"] == 0.0


def test_hierarchy_and_svm_mca_agree(tmp_path):
    from ana_lightning.baselines import _scores
    from ana_lightning.hierarchy_jobs import write_hierarchy_report
    from ana_lightning.models.hierarchical import PathPrediction
    from ana_lightning.taxonomy import Taxonomy

    tree = Taxonomy.load()
    leaves = ["AC-2", "AC-4", "AC-5", "AC-29"]  # AC-29 predicted, never true
    truth_leaf = ["AC-2", "AC-2", "AC-4", "AC-5", "AC-5", "AC-4"]
    pred_leaf = ["AC-2", "AC-29", "AC-4", "AC-5", "AC-4", "AC-4"]
    from ana_lightning.data.hierarchy import label_path

    truth = [label_path(tree, c) for c in truth_leaf]
    paths = [label_path(tree, c) for c in pred_leaf]
    pred = PathPrediction([p[0] for p in paths], [p[1] for p in paths], pred_leaf, torch.ones(len(paths)))
    metrics = write_hierarchy_report(tmp_path, [f"{i}.png" for i in range(6)], truth, pred, tree)
    want = skm.recall_score(truth_leaf, pred_leaf, labels=sorted(set(truth_leaf)), average="macro")
    assert metrics["test/level3_mca"] == pytest.approx(want)
    idx = {c: i for i, c in enumerate(leaves)}
    assert _scores(np.array([idx[c] for c in truth_leaf]), np.array([idx[c] for c in pred_leaf]))[
        "mca"
    ] == pytest.approx(want)
    assert MCA_DEFINITION in (tmp_path / "test_hierarchy_report.md").read_text()


def test_reports_name_the_definition(trained_checkpoint):
    _, run, _ = trained_checkpoint
    text = (run / "test_report.md").read_text()
    assert MCA_DEFINITION in text and "classes are present in the ground truth" in text
