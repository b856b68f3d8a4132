"""experiments/i3a_cells/plateau_check.py: each cell's plateau beside how a grouped CV read it."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
from plateau_check import bin_recall, cell_rows, main, plateau, specimen_table  # noqa: E402

CLASSES = ["Centromere", "Speckled"]


def _cell(level: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """24 px: slide at 10, a 16 px nucleus at ``level`` with eight dots at 200; its mask."""
    x = np.full((24, 24), 10, np.uint8)
    x[4:20, 4:20] = level
    for r, c in rng.integers(6, 18, (8, 2)):
        x[r : r + 2, c : c + 2] = 200
    m = np.zeros((24, 24), np.uint8)
    m[4:20, 4:20] = 255
    return x, m


# specimen: (true class, nucleus level, what the fold model read)
SPECIMENS = {
    "AC-3#0": ("Centromere", 20, "Centromere"),  # dots on a dark nucleus: read right
    "AC-3#1": ("Centromere", 150, "Speckled"),  # dots on a bright plateau: read as Speckled
    "AC-3#2": ("Centromere", 80, "Centromere"),  # between: read right
    "speckled#0": ("Speckled", 150, "Speckled"),
    "speckled#1": ("Speckled", 20, "Centromere"),
}


def _sweep(tmp_path: Path, n: int = 5) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    root, sweep = tmp_path / "i3a", tmp_path / "cv"
    root.mkdir()
    sweep.mkdir()
    gt, oof, manifest, i = ["Image ID,Image class"], [], [], 0
    for g, (true, level, pred) in SPECIMENS.items():
        for _ in range(n):
            i += 1
            x, m = _cell(level, rng)
            Image.fromarray(x).save(root / f"{i:05d}.png")
            Image.fromarray(m).save(root / f"{i:05d}_Mask.png")
            gt.append(f"{i:05d},{true}")
            path = f"{i:05d}.png"
            p = [0.8, 0.2] if pred == "Centromere" else [0.2, 0.8]
            oof.append(
                {
                    "repeat": 0,
                    "fold": 0,
                    "path": path,
                    "true": true,
                    "pred": pred,
                    "p_Centromere": p[0],
                    "p_Speckled": p[1],
                }
            )
            manifest.append(
                {"repeat": 0, "fold": 0, "path": path, "label": true, "sha256": "", "group": g, "seed": 0}
            )
    (root / "gt_training.csv").write_text("\n".join(gt) + "\n")
    for name, rows in (("oof_predictions.csv", oof), ("folds_manifest.csv", manifest)):
        with open(sweep / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return sweep, root


def test_plateau_is_the_normalised_level_under_the_dots():
    rng = np.random.default_rng(1)
    dark, bright = plateau(*_cell(20, rng)), plateau(*_cell(150, rng))
    assert dark == pytest.approx((20 - 10) / 190, abs=0.01)  # background 10 out, 99th percentile 200 in
    assert bright == pytest.approx((150 - 10) / 190, abs=0.01)
    rgb = np.stack(
        [np.zeros((24, 24), np.uint8), _cell(150, np.random.default_rng(1))[0], np.zeros((24, 24), np.uint8)],
        2,
    )
    assert plateau(rgb, _cell(150, rng)[1]) == pytest.approx(bright, abs=1e-6)  # green cells read as grey


def test_specimens_and_bins_follow_the_reading(tmp_path):
    sweep, root = _sweep(tmp_path)
    rows, rep = cell_rows(sweep, root, CLASSES)
    assert rep == 0 and len(rows) == 25
    table = {s["specimen"]: s for s in specimen_table(rows)}
    assert table["AC-3#1"]["plateau"] > 0.6 > 0.3 > table["AC-3#0"]["plateau"]
    assert (table["AC-3#0"]["right"], table["AC-3#1"]["right"]) == (1.0, 0.0)
    assert table["speckled#1"]["read_as"] == "Centromere"
    bins = bin_recall(rows, CLASSES)
    assert bins["Centromere"][0] == (5, 1.0) and bins["Centromere"][-1] == (5, 0.0)
    assert bins["Speckled"][0] == (5, 0.0) and bins["Speckled"][-1] == (5, 1.0)
    assert bins["Speckled"][1][0] == 0 and bins["Centromere"][1] == (5, 1.0)  # AC-3#2 at 70 / 190


def test_report_and_clear_errors(tmp_path, capsys):
    sweep, root = _sweep(tmp_path)
    out = tmp_path / "plateau.md"
    main([str(sweep), "--root", str(root), "--out-md", str(out)])
    text = out.read_text()
    assert "| Centromere | AC-3#1 | 5 | 0.74" in text and "Centromere (3 specimens): -0.87" in text
    with pytest.raises(SystemExit, match="no such true class"):
        main([str(sweep), "--root", str(root), "--classes", "Golgi"])
    with pytest.raises(SystemExit, match="oof_predictions.csv is missing"):
        main([str(tmp_path / "nothing"), "--root", str(root)])
    with pytest.raises(SystemExit, match="no predictions for repeat 3"):
        main([str(sweep), "--root", str(root), "--repeat", "3"])
