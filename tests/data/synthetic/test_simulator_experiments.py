"""The realism report's statistics and the transfer benchmark's pieces, on synthetic cells only."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from conftest import REPO


def _load(name: str, rel: str):
    sys.path.insert(0, str((REPO / rel).parent))
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def report():
    return _load("realism_report", "experiments/simulator_realism/report.py")


@pytest.fixture(scope="module")
def cells(report):
    return report.synthetic_cells(40, seed=0), report.synthetic_cells(40, seed=1)


def test_same_simulator_is_hard_to_tell_apart_and_a_changed_one_is_not(report, cells):
    a, b = cells
    fa = report.features_of(a["Speckled"])
    fb = report.features_of(b["Speckled"])
    same = report.compare(fa, fb)
    assert same["cv_folds"] == 5 and same["auc"] < 0.75 and same["ks_area"] < 0.35
    brighter = [
        (np.clip(img.astype(np.int32) * 3, 0, 255).astype(np.uint8), m, g) for img, m, g in b["Speckled"]
    ]
    changed = report.compare(fa, report.features_of(brighter))
    assert changed["auc"] > 0.9 and changed["ks_mean"] > same["ks_mean"]
    assert set(report.vector(fa[0]).shape) == {6 + 10 + 3 + 8}


def test_block_grouping_keeps_consecutive_ids_together(report):
    mod = sys.modules["cells"]
    from ana_lightning.data.records import ImageRecord

    recs = [ImageRecord(f"/x/{i:05d}.png", ("AC-1" if i < 600 else "AC-3",)) for i in range(1, 800)]
    grouped = mod._block_groups(recs, min_size=250)
    groups = {}
    for r in grouped:
        groups.setdefault(r.group, []).append(int(r.path[-9:-4]))
    assert all(max(v) - min(v) + 1 == len(v) and len(v) >= 199 for v in groups.values())
    assert len(groups) == 2 + 1  # 599 AC-1 cells: two blocks; 200 AC-3 cells: one


def test_transfer_pieces(tmp_path):
    run = _load("transfer_run", "experiments/simulator_transfer/run.py")
    img = np.full((40, 40), 20, np.uint8)
    img[10:30, 10:30] = 60
    mask = np.zeros((40, 40), bool)
    mask[8:32, 8:32] = True
    x = run.prepare(img, mask, 16, normalise=True)
    assert x.shape == (16, 16) and x.max() == pytest.approx(1.0, abs=0.05) and x.min() == 0.0
    assert run.prepare(img * 2 // 2, mask, 16, normalise=False).max() < 1.0  # raw scaling keeps dim cells dim
    items = [(f"p{i}", f"m{i}", i % 6) for i in range(60)]
    assert sorted(it[2] for it in run.k_shot(items, 3, seed=0)) == sorted(list(range(6)) * 3)
    assert run.steps_for(5, 80) == 40 and run.steps_for(200, 80) == 160
