"""data.synthetic_train: synthetic cells added to the training split of a real cell folder, and only there."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from ana_lightning.data.run_config import eval_data_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from contest_fixtures import i3a_contest_datamodule, write_specimens  # noqa: E402

I3A = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic_train")
    return base, write_specimens(base / "i3a", [(c, 12, lv) for c in I3A for lv in (20, 45, 100)])


def test_synthetic_cells_join_the_training_split_only(real, tmp_path):
    base, root = real
    plain = i3a_contest_datamodule(root)
    plain.setup()
    cache = base / "cache"
    dm = i3a_contest_datamodule(
        root, synthetic_train={"n_per_class": 4, "cells_per_field": 2, "cache_dir": str(cache)}
    )
    dm.setup()
    synthetic = dm.extra_train_records
    assert len(synthetic) == 24 and all(r.group.startswith("synthetic:") for r in synthetic)
    assert len({r.group for r in synthetic}) == 12  # one specimen per rendered field, 2 cells each
    assert all(Path(r.path).is_relative_to(cache) for r in synthetic)
    assert all(r.path in dm.masks for r in synthetic)  # their masks travel with them (mask=channel)
    # the real splits are the same as without synthetic cells, and no synthetic cell is in val or test
    for s in ("train", "val", "test"):
        assert [r.path for r in dm.splits[s]] == [r.path for r in plain.splits[s]]
    assert len(dm.dataset("train")) == len(dm.splits["train"]) + 24
    assert len(dm.dataset("val")) == len(dm.splits["val"]) and len(dm.dataset("test")) == len(
        dm.splits["test"]
    )
    first = dm.dataset("train")[len(dm.splits["train"])]  # the first synthetic cell, as the model gets it
    assert first["image"].shape[-2:] == (16, 16) and float(first["image"][2].max()) > 0.5  # mask in blue
    assert dm.class_names[int(first["target"])] == "Homogeneous"
    # class weights count what the model trains on: the synthetic cells balance the classes
    counts = torch.bincount(dm.make_targets(dm.splits["train"] + synthetic), minlength=6).float()
    want = counts.sum() / (6 * counts)
    assert torch.allclose(torch.tensor(dm.class_weights()), want)
    # the split manifest lists the real cells only, so it can be reused with or without synthetic cells
    dm.write_reports(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "split_manifest.csv")))
    assert len(rows) == sum(len(dm.splits[s]) for s in ("train", "val", "test"))
    assert not any("synthetic" in (r.get("group") or "") for r in rows)
    again = i3a_contest_datamodule(
        root,
        synthetic_train={"n_per_class": 4, "cells_per_field": 2, "cache_dir": str(cache)},
        split_manifest=str(tmp_path / "split_manifest.csv"),
    )
    again.setup()  # rendered once: the cached set is read back
    assert [r.path for r in again.extra_train_records] == [r.path for r in synthetic]


def test_bad_synthetic_settings_are_named(real):
    _, root = real
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_cells'\]"):
        i3a_contest_datamodule(root, synthetic_train={"n_cells": 4})
    with pytest.raises(ValueError, match="n_per_class must be >= 1"):
        i3a_contest_datamodule(root, synthetic_train={"n_per_class": 0})
    with pytest.raises(ValueError, match="must be a mapping"):
        i3a_contest_datamodule(root, synthetic_train=400)


def test_evaluation_never_reads_synthetic_cells():
    from omegaconf import OmegaConf

    trained = {
        "_target_": "x.HEp2",
        "root": "/real",
        "reader": "i3a2014",
        "synthetic_train": {"n_per_class": 400},
    }
    cfg = OmegaConf.create({"_target_": "x.HEp2", "root": "/real", "synthetic_train": None, "batch_size": 8})
    out = eval_data_config(cfg, trained, group_chosen=False, explicit=set())
    assert out.synthetic_train is None and out.root == "/real"


def test_cross_validation_folds_the_real_cells_and_adds_the_synthetic_ones_to_each_training_split(real):
    base, root = real
    settings = {"n_per_class": 4, "cells_per_field": 2, "cache_dir": str(base / "cache")}
    real_paths = None
    tested = []
    for fold in range(3):
        dm = i3a_contest_datamodule(root, folds=3, fold=fold, synthetic_train=settings)
        dm.setup()
        assert len(dm.extra_train_records) == 24
        paths = {r.path for s in ("train", "val", "test") for r in dm.splits[s]}
        real_paths = real_paths or paths
        assert paths == real_paths and not any(
            "synthetic" in (r.group or "") for s in dm.splits.values() for r in s
        )
        tested += [r.path for r in dm.splits["test"]]
    assert sorted(tested) == sorted(real_paths)  # every real cell tested once, no synthetic cell ever
