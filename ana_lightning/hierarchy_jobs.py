"""The old home of the hierarchical pipeline's jobs, kept so that ``job: ana_lightning.hierarchy_jobs.train_level3``,
``ana_lightning.hierarchy_jobs.evaluate_hierarchy`` and ``from ana_lightning.hierarchy_jobs import …`` keep
working. A thin re-export of :mod:`ana_lightning.jobs.hierarchy`."""

from __future__ import annotations

from .jobs.hierarchy import (  # noqa: F401 - _all_checkpoints: imported by tests under its old path
    NO_LEAF,
    _all_checkpoints,
    evaluate_hierarchy,
    group_slug,
    train_level3,
    write_hierarchy_report,
)

__all__ = ["train_level3", "evaluate_hierarchy", "write_hierarchy_report", "group_slug", "NO_LEAF"]
