"""experiments/i3a_cells/size_check.py: cell size against accuracy, from written predictions and masks."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
from size_check import cell_size, main, read_predictions, size_table  # noqa: E402


def _cell(root: Path, name: str, side: int, radius: int) -> None:
    yy, xx = np.indices((side, side))
    disc = (yy - side // 2) ** 2 + (xx - side // 2) ** 2 <= radius**2
    Image.fromarray((disc * 40).astype(np.uint8)).save(root / f"{name}.png")
    Image.fromarray((disc * 255).astype(np.uint8)).save(root / f"{name}_Mask.png")


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def cv(tmp_path):
    """A CV folder: group A (big cells, all right), C (medium, 3 of 4 right), B (small, half right);
    within B and C the smallest cells are the wrong ones."""
    root, cv = tmp_path / "cells", tmp_path / "cv"
    root.mkdir(), cv.mkdir()
    preds, manifest = [], []
    for i, (group, true, side, radius, pred) in enumerate(
        [("A#0", "Homogeneous", 60, 24, "Homogeneous")] * 4
        + [("B#0", "Speckled", 40, r, p) for r, p in [(10, "Centromere"), (11, "Centromere"), (16, "Speckled"), (17, "Speckled")]]
        + [("C#0", "Nucleolar", 50, r, p) for r, p in [(18, "Golgi"), (19, "Nucleolar"), (20, "Nucleolar"), (21, "Nucleolar")]]
    ):  # fmt: skip
        name = f"{i:05d}"
        _cell(root, name, side, radius)
        preds.append(
            {"repeat": 0, "fold": i % 2, "path": str(root / f"{name}.png"), "true": true, "pred": pred}
        )
        manifest.append({"repeat": 0, "fold": i % 2, "path": f"{name}.png", "label": true, "group": group})
    _write(cv / "oof_predictions.csv", preds)
    _write(cv / "folds_manifest.csv", manifest)
    return root, cv


def test_size_table_per_group_and_within_specimens(cv):
    root, folder = cv
    rows = read_predictions(folder, root)
    assert [r["path"] for r in rows][:2] == [
        "00000.png",
        "00001.png",
    ]  # absolute paths read as manifest paths
    sizes = [cell_size(root, r["path"]) for r in rows]
    assert sizes[0][0] == 60 and sizes[0][1] == pytest.approx(
        48, rel=0.05
    )  # a disc of radius 24: diameter ~48
    table = size_table(rows, sizes)
    by_group = {g["group"]: g for g in table["groups"]}
    assert by_group["A#0"]["accuracy"] == 1.0 and by_group["B#0"]["accuracy"] == 0.5
    assert by_group["B#0"]["top"] in {"Centromere", "Speckled"} and by_group["B#0"]["side"] == 40
    assert sum(q["cells"] for q in table["quintiles"]) == len(rows)
    # within group B the two smaller cells are the wrong ones: the smallest quintile is below its group
    assert table["quintiles"][0]["vs_group"] < 0 < table["quintiles"][-1]["vs_group"] + 1e-9
    assert table["r"] > 0.9  # the bigger a group's cells, the more accurate the group


def test_size_check_reads_fold_manifests_and_names_bad_input(cv, tmp_path, capsys):
    root, folder = cv
    # a CV run with data.folds_manifest elsewhere: the groups come from its folds' split manifests
    manifest = list(csv.DictReader(open(folder / "folds_manifest.csv")))
    (folder / "folds_manifest.csv").unlink()
    (folder / "0").mkdir()
    _write(folder / "0" / "split_manifest.csv", [{**r, "split": "test"} for r in manifest])
    out = tmp_path / "table.md"
    main([str(folder), "--root", str(root), "--out", str(out)])
    assert "| Speckled | B#0 | 4 | 0.50 |" in out.read_text() and "r = " in capsys.readouterr().out
    (root / "00003_Mask.png").unlink()
    with pytest.raises(SystemExit, match="00003_Mask.png"):
        main([str(folder), "--root", str(root)])
    with pytest.raises(SystemExit, match="is in no split manifest"):
        read_predictions(folder, tmp_path / "elsewhere")
    with pytest.raises(SystemExit, match="oof_predictions.csv"):
        read_predictions(tmp_path, root)
