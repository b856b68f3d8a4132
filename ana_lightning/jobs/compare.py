"""The ``ana-compare`` job (``conf/compare.yaml``): paired comparison of two cross-validation sweeps
(:func:`ana_lightning.compare.compare_sweeps`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..compare import compare_sweeps, markdown

__all__ = ["compare_job"]

log = logging.getLogger(__name__)


def compare_job(cfg: DictConfig) -> dict[str, Any]:
    """``ana-compare``: compare ``cfg.a`` with ``cfg.b``, write the result into the run folder and print it."""
    metrics = list(cfg.metrics) if cfg.get("metrics") else None
    out = compare_sweeps(cfg.a, cfg.b, metrics=metrics, out_dir=cfg.paths.output_dir)
    print(markdown(out))
    log.info("comparison written to %s", Path(cfg.paths.output_dir) / "compare.md")
    return out
