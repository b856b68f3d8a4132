"""A CSV logger whose curves survive a resume: ``csv/metrics.csv`` holds every epoch once.

Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` deletes ``metrics.csv`` when it finds one in
its folder, so a run resumed in its own folder (``ckpt_path=last``, a SLURM requeue) kept only the
epochs after the resume. :class:`CSVLogger` keeps the file instead:

- resuming from a checkpoint taken at optimizer step ``G`` (:meth:`CSVLogger.resume_from_step`, called
  by :func:`ana_lightning.pipeline.train`), the rows logged at steps ``>= G`` are dropped — those steps
  run again and log again — and a value the resumed run logs again for a metric at a step the file
  already holds (an epoch-end row re-logged after the restart) replaces the old one;
- a fresh run that finds an old ``metrics.csv`` moves it aside to ``metrics.before-<time>.csv``
  rather than deleting it.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["CSVLogger", "ResumableExperimentWriter"]

log = logging.getLogger(__name__)


def _step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class ResumableExperimentWriter(ExperimentWriter):
    """Lightning's CSV experiment writer without the delete-on-start.

    Args:
        log_dir: the folder of ``metrics.csv`` and ``hparams.yaml``.
        resume_step: the optimizer step of the checkpoint the run resumes from; None for a fresh run.
    """

    def __init__(self, log_dir: str, resume_step: int | None = None) -> None:
        self.resume_step = resume_step
        self._old_last_step = -1  # last step of the kept rows: new rows up to it may repeat a (metric, step)
        self._moved_aside: Path | None = None
        super().__init__(log_dir=log_dir)
        self._start()  # decided once, when the run starts (ddp_spawn workers get this object as it is)

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv here
        return

    def _start(self) -> None:
        """Keep the earlier curve up to the resume step, or move it aside for a fresh run."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step is None:
            self._moved_aside = path.with_name(f"metrics.before-{time.strftime('%Y%m%d-%H%M%S')}.csv")
            os.replace(path, self._moved_aside)
            log.warning(
                "%s held a curve and this run is not a resume: moved it to %s", path, self._moved_aside.name
            )
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [r for r in rows if (s := _step(r)) is None or s < self.resume_step]
        self.metrics_keys = sorted(set(self.metrics_keys) | set(header))
        self._old_last_step = max((s for r in kept if (s := _step(r)) is not None), default=-1)
        self._write(kept)
        log.info(
            "kept %d rows of %s (steps < %d); dropped %d logged after the checkpoint",
            len(kept),
            path,
            self.resume_step,
            len(rows) - len(kept),
        )

    def resume_from_step(self, step: int) -> None:
        """Told after the start: take back a curve moved aside and cut it at ``step``."""
        if self.resume_step == step:
            return
        if self._moved_aside is not None and not Path(self.metrics_file_path).is_file():
            os.replace(self._moved_aside, self.metrics_file_path)
            self._moved_aside = None
        self.resume_step = int(step)
        self._start()

    def _write(self, rows: list[dict[str, str]]) -> None:
        tmp = Path(self.metrics_file_path + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)  # never a half-written curve

    def save(self) -> None:
        overlap = (
            self.metrics
            and self._old_last_step >= 0
            and min(int(m["step"]) for m in self.metrics) <= self._old_last_step
        )
        if not overlap:
            return super().save()
        # New values for (metric, step) pairs that the kept rows hold already: the new ones win.
        self._record_new_keys()
        fresh = {(k, int(m["step"])) for m in self.metrics for k in m if k not in ("step", "epoch")}
        with open(self.metrics_file_path, newline="") as f:
            old = list(csv.DictReader(f))
        merged = []
        for row in old:
            s = _step(row)
            row = {k: ("" if (k, s) in fresh else v) for k, v in row.items()}
            if any(v not in ("", None) for k, v in row.items() if k not in ("step", "epoch")):
                merged.append(row)
        self._write(merged + [{k: v for k, v in m.items()} for m in self.metrics])
        self.metrics = []


class CSVLogger(_LightningCSVLogger):
    """:class:`lightning.pytorch.loggers.CSVLogger` that keeps the curve of a resumed run.

    Same arguments as Lightning's. Call :meth:`resume_from_step` before training resumes from a
    checkpoint; without it, an old ``metrics.csv`` in the folder is moved aside, never deleted.

    >>> CSVLogger("/tmp/run", name="csv", version="").log_dir
    '/tmp/run/csv/'
    """

    def resume_from_step(self, step: int) -> None:
        """The run continues from a checkpoint taken after ``step`` optimizer steps."""
        self._resume_step = int(step)
        if self._experiment is not None:
            self._experiment.resume_from_step(int(step))

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = ResumableExperimentWriter(
            log_dir=self.log_dir, resume_step=getattr(self, "_resume_step", None)
        )
        return self._experiment
