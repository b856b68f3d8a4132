"""Cross-validation sweeps: the summary (cv_summary.*, oof_predictions.csv), ana-eval on a sweep
folder, and ana-compare; fast tests on hand-made sweep folders, one real multirun (slow)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from ana_lightning.compare import CompareError, compare_sweeps
from ana_lightning.crossval import CVSummaryError, summarize_sweep
from ana_lightning.data.records import ImageRecord
from ana_lightning.data.splits import FOLDS_MANIFEST, load_folds_manifest, sweep_folds
from ana_lightning.stats import label_matrix, point_metrics

from conftest import tiny_train_overrides, write_class_images

BIN = Path(sys.executable).parent
CLASSES = ["AC-1", "AC-2", "AC-4"]


def _fake_sweep(
    root: Path,
    sweep: Path,
    folds: int = 4,
    repeats: int = 1,
    acc: float = 0.7,
    seed: int = 0,
    fold_seed: int = 0,
) -> dict:
    """A sweep folder as ana-train leaves it: folds manifest, and per job config_resolved.yaml,
    metrics.json, split_manifest.csv and test_predictions.csv (random predictions)."""
    rng = np.random.default_rng(seed)
    recs = [
        ImageRecord(str(root / c / f"{i}.png"), (c,), f"p{i // 2}" if c == "AC-4" else None, f"{c}{i}")
        for c, n in zip(CLASSES, (12, 9, 8), strict=True)
        for i in range(n)
    ]
    maps = sweep_folds(recs, sweep / FOLDS_MANIFEST, folds, repeats, seed=fold_seed, root=root)
    fold_metrics = {}
    for rep in range(repeats):
        for k in range(folds):
            job = sweep / str(rep * folds + k)
            job.mkdir(parents=True)
            test = sorted((r for r in recs if maps[rep][r.path] == k), key=lambda r: r.path)
            cfg = {
                "data": {
                    "folds": folds,
                    "fold": k,
                    "repeats": repeats,
                    "repeat": rep,
                    "folds_manifest": str(sweep / FOLDS_MANIFEST),
                }
            }
            (job / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
            with open(job / "split_manifest.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "label", "split", "sha256", "group"])
                w.writerows(
                    [Path(r.path).relative_to(root).as_posix(), r.label, "test", r.sha256, r.group or ""]
                    for r in test
                )
            true = [r.label for r in test]
            pred = [t if rng.random() < acc else CLASSES[(CLASSES.index(t) + 1) % 3] for t in true]
            with open(job / "test_predictions.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "true", "pred", "confidence", *[f"p_{c}" for c in CLASSES]])
                for r, t, p in zip(test, true, pred, strict=True):
                    w.writerow([r.path, t, p, "0.9", *["0.9" if c == p else "0.05" for c in CLASSES]])
            m = point_metrics(label_matrix(true, CLASSES), label_matrix(pred, CLASSES))
            metrics = {
                "test/mca": m["mca"],
                "test/acc": m["acc"],
                "test/loss": float(rng.random()),
                "test/mca_ci95_low": 0.0,
                "test/mca_ci95_high": 1.0,
            }
            (job / "metrics.json").write_text(json.dumps(metrics))
            fold_metrics[(rep, k)] = metrics
    return {"records": recs, "metrics": fold_metrics}


def test_summary_mean_sd_and_oof_every_image_once(tmp_path, caplog):
    caplog.set_level("INFO", logger="ana_lightning.crossval")
    sweep = tmp_path / "sweep"
    made = _fake_sweep(tmp_path / "data", sweep, folds=4)
    s = summarize_sweep(sweep, n_boot=200)
    # the sweep ends with one line: the figure per fold with its interval, pooled, and by group
    said = caplog.records[-1].getMessage()
    assert said.startswith(
        f"cross-validation, 4 folds x 1 repeat(s): test/mca {s['test/mca/mean']:.3f} ± {s['test/mca/sd']:.3f} "
        f"[{s['test/mca/ci95_low']:.3f}, {s['test/mca/ci95_high']:.3f}] per fold over 4 fold job(s); "
        f"pooled oof/mca {s['oof/mca']:.3f} [{s['oof/mca_ci95_low']:.3f}, {s['oof/mca_ci95_high']:.3f}]; "
        f"{s['oof/groups_right']} of 4 groups read as their class by majority"
    ), said
    for m in ("test/mca", "test/acc", "test/loss"):
        vals = [v[m] for v in made["metrics"].values()]
        assert s[f"{m}/mean"] == pytest.approx(np.mean(vals))
        assert s[f"{m}/sd"] == pytest.approx(np.std(vals, ddof=1))
        assert s[f"{m}/n_folds"] == 4
        assert s[f"{m}/ci95_low"] < s[f"{m}/mean"] < s[f"{m}/ci95_high"]
    assert not any("_ci95_low/" in k for k in s)  # intervals are not summarised as metrics
    assert json.loads((sweep / "cv_summary.json").read_text()) == s
    with open(sweep / "oof_predictions.csv", newline="") as f:
        oof = list(csv.DictReader(f))
    assert Counter(r["path"] for r in oof) == Counter(
        r["path"] for r in load_folds_manifest(sweep / FOLDS_MANIFEST)
    )
    assert all(n == 1 for n in Counter(r["path"] for r in oof).values())
    pooled = point_metrics(
        label_matrix([r["true"] for r in oof], CLASSES), label_matrix([r["pred"] for r in oof], CLASSES)
    )
    assert s["oof/mca"] == pytest.approx(pooled["mca"]) and s["oof/acc"] == pytest.approx(pooled["acc"])
    assert s["oof/mca_ci95_low"] <= s["oof/mca"] <= s["oof/mca_ci95_high"]
    assert (sweep / "oof_confusion_matrix.png").stat().st_size > 1000
    md = (sweep / "cv_summary.md").read_text()
    assert "| `test/mca` |" in md and "## Per fold" in md and "oof_confusion_matrix.png" in md
    assert (
        "no validation split" in md
    )  # its jobs logged no val/… metric (validation carved: said so otherwise)
    # by group: only the named groups (AC-4's p0…p3) count; a group is right when its class wins outright
    group = {
        Path(r.path).relative_to(tmp_path / "data").as_posix(): r.group for r in made["records"] if r.group
    }
    assert {r["path"] for r in oof} >= set(group)  # the pooled predictions name images as the manifest does
    votes = {g: Counter(r["pred"] for r in oof if group.get(r["path"]) == g) for g in set(group.values())}
    right = sum(v["AC-4"] > max([n for c, n in v.items() if c != "AC-4"], default=0) for v in votes.values())
    assert s["oof/n_groups"] == 4 and s["oof/groups_right"] == right
    assert s["oof/group_majority_acc"] == pytest.approx(right / 4)
    assert f"{right} of 4 groups are read as their class" in md


def test_summary_by_group_needs_named_groups_and_calls_a_tie_no_verdict(tmp_path):
    from ana_lightning.crossval import _group_majority

    oof = [
        {"repeat": "0", "path": p, "true": t, "pred": q}
        for p, t, q in [
            ("a1", "X", "X"),
            ("a2", "X", "Y"),
            ("b1", "Y", "Y"),
            ("b2", "Y", "Y"),
            ("c1", "X", "X"),
        ]
    ]
    out = _group_majority(oof, [0], {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c1": "C"})
    assert out == {"oof/n_groups": 3, "oof/groups_right": 2, "oof/group_majority_acc": pytest.approx(2 / 3)}
    assert _group_majority(oof, [0], {}) == {}  # no named groups: no figure


def test_summary_with_repeats_and_a_missing_fold(tmp_path, caplog):
    caplog.set_level("INFO", logger="ana_lightning.crossval")
    sweep = tmp_path / "sweep"
    _fake_sweep(tmp_path / "data", sweep, folds=3, repeats=2)
    shutil.rmtree(sweep / "4")  # repeat 1, fold 1 never ran
    s = summarize_sweep(sweep, n_boot=100)
    assert s["test/mca/n_folds"] == 5 and s["missing_folds"] == ["repeat 1 fold 1"]
    said = caplog.records[-1].getMessage()
    assert (
        said.startswith("cross-validation, 3 folds x 2 repeat(s): test/mca ") and "over 5 fold job(s)" in said
    )
    assert said.endswith("; INCOMPLETE: 1 fold job(s) without metrics"), said
    with open(sweep / "oof_predictions.csv", newline="") as f:
        oof = list(csv.DictReader(f))
    per_rep = Counter(r["repeat"] for r in oof)
    assert per_rep["0"] == 29 and per_rep["1"] < 29
    assert (
        "Incomplete" in (sweep / "cv_summary.md").read_text()
        and "Coverage" in (sweep / "cv_summary.md").read_text()
    )


def test_a_sweep_of_a_later_repeat_only_gets_its_pooled_interval(tmp_path):
    """data.repeats=2 data.repeat=1 alone (a second repeat run on its own): the pooled figure, its interval
    over groups and the group count come from repeat 1, and the summary says so."""
    sweep = tmp_path / "sweep"
    _fake_sweep(tmp_path / "data", sweep, folds=3, repeats=2)
    for job in ("0", "1", "2"):  # repeat 0 never ran
        shutil.rmtree(sweep / job)
    s = summarize_sweep(sweep, n_boot=100)
    assert s["oof/repeat_of_interval"] == 1 and s["oof/n_images"] == 29
    assert s["oof/mca_ci95_low"] <= s["oof/mca"] <= s["oof/mca_ci95_high"]
    assert s["oof/n_groups"] == 4
    md = (sweep / "cv_summary.md").read_text()
    assert "(29 images in repeat 1)" in md and "cluster bootstrap (by group) on repeat 1" in md
    assert "groups are read as their class by the majority of their images (repeat 1)" in md


def test_repeats_run_in_sweeps_of_their_own_give_the_summary_of_one_sweep(tmp_path):
    """Repeats run at other times (``data.repeats=2 data.repeat=1`` in a sweep of its own) are summarised
    together with ``ana-eval 'sweep_dir=[A,B]'``: the same figures as one sweep holding every job."""
    from omegaconf import OmegaConf

    from ana_lightning.crossval import evaluate_sweep

    full = tmp_path / "full"
    _fake_sweep(tmp_path / "data", full, folds=3, repeats=2)
    whole = summarize_sweep(full, out_dir=tmp_path / "whole", n_boot=100)
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(full, a)
    shutil.copytree(full, b)
    for job in ("3", "4", "5"):  # sweep a ran repeat 0, sweep b repeat 1
        shutil.rmtree(a / job)
    for job in ("0", "1", "2"):
        shutil.rmtree(b / job)
    cfg = OmegaConf.create({"sweep_dir": [str(a), str(b)], "paths": {"output_dir": str(tmp_path / "eval")}})
    both, _ = evaluate_sweep(cfg)
    for key in (
        "test/mca/mean",
        "test/mca/sd",
        "test/mca/ci95_low",
        "test/mca/ci95_high",
        "test/mca/n_folds",
    ):
        assert both[key] == pytest.approx(whole[key]), key
    for key in (
        "oof/mca",
        "oof/repeat0/mca",
        "oof/repeat1/mca",
        "oof/group_majority_acc",
        "repeats",
        "folds",
    ):
        assert both[key] == pytest.approx(whole[key]), key
    assert both["missing_folds"] == [] and both["sweeps"] == [str(a), str(b)]
    md = (tmp_path / "eval" / "cv_summary.md").read_text()
    assert md.startswith("# Cross-validation summary: a + b") and "| 1 | 2 | b/5 |" in md
    assert not (a / "cv_summary.json").exists()  # written into the eval folder only
    with pytest.raises(CVSummaryError, match="fold 0 of repeat 0 is tested in .* and in"):
        summarize_sweep([a, full], out_dir=tmp_path / "twice")
    with pytest.raises(CVSummaryError, match="needs a folder of its own"):
        summarize_sweep([a, b])


def test_two_jobs_for_one_fold_and_non_sweeps_are_refused(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_sweep(tmp_path / "data", sweep, folds=3)
    shutil.copytree(sweep / "0", sweep / "3")
    with pytest.raises(CVSummaryError, match="one job per fold"):
        summarize_sweep(sweep)
    with pytest.raises(CVSummaryError, match="not a cross-validation sweep"):
        summarize_sweep(tmp_path / "data")


def test_compare_a_model_with_itself_reports_no_difference(tmp_path):
    _fake_sweep(tmp_path / "data", tmp_path / "a", folds=4, seed=0)
    shutil.copytree(tmp_path / "a", tmp_path / "a_copy")
    r = compare_sweeps(tmp_path / "a", tmp_path / "a_copy", out_dir=tmp_path / "cmp")
    assert r["n_pairs"] == 4 and set(r["metrics"]) == {"test/mca", "test/acc"}
    for m in r["metrics"].values():
        assert m["mean_diff"] == 0 and (m["ci95_low"], m["ci95_high"]) == (0.0, 0.0) and m["p_ttest"] == 1.0
    assert r["mcnemar"][0]["a_only_correct"] == r["mcnemar"][0]["b_only_correct"] == 0
    assert r["mcnemar"][0]["p_mcnemar"] == 1.0 and r["mcnemar"][0]["n_images"] == 29
    # 21 images with no group (each its own) and AC-4's 8 in 4 groups of 2: counted by group too
    assert (
        r["mcnemar"][0]["n_groups"],
        r["mcnemar"][0]["groups_tied"],
        r["mcnemar"][0]["p_sign_groups"],
    ) == (25, 25, 1.0)
    assert (tmp_path / "cmp" / "compare.md").is_file() and json.loads(
        (tmp_path / "cmp" / "compare.json").read_text()
    )


def test_compare_names_a_metric_the_runs_did_not_log(tmp_path, caplog):
    """'metrics=[val/mca_best]' on runs without a validation split: said, not an empty table in silence."""
    _fake_sweep(tmp_path / "data", tmp_path / "a", folds=3, seed=0)
    with caplog.at_level("WARNING", logger="ana_lightning.compare"):
        r = compare_sweeps(tmp_path / "a", tmp_path / "a", metrics=["val/mca_best", "test/mca"])
    assert set(r["metrics"]) == {"test/mca"}
    assert (
        "val/mca_best: in 0 of 3 paired folds" in caplog.text and "without a validation split" in caplog.text
    )


def test_compare_detects_a_better_model_and_refuses_other_folds(tmp_path):
    _fake_sweep(tmp_path / "data", tmp_path / "good", folds=4, acc=0.95, seed=1)
    _fake_sweep(tmp_path / "data", tmp_path / "bad", folds=4, acc=0.3, seed=2, fold_seed=1)
    with pytest.raises(CompareError, match="different folds"):
        compare_sweeps(tmp_path / "good", tmp_path / "bad")
    shutil.rmtree(tmp_path / "bad")
    _fake_sweep(tmp_path / "data", tmp_path / "bad", folds=4, acc=0.3, seed=2)
    r = compare_sweeps(tmp_path / "good", tmp_path / "bad")
    assert r["metrics"]["test/acc"]["mean_diff"] > 0.3 and r["metrics"]["test/acc"]["ci95_low"] > 0
    assert r["mcnemar"][0]["p_mcnemar"] < 0.01
    assert r["mcnemar"][0]["groups_a_better"] > r["mcnemar"][0]["groups_b_better"]


# ---------------------------------------------------------------------------------- real multirun
def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANA_ROOT": str(tmp_path),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _cmd(name: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which(name, path=str(BIN)) or name
    proc = subprocess.run(
        [exe, *args], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.dist
def test_a_sweep_stopped_part_way_is_finished_by_running_it_again_with_ckpt_path_last(tmp_path):
    """The README's recipe for a sweep that stopped part-way: the same sweep into its folder with
    ``ckpt_path=last``. The finished folds train nothing and keep their figures, the missing fold trains
    afresh in its own folder (not from the task's newest run), and the summary covers every fold."""
    data = write_class_images(tmp_path / "data", {"AC-1": 9, "AC-2": 9, "AC-4": 6}, size=32)
    sweep = tmp_path / "outputs" / "sweep"
    common = ["-m", *tiny_train_overrides(data, epochs=1), "data.folds=3", f"hydra.sweep.dir={sweep}"]
    _cmd("ana-train", [*common, "data.fold=0,1"], tmp_path)  # the sweep "stopped" after two folds
    assert json.loads((sweep / "cv_summary.json").read_text())["test/mca/n_folds"] == 2
    done = {k: (sweep / str(k) / "metrics.json").read_bytes() for k in (0, 1)}
    folds = (sweep / "folds_manifest.csv").read_bytes()
    proc = _cmd("ana-train", [*common, "data.fold=range(3)", "ckpt_path=last"], tmp_path)
    log = proc.stdout + proc.stderr
    assert log.count("is finished (1 epochs") == 2 and "this sweep job starts afresh" in log
    assert {k: (sweep / str(k) / "metrics.json").read_bytes() for k in (0, 1)} == done
    assert (sweep / "folds_manifest.csv").read_bytes() == folds
    assert not list(sweep.rglob("resumed_into.txt"))
    s = json.loads((sweep / "cv_summary.json").read_text())
    assert s["test/mca/n_folds"] == 3
    assert json.loads((sweep / "2" / "metrics.json").read_text())["test/mca"] >= 0


@pytest.mark.slow
def test_three_fold_multirun_through_the_console_command(tmp_path):
    data = write_class_images(tmp_path / "data", {"AC-1": 9, "AC-2": 9, "AC-4": 6}, size=32)
    _cmd(
        "ana-train",
        ["-m", *tiny_train_overrides(data, epochs=1), "logger=wandb", "data.folds=3", "data.fold=range(3)"],
        tmp_path,
    )
    (sweep,) = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    s = json.loads((sweep / "cv_summary.json").read_text())
    fold_metrics = [json.loads((sweep / str(k) / "metrics.json").read_text()) for k in range(3)]
    for m in ("test/mca", "test/acc"):
        assert s[f"{m}/mean"] == pytest.approx(np.mean([f[m] for f in fold_metrics]))
        assert s[f"{m}/sd"] == pytest.approx(np.std([f[m] for f in fold_metrics], ddof=1))
        assert s[f"{m}/n_folds"] == 3
    for f in fold_metrics:  # every run's metrics.json has its bootstrap intervals
        assert f["test/mca_ci95_low"] <= f["test/mca"] <= f["test/mca_ci95_high"]
        assert f["test/acc_ci95_low"] <= f["test/acc"] <= f["test/acc_ci95_high"]
    assert " [" in (sweep / "0" / "test_report.md").read_text()
    for k, f in enumerate(
        fold_metrics
    ):  # one MCA definition: the logged metric = the one on the saved predictions
        with open(sweep / str(k) / "test_predictions.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        classes = ["AC-1", "AC-2", "AC-4"]
        m = point_metrics(
            label_matrix([r["true"] for r in rows], classes), label_matrix([r["pred"] for r in rows], classes)
        )
        assert m["mca"] == pytest.approx(f["test/mca"], abs=1e-6) and m["acc"] == pytest.approx(
            f["test/acc"], abs=1e-6
        )
    with open(sweep / "oof_predictions.csv", newline="") as f:
        oof = list(csv.DictReader(f))
    assert sorted(r["path"] for r in oof) == sorted(
        f"{c}/img_{i:03d}.png" for c, n in (("AC-1", 9), ("AC-2", 9), ("AC-4", 6)) for i in range(n)
    )
    tests = [
        {
            r["path"]
            for r in csv.DictReader(open(sweep / str(k) / "split_manifest.csv"))
            if r["split"] == "test"
        }
        for k in range(3)
    ]
    vals = [
        {
            r["path"]
            for r in csv.DictReader(open(sweep / str(k) / "split_manifest.csv"))
            if r["split"] == "val"
        }
        for k in range(3)
    ]
    assert all(vals[k] and not vals[k] & tests[k] for k in range(3))  # validation never from the test fold
    assert (sweep / "oof_confusion_matrix.png").is_file() and (sweep / "cv_summary.md").is_file()
    # W&B: the fold runs share the sweep's group; the summary is one more run of that group.
    summary_runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(summary_runs) == 1
    record = next(summary_runs[0].glob("*.wandb")).read_bytes()
    assert b"oof/mca" in record and f"train-{sweep.name}".encode() in record
    for k in range(3):
        job_record = next(next((sweep / str(k) / "wandb").glob("offline-run-*")).glob("*.wandb")).read_bytes()
        assert f"train-{sweep.name}".encode() in job_record

    # ana-eval on the sweep folder recomputes the same summary from the saved predictions.
    _cmd("ana-eval", [f"sweep_dir={sweep}"], tmp_path)
    (run,) = list((tmp_path / "outputs" / "eval" / "runs").iterdir())
    again = json.loads((run / "cv_summary.json").read_text())
    assert again == s
    # ana-compare of the sweep with itself: no difference.
    _cmd("ana-compare", [f"a={sweep}", f"b={sweep}"], tmp_path)
    (cmp_run,) = list((tmp_path / "outputs" / "compare" / "runs").iterdir())
    c = json.loads((cmp_run / "compare.json").read_text())
    assert c["metrics"]["test/mca"]["mean_diff"] == 0 and c["metrics"]["test/mca"]["p_ttest"] == 1.0


def test_eval_on_a_sweep_without_summary_writes_it_and_never_overwrites(tmp_path):
    from omegaconf import OmegaConf

    from ana_lightning.crossval import evaluate_sweep

    sweep = tmp_path / "sweep"
    _fake_sweep(tmp_path / "data", sweep, folds=3)
    assert not (sweep / "cv_summary.json").exists()  # e.g. the multirun stopped before its end
    cfg = OmegaConf.create({"sweep_dir": str(sweep), "paths": {"output_dir": str(tmp_path / "eval1")}})
    s, _ = evaluate_sweep(cfg)
    assert json.loads((tmp_path / "eval1" / "cv_summary.json").read_text()) == s
    assert (
        json.loads((sweep / "cv_summary.json").read_text()) == s and (sweep / "oof_predictions.csv").is_file()
    )
    (sweep / "cv_summary.md").write_text("the user's notes")
    evaluate_sweep(
        OmegaConf.create({"sweep_dir": str(sweep), "paths": {"output_dir": str(tmp_path / "eval2")}})
    )
    assert (sweep / "cv_summary.md").read_text() == "the user's notes"
    assert (tmp_path / "eval2" / "cv_summary.md").read_text() != "the user's notes"


def test_multilabel_sweep_summary(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_sweep(tmp_path / "data", sweep, folds=3)
    for job in ("0", "1", "2"):  # as a multi-label model writes them: ;-joined sets and n_errors
        with open(sweep / job / "test_predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        with open(sweep / job / "test_predictions.csv", "w", newline="") as f:
            w = csv.DictWriter(
                f, fieldnames=["path", "true", "pred", "n_errors", *[f"p_{c}" for c in CLASSES]]
            )
            w.writeheader()
            for i, r in enumerate(rows):
                pred = r["pred"] + (";AC-5" if i % 2 and r["pred"] != "AC-5" else "") if i % 3 else ""
                w.writerow(
                    {
                        "path": r["path"],
                        "true": r["true"],
                        "pred": pred.replace("AC-5", "AC-4"),
                        "n_errors": 0,
                        **{f"p_{c}": 0.5 for c in CLASSES},
                    }
                )
    s = summarize_sweep(sweep, n_boot=100)
    assert s["oof/multilabel"] is True
    assert {"oof/exact_match", "oof/micro_f1", "oof/mca", "oof/hamming_loss"} <= set(s)
    assert s["oof/exact_match_ci95_low"] <= s["oof/exact_match"] <= s["oof/exact_match_ci95_high"]
    assert (sweep / "oof_per_class_f1.png").is_file() and not (sweep / "oof_confusion_matrix.png").exists()


def test_val_compare_pairs_two_sweeps_by_fold_on_their_best_validation(tmp_path):
    """experiments/i3a_cells/val_compare.py: each fold's best val MCA (metrics.json's val/mca_best, or the
    CSV curve of an older run), paired by fold; sweeps of other folds are refused."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
    from val_compare import compare

    def sweep(name: str, best: list[float], json_best: bool, val_of=lambda k: k) -> Path:
        for k, b in enumerate(best):
            job = tmp_path / name / str(k)
            (job / "csv").mkdir(parents=True)
            (job / "config_resolved.yaml").write_text(yaml.safe_dump({"data": {"folds": 3, "fold": k}}))
            (job / "split_manifest.csv").write_text(
                f"path,label,split,sha256,group\nv{val_of(k)}.png,AC-1,val,x,g\nt{k}.png,AC-1,test,y,h\n"
            )
            curve = [b - 0.1, b, b - 0.05]  # the best at epoch 1
            (job / "csv" / "metrics.csv").write_text(
                "epoch,val/mca\n" + "".join(f"{e},{v}\n" for e, v in enumerate(curve))
            )
            (job / "metrics.json").write_text(
                json.dumps({"test/mca": 0.5, **({"val/mca_best": b} if json_best else {})})
            )
        return tmp_path / name

    a = sweep("cand", [0.70, 0.80, 0.75], json_best=True)
    b = sweep("base", [0.60, 0.82, 0.70], json_best=False)
    text = compare(a, b)
    assert (
        "| 0 | 0.600 (1) | 0.700 (1) | +0.100 |" in text and "| 1 | 0.820 (1) | 0.800 (1) | -0.020 |" in text
    )
    d = [0.10, -0.02, 0.05]
    assert f"**{np.mean(d):+.3f}**" in text and "higher in 2 of 3" in text
    other = sweep("other", [0.7, 0.7, 0.7], json_best=True, val_of=lambda k: k + 1)
    with pytest.raises(SystemExit, match="validate on different cells"):
        compare(other, b)
    (a / "0" / "metrics.json").write_text(json.dumps({"val/mca_best": 0.9}))
    with pytest.raises(SystemExit, match="its CSV curve's best is 0.7"):
        compare(a, b)


def test_summary_shows_the_wrong_out_of_fold_images_when_it_can_read_them(tmp_path):
    from PIL import Image

    sweep = tmp_path / "sweep"
    made = _fake_sweep(tmp_path / "data", sweep, folds=3, acc=0.6)
    summarize_sweep(sweep, n_boot=50)  # the image files do not exist: no gallery, and the summary still runs
    assert not (sweep / "oof_errors.png").exists()
    for i, r in enumerate(made["records"]):
        Path(r.path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.random.default_rng(i).random((24, 24)) * 200).astype(np.uint8)).save(r.path)
    summarize_sweep(sweep, n_boot=50)
    assert (sweep / "oof_errors.png").stat().st_size > 5000
    assert "![wrong out-of-fold images](oof_errors.png)" in (sweep / "cv_summary.md").read_text()
    Path(made["records"][0].path).unlink()  # recomputed where not every file is readable: no stale picture
    summarize_sweep(sweep, n_boot=50)
    assert not (sweep / "oof_errors.png").exists()
    assert "oof_errors.png" not in (sweep / "cv_summary.md").read_text()
