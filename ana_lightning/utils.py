"""Small shared helpers: checkpoint loading, torch setup, config composition for scripts (the console
commands' resolvers are in :mod:`ana_lightning.resolvers`)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from .resolvers import register_resolvers

if TYPE_CHECKING:
    import lightning as L

__all__ = [
    "load_checkpoint_model",
    "read_checkpoint",
    "safe_torch_load",
    "CheckpointError",
    "UnsafeCheckpointError",
    "find_last_checkpoint",
]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A file that is not a usable ana-lightning checkpoint."""


def plain_hparams(module) -> None:
    """Turn OmegaConf containers in ``module.hparams`` into plain Python ones, so checkpoints
    load with ``torch.load(weights_only=True)`` and without OmegaConf."""
    from omegaconf import Container

    for k, v in list(module.hparams.items()):
        if isinstance(v, Container):
            module.hparams[k] = OmegaConf.to_container(v, resolve=True)


TRUST_FLAG = "trust_checkpoint"


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding pickled objects that could run code when loaded (refused by default)."""


def checkpoint_safe_globals() -> list:
    """What ``torch.load(weights_only=True)`` may rebuild besides tensors and plain containers: the
    OmegaConf containers older checkpoints kept in their hyperparameters (their ``__setstate__`` only
    restores fields) and ``argparse.Namespace``. Nothing here can call an arbitrary function."""
    import argparse
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, BytesNode, FloatNode, IntegerNode, PathNode, StringNode

    return [
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        AnyNode,
        StringNode,
        IntegerNode,
        FloatNode,
        BooleanNode,
        BytesNode,
        PathNode,
        typing.Any,
        collections.defaultdict,
        dict,
        list,
        tuple,
        set,
        int,
        float,
        str,
        bool,
        bytes,
        argparse.Namespace,
    ]


def safe_torch_load(
    path: str | Path, map_location: str | torch.device = "cpu", trust_checkpoint: bool = False
) -> Any:
    """``torch.load`` that never runs code from the file unless ``trust_checkpoint`` says so.

    Loads with ``weights_only=True`` (plus :func:`checkpoint_safe_globals`). A file that needs anything else
    (a ``__reduce__`` payload, a pickled class) is refused with :class:`UnsafeCheckpointError`
    naming the file and the globals it asks for; ``trust_checkpoint=True`` unpickles it in full
    with a warning naming the file. Other unreadable files are a :class:`CheckpointError`.
    """
    import pickle

    path = Path(path).expanduser()
    if not path.is_file():
        what = "a broken symlink" if path.is_symlink() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}")
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise _unreadable(path, e) from None
        wanted = _unsafe_globals(path, e)
        if not wanted:  # not a pickle at all (an image, a text file): unreadable, not unsafe
            raise _unreadable(path, e) from None
        if not trust_checkpoint:
            raise UnsafeCheckpointError(
                f"{path} was NOT loaded: it holds pickled objects that could run code when loaded "
                f"({', '.join(wanted) or 'unsupported globals'}). ana-lightning loads checkpoints with "
                "torch.load(weights_only=True); checkpoints it writes hold only tensors and plain values. "
                f"If you trust where this file came from, rerun with {TRUST_FLAG}=true."
            ) from None
        log.warning(
            "%s=true: loading %s with full unpickling (it asks for %s); this runs any code inside it, "
            "so only do this for files you trust",
            TRUST_FLAG,
            path,
            ", ".join(wanted) or "unsupported globals",
        )
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise _unreadable(path, e2) from None
    except Exception as e:  # noqa: BLE001 - a text file, a truncated zip, ...
        raise _unreadable(path, e) from None


def _unsafe_globals(path: Path, e: BaseException) -> list[str]:
    """The globals (functions, classes) a file refused by ``weights_only=True`` asks to load."""
    import re
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            safe = {f"{g.__module__}.{g.__qualname__}" for g in checkpoint_safe_globals()}
            return [
                g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if g not in safe
            ]
        except Exception:  # noqa: BLE001 - fall back on torch's message
            pass
    return re.findall(r"(?:GLOBAL|global:?) ([\w.]+)", str(e))


def _exported_model(path: Path) -> bool:
    """An ONNX file, or a TorchScript file carrying ana-lightning's metadata (what ana-export writes)."""
    if path.suffix.lower() == ".onnx":
        return True
    from .predict.loading import _is_torchscript

    try:
        return path.is_file() and _is_torchscript(path)
    except OSError:
        return False


