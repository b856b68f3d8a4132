"""Loggers: W&B offline writes a local run with the metrics; TensorBoard and CSV write their files."""

import csv
import json
import os

import pytest

from ana_lightning.pipeline import train

from conftest import compose, tiny_train_overrides


def test_wandb_offline_run(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    run = tmp_path / "run"
    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder, epochs=1) + ["logger=wandb", "logger.wandb.project=ana-test"],
        output_dir=run,
    )
    train(cfg)
    import wandb

    assert wandb.run is None, "the job must finish its W&B run (multirun would otherwise log one run)"
    # finish() hands the records to W&B's service process, which may still be writing the offline file
    # when it returns (CI once read a header-only file); teardown waits for it, as the process exit would
    wandb.teardown()
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, os.listdir(run)
    records = list(runs[0].glob("*.wandb"))
    assert len(records) == 1
    data = records[0].read_bytes()  # the offline run's record stream holds the logged keys
    for key in (b"val/mca", b"test/mca", b"test/confusion_matrix"):
        assert key in data, key


def test_tensorboard_and_csv(tiny_folder, tmp_path):
    run = tmp_path / "run"
    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder, epochs=2) + ["logger=many_loggers", "~logger.wandb"],
        output_dir=run,
    )
    train(cfg)
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    with open(run / "csv" / "metrics.csv", newline="") as f:
        curve = [float(r["val/mca"]) for r in csv.DictReader(f) if r.get("val/mca")]
    assert len(curve) == 2
    # metrics.json holds the best validation score beside the test figures (what ana-compare reads)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["val/mca_best"] == pytest.approx(max(curve), abs=1e-6)


def test_wandb_run_of_a_validation_evaluation_says_val(tiny_folder, tmp_path, monkeypatch):
    """``ana-eval split=val`` with W&B: the test loop's figures reach the run as ``val/*``, not ``test/*``."""
    from ana_lightning.pipeline import evaluate

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    run = tmp_path / "run"
    train(compose("train", tiny_train_overrides(tiny_folder, epochs=1), output_dir=run))
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    out = tmp_path / "eval"
    cfg = compose(
        "eval",
        [
            "data=single_label",
            f"data.root={tiny_folder}",
            f"ckpt_path={ckpt}",
            "split=val",
            "logger=wandb",
            "logger.wandb.project=ana-test",
            "callbacks.rich_progress_bar=null",
        ],
        output_dir=out,
    )
    evaluate(cfg)
    import wandb

    wandb.teardown()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, os.listdir(out)
    data = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"val/mca" in data and b"val/confusion_matrix" in data
    assert b"test/mca" not in data and b"test/acc" not in data
