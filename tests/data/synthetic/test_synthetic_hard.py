"""The harder default synthetic task (data.difficulty=hard)."""

from __future__ import annotations

import numpy as np
import pytest

from ana_lightning.data.datamodules import SyntheticDataModule
from ana_lightning.data.synthetic import generate_dataset, render_field
from ana_lightning.data.synthetic_hard import render_field_hard

from conftest import compose


def test_hard_fields_are_rgb_deterministic_and_differ_from_easy():
    a = render_field_hard("AC-4", np.random.default_rng(3), size=96)
    b = render_field_hard("AC-4", np.random.default_rng(3), size=96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, render_field("AC-4", np.random.default_rng(3), size=96))
    mixed = render_field_hard(["AC-1", "AC-22"], np.random.default_rng(0), size=64)
    assert mixed.shape == (64, 64, 3)


def test_hard_fields_span_dim_and_blurred_acquisitions():
    def stats(fn):
        out = []
        for k in range(12):
            g = fn("AC-5", np.random.default_rng(k), size=96)[..., 1].astype(np.float64)
            sharp = np.abs(np.diff(g, axis=1)).mean() / (g.std() + 1e-6)
            out.append((np.percentile(g, 99), sharp))
        return np.array(out)

    easy, hard = stats(render_field), stats(render_field_hard)
    assert np.median(hard[:, 0]) < np.median(easy[:, 0])  # dimmer fields
    assert hard[:, 0].min() < 0.5 * easy[:, 0].min()  # down to fields a few counts above background
    assert np.median(hard[:, 1]) < np.median(easy[:, 1])  # blurrier: less pixel-to-pixel contrast


def test_generate_dataset_difficulty(tmp_path):
    root = generate_dataset(
        tmp_path / "h", codes=["AC-1"], n_per_class=2, size=64, difficulty="hard", progress=False
    )
    assert len(list((root / "AC-1").glob("*.png"))) == 2
    with pytest.raises(ValueError, match="difficulty"):
        generate_dataset(
            tmp_path / "x", codes=["AC-1"], n_per_class=1, size=64, difficulty="brutal", progress=False
        )


def test_default_synthetic_task_is_the_hard_one(tmp_path):
    cfg = compose("train", [], output_dir=tmp_path)
    assert cfg.data.difficulty == "hard"
    hard = SyntheticDataModule(cache_dir=str(tmp_path), difficulty="hard")
    easy = SyntheticDataModule(cache_dir=str(tmp_path))
    assert (
        hard.root.name.endswith("_hard") and easy.root.name == "v1_n60_s256_seed0"
    )  # easy caches stay valid
