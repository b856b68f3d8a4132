"""What a console command needs before it knows what to run: the config resolvers (``${ana.run_name:}``,
``${ana.mixed_precision:}``, …), the SLURM launcher plugin and the quoting of non-ASCII overrides.

Torch-free on purpose: ``ana-train --help``, ``--cfg job`` and a mistyped override are answered in a
second, not after importing torch and Lightning; the resolvers that need them import them when they
are resolved (:mod:`ana_lightning.distributed`).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from omegaconf import OmegaConf

__all__ = ["quote_non_ascii_overrides", "register_resolvers", "unique_run_name"]


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


def _from_distributed(name: str) -> Callable[..., Any]:
    """The resolver ``distributed.<name>``, imported (with torch and Lightning) when first resolved."""

    def resolve(*args: Any) -> Any:
        from . import distributed

        return getattr(distributed, name)(*args)

    resolve.__name__ = name
    return resolve


def register_resolvers() -> None:
    """Resolvers used by the configs, and the launcher plugin of ``hydra/launcher=submitit_slurm``
    (idempotent)."""
    _register_launcher()
    if not OmegaConf.has_resolver("ana.run_name"):
        OmegaConf.register_new_resolver("ana.run_name", unique_run_name, use_cache=True)
    # scale-out resolvers: precision, per-rank log names, W&B sweep groups
    for name in (
        "mixed_precision",
        "rank_suffix",
        "on_rank_zero",
        "sweep_group",
        "gpu_only",
        "tasks_per_node",
    ):
        if not OmegaConf.has_resolver(f"ana.{name}"):
            OmegaConf.register_new_resolver(f"ana.{name}", _from_distributed(name))


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


def quote_non_ascii_overrides(args: list[str]) -> list[str]:
    """Command-line overrides whose value holds non-ASCII characters (``data.root=/data/Größe``),
    quoted so that Hydra's override parser accepts them; everything else unchanged.

    >>> quote_non_ascii_overrides(["data.root=/data/Größe", "trainer.max_epochs=3"])
    ["data.root='/data/Größe'", 'trainer.max_epochs=3']
    """
    out = []
    for a in args:
        key, eq, value = a.partition("=")
        if (
            eq
            and not a.startswith("-")
            and not value.isascii()
            and value[:1] not in ("'", '"', "[", "{")
            and "${" not in value
        ):
            quote = "'" if "'" not in value else '"' if '"' not in value else ""
            a = f"{key}={quote}{value}{quote}"
        out.append(a)
    return out
