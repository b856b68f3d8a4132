"""Metric collections per task (torchmetrics); keys are logged as ``{stage}/{metric}``.

**MCA** (``mca``) everywhere in ana-lightning — single-label, multi-label, hierarchy levels, the SVM
baselines and every report — is the HEp-2 contests' mean class accuracy: the mean recall over the
classes **present in the evaluated ground truth**. A class absent from the evaluated images is not
averaged in (it has no recall), and a class that is predicted but never true lowers only the recall
of the classes it was confused with. ``macro_f1`` is averaged over the same present classes. Both
equal scikit-learn's ``recall_score`` / ``f1_score`` with ``labels=<classes present in y_true>``
and ``average="macro"``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

__all__ = [
    "multiclass_metrics",
    "multiclass_per_class_metrics",
    "PresentClassMacro",
    "present_class_macro",
    "MCA_DEFINITION",
    "confusion_matrix",
    "confusion_details",
]

#: How reports name the MCA they show.
MCA_DEFINITION = (
    "MCA = mean recall over the classes present in the evaluated ground truth "
    "(the HEp-2 contests' mean class accuracy); macro-F1 is averaged over the same classes"
)


def present_class_macro(
    tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, metric: str = "recall"
) -> float:
    """Mean per-class ``recall`` or ``f1`` over the classes with at least one true example
    (``tp + fn > 0``); NaN when no class is present.

    >>> present_class_macro(torch.tensor([2, 0, 0]), torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0]))
    0.5
    """
    tp, fp, fn = (t.double() for t in (tp, fp, fn))
    present = (tp + fn) > 0
    if not bool(present.any()):
        return math.nan
    if metric == "recall":
        per = tp / (tp + fn).clamp(min=1)
    elif metric == "f1":
        per = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
    else:
        raise ValueError(f"metric must be recall or f1, got {metric!r}")
    return float(per[present].mean())


class PresentClassMacro(Metric):
    """:func:`present_class_macro` as a torchmetrics ``Metric`` (per-class counts summed over
    batches and DDP ranks). ``preds``: class scores ``(N, K)`` or indices ``(N,)``; ``target``:
    indices ``(N,)``, or with ``multilabel=True`` 0/1 ``(N, K)`` for both."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, metric: str = "recall", multilabel: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if metric not in ("recall", "f1"):
            raise ValueError(f"metric must be recall or f1, got {metric!r}")
        self.num_classes, self.metric, self.multilabel = int(num_classes), metric, multilabel
        for name in ("tp", "fp", "fn"):
            self.add_state(
                name, default=torch.zeros(self.num_classes, dtype=torch.long), dist_reduce_fx="sum"
            )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        k = self.num_classes
        if self.multilabel:
            p, t = (preds > 0.5).long(), (target > 0.5).long()
        else:
            idx = preds.argmax(-1) if preds.ndim == 2 else preds
            p = torch.nn.functional.one_hot(idx.long(), k)
            t = torch.nn.functional.one_hot(target.long(), k)
        self.tp += (p & t).sum(0)
        self.fp += (p & (1 - t)).sum(0)
        self.fn += ((1 - p) & t).sum(0)

    def compute(self) -> torch.Tensor:
        return torch.tensor(present_class_macro(self.tp, self.fp, self.fn, self.metric))


def multiclass_metrics(num_classes: int, **kwargs) -> MetricCollection:
    """Scalar metrics of a single-label classifier: ``acc``, ``mca`` and ``macro_f1`` (both over the
    classes present in the evaluated ground truth, see the module docstring). ``kwargs`` go to every
    metric (e.g. ``sync_on_compute=False``)."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro", **kwargs),
            "mca": PresentClassMacro(num_classes, "recall", **kwargs),
            "macro_f1": PresentClassMacro(num_classes, "f1", **kwargs),
        }
    )


def multiclass_per_class_metrics(num_classes: int, **kwargs) -> MetricCollection:
    """Per-class precision / recall / F1 and the confusion matrix (for reports)."""
    return MetricCollection(
        {
            "precision": MulticlassPrecision(num_classes, average=None, **kwargs),
            "recall": MulticlassRecall(num_classes, average=None, **kwargs),
            "f1": MulticlassF1Score(num_classes, average=None, **kwargs),
            "confmat": MulticlassConfusionMatrix(num_classes, **kwargs),
        }
    )


def confusion_matrix(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable]
) -> torch.Tensor:
    """``(K, K)`` counts (rows = true label, columns = predicted) over ``labels``, for labels that are
    names rather than indices (hierarchy levels, where a path may end at level 2); pairs with a label
    outside ``labels`` are not counted.

    >>> confusion_matrix(["a", "a", "b"], ["a", "b", "b"], ["a", "b"]).tolist()
    [[1, 1], [0, 1]]
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels for {len(y_pred)} predictions")
    index = {c: i for i, c in enumerate(labels)}
    pairs = [(index[t], index[p]) for t, p in zip(y_true, y_pred, strict=True) if t in index and p in index]
    k = len(labels)
    flat = torch.tensor([t * k + p for t, p in pairs], dtype=torch.long)
    return torch.bincount(flat, minlength=k * k).reshape(k, k)


def confusion_details(confmat: torch.Tensor) -> dict[str, torch.Tensor | float]:
    """Everything a per-class report shows, from one confusion matrix: per-class ``precision``,
    ``recall``, ``f1`` (0 where undefined), ``support``, the ``confmat`` itself, and the scalars
    ``acc``, ``mca`` and ``macro_f1`` (over the classes present in the ground truth, as everywhere).

    >>> d = confusion_details(torch.tensor([[1, 1], [0, 1]]))
    >>> round(d["mca"], 2), round(d["acc"], 2), d["recall"].tolist()
    (0.75, 0.67, [0.5, 1.0])
    """
    cm = torch.as_tensor(confmat).long()
    tp = cm.diagonal()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    tpd, fpd, fnd = tp.double(), fp.double(), fn.double()
    total = int(cm.sum())
    return {
        "confmat": cm,
        "precision": torch.where(tp + fp > 0, tpd / (tpd + fpd).clamp(min=1), torch.zeros_like(tpd)),
        "recall": torch.where(tp + fn > 0, tpd / (tpd + fnd).clamp(min=1), torch.zeros_like(tpd)),
        "f1": torch.where(
            2 * tp + fp + fn > 0, 2 * tpd / (2 * tpd + fpd + fnd).clamp(min=1), torch.zeros_like(tpd)
        ),
        "support": tp + fn,
        "acc": float(tp.sum()) / total if total else math.nan,
        "mca": present_class_macro(tp, fp, fn, "recall"),
        "macro_f1": present_class_macro(tp, fp, fn, "f1"),
    }
