"""Multi-label metrics: torchmetrics where it has them, a few per-image counts where no library does.

All functions take *decided* predictions ``preds`` (``(N, K)`` 0/1, after the decision rule),
probabilities ``probs`` (``(N, K)``, for the ranking metrics) and multi-hot targets ``target``.
Scalar keys are logged as ``{stage}/{key}`` (``test/exact_match``, ``test/micro_f1``, …).

Own code (checked against scikit-learn's sample-wise confusion matrices in the tests):
:func:`errors_per_image` (the reference repository's "off by N": N = false positives + false
negatives of an image), :func:`at_least_n_correct`, :func:`label_cardinality` and
:func:`error_cooccurrence`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multilabel_auroc,
    multilabel_average_precision,
    multilabel_exact_match,
    multilabel_f1_score,
    multilabel_hamming_distance,
    multilabel_precision,
    multilabel_precision_recall_curve,
    multilabel_recall,
)

from .metrics import present_class_macro

__all__ = [
    "as_multi_hot",
    "errors_per_image",
    "off_by_n",
    "at_least_n_correct",
    "label_cardinality",
    "error_cooccurrence",
    "multilabel_scalar_metrics",
    "multilabel_details",
    "SCALAR_KEYS",
]

#: The scalar metrics of :func:`multilabel_scalar_metrics`, in report order.
SCALAR_KEYS = (
    "exact_match",
    "hamming_loss",
    "micro_f1",
    "macro_f1",
    "weighted_f1",
    "micro_precision",
    "micro_recall",
    "mca",
    "macro_auroc",
    "mean_ap",
    "off_by_0",
    "off_by_1",
    "off_by_2",
    "off_by_3plus",
    "at_least_1_correct",
    "at_least_2_correct",
    "at_least_3_correct",
    "at_least_1_correct_all",
    "at_least_2_correct_all",
    "at_least_3_correct_all",
    "label_cardinality_true",
    "label_cardinality_pred",
)


def as_multi_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N, K)`` 0/1 long targets from class indices ``(N,)`` or a multi-hot ``(N, K)`` tensor."""
    if target.ndim == 1:
        return torch.nn.functional.one_hot(target.long(), num_classes)
    if target.ndim != 2 or target.shape[1] != num_classes:
        raise ValueError(f"targets of shape {tuple(target.shape)} do not fit {num_classes} classes")
    return (target > 0.5).long()


def errors_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """False positives + false negatives of each image (own code: a per-image count)."""
    return (preds.long() != target.long()).sum(dim=1)


