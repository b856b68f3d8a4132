"""Shared fixtures: tiny image folders written into tmp folders, and composed Hydra configs."""

from __future__ import annotations

import os

# Nothing in the tests may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "ana-pattern-quest"

# A tiny timm network keeps training tests to seconds.
TINY_BACKBONE = "test_resnet"


def write_class_images(root: Path, folders: dict[str, int], size: int = 48, seed: int = 0) -> Path:
    """Write ``n`` easy-to-separate images per class folder: class k gets its own stripe frequency."""
    rng = np.random.default_rng(seed)
    for k, (folder, n) in enumerate(folders.items()):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:size, 0:size]
        for i in range(n):
            phase = rng.uniform(0, 2 * np.pi)
            g = 0.5 + 0.5 * np.sin(xx * (0.25 + 0.35 * k) + phase)
            img = np.zeros((size, size, 3), np.float32)
            img[..., 1] = (30 + 70 * k) * (0.6 + 0.4 * g)  # brightness and texture differ by class
            img += rng.normal(0, 8, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img_{i:03d}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """Three classes spelled three ways (AC-1, ac-2, AC10), 10 images each."""
    return write_class_images(tmp_path / "tiny", {"AC-1": 10, "ac-2": 10, "AC10": 10})


def compose(config_name: str = "train", overrides: list[str] | None = None, output_dir: Path | None = None):
    """Compose the packaged config the way the console commands do, with a run folder in tmp."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from ana_lightning.resolvers import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="ana_lightning.conf", version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            if output_dir is not None:
                cfg.paths.output_dir = str(output_dir)
                # <log_dir>/<task_name>/runs/<run>, as the console commands lay it out
                is_run = output_dir.parent.name == "runs"
                cfg.paths.log_dir = str(output_dir.parents[2] if is_run else output_dir.parent)
            del cfg.hydra
    return cfg


def tiny_train_overrides(root: Path, epochs: int = 2) -> list[str]:
    return [
        "data=single_label",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=8",
        f"model.backbone.name={TINY_BACKBONE}",
        f"trainer.max_epochs={epochs}",
        "model.optimizer.lr=0.01",
        "+trainer.enable_model_summary=false",
        "callbacks.rich_progress_bar=null",
    ]


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny single-label model trained once per test session: ``(data root, run folder, best checkpoint)``."""
    from ana_lightning.pipeline import train

    base = tmp_path_factory.mktemp("trained_ckpt")
    root = write_class_images(base / "data", {"AC-1": 12, "ac-2": 12, "AC10": 12})
    run = base / "runs" / "r1"
    train(compose("train", tiny_train_overrides(root, epochs=4), output_dir=run))
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    return root, run, best


def _drop_closed_log_handlers() -> None:
    import logging

    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in list(lg.handlers):
            if getattr(getattr(h, "stream", None), "closed", False):
                lg.removeHandler(h)


@pytest.fixture(autouse=True)
def _bit_depth_unset():
    """``data.bit_depth`` / ``ana-predict bit_depth=`` (and ``channels``) hold for the whole process once set (an
    environment variable, for loader workers): every test starts and ends with files read at their own range and
    multi-channel TIFFs read by their own channel names."""
    from ana_lightning.data.images import set_bit_depth, set_channels

    set_bit_depth(None)
    set_channels(None)
    yield
    set_bit_depth(None)
    set_channels(None)


@pytest.fixture(autouse=True)
def _no_handlers_on_closed_streams():
    """An in-process Hydra run leaves logging handlers on the stream pytest captured for that test; once
    pytest closes it, every later log line fails ("I/O operation on closed file") — and a W&B run started
    then can lose its records. Drop such handlers around every test."""
    _drop_closed_log_handlers()
    yield
    _drop_closed_log_handlers()
