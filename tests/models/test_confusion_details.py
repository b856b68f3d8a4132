"""The one MCA definition (ana_lightning.metrics) behind the hierarchy report and the SVM baseline agrees
with scikit-learn's macro recall / F1 over the classes present in the ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ana_lightning.baselines import _scores
from ana_lightning.metrics import confusion_details, confusion_matrix


@pytest.mark.parametrize("seed", range(5))
def test_confusion_details_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 40)
    p = np.where(rng.random(40) < 0.5, y, rng.integers(0, 7, 40))  # classes 5, 6 predicted, never true
    labels = sorted(set(y.tolist()) | set(p.tolist()))
    d = confusion_details(confusion_matrix(y.tolist(), p.tolist(), labels))
    present = np.unique(y)
    assert d["acc"] == pytest.approx(skm.accuracy_score(y, p))
    assert d["mca"] == pytest.approx(skm.recall_score(y, p, labels=present, average="macro", zero_division=0))
    assert d["macro_f1"] == pytest.approx(
        skm.f1_score(y, p, labels=present, average="macro", zero_division=0)
    )
    assert np.array_equal(d["confmat"].numpy(), skm.confusion_matrix(y, p, labels=labels))
    prec, rec, f1, _ = skm.precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    for got, want in ((d["precision"], prec), (d["recall"], rec), (d["f1"], f1)):
        assert np.allclose(got.numpy(), want)
    assert _scores(y, p) == pytest.approx({"acc": d["acc"], "mca": d["mca"], "macro_f1": d["macro_f1"]})


def test_confusion_matrix_counts_names_and_refuses_unequal_lengths():
    assert confusion_matrix(["x", "y", "x"], ["x", "x", "(no leaf)"], ["x", "y", "(no leaf)"]).tolist() == [
        [1, 0, 1],
        [1, 0, 0],
        [0, 0, 0],
    ]
    with pytest.raises(ValueError, match="2 true labels for 1 predictions"):
        confusion_matrix(["x", "y"], ["x"], ["x", "y"])
    assert torch.isnan(torch.tensor(confusion_details(torch.zeros(2, 2, dtype=torch.long))["mca"]))
