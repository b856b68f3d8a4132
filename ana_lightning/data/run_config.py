"""The data settings of a training run, so that ``ana-eval`` evaluates its checkpoint the same way.

Every checkpoint holds its datamodule's settings (:meth:`RecordDataModule.state_dict`: the ``data``
config as the run used it — reader, target level, masks, image size, grouping — and each class's ICAP
node). Runs older than that are read from ``config_resolved.yaml`` in the run folder. :func:`eval_data_config`
then starts from those settings and applies only what the user typed on the command line:

- ``ana-eval ckpt_path=<model> data.root=<another folder> split=all``: the training run's reader,
  target, masks, image size, … on the new folder (its CSV, group column and split manifest reset,
  since they belonged to the old folder);
- ``ana-eval ckpt_path=<model> data=hierarchy data.reader=icpr2012 data.root=…``: the same, with the
  reader changed (cross-dataset evaluation, see :mod:`ana_lightning.cross_dataset`);
- a ``data=<group>`` whose class differs from the training run's: that group's config, with the
  training run's preprocessing keys (masks, image size, …) where the user did not set them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .splits import seen_in_training  # re-exported: the check lives with the other leakage checks

__all__ = [
    "training_data_config",
    "command_line_data_overrides",
    "eval_data_config",
    "use_training_data",
    "seen_in_training",
    "SOURCE_KEYS",
]

log = logging.getLogger(__name__)

#: Keys that belong to one dataset folder: reset to null when the folder or the reader changes.
SOURCE_KEYS = (
    "csv",
    "group_column",
    "split_manifest",
    "extra_train",
    "classes",
    "folds",
    "fold",
    "folds_manifest",
)
#: Keys never carried into a different datamodule class (they name what is read, not how).
_NOT_CARRIED = (
    "_target_",
    "root",
    "reader",
    "level",
    "parent",
    *SOURCE_KEYS,
    "cache_dir",
    "n_per_class",
    "render_size",
    "render_seed",
    "dapi",
    "hospital_root",
    "hospital_csv",
    "synthetic_train",
)


def stored_data_state(ckpt: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]] | None:
    """``(data config, class name → ICAP node)`` as the run's datamodule stored them in a loaded checkpoint
    (its ``state_dict``: ``ana_data``, ``class_nodes``); None for a checkpoint without them."""
    for value in ckpt.values():
        if isinstance(value, dict) and isinstance(value.get("ana_data"), dict):
            return dict(value["ana_data"]), {
                str(k): str(v) for k, v in (value.get("class_nodes") or {}).items()
            }
    return None


def training_data_config(
    ckpt_path: str | Path, trust_checkpoint: bool = False
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """``(data config of the run, class name → ICAP node)`` of a checkpoint; ``(None, {})`` when neither
    the checkpoint nor its run folder's ``config_resolved.yaml`` says."""
    from ..utils import read_checkpoint

    ckpt = read_checkpoint(ckpt_path, trust_checkpoint=trust_checkpoint)
    stored = stored_data_state(ckpt)
    if stored is not None:
        return stored
    saved = Path(ckpt_path).resolve().parent.parent / "config_resolved.yaml"
    if saved.is_file():
        data = OmegaConf.load(saved).get("data")
        if data is not None:
            log.info(
                "data settings of %s from %s (the checkpoint predates stored data settings)", ckpt_path, saved
            )
            return OmegaConf.to_container(data, resolve=False), {}
    return None, {}


def command_line_data_overrides() -> tuple[bool, set[str]]:
    """``(a data=<group> was chosen, the data.<key>s set)`` on this command line (Hydra's task overrides)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):  # not under Hydra (a script building its own config): nothing typed
        return False, set()
    chosen, keys = False, set()
    for item in task:
        key = item.split("=", 1)[0].lstrip("+~")
        if key == "data":
            chosen = True
        elif key.startswith("data."):
            keys.add(key.split(".")[1])
    return chosen, keys


def eval_data_config(
    cfg_data: DictConfig, trained: dict[str, Any] | None, group_chosen: bool, explicit: set[str]
) -> DictConfig:
    """The data config to evaluate with (module docstring); ``cfg_data`` unchanged without ``trained``."""
    if not trained:
        return cfg_data
    typed = {k: cfg_data[k] for k in explicit if k in cfg_data}
    same_class = not group_chosen or cfg_data.get("_target_") == trained.get("_target_")
    if same_class:
        out = {k: v for k, v in trained.items() if k not in ("mean", "std")}  # normalisation: the model's own
        moved = any(k in typed and typed[k] != trained.get(k) for k in ("root", "reader"))
        if moved:
            for k in SOURCE_KEYS:
                if k in out and k not in typed:
                    out[k] = None
        for k in (
            "folds",
            "fold",
            "folds_manifest",
            "synthetic_train",
            "extra_train",
        ):  # a cross-validation run: its split_manifest.csv holds its split; synthetic and extra images only train
            if k in out and k not in typed:
                out[k] = None
        out.update(
            {
                k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for k, v in typed.items()
            }
        )
        for k in ("batch_size", "num_workers"):  # the evaluation's own loader settings
            if k in cfg_data and k not in typed:
                out[k] = cfg_data[k]
        log.info(
            "data settings of the training run (%s, reader %s, level %s)%s",
            out.get("_target_", "?").rsplit(".", 1)[-1],
            out.get("reader", "-"),
            out.get("level", "-"),
            f"; typed: {sorted(typed)}" if typed else "",
        )
        return OmegaConf.create(out)
    out = OmegaConf.to_container(cfg_data, resolve=True)
    carried = [
        k
        for k in trained
        if k in out and k not in explicit and k not in _NOT_CARRIED and k not in ("mean", "std")
    ]
    for k in carried:
        out[k] = trained[k]
    log.info(
        "data=%s differs from the training run's datamodule; carried from it: %s",
        cfg_data.get("_target_"),
        carried,
    )
    return OmegaConf.create(out)


def use_training_data(
    cfg: DictConfig, ckpt_path: str | Path, trust_checkpoint: bool = False
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """Set ``cfg.data`` to the data config to evaluate ``ckpt_path`` with (:func:`eval_data_config` of its
    training run's settings and this command line's ``data.*`` keys), as ``ana-eval`` and the episodic
    evaluation do; returns :func:`training_data_config`'s ``(data config of the run, class name → ICAP node)``."""
    from omegaconf import open_dict

    trained, class_nodes = training_data_config(ckpt_path, trust_checkpoint=trust_checkpoint)
    group_chosen, typed = command_line_data_overrides()
    with open_dict(cfg):
        cfg.data = eval_data_config(cfg.data, trained, group_chosen, typed)
    return trained, class_nodes
