"""Small shared helpers: run-folder names, Hydra resolvers, checkpoint loading, logging."""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import OmegaConf

__all__ = ["register_resolvers", "unique_run_name", "load_checkpoint_model", "CheckpointError", "find_last_checkpoint"]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A file that is not a usable ana-lightning checkpoint."""


@lru_cache(maxsize=1)
def unique_run_name() -> str:
    """``YYYY-mm-dd_HH-MM-SS_<id>``: the id is the SLURM job (and array task) id when there is one,
    otherwise random, so two jobs started in the same second never share a folder. Cached per
    process, and Lightning passes the resolved folder on to the DDP processes it launches.
    """
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"_{task}" if task else "")
    return f"{stamp}_{secrets.token_hex(3)}"


def register_resolvers() -> None:
    """Resolvers used by the configs, and the launcher plugin of ``hydra/launcher=submitit_slurm``
    (idempotent)."""
    _register_launcher()
    if not OmegaConf.has_resolver("ana.run_name"):
        OmegaConf.register_new_resolver("ana.run_name", unique_run_name, use_cache=True)
    from . import distributed  # scale-out resolvers: precision, per-rank log names, W&B sweep groups

    for name, fn in (("ana.mixed_precision", distributed.mixed_precision), ("ana.rank_suffix", distributed.rank_suffix),
                     ("ana.on_rank_zero", distributed.on_rank_zero), ("ana.sweep_group", distributed.sweep_group),
                     ("ana.gpu_only", distributed.gpu_only), ("ana.tasks_per_node", distributed.tasks_per_node)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


@lru_cache(maxsize=1)
def _register_launcher() -> None:
    """Hydra finds launchers by scanning the ``hydra_plugins`` namespace package, which an editable
    install of this project does not expose to its scan: register ``hydra_plugins.ana_lightning_launcher``
    by hand (when hydra-submitit-launcher, the ``cluster`` extra, is installed)."""
    try:
        from hydra.core.plugins import Plugins

        from hydra_plugins.ana_lightning_launcher import SlurmLauncher
    except ImportError:
        return
    Plugins.instance().register(SlurmLauncher)


def plain_hparams(module) -> None:
    """Turn OmegaConf containers in ``module.hparams`` into plain Python ones, so checkpoints
    load with ``torch.load(weights_only=True)`` and without OmegaConf."""
    from omegaconf import Container

    for k, v in list(module.hparams.items()):
        if isinstance(v, Container):
            module.hparams[k] = OmegaConf.to_container(v, resolve=True)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001
        try:  # Lightning checkpoints written with older versions may hold non-tensor objects
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001
            size = path.stat().st_size
            raise CheckpointError(
                f"{path} ({size:,} bytes) is not a readable checkpoint: {type(first).__name__}: {str(first)[:200]}. "
                "It may be truncated (a run killed while saving) or not a checkpoint at all."
            ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def load_checkpoint_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the LightningModule stored in an ana-lightning checkpoint, in eval mode."""
    ckpt = read_checkpoint(path)
    meta = ckpt.get("ana_lightning")
    if not meta or "class_path" not in meta:
        raise CheckpointError(f"{path} was not written by ana-lightning (no 'ana_lightning' metadata)")
    module_name, _, cls_name = meta["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    model = cls.load_from_checkpoint(str(path), map_location=map_location, weights_only=False)
    model.eval()
    return model


def find_last_checkpoint(run_dir: str | Path, runs_root: str | Path) -> Path | None:
    """``last.ckpt`` of the current run folder, else of the newest run under ``runs_root``."""
    own = Path(run_dir) / "checkpoints" / "last.ckpt"
    if own.is_file():
        return own
    cands = sorted(Path(runs_root).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return cands[-1] if cands else None


def setup_torch(threads: int | None = None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def compose_config(config_name: str = "train", overrides: list[str] | None = None):
    """The config a console command would build, for notebooks and scripts (no Hydra app needed).

    ``${hydra:...}`` interpolations resolve as in a real run; pass ``paths.output_dir=<folder>`` to
    choose the run folder.

    >>> cfg = compose_config("train", ["paths.output_dir=/tmp/run"])  # doctest: +SKIP
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="ana_lightning.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg
