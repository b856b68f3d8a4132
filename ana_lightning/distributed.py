"""Scale-out plumbing: ranks before the process group exists, DDP relaunches inside Hydra sweeps,
SLURM requeues, and the Hydra resolvers that give one folder and one W&B group per job.

How a job's processes agree on one folder:

- ``ana-train trainer=ddp``: Lightning starts ranks 1…N-1 as new processes of the same command with
  ``hydra.run.dir=<rank 0's folder>``; in a multirun (``-m``) :func:`pin_ddp_relaunch_to_job` first
  rewrites that command to *this job's* overrides, so a child neither starts the whole sweep again
  nor samples its own Optuna hyperparameters.
- SLURM (``srun``/submitit, one task per GPU): every task resolves the same folder, from the SLURM job
  id (single runs, see :func:`ana_lightning.resolvers.unique_run_name`) or from the sweep folder that the
  submitting process resolved once and pickled with the config (sweeps).
- ``ddp_spawn``: one Python process runs the pipeline; the workers only run ``fit``/``test``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = [
    "global_rank",
    "mixed_precision",
    "rank_suffix",
    "on_rank_zero",
    "sweep_dir",
    "sweep_group",
    "pin_ddp_relaunch_to_job",
    "release_ddp_job",
    "ddp_job",
    "tester_for",
    "requeue_checkpoint",
    "started_together",
    "one_at_a_time",
    "SameHparamsOnAllRanks",
    "sync_csv_logger",
    "single_process_tester",
    "gpu_only",
    "tasks_per_node",
]

log = logging.getLogger(__name__)


def global_rank() -> int:
    """This process's global rank, also before Lightning sets up the process group.

    Lightning reads ``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID`` … at import and updates it when a
    strategy starts; 0 for a single process.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def mixed_precision() -> str:
    """``bf16-mixed`` where the GPU supports bfloat16 (Ampere and newer), else ``16-mixed``.

    Without a visible GPU (a login node composing a SLURM sweep) it answers ``bf16-mixed``; the
    value is resolved again inside the job, on the GPU node.
    """
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "16-mixed"
    return "bf16-mixed"


def gpu_only(accelerator: str | None, value: Any) -> Any | None:
    """``value`` for a GPU trainer, None for any other: the SLURM launcher asks for GPUs, CPUs and
    memory only where ``trainer.accelerator`` is a GPU (``${ana.gpu_only:${trainer.accelerator},8}``).

    >>> gpu_only("gpu", 4), gpu_only("cpu", 4)
    (4, None)
    """
    return value if str(accelerator).lower() in ("gpu", "cuda") else None


def tasks_per_node(devices) -> int:
    """SLURM tasks per node for ``trainer.devices``: one per device when it is a count, else 1
    (``auto``, a list of device ids is counted).

    >>> tasks_per_node(4), tasks_per_node("auto"), tasks_per_node([0, 1])
    (4, 1, 2)
    """
    if isinstance(devices, (list, tuple)) or type(devices).__name__ == "ListConfig":
        return max(1, len(devices))
    try:
        return max(1, int(devices))
    except (TypeError, ValueError):
        return 1


def rank_suffix() -> str:
    """``""`` on rank 0, ``.rank<N>`` elsewhere: per-rank log files inside the one job folder."""
    rank = global_rank()
    return f".rank{rank}" if rank else ""


def on_rank_zero(value: str) -> str | None:
    """``value`` on rank 0, None elsewhere: ``hydra.output_subdir`` (the ``.hydra`` folder) is written
    by rank 0 only when SLURM starts every rank as the same command."""
    return value if global_rank() == 0 else None


def sweep_dir() -> Path | None:
    """The sweep folder when this job is one job of a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return Path(str(hc.sweep.dir)) if hc.get("mode") == RunMode.MULTIRUN and hc.sweep.dir else None


def sweep_group(task_name: str) -> str:
    """The W&B group of a job: ``<task_name>`` for a single run, ``<task_name>-<sweep folder>`` for
    every job of one multirun, so a grid or an Optuna study shows as one group."""
    sweep = sweep_dir()
    return f"{task_name}-{sweep.name}" if sweep is not None else task_name


# What Lightning's DDP launcher sets in the launching process's environment.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")


def pin_ddp_relaunch_to_job() -> dict[str, str | None] | None:
    """Inside a Hydra multirun, make Lightning's DDP launcher start ranks 1…N-1 as *this job*.

    Lightning's ``ddp`` strategy re-runs ``sys.argv`` for the other local ranks and adds
    ``hydra.run.dir=<HydraConfig.run.dir>``. In a multirun that command still holds ``-m`` and the
    sweep lists (each child would launch the whole sweep, and an Optuna child would sample its own
    hyperparameters), and ``run.dir`` is not the job's folder. This rewrites ``sys.argv`` to the
    job's own overrides in run mode and points ``run.dir`` at the job folder. Returns what
    :func:`release_ddp_job` needs at the end of the job (None outside a multirun).
    Hand-written: neither Hydra nor Lightning offers it.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf import open_dict, read_write
    except ImportError:  # pragma: no cover
        return None
    if not HydraConfig.initialized() or "LOCAL_RANK" in os.environ:
        return None
    hc = HydraConfig.get()
    if hc.get("mode") != RunMode.MULTIRUN:
        return None
    before = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    overrides = [str(o) for o in hc.overrides.task]
    job_dir = str(hc.runtime.output_dir)
    sys.argv = [sys.argv[0], *overrides, "hydra.mode=RUN"]
    with read_write(hc), open_dict(hc):
        hc.run.dir = job_dir
    # Under submitit (local) `python -m submitit.core._submit` is the main module: relaunch the
    # console command's module instead, so the children compose the same config.
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None and not spec.name.startswith("ana_lightning."):
        own = importlib.util.find_spec(f"ana_lightning.cli.{hc.job.config_name}")
        if own is not None:
            __main__.__spec__ = own
    log.info("DDP ranks of this job will be started with: %s", " ".join(sys.argv[1:]))
    return before