def off_by_n(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Number of images with exactly N wrong labels, for N = 0 … K (index N)."""
    k = target.shape[1]
    return torch.bincount(errors_per_image(preds, target), minlength=k + 1)


def at_least_n_correct(
    preds: torch.Tensor, target: torch.Tensor, n: int, over: str = "eligible"
) -> tuple[float, int]:
    """The fraction of images whose prediction contains at least ``n`` of their true labels, and the
    number of images it is over.

    ``over="eligible"`` (``at_least_{n}_correct``): over the images with at least ``n`` true labels
    (NaN when there are none). ``over="all"`` (``at_least_{n}_correct_all``): over all images, so an
    image with fewer than ``n`` true labels counts as a miss — the reference repository's
    ``evaluate_multilabel.py`` definition.
    """
    tp = (preds.long() & target.long()).sum(dim=1)
    if over == "all":
        return (float((tp >= n).float().mean()) if len(tp) else math.nan), len(tp)
    if over != "eligible":
        raise ValueError(f"over must be eligible or all, got {over!r}")
    eligible = target.long().sum(dim=1) >= n
    m = int(eligible.sum())
    return (float((tp[eligible] >= n).float().mean()) if m else math.nan), m


def label_cardinality(labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean labels per image and the histogram of labels per image (index = number of labels)."""
    per = labels.long().sum(dim=1)
    return float(per.float().mean()) if len(per) else math.nan, torch.bincount(
        per, minlength=labels.shape[1] + 1
    )


def error_cooccurrence(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(K+1, K+1)`` counts of which true label was missed together with which label was wrongly
    added, over images with errors: cell ``[i, j]`` counts images that missed class ``i`` and
    predicted class ``j`` they do not show; row / column ``K`` stands for "none" (only misses, or
    only additions)."""
    preds, target = preds.long(), target.long()
    k = target.shape[1]
    fn = (target & (1 - preds)).float()
    fp = (preds & (1 - target)).float()
    out = torch.zeros(k + 1, k + 1)
    out[:k, :k] = fn.T @ fp
    only_fn = (fn.sum(1) > 0) & (fp.sum(1) == 0)
    only_fp = (fp.sum(1) > 0) & (fn.sum(1) == 0)
    out[:k, k] = fn[only_fn].sum(0)
    out[k, :k] = fp[only_fp].sum(0)
    return out


def _per_class_ranking(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class AUROC and average precision (torchmetrics); NaN where a class lacks positives
    (AUROC: or negatives), since neither is defined there."""
    k = target.shape[1]
    pos = target.sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auroc = multilabel_auroc(probs, target, k, average=None).float()
        ap = multilabel_average_precision(probs, target, k, average=None).float()
    auroc = torch.where((pos > 0) & (pos < len(target)), auroc, torch.full_like(auroc, math.nan))
    ap = torch.where(pos > 0, ap, torch.full_like(ap, math.nan))
    return auroc, ap


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else math.nan


def multilabel_scalar_metrics(
    probs: torch.Tensor, preds: torch.Tensor, target: torch.Tensor
) -> dict[str, float]:
    """The scalar metrics (:data:`SCALAR_KEYS`) of one evaluation."""
    probs, preds, target = probs.float().cpu(), preds.long().cpu(), target.long().cpu()
    k = target.shape[1]
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["exact_match"] = float(multilabel_exact_match(preds, target, k))
        out["hamming_loss"] = float(multilabel_hamming_distance(preds, target, k, average="micro"))
        for avg in ("micro", "weighted"):
            out[f"{avg}_f1"] = float(multilabel_f1_score(preds, target, k, average=avg))
        out["micro_precision"] = float(multilabel_precision(preds, target, k, average="micro"))
        out["micro_recall"] = float(multilabel_recall(preds, target, k, average="micro"))
    # MCA and macro-F1 over the classes present in the evaluated ground truth (ana_lightning.metrics)
    tp, fp, fn = (preds & target).sum(0), (preds & (1 - target)).sum(0), ((1 - preds) & target).sum(0)
    out["macro_f1"] = present_class_macro(tp, fp, fn, "f1")
    out["mca"] = present_class_macro(tp, fp, fn, "recall")
    auroc, ap = _per_class_ranking(probs, target)
    out["macro_auroc"], out["mean_ap"] = _nanmean(auroc), _nanmean(ap)
    counts = off_by_n(preds, target).float() / max(len(target), 1)
    out["off_by_0"], out["off_by_1"], out["off_by_2"] = (
        float(counts[i]) if i < len(counts) else 0.0 for i in range(3)
    )
    out["off_by_3plus"] = float(counts[3:].sum())
    for n in (1, 2, 3):
        out[f"at_least_{n}_correct"] = at_least_n_correct(preds, target, n)[0]
        out[f"at_least_{n}_correct_all"] = at_least_n_correct(preds, target, n, over="all")[0]
    out["label_cardinality_true"] = label_cardinality(target)[0]
    out["label_cardinality_pred"] = label_cardinality(preds)[0]
    return out


def multilabel_details(probs: torch.Tensor, preds: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Everything a report shows, computed once: scalars, per-class values, distributions, curves."""
    probs, preds, target = probs.float().cpu(), preds.long().cpu(), target.long().cpu()
    k = target.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision = multilabel_precision(preds, target, k, average=None)
        recall = multilabel_recall(preds, target, k, average=None)
        f1 = multilabel_f1_score(preds, target, k, average=None)
        curves = multilabel_precision_recall_curve(probs, target, k, thresholds=None)
    auroc, ap = _per_class_ranking(probs, target)
    most = int(target.sum(1).max()) if len(target) else 0
    at_least = {
        n: (*at_least_n_correct(preds, target, n), at_least_n_correct(preds, target, n, over="all")[0])
        for n in range(1, most + 1)
    }  # n: (over images with >= n labels, their number, over all images)
    return {
        "scalars": multilabel_scalar_metrics(probs, preds, target),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": target.sum(0),
        "predicted": preds.sum(0),
        "auroc": auroc,
        "ap": ap,
        "off_by_n": off_by_n(preds, target),
        "at_least": at_least,
        "cardinality_true": label_cardinality(target)[1],
        "cardinality_pred": label_cardinality(preds)[1],
        "error_cooccurrence": error_cooccurrence(preds, target),
        "pr_curves": [(p.cpu(), r.cpu()) for p, r in zip(curves[0], curves[1], strict=True)],
        "n_images": len(target),
    }