def _unreadable(path: Path, e: BaseException) -> CheckpointError:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if "Unsupported" in ln or "error:" in ln.lower()] or lines[:1]
    text = said[-1][:200] if said else ""
    return CheckpointError(
        f"{path} ({path.stat().st_size:,} bytes) is not a readable checkpoint ({type(e).__name__}: {text}). "
        "It may be truncated (a run killed while saving) or not a checkpoint at all."
    )


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict:
    """The checkpoint dict, loaded by :func:`safe_torch_load`; a clear error when it is not one (an
    exported model is named as such: what it can and cannot be used for)."""
    if _exported_model(Path(path).expanduser()):
        raise CheckpointError(
            f"{path} is a model exported by ana-export, not a training checkpoint: this command needs the run's "
            ".ckpt (its run folder's best_checkpoint.txt names it). The exported file serves ana-predict and "
            "ana-app; to score it on labelled images: ana-predict ckpt_path=<it> input=<folder> "
            "truth=folder|i3a2014|icpr2012|<labels.csv> (truth_report.md)"
        )
    ckpt = safe_torch_load(path, trust_checkpoint=trust_checkpoint)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def checkpoint_class(path: str | Path, ckpt: dict) -> type:
    """The LightningModule class recorded in an ana-lightning checkpoint's metadata."""
    meta = ckpt.get("ana_lightning")
    if not isinstance(meta, dict) or "class_path" not in meta:
        raise CheckpointError(f"{path} was not written by ana-lightning (no 'ana_lightning' metadata)")
    import lightning as L

    module_name, _, cls_name = str(meta["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise CheckpointError(
            f"{path} was trained as {meta['class_path']}, which cannot be imported here: {e}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise CheckpointError(
            f"{path} names {meta['class_path']!r} as its model, which is not a LightningModule"
        )
    return cls


def load_checkpoint_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    checkpoint: dict | None = None,
) -> L.LightningModule:
    """Rebuild the LightningModule stored in an ana-lightning checkpoint, in eval mode.

    The one checkpoint loader of every command: the file is read with ``weights_only=True``
    (:func:`safe_torch_load`); one that could run code is refused unless ``trust_checkpoint=True``.
    A caller that has already read the file (to look at its metadata) passes the dict as
    ``checkpoint``, and the file is not read again: the model is built from that dict the way
    ``load_from_checkpoint`` builds it (Lightning's checkpoint migration, then its hyperparameters and
    state dict).
    """
    ckpt = checkpoint if checkpoint is not None else read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    cls = checkpoint_class(path, ckpt)
    try:
        from lightning.pytorch.core.saving import _load_state
        from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint
    except ImportError:  # a Lightning without these helpers: let it read the file itself
        _load_state = None
    try:
        if _load_state is not None:
            ckpt = _pl_migrate_checkpoint(dict(ckpt), checkpoint_path=Path(path))
            ckpt.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
            model = _load_state(cls, ckpt).to(map_location)
        elif trust_checkpoint:
            model = cls.load_from_checkpoint(str(path), map_location=map_location, weights_only=False)
        else:
            with torch.serialization.safe_globals(checkpoint_safe_globals()):
                model = cls.load_from_checkpoint(str(path), map_location=map_location, weights_only=True)
    except RuntimeError as e:  # state-dict mismatch: a checkpoint edited or written by another version
        raise CheckpointError(
            f"{path}: its weights do not fit {cls.__name__}: {str(e).splitlines()[0][:300]}"
        ) from None
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


def build(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(config, _convert_="all", **kwargs)``, but an error raised by the object's
    constructor comes out as itself (its type and message, e.g. a missing weights file), not wrapped in
    Hydra's ``InstantiationException``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(config, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, Exception):
            raise e.__cause__ from None
        raise
