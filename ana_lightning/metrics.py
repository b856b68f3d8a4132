"""Metric collections per task (torchmetrics); keys are logged as ``{stage}/{metric}``."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

__all__ = ["multiclass_metrics", "multiclass_per_class_metrics"]


def multiclass_metrics(num_classes: int) -> MetricCollection:
    """Scalar metrics of a single-label classifier.

    ``mca`` is the mean class accuracy (macro recall), the HEp-2 contests' headline metric.
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "mca": MulticlassRecall(num_classes, average="macro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        }
    )


def multiclass_per_class_metrics(num_classes: int) -> MetricCollection:
    """Per-class precision / recall / F1 and the confusion matrix (for reports)."""
    return MetricCollection(
        {
            "precision": MulticlassPrecision(num_classes, average=None),
            "recall": MulticlassRecall(num_classes, average=None),
            "f1": MulticlassF1Score(num_classes, average=None),
            "confmat": MulticlassConfusionMatrix(num_classes),
        }
    )
