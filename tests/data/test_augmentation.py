"""Augmentation policies (conf/augmentation/*.yaml): compose, keep shape and dtype, fluorescence keeps hue."""

from __future__ import annotations

import os
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ana_lightning.data.augment import (
    POLICIES,
    DropChannel,
    SignalIntensity,
    SignalNoise,
    hue_degrees,
    load_policy,
    policy_grid,
)

from conftest import REAL_DATA, REPO, compose, tiny_train_overrides

POLICY_FILES = sorted(p.stem for p in (REPO / "conf" / "augmentation").glob("*.yaml"))
FITC_TINT = np.array([0.55, 1.0, 0.15], np.float32)  # a yellow-green FITC colour (hue ≈ 96°)


def _field(size: int = 96, seed: int = 0) -> np.ndarray:
    """A textured single-hue field: dark background, bright blobs, all in one FITC colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    v = np.zeros((size, size), np.float32)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(4, 12)]
        v += rng.uniform(120, 250) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    v = np.clip(v, 0, 250)
    return np.clip(v[..., None] * FITC_TINT + 0.5, 0, 255).astype(np.uint8)


def _hue_error(img: np.ndarray, ref_hue: float, min_value: float = 0.4, min_sat: float = 0.5) -> float:
    """Largest circular hue difference (degrees) from ``ref_hue`` over clearly coloured pixels."""
    h, s, v = hue_degrees(img)
    mask = (v > min_value) & (s > min_sat)
    if not mask.any():
        return 0.0
    d = np.abs(h[mask] - ref_hue)
    return float(np.minimum(d, 360 - d).max())


def _ref_hue() -> float:
    return float(hue_degrees((FITC_TINT * 200).astype(np.uint8)[None, None])[0][0, 0])


@pytest.mark.parametrize("name", POLICY_FILES)
def test_policy_composes_keeps_shape_and_dtype(name, tmp_path):
    cfg = compose("train", [f"augmentation={name}"], output_dir=tmp_path)
    transforms = instantiate(cfg.augmentation.train) if cfg.augmentation.get("train") else []
    pipe = A.Compose(list(transforms), seed=0)
    # Policies see square images (the pipeline resizes first; RandomRotate90 would transpose others).
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for _ in range(15):
        out = pipe(image=img)["image"]
        assert out.shape == img.shape and out.dtype == np.uint8, (name, out.shape, out.dtype)
    from ana_lightning.data.transforms import build_transform

    tensor = build_transform(48, transforms)(np.zeros((30, 70, 3), np.uint8))
    assert tuple(tensor.shape) == (3, 48, 48) and tensor.dtype == torch.float32


def test_packaged_policies_are_the_documented_ones():
    assert set(POLICIES) <= set(POLICY_FILES)
    assert load_policy("none") == []
    with pytest.raises(ValueError, match="unknown augmentation policy 'nope'.*basic"):
        load_policy("nope")
    strong = {type(t).__name__ for t in load_policy("strong")}
    assert {
        "Affine",
        "RandomBrightnessContrast",
        "RandomGamma",
        "GaussianBlur",
        "GaussNoise",
        "OneOf",
    } <= strong


def test_fluorescence_never_changes_hue():
    img, ref = _field(), _ref_hue()
    assert _hue_error(img, ref) < 1.5  # the test image itself is single-hue
    pipe = A.Compose(load_policy("fluorescence"), seed=0)
    changed = 0
    for _ in range(40):
        out = pipe(image=img)["image"]
        assert _hue_error(out, ref) < 3.0
        changed += not np.array_equal(out, img)
    assert changed > 30  # the policy did act on the image


def test_strong_does_change_hue_so_the_hue_test_can_fail():
    img, ref = _field(), _ref_hue()
    pipe = A.Compose(load_policy("strong"), seed=0)
    assert max(_hue_error(pipe(image=img)["image"], ref) for _ in range(40)) > 10.0


@pytest.mark.parametrize(
    "transform",
    [
        SignalIntensity(gain_limit=(0.5, 1.6), contrast_limit=0.4, gamma_limit=(60, 150), p=1),
        SignalNoise(scale_range=(0.05, 0.1), p=1),
    ],
)
def test_signal_transforms_keep_every_pixels_hue(transform):
    """Pixel by pixel, on a multi-colour image (green signal, blue DAPI nuclei, mixtures)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for seed in range(5):
        out = A.Compose([transform], seed=seed)(image=img)["image"]
        h0, s0, v0 = hue_degrees(img)
        h1, s1, v1 = hue_degrees(out)
        mask = (v0 > 0.4) & (v1 > 0.4) & (s0 > 0.5)
        d = np.abs(h1 - h0)[mask]
        assert np.minimum(d, 360 - d).max() < 3.0
        assert np.abs(s1 - s0)[mask].max() < 0.05
        assert not np.array_equal(out, img)


