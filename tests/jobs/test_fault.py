"""Crash safety: SIGKILL mid-epoch and resume with `ckpt_path=last`; SLURM requeue; truncated checkpoints."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from ana_lightning.pipeline import train
from ana_lightning.utils import CheckpointError, load_checkpoint_model

from conftest import compose, tiny_train_overrides, write_class_images

HERE = Path(__file__).resolve().parent  # this module: callbacks named by _target_ below
TESTS = HERE.parent  # the tests folder (conftest, fixtures)
BATCH, EPOCHS = 4, 3


class Pace(L.Callback):
    """Slows training down to `seconds` per optimizer step and writes the step count to `marker`,
    so the test can kill the run at a step of its choosing (used through `+callbacks.pace=...`)."""

    def __init__(self, marker: str, seconds: float = 0.3):
        self.marker, self.seconds = Path(marker), float(seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)
        self.marker.write_text(str(trainer.global_step))


def _cmd(data: Path, *extra: str) -> list[str]:
    over = [o for o in tiny_train_overrides(data, epochs=EPOCHS) if not o.startswith("data.batch_size")]
    return [
        sys.executable,
        "-m",
        "ana_lightning.cli.train",
        *over,
        f"data.batch_size={BATCH}",
        "callbacks.last_step_checkpoint.every_n_train_steps=2",
        "callbacks.early_stopping=null",
        *extra,
    ]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANA_ROOT": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(HERE), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def _curve(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_every_epoch_once(run: Path, epochs: int) -> list[dict[str, str]]:
    """csv/metrics.csv holds each epoch's validation and training-epoch row once, and no optimizer
    step twice."""
    rows = _curve(run)
    for key in ("val/mca", "train/loss_epoch"):
        assert sorted(int(r["epoch"]) for r in rows if r.get(key)) == list(range(epochs)), (key, rows)
    for key in ("train/loss_step", "lr-AdamW"):
        steps = [int(r["step"]) for r in rows if r.get(key)]
        assert len(steps) == len(set(steps)), (key, steps)
    assert sorted(int(r["step"]) for r in rows if r.get("lr-AdamW")) != [], rows
    return rows


def _train_steps_per_epoch(run: Path) -> int:
    n = sum(1 for r in csv.DictReader(open(run / "split_manifest.csv")) if r["split"] == "train")
    return -(-n // BATCH)


@pytest.mark.dist
def test_sigkill_mid_epoch_then_resume_from_last(tmp_path):
    data = write_class_images(
        tmp_path / "data", {"AC-1": 12, "AC-2": 12, "AC-4": 12}
    )  # 24 training images: 6 full batches
    marker = tmp_path / "step.txt"
    proc = subprocess.Popen(
        _cmd(data, "+callbacks.pace._target_=test_fault.Pace", f"+callbacks.pace.marker={marker}"),
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs_root = tmp_path / "outputs" / "train" / "runs"
    kill_at, deadline = None, time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if marker.exists() and kill_at is None:
                run = next(runs_root.iterdir())
                per_epoch = _train_steps_per_epoch(run)
                kill_at = per_epoch + 3  # the 3rd step of the 2nd epoch: last.ckpt was written mid-epoch
            if kill_at is not None and marker.exists() and int(marker.read_text() or 0) >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and kill_at is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:] if proc.stderr else ""
    run = next(runs_root.iterdir())
    killed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert per_epoch < killed["global_step"] < 2 * per_epoch  # a mid-epoch checkpoint survived the kill
    assert not (run / "metrics.json").exists()
    before = _curve(run)
    assert any(r.get("val/mca") for r in before)  # epoch 0's curve was written before the kill

    # Start it again with the same command and ckpt_path=last: it continues in the killed run's folder.
    done = subprocess.run(
        _cmd(data, "ckpt_path=last"),
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == EPOCHS * per_epoch  # every optimizer step, none twice, none lost
    assert last["epoch"] == EPOCHS - 1
    best = Path((run / "best_checkpoint.txt").read_text().strip())
    assert best.parent == run / "checkpoints" and best.name.startswith("best-epoch")
    model = load_checkpoint_model(best)  # a valid, complete best checkpoint
    assert model.class_names == ["AC-1", "AC-2", "AC-4"]
    assert (run / "metrics.json").is_file() and (run / "test_report.md").is_file()
    # The curve from before the kill is still there: every epoch once, epoch 0's values unchanged.
    rows = assert_every_epoch_once(run, EPOCHS)
    first = [r for r in before if r.get("val/mca") and r["epoch"] == "0"]
    assert [r["val/mca"] for r in rows if r.get("val/mca") and r["epoch"] == "0"] == [first[0]["val/mca"]]
    assert sum(1 for r in rows if r.get("test/mca")) == 1
    # The second start made a folder of its own only to say where the run went on.
    others = [p for p in runs_root.iterdir() if p != run]
    assert len(others) == 1 and (others[0] / "resumed_into.txt").is_file()


@pytest.fixture
def one_epoch_run(tiny_folder, tmp_path):
    run = tmp_path / "outputs" / "train" / "runs" / "job"
    cfg = compose("train", tiny_train_overrides(tiny_folder, epochs=1) + ["test=false"], output_dir=run)
    train(cfg)
    return run


def test_a_sweep_run_again_with_ckpt_path_last_resumes_only_its_own_jobs(
    one_epoch_run, tiny_folder, tmp_path, caplog
):
    """A crashed sweep run again into its folder with ``ckpt_path=last``: a job that never saved a checkpoint
    starts afresh in its own folder (it used to resume the task's newest single run, in that run's folder,
    trained on another split); a job folder whose checkpoint belongs to another split is refused."""
    from omegaconf import open_dict

    sweep = tmp_path / "outputs" / "train" / "multiruns" / "s1"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # what Hydra writes into every sweep folder
    job = sweep / "0"
    other_run = sorted((p.relative_to(one_epoch_run), p.stat().st_mtime) for p in one_epoch_run.rglob("*"))

    def job_cfg(*extra: str):
        cfg = compose(
            "train", tiny_train_overrides(tiny_folder, epochs=1) + ["test=false", *extra], output_dir=job
        )
        with open_dict(cfg):
            cfg.paths.log_dir = str(tmp_path / "outputs")  # the single run above is the task's newest
        return cfg

    with caplog.at_level("INFO"):
        _, objs = train(job_cfg("ckpt_path=last"))
    assert "this sweep job starts afresh" in caplog.text
    assert objs["trainer"].ckpt_path is None and (job / "checkpoints" / "last.ckpt").is_file()
    assert not (job / "resumed_into.txt").exists()
    assert (
        sorted((p.relative_to(one_epoch_run), p.stat().st_mtime) for p in one_epoch_run.rglob("*"))
        == other_run
    )
    # run again once more: its own checkpoint, finished, nothing trained
    caplog.clear()
    with caplog.at_level("WARNING"):
        train(job_cfg("ckpt_path=last"))
    assert f"the run in {job} is finished" in caplog.text
    # the job folder now asked for another split (the sweep list given in another order, another seed)
    with pytest.raises(
        CheckpointError, match=r"another split than this job's \(data\.seed: checkpoint 0, this job 1\)"
    ):
        train(job_cfg("ckpt_path=last", "data.seed=1"))
    # the same for a single run resumed from a named checkpoint of another split
    with pytest.raises(
        CheckpointError, match=r"data\.split_fractions: checkpoint \[0\.7, 0\.15, 0\.15\], this job \[0\.6"
    ):
        train(
            compose(
                "train",
                tiny_train_overrides(tiny_folder, epochs=2)
                + [
                    f"ckpt_path={one_epoch_run / 'checkpoints' / 'last.ckpt'}",
                    "data.split_fractions=[0.6,0.2,0.2]",
                ],
                output_dir=tmp_path / "outputs" / "train" / "runs" / "r2",
            )
        )


def test_slurm_requeue_resumes_in_the_job_folder(one_epoch_run, tiny_folder, monkeypatch):
    run = one_epoch_run
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    cfg = compose("train", tiny_train_overrides(tiny_folder, epochs=2) + ["test=false"], output_dir=run)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # what SLURM sets in a requeued job
    _, objs = train(cfg)
    assert objs["trainer"].ckpt_path == str(run / "checkpoints" / "last.ckpt")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2 * first
    assert_every_epoch_once(run, 2)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # a first start never resumes on its own
    cfg = compose("train", tiny_train_overrides(tiny_folder, epochs=1) + ["test=false"], output_dir=run)
    _, objs = train(cfg)
    assert objs["trainer"].ckpt_path is None
    # ... and a fresh run in that folder moves the old curve aside instead of deleting it
    assert len(list((run / "csv").glob("metrics.before-*.csv"))) == 1
    assert_every_epoch_once(run, 1)


def test_resuming_a_finished_run_keeps_its_curves(one_epoch_run, tiny_folder, caplog):
    """ckpt_path=last on a run that has finished trains and tests nothing and leaves csv/metrics.csv
    as it was; with a higher max_epochs it trains on and the curve holds every epoch once."""
    run = one_epoch_run
    curve = (run / "csv" / "metrics.csv").read_bytes()
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    cfg = compose("train", tiny_train_overrides(tiny_folder, epochs=1) + ["ckpt_path=last"], output_dir=run)
    with caplog.at_level("WARNING"):
        _, objs = train(cfg)
    assert objs["trainer"] is not None  # never tested: it tests the best checkpoint once, trains nothing
    assert "is finished (1 epochs" in caplog.text and "nothing to resume" in caplog.text
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step
    rows = _curve(run)
    assert _filled(rows, drop="test/mca") == _filled(
        _curve_bytes(curve), drop="test/mca"
    )  # the curve, untouched
    assert sum(1 for r in rows if r.get("test/mca")) == 1 and (run / "metrics.json").is_file()
    after_test = (run / "csv" / "metrics.csv").read_bytes()
    metrics, objs = train(cfg)  # tested already: nothing at all, the same metrics
    assert objs["trainer"] is None and metrics["test/mca"] >= 0
    assert (run / "csv" / "metrics.csv").read_bytes() == after_test
    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder, epochs=3) + ["ckpt_path=last", "test=false"],
        output_dir=run,
    )
    train(cfg)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3 * step
    assert_every_epoch_once(run, 3)


def _filled(rows: list[dict[str, str]], drop: str) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if v} for r in rows if not r.get(drop)]


def _curve_bytes(data: bytes) -> list[dict[str, str]]:
    import io

    return list(csv.DictReader(io.StringIO(data.decode())))


def test_truncated_checkpoint_resume_is_a_clear_error(one_epoch_run, tiny_folder, tmp_path):
    run = one_epoch_run
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder, epochs=2) + [f"ckpt_path={bad}"],
        output_dir=tmp_path / "r2",
    )
    with pytest.raises(CheckpointError, match=r"ckpt_path=.*cut\.ckpt.*truncated"):
        train(cfg)
    # ckpt_path=last finding a cut last.ckpt says so too.
    (run / "checkpoints" / "last.ckpt").write_bytes(data[:100])
    cfg = compose("train", tiny_train_overrides(tiny_folder, epochs=2) + ["ckpt_path=last"], output_dir=run)
    with pytest.raises(CheckpointError, match=r"ckpt_path=last: cannot resume from .*last\.ckpt"):
        train(cfg)


def test_truncated_checkpoint_through_the_console_command(one_epoch_run, tiny_folder, tmp_path):
    data = (one_epoch_run / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    # The message, not a traceback from inside torch.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ana_lightning.cli.train",
            *tiny_train_overrides(tiny_folder),
            f"ckpt_path={bad}",
        ],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "CheckpointError" in proc.stderr and "cut.ckpt" in proc.stderr and "truncated" in proc.stderr
    assert "torch/serialization.py" not in proc.stderr
