"""Run-folder reports, written from metrics already computed (never recomputed here).

- :mod:`.tables`: ``metrics.json``, per-class CSV / Markdown, confusion-matrix plot, per-image predictions;
- :mod:`.multilabel`: the multi-label report and its plots;
- :mod:`.hierarchy`: the per-level hierarchy report (multi-head model and the three-model pipeline);
- :mod:`.run`: :func:`write_test_report`, the one entry point ``ana-train`` / ``ana-eval`` call after testing.

``from ana_lightning.reports import write_metrics_json`` (and the other names below) works as before.
"""

from __future__ import annotations

from .hierarchy import NO_LEAF, hierarchy_level_details, write_hierarchy_report
from .multilabel import (
    plot_error_cooccurrence,
    plot_off_by_n,
    plot_per_class_f1,
    plot_pr_curves,
    write_multilabel_report,
)
from .run import decision_note, write_test_report
from .tables import (
    plot_confusion_matrix,
    summary_rows,
    write_classification_report,
    write_metrics_json,
    write_predictions,
)

__all__ = [
    "NO_LEAF",
    "decision_note",
    "hierarchy_level_details",
    "plot_confusion_matrix",
    "plot_error_cooccurrence",
    "plot_off_by_n",
    "plot_per_class_f1",
    "plot_pr_curves",
    "summary_rows",
    "write_classification_report",
    "write_hierarchy_report",
    "write_metrics_json",
    "write_multilabel_report",
    "write_predictions",
    "write_test_report",
]
