"""experiments/i3a_cells/ensemble_check.py: models of the same folds, averaged, against each alone."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
import ensemble_check  # noqa: E402

SPLITS = {
    0: {"a.png": "train", "b.png": "val", "c.png": "test"},
    1: {"a.png": "val", "b.png": "train", "c.png": "test"},
}


def _sweep(root: Path, splits=SPLITS) -> Path:
    for fold, split in splits.items():
        job = root / str(fold)
        (job / "checkpoints").mkdir(parents=True)
        (job / "checkpoints" / "final-epoch009.ckpt").write_bytes(b"")
        (job / "config_resolved.yaml").write_text(f"data:\n  folds: {len(splits)}\n  fold: {fold}\n")
        rows = ["path,label,split"] + [f"{p},AC-1,{s}" for p, s in split.items()]
        (job / "split_manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def _evaluated(folder: Path, mca: float, split: str = "val", cells: int = 40, key: str | None = None) -> None:
    """An ``ana-eval`` output folder: its MCA under ``<split>/mca`` (or ``key``)."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({key or f"{split}/mca": mca}))
    (folder / "evaluated.txt").write_text(f"checkpoint: x.ckpt\nsplit: {split}\nimages: {cells}\n")


def test_the_table_pairs_the_ensemble_with_its_members_by_fold(tmp_path, monkeypatch, capsys):
    a, b, work = _sweep(tmp_path / "seed42"), _sweep(tmp_path / "seed43"), tmp_path / "work"
    # fold 0: members 0.70 / 0.74, ensemble 0.75 (+0.03 over their mean); fold 1: 0.60 / 0.62, ensemble 0.60 (-0.01)
    for name, mca in {
        "m0_f0": 0.70,
        "m1_f0": 0.74,
        "ens_f0": 0.75,
        "m0_f1": 0.60,
        "m1_f1": 0.62,
        "ens_f1": 0.60,
    }.items():
        _evaluated(work / name, mca)
    (work / "m0_f1" / "metrics.json").write_text(json.dumps({"test/mca": 0.60}))  # written before val/* keys
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a finished evaluation was run again"))
    monkeypatch.setattr(
        sys,
        "argv",
        ["ensemble_check.py", str(a), str(b), "--work", str(work), "--out-md", str(tmp_path / "t.md")],
    )
    ensemble_check.main()
    text = capsys.readouterr().out
    assert "| f0 | 40 | 0.700 | 0.740 | 0.720 | 0.750 | +0.030 | +0.050 |" in text
    assert "| f1 | 40 | 0.600 | 0.620 | 0.610 | 0.600 | -0.010 | +0.000 |" in text
    assert "**+0.010** [" in text and "higher in 1 of 2" in text
    assert "The members differ by 0.020–0.040 MCA within a fold" in text
    assert text == (tmp_path / "t.md").read_text() + "\n"  # --out-md holds the printed table


def test_missing_evaluations_run_ana_eval_on_the_kept_checkpoints(tmp_path, monkeypatch):
    a, b, work = _sweep(tmp_path / "A"), _sweep(tmp_path / "B"), tmp_path / "work"
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        out = Path(next(c for c in cmd if c.startswith("hydra.run.dir=")).split("=", 1)[1])
        _evaluated(out, 0.5)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    rows = ensemble_check.evaluate(ensemble_check.paired_folds([a, b]), work, "val")
    assert len(calls) == 6 and [r["fold"] for r in rows] == ["f0", "f1"]
    ens = [c for c in calls if any(x.startswith("ensemble.members=") for x in c)]
    assert len(ens) == 2
    members = next(x for x in ens[0] if x.startswith("ensemble.members="))
    assert (
        members
        == f"ensemble.members=[{a / '0/checkpoints/final-epoch009.ckpt'},{b / '0/checkpoints/final-epoch009.ckpt'}]"
    )
    assert all("split=val" in c for c in calls)


def test_an_evaluation_of_another_split_is_not_reused(tmp_path, monkeypatch):
    a, b, work = _sweep(tmp_path / "A"), _sweep(tmp_path / "B"), tmp_path / "work"
    _evaluated(work / "m0_f0", 0.9, split="test")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        out = Path(next(c for c in cmd if c.startswith("hydra.run.dir=")).split("=", 1)[1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluated.txt").write_text("checkpoint: x\nsplit: val\nimages: 40\n")
        (out / "metrics.json").write_text(json.dumps({"val/mca": 0.5}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    rows = ensemble_check.evaluate(ensemble_check.paired_folds([a, b]), work, "val")
    assert rows[0]["members"][0] == 0.5  # the test-split evaluation was done again on val


def test_sweeps_of_other_folds_are_refused_before_any_evaluation(tmp_path):
    other = {0: SPLITS[0], 1: {"a.png": "train", "b.png": "val", "c.png": "test"}}
    a, b = _sweep(tmp_path / "A"), _sweep(tmp_path / "B", other)
    with pytest.raises(
        SystemExit, match=r"B/1/split_manifest.csv and .*A/1/split_manifest.csv split the cells differently"
    ):
        ensemble_check.paired_folds([a, b])


def test_a_failed_evaluation_names_its_log(tmp_path, monkeypatch):
    a, b = _sweep(tmp_path / "A"), _sweep(tmp_path / "B")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(SystemExit, match=r"ana-eval failed \(exit 1\); its output is in .*m0_f0.log"):
        ensemble_check.evaluate(ensemble_check.paired_folds([a, b]), tmp_path / "work", "val")
