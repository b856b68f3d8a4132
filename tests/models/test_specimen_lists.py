"""experiments/i3a_cells/specimen_lists.py: what a lab reads per specimen of a grouped CV."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
from specimen_lists import main, specimen_rows, summary  # noqa: E402

CLASSES = ["Centromere", "Golgi", "Speckled"]


def _sweep(tmp_path: Path, specimens: dict[str, tuple[str, list[list[float]]]], repeat: int = 0) -> Path:
    """A CV sweep folder with an oof_predictions.csv and folds_manifest.csv: ``specimens`` maps a group to
    its true class and its cells' probabilities."""
    sweep = tmp_path / "cv"
    sweep.mkdir()
    oof, manifest = [], []
    for g, (true, cells) in specimens.items():
        for i, p in enumerate(cells):
            path = f"{g.replace('#', '_')}_{i}.png"
            pred = CLASSES[int(np.argmax(p))]
            oof.append(
                {"repeat": repeat, "fold": 0, "path": path, "true": true, "pred": pred}
                | {f"p_{c}": v for c, v in zip(CLASSES, p, strict=True)}
            )
            manifest.append(
                {
                    "repeat": repeat,
                    "fold": 0,
                    "path": path,
                    "label": true,
                    "sha256": path,
                    "group": g,
                    "seed": 0,
                }
            )
    for name, rows in (("oof_predictions.csv", oof), ("folds_manifest.csv", manifest)):
        with open(sweep / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return sweep


SPECIMENS = {
    "centromere#0": ("Centromere", [[0.9, 0.05, 0.05]] * 6),  # right, confident
    "golgi#0": ("Golgi", [[0.15, 0.65, 0.2]] * 3 + [[0.5, 0.3, 0.2]] * 3),  # right, Centromere listed second
    # wrong, but the truth is a close second: listed (>= 0.25), so flagged
    "speckled#0": ("Speckled", [[0.55, 0.05, 0.40]] * 3 + [[0.45, 0.05, 0.50]] * 2),
    # wrong and confident: the report names one wrong pattern
    "speckled#1": ("Speckled", [[0.92, 0.03, 0.05]] * 5),
}


def test_each_specimen_is_combined_listed_and_flagged_as_the_lab_report_would(tmp_path):
    rows, rep = specimen_rows(_sweep(tmp_path, SPECIMENS))
    by = {r["specimen"]: r for r in rows}
    assert rep == 0 and len(rows) == 4
    assert by["centromere#0"]["right"] and by["golgi#0"]["right"]
    assert by["golgi#0"]["cells_right"] == pytest.approx(0.5) and by["golgi#0"]["listed"] == [
        "Golgi",
        "Centromere",
    ]
    s0, s1 = by["speckled#0"], by["speckled#1"]
    assert s0["leading"] == "Centromere" and s0["listed"] == ["Centromere", "Speckled"]
    assert s0["true_listed"] and s0["flagged"] and not s0["right"]
    assert s1["listed"] == ["Centromere"] and not s1["true_listed"] and not s1["flagged"]
    # mean_log: the normalised geometric mean of the cells
    geo = np.exp(np.log(np.array([[0.55, 0.05, 0.40]] * 3 + [[0.45, 0.05, 0.50]] * 2)).mean(0))
    assert s0["p_leading"] == pytest.approx(geo[0] / geo.sum()) and s0["p_true"] == pytest.approx(
        geo[2] / geo.sum()
    )
    s = summary(rows)
    assert (s["specimens"], s["right"], s["true_listed"], s["wrong_flagged"]) == (4, 2, 3, 1)
    assert (s["several_listed_right"], s["several_listed_wrong"]) == (1, 1)


def test_a_wrong_specimen_less_sure_than_every_right_one_is_flagged_and_a_stricter_list_drops_the_second(
    tmp_path,
):
    spec = dict(SPECIMENS)
    spec["speckled#1"] = (
        "Speckled",
        [[0.4, 0.35, 0.25]] * 5,
    )  # leading 0.4 < every right specimen's (golgi#0: 0.48)
    rows, _ = specimen_rows(_sweep(tmp_path, spec), min_prob=0.45)
    by = {r["specimen"]: r for r in rows}
    assert by["speckled#1"]["flagged"] and not by["speckled#1"]["true_listed"]
    assert by["speckled#0"]["listed"] == ["Centromere"]  # the truth (0.44) no longer reaches 0.45
    assert not by["speckled#0"]["flagged"]  # and its leading probability is above golgi#0's


def test_the_report_is_written_and_bad_sweeps_are_named(tmp_path, capsys):
    sweep = _sweep(tmp_path, SPECIMENS, repeat=1)
    out = tmp_path / "r" / "lists.md"
    main([str(sweep), "--out-md", str(out)])
    text = out.read_text()
    assert "repeat 1" in text and "**2 of 4**" in text and "wrong, not flagged" in text
    assert text in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no predictions for repeat 0"):
        specimen_rows(sweep, repeat=0)
    (sweep / "oof_predictions.csv").unlink()
    with pytest.raises(SystemExit, match="oof_predictions.csv is missing"):
        specimen_rows(sweep)