def release_ddp_job(before: dict[str, str | None] | None) -> None:
    """End of a multirun job: close its process group and undo the launcher's environment, so the
    next job of the sweep (same process) starts its own DDP processes on a fresh port."""
    if before is None:
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextmanager
def ddp_job() -> Iterator[None]:
    """The span of one training job: :func:`pin_ddp_relaunch_to_job` on entry, :func:`release_ddp_job`
    on exit (a no-op outside a Hydra multirun)."""
    before = pin_ddp_relaunch_to_job()
    try:
        yield
    finally:
        release_ddp_job(before)


def requeue_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to continue from when SLURM restarts a requeued (preempted) job in its folder.

    A Lightning HPC checkpoint (written on the requeue signal) is found by Lightning itself, so this
    answers only when there is none: the job folder's ``checkpoints/last.ckpt``.
    """
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
    run_dir = Path(run_dir)
    if list(run_dir.glob("hpc_ckpt_*.ckpt")):
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def started_together() -> bool:
    """True when this job's processes were started at once by a cluster launcher (SLURM tasks,
    torchrun), not one by one by Lightning (which starts ranks 1…N-1 only once rank 0 is in ``fit``)."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    return "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def one_at_a_time(run_dir: str | Path) -> AbstractContextManager:
    """A file lock in the job folder when the job's ranks run concurrently from the start, so work
    such as rendering or caching a data set is done once; otherwise nothing."""
    if not started_together():
        return nullcontext()
    from filelock import FileLock

    return FileLock(str(Path(run_dir) / ".ranks.lock"))


def single_process_tester(trainer: L.Trainer) -> L.Trainer | None:
    """A one-device Trainer for testing after a ``ddp_spawn`` fit, else None (test with ``trainer``).

    Spawned workers return only the weights and the logged metrics to the main process; what a model
    keeps from its test epoch for the reports (per-image predictions, confusion matrix) would stay
    in the workers. Testing once in the main process also evaluates every test image exactly once,
    as Lightning recommends for ``trainer.test``. It shares the fit's loggers and precision.
    """
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if trainer.world_size < 2 or not isinstance(launcher, _MultiProcessingLauncher):
        return None
    return L.Trainer(
        accelerator=trainer.accelerator,
        devices=1,
        num_nodes=1,
        precision=trainer.precision,
        logger=trainer.loggers or False,
        callbacks=[],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=trainer.default_root_dir,
        inference_mode=True,
    )


def tester_for(trainer: L.Trainer) -> L.Trainer:
    """The Trainer to run ``test`` with after (or instead of) ``fit``: after a ``ddp_spawn`` fit a
    one-device Trainer in this process (:func:`single_process_tester`), with the CSV columns the fit
    workers wrote kept (:func:`sync_csv_logger`); otherwise ``trainer`` itself."""
    sync_csv_logger(trainer)
    return single_process_tester(trainer) or trainer


def sync_csv_logger(trainer: L.Trainer) -> None:
    """Let a CSVLogger keep the columns that worker processes wrote (``ddp_spawn``).

    With ``ddp_spawn`` the fit runs in worker processes: the main process's CSV writer never learns
    the columns they wrote to ``metrics.csv``, and on the next spawn (``trainer.test``) Lightning
    2.6 rewrites the file with the test columns only and fails ("dict contains fields not in
    fieldnames"). Reading the header back first avoids that. Hand-written workaround for that bug.
    """
    import csv

    from lightning.pytorch.loggers import CSVLogger

    for lg in trainer.loggers:
        if not isinstance(lg, CSVLogger) or not trainer.is_global_zero:
            continue
        path = getattr(lg.experiment, "metrics_file_path", None)
        if isinstance(path, str) and Path(path).is_file():
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            lg.experiment.metrics_keys = sorted(set(lg.experiment.metrics_keys) | set(header))


def _hparams_digest(module: L.LightningModule) -> int:
    text = json.dumps(dict(module.hparams), sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")


class SameHparamsOnAllRanks(L.Callback):
    """Stops a DDP run whose ranks hold different hyperparameters (a sweeper that sampled per rank,
    or a launcher that relaunched a different command), before the first step."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size < 2:
            return
        mine = torch.tensor([_hparams_digest(pl_module)], dtype=torch.long)
        every = trainer.strategy.all_gather(mine.to(pl_module.device)).flatten().cpu().tolist()
        log.info(
            "rank %d of %d: hyperparameter digest %x (%s)",
            trainer.global_rank,
            trainer.world_size,
            every[trainer.global_rank],
            "the same on every rank" if len(set(every)) == 1 else "DIFFERENT across ranks",
        )
        if len(set(every)) > 1:
            raise RuntimeError(
                f"the {trainer.world_size} DDP ranks hold different hyperparameters (digests {every}); "
                "each rank must run the same job config. Under a Hydra sweep start DDP through "
                "ana_lightning.jobs.train (which pins the relaunch to the job) or through a SLURM launcher."
            )
