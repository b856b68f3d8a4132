"""Kept for old imports: the multi-label report now lives in :mod:`ana_lightning.reports.multilabel`."""

from __future__ import annotations

from .reports.multilabel import (
    plot_error_cooccurrence,
    plot_off_by_n,
    plot_per_class_f1,
    plot_pr_curves,
    write_multilabel_report,
)

__all__ = [
    "write_multilabel_report",
    "plot_per_class_f1",
    "plot_off_by_n",
    "plot_pr_curves",
    "plot_error_cooccurrence",
]
