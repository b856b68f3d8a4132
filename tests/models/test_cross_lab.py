"""experiments/i3a_cells/cross_lab.py: fold models of two recipes on the same cells, paired by fold."""

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
from cross_lab import main, read_evals, tables  # noqa: E402


def _eval(folder: Path, name: str, mca: float, numem: float) -> None:
    d = folder / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(
        json.dumps({"test/mca": mca, "test/mca_ci95_low": mca - 0.1, "test/mca_ci95_high": mca + 0.1})
    )
    with open(d / "test_per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "name", "precision", "recall", "f1", "support"])
        w.writerow(["Homogeneous", "AC-1 Nuclear homogeneous", 0.5, 0.8, 0.6, 10])
        w.writerow(["NuMem", "ICAP node *nuclear envelope* (AC-11, AC-12)", 0.5, numem, 0.6, 10])


def test_cross_lab_pairs_folds_against_the_base(tmp_path, capsys):
    for k, (base, cand) in enumerate([(0.50, 0.60), (0.55, 0.58), (0.60, 0.59)]):
        _eval(tmp_path, f"recipe{k}", base, 0.1)
        _eval(tmp_path, f"plateau{k}", cand, 0.4)
    _eval(tmp_path, "baseA", 0.52, 0.0)  # a single model: listed, not paired
    evals = read_evals(tmp_path)
    assert set(evals) == {"recipe", "plateau", "baseA"} and set(evals["plateau"]) == {0, 1, 2}
    single = evals["baseA"][None]
    assert list(evals["baseA"]) == [None] and single["mca"] == 0.52 and single["low"] == pytest.approx(0.42)
    assert single["recall"] == {"Homogeneous": 0.8, "NuMem": 0.0}
    text = tables(evals, "recipe")
    assert "| baseA |  | 0.520 | [0.420, 0.620] | 0.80 | 0.00 |" in text
    # plateau − recipe per fold: +0.10, +0.03, −0.01 → mean +0.040, higher in 2 of 3, NuMem recall 0.40
    row = next(line for line in text.splitlines() if line.startswith("| plateau | 0.590 |"))
    assert "| +0.040 |" in row and "| 2 of 3 |" in row and row.endswith("| 0.40 |")
    assert not any(line.startswith("| baseA | ") and "of" in line for line in text.splitlines())
    out = tmp_path / "out" / "t.md"
    main([str(tmp_path), "--out", str(out)])
    assert out.read_text() == text and "Paired by fold" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--base other"):
        tables(evals, "other")
    with pytest.raises(SystemExit, match="no ana-eval folders"):
        read_evals(tmp_path / "out")
