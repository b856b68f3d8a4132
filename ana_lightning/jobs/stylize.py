"""The ``ana-stylize`` job (``conf/stylize.yaml``): the training split of ``data`` → a stylized set in ``output``.

The NST settings are ``cfg.transfer``, a ``_target_`` config built by ``hydra.utils.instantiate``
(:class:`~ana_lightning.nst.StyleTransfer`; its keys are the constructor's arguments). The top-level keys
the command took before (``iterations=…``, ``style_layers=…``, ``device=…``) still work: the packaged
``transfer`` block reads them, and a config without a ``transfer`` block is built from them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..nst import StyleTransfer
from ..style_transfer import stylize
from ..utils import build

__all__ = ["stylize_job", "transfer_config"]

log = logging.getLogger(__name__)

#: The NST settings as top-level keys of ``conf/stylize.yaml`` (before the ``transfer`` block).
LEGACY_KEYS = (
    "content_layers",
    "style_layers",
    "content_weight",
    "style_weight",
    "style_layer_weights",
    "tv_weight",
    "iterations",
    "optimizer",
    "lr",
    "init",
    "pooling",
    "weights",
    "allow_random_weights",
    "device",
    "amp",
)


def transfer_config(cfg: DictConfig) -> DictConfig:
    """``cfg.transfer`` (a ``_target_`` config), or one made from the older top-level keys when it is absent."""
    if cfg.get("transfer") is not None:
        return cfg.transfer
    spec: dict[str, Any] = {"_target_": "ana_lightning.nst.StyleTransfer"}
    spec.update({k: cfg.get(k) for k in LEGACY_KEYS if k in cfg})
    return OmegaConf.create(spec)


def stylize_job(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``ana-stylize`` job: training split of ``cfg.data`` → stylized set in ``cfg.output``."""
    from .common import build_datamodule

    if not cfg.get("output"):
        raise ValueError("ana-stylize needs output=<folder> (where the stylized set is written)")
    manifest = cfg.get("split_manifest") or cfg.data.get("split_manifest")
    overrides = {"split_manifest": str(manifest)} if manifest else {}
    if manifest and not Path(manifest).is_file():
        raise FileNotFoundError(
            f"split_manifest={manifest} does not exist (give <run folder>/split_manifest.csv)"
        )
    dm = build_datamodule(cfg, **overrides)
    out = Path(str(cfg.output)).expanduser().resolve()
    root = Path(dm.root).expanduser().resolve() if getattr(dm, "root", None) else None
    if root is not None and (out == root or root in out.parents):
        raise ValueError(
            f"output={cfg.output} is inside data.root={dm.root}: the next run on that folder would read the stylized "
            "images as real ones, in every split. Write them outside it and add them to the training split only "
            "with data.extra_train=<output>"
        )
    dm.prepare_data()
    dm.setup("fit")
    train = dm.splits["train"]
    log.info(
        "sources: the %d training image(s) of %s (%s)",
        len(train),
        dm.root,
        f"split manifest {manifest}" if manifest else f"split seed {dm.hparams.seed}",
    )
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    transfer: StyleTransfer = build(transfer_config(cfg))
    if transfer.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    summary = stylize(
        train,
        cfg.output,
        transfer,
        n_per_image=cfg.n_per_image,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=cfg.get("progress", True),
    )
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)
    (run_dir / "stylize_summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return asdict(summary), {"datamodule": dm, "transfer": transfer, "summary": summary}
