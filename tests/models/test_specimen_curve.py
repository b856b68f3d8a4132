"""experiments/i3a_cells/specimen_curve.py: fewer training specimens per class, the test cells kept."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
import specimen_curve  # noqa: E402


def _manifest(path: Path, groups: dict[str, tuple[str, str, int]]) -> None:
    """groups: name -> (label, split, cells)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "sha256", "group"])
        n = 0
        for g, (label, split, cells) in groups.items():
            for _ in range(cells):
                n += 1
                w.writerow([f"{n:05d}.png", label, split, "x", g])


def test_plan_keeps_the_test_cells_and_nested_groups_with_the_steps_held(tmp_path):
    cv = tmp_path / "cv"
    groups = {f"A#{i}": ("A", "train", 10 + i) for i in range(4)} | {
        f"B#{i}": ("B", "train", 20) for i in range(3)
    }
    groups |= {"A#9": ("A", "test", 7), "B#9": ("B", "test", 5)}
    for fold in ("0", "1"):
        _manifest(cv / fold / "split_manifest.csv", groups)
        (cv / fold / "metrics.json").write_text(json.dumps({"test/mca": 0.8 + 0.1 * int(fold)}))
    lines = specimen_curve.plan(cv, tmp_path / "curve", [1, 2], seed=0)
    assert [ln["run"] for ln in lines] == ["k1_f0", "k2_f0", "k1_f1", "k2_f1"]
    for fold in ("0", "1"):
        k1, k2 = (list(csv.DictReader(open(tmp_path / "curve" / f"k{k}_f{fold}.csv"))) for k in (1, 2))
        for rows, k in ((k1, 1), (k2, 2)):
            assert sum(r["split"] == "test" for r in rows) == 12  # every test cell, whatever k
            train_groups = {r["group"] for r in rows if r["split"] == "train"}
            assert sorted(g[0] for g in train_groups) == sorted(["A", "B"] * k)  # k groups of each class
        assert {r["group"] for r in k1} <= {r["group"] for r in k2}  # nested draws
    line = lines[1]
    assert line["full_train_cells"] == 46 + 60 and line["epochs"] == round(10 * 106 / line["train_cells"])
    (tmp_path / "curve" / "runs" / "k1_f0").mkdir(parents=True)
    (tmp_path / "curve" / "runs" / "k1_f0" / "metrics.json").write_text(json.dumps({"test/mca": 0.5}))
    text = specimen_curve.table(cv, tmp_path / "curve")
    assert "| 0 | 0.500 | — | 0.800 |" in text and "all (the CV's jobs)" in text
    assert specimen_curve.plot(cv, tmp_path / "curve", tmp_path / "curve.png").stat().st_size > 1000


def test_a_cv_with_validation_cells_is_refused(tmp_path):
    _manifest(
        tmp_path / "cv" / "0" / "split_manifest.csv", {"A#0": ("A", "train", 3), "A#1": ("A", "val", 3)}
    )
    with pytest.raises(SystemExit, match="validation cells"):
        specimen_curve.plan(tmp_path / "cv", tmp_path / "out", [1], 0)


def test_subsample_takes_every_group_of_a_class_with_k_or_fewer():
    rows = [{"label": "A", "split": "train", "group": f"A#{i}"} for i in range(2)]
    kept, chosen = specimen_curve.subsample(rows, 3, np.random.default_rng(0))
    assert len(kept) == 2 and sorted(chosen["A"]) == ["A#0", "A#1"]
