"""The ``ana-export`` job (``conf/export.yaml``): a checkpoint (or hierarchical pipeline) to ONNX or
TorchScript with its model card (:func:`ana_lightning.export.export_model`)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from ..export import FORMATS, ExportResult, export_model, export_paths

__all__ = ["run_export"]

log = logging.getLogger(__name__)


def run_export(cfg: DictConfig) -> ExportResult:
    """The ``ana-export`` job."""
    fmt = str(cfg.get("format", "onnx"))
    output = cfg.get("output") or Path(cfg.paths.output_dir) / ("model" + FORMATS.get(fmt.lower(), ""))
    existing = [str(q) for q in export_paths(output, fmt) if q.exists()]
    if existing and not cfg.get("overwrite", False):  # never replace a handed model (or its card) silently
        raise FileExistsError(
            f"output={cfg.get('output')}: {' and '.join(existing)} already exist(s); pass overwrite=true "
            "to replace them, or choose another output=<file or folder>"
        )
    result = export_model(
        cfg.get("ckpt_path"),
        format=fmt,
        output=output,
        opset_version=cfg.get("opset_version"),
        dynamo=cfg.get("dynamo", True),
        atol=cfg.get("atol", 1e-4),
        trust_checkpoint=bool(cfg.get("trust_checkpoint")),
        pipeline=cfg.get("pipeline"),
        support=cfg.get("support"),
    )
    log.info(
        "wrote %s and %s (max abs difference to PyTorch %.2e)",
        result.model_path,
        result.card_path,
        result.max_abs_diff,
    )
    return result
