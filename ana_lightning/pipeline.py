"""The old home of the train and evaluate jobs, kept so that ``job: ana_lightning.pipeline.train``,
``ana_lightning.pipeline.evaluate`` and ``from ana_lightning.pipeline import …`` keep working.

A thin re-export: the jobs are :mod:`ana_lightning.jobs.train` and :mod:`ana_lightning.jobs.evaluate`,
the builders :mod:`ana_lightning.jobs.common`, resuming :mod:`ana_lightning.jobs.resume`.
"""

from __future__ import annotations

from .jobs.common import build_datamodule, build_trainer
from .jobs.common import finish_wandb as _finish_wandb  # noqa: F401 - old private names
from .jobs.common import instantiate_list as _instantiate_list  # noqa: F401
from .jobs.common import log_report_images as _log_report_images  # noqa: F401
from .jobs.evaluate import check_unseen, evaluate
from .jobs.resume import FINISHED  # noqa: F401
from .jobs.train import train

__all__ = ["train", "evaluate", "build_datamodule", "build_trainer", "check_unseen"]
