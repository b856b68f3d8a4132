"""GPU-side batch augmentation: exact symmetries per image, bounded intensities, training batches only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ana_lightning.data.batch_augment import BatchAugment
from ana_lightning.data.datamodules import SingleLabelDataModule
from ana_lightning.pipeline import train

from conftest import compose, tiny_train_overrides, write_class_images

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _dihedral(img: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for flipped in (img, img.flip(-1)):
        out += [torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4)]
    return out


def test_each_image_gets_one_of_the_eight_symmetries():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    y = BatchAugment(flips=True, rot90=True)(x, MEAN, STD)
    used = set()
    for a, b in zip(x, y, strict=True):
        matches = [k for k, t in enumerate(_dihedral(a)) if torch.equal(t, b)]
        assert matches, "not a symmetry of the input image"
        used.add(matches[0])
    assert len(used) >= 6  # drawn per image, not once per batch


def test_intensity_stays_in_range_and_off_means_identity():
    torch.manual_seed(0)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    raw = torch.rand(32, 3, 8, 8)
    x = (raw - m) / s
    y = BatchAugment(flips=False, rot90=False, brightness=0.5, contrast=0.5, gamma=0.5, p_intensity=1.0)(
        x, MEAN, STD
    )
    back = y * s + m
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    assert not torch.allclose(y, x)
    same = BatchAugment(flips=False, rot90=False)(x, MEAN, STD)
    assert torch.equal(same, x)
    with pytest.raises(ValueError, match="brightness"):
        BatchAugment(brightness=1.5)


def test_datamodule_augments_training_batches_only(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 4, "AC-2": 4})
    calls = []

    def aug(x, mean, std):
        calls.append(x.shape)
        return x.flip(-1)

    dm = SingleLabelDataModule(root=str(root), image_size=16, batch_size=4, batch_augment=aug)
    batch = {"image": torch.randn(4, 3, 16, 16), "target": torch.zeros(4)}
    dm.trainer = SimpleNamespace(training=False)
    assert torch.equal(dm.on_after_batch_transfer(dict(batch), 0)["image"], batch["image"])
    dm.trainer = SimpleNamespace(training=True)
    assert torch.equal(dm.on_after_batch_transfer(dict(batch), 0)["image"], batch["image"].flip(-1))
    assert calls == [(4, 3, 16, 16)]


def test_augmentation_gpu_config_trains(tiny_folder, tmp_path):
    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder)
        + [
            "debug=fdr",
            "augmentation=gpu",
            "data.cache_images=mmap",
            f"data.image_cache_dir={tmp_path / 'cache'}",
        ],
        output_dir=tmp_path / "run",
    )
    metrics, objs = train(cfg)
    assert isinstance(objs["datamodule"].batch_augment, BatchAugment)
    assert objs["datamodule"].train_augment is None and "test/mca" in metrics
    assert list((tmp_path / "cache").glob("*.npy"))