def test_signal_intensity_keeps_background_black_and_never_clips_one_channel():
    img = _field()
    out = SignalIntensity(gain_limit=(2.0, 2.0), contrast_limit=0, gamma_limit=(100, 100), p=1)(image=img)[
        "image"
    ]
    assert (out[img.max(axis=2) == 0] == 0).all()
    bright = img.max(axis=2) > 200  # doubled: the green channel saturates, red follows it proportionally
    assert (out[bright][:, 1] == 255).all()
    ratio = out[bright][:, 0] / out[bright][:, 1]
    assert np.allclose(ratio, FITC_TINT[0], atol=0.02)


def test_drop_channel_zeroes_dapi_only():
    img = np.random.default_rng(0).integers(1, 256, (16, 16, 3), dtype=np.uint8)
    out = DropChannel(channel=2, p=1)(image=img)["image"]
    assert (out[..., 2] == 0).all() and np.array_equal(out[..., :2], img[..., :2])
    with pytest.raises(ValueError, match="channel 5"):
        DropChannel(channel=5, p=1)(image=img)


def test_dapi_drop_is_off_by_default_and_configurable(tmp_path):
    cfg = compose("train", ["augmentation=fluorescence"], output_dir=tmp_path)
    drop = instantiate(cfg.augmentation.train)[-1]
    assert isinstance(drop, DropChannel) and drop.p == 0.0
    cfg = compose("train", ["augmentation=fluorescence", "augmentation.dapi_drop=0.3"], output_dir=tmp_path)
    assert instantiate(cfg.augmentation.train)[-1].p == pytest.approx(0.3)
    assert load_policy("fluorescence", dapi_drop=1.0)[-1].p == 1.0


def test_grid_png_of_every_policy(tmp_path):
    """Renders one image under each policy into a PNG for a person to look at.

    Set ANA_GRID_DIR=<folder> to keep the PNG (with a real image when the reference data is there).
    """
    real = sorted((REAL_DATA / "patterns" / "ac-4").glob("*.jp*g")) if REAL_DATA.is_dir() else []
    if real:
        from ana_lightning.data.images import load_image
        from ana_lightning.data.transforms import build_transform

        img = build_transform(128).resize(load_image(real[0]))
    else:
        img = _field(128)
    grid = policy_grid(img, {name: load_policy(name) for name in POLICIES}, n_samples=4, seed=0)
    h, w = img.shape[:2]
    assert grid.shape[0] == len(POLICIES) * h + 2 * (len(POLICIES) - 1) and grid.dtype == np.uint8
    out_dir = Path(os.environ.get("ANA_GRID_DIR", tmp_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out_dir / "augmentation_grid.png")
    assert (out_dir / "augmentation_grid.png").stat().st_size > 1000
    rows = [grid[i * (h + 2) : i * (h + 2) + h] for i in range(len(POLICIES))]
    tiles = [[r[:, 110 + k * (w + 2) + 2 : 110 + (k + 1) * (w + 2)] for k in range(5)] for r in rows]
    assert all(np.array_equal(t, tiles[0][0]) for t in tiles[0])  # none: every tile is the original
    for name, row in zip(POLICIES[1:], tiles[1:], strict=True):  # the others change it at least once
        assert any(not np.array_equal(t, row[0]) for t in row[1:]), name


def test_training_runs_with_the_fluorescence_policy(tiny_folder, tmp_path):
    from ana_lightning.pipeline import train

    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder) + ["debug=fdr", "augmentation=fluorescence"],
        output_dir=tmp_path / "run",
    )
    metrics, objs = train(cfg)
    assert "test/mca" in metrics
    assert objs["datamodule"].dataset("train").transform.augment is not None
