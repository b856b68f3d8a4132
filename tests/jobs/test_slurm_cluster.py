"""Jobs through a real SLURM: a submitit sweep, DDP under srun, preemption and time-limit requeues.

Marked ``cluster``: ``make test-cluster`` starts a one-node SLURM on this machine (``.ci/test-cluster``)
and runs these; without a reachable ``slurmctld`` they skip. Each job is tiny (synthetic images,
``test_resnet``, a few dozen steps); the figures of each run are printed (``pytest -s``).
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from test_fault import assert_every_epoch_once

from conftest import TINY_BACKBONE, write_class_images

pytestmark = pytest.mark.cluster

HERE = Path(__file__).resolve().parent  # this module: callbacks named by _target_ below
TESTS = HERE.parent  # the tests folder (conftest, fixtures)
BIN = Path(sys.executable).parent
ANA_TRAIN = shutil.which("ana-train", path=str(BIN)) or "ana-train"
PARTITION = os.environ.get("ANA_SLURM_PARTITION", "debug")


def _slurm_up() -> str | None:
    if not shutil.which("sbatch"):
        return "no sbatch on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer"
    if proc.returncode != 0 or not proc.stdout.strip():
        said = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"no SLURM controller answers (sinfo: {said}); run `make test-cluster`"
    return None


@pytest.fixture(scope="module", autouse=True)
def _cluster():
    why = _slurm_up()
    if why:
        pytest.skip(why)


class SlowFirstRun(L.Callback):
    """Test pacing: ``seconds`` of sleep per optimizer step in the job's first run only (SLURM
    ``SLURM_RESTART_COUNT`` unset or 0), and the step count written to ``marker``, so a test can act
    at a step of its choosing and the restarted run finishes quickly."""

    def __init__(self, marker: str, seconds: float = 0.3, every_run: bool = False):
        self.marker, self.seconds, self.every_run = Path(marker), float(seconds), every_run

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every_run or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) == 0:
            time.sleep(self.seconds)
        self.marker.write_text(str(trainer.global_step))


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANA_ROOT": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def _tiny(data: Path, epochs: int = 2, batch: int = 8) -> list[str]:
    return [
        "data=single_label",
        f"data.root={data}",
        "data.image_size=32",
        f"data.batch_size={batch}",
        f"model.backbone.name={TINY_BACKBONE}",
        f"trainer.max_epochs={epochs}",
        "model.optimizer.lr=0.01",
        "callbacks.rich_progress_bar=null",
        "callbacks.early_stopping=null",
        "+trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1",
        "torch_threads=1",
    ]


def _sbatch(script: str, tmp_path: Path, *options: str) -> str:
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/bash\n" + script + "\n")
    proc = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--partition={PARTITION}",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/slurm-%j.out",
            *options,
            str(path),
        ],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout.strip().split(";")[0]


def _job(job: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait(job: str, timeout: float, tmp_path: Path) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(job)
        if info.get("JobState") in (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
        ):
            return info
        time.sleep(2)
    subprocess.run(["scancel", job], timeout=30)
    pytest.fail(f"job {job} did not end in {timeout:.0f} s: {_job(job)}\n{_job_output(tmp_path)}")


def _job_output(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-4000:] for p in tmp_path.glob("slurm-*.out"))


def _steps_per_epoch(run: Path, batch: int, ranks: int = 1) -> int:
    n = sum(1 for r in csv.DictReader(open(run / "split_manifest.csv")) if r["split"] == "train")
    return math.ceil(
        math.ceil(n / ranks) / batch
    )  # each rank takes ceil(n / ranks) images (DistributedSampler)


def _sweep(args: list[str], tmp_path: Path, timeout: float = 600) -> subprocess.Popen:
    return subprocess.Popen(
        [ANA_TRAIN, "-m", "hydra/launcher=submitit_slurm", f"hydra.launcher.partition={PARTITION}", *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the sweep did not finish in {timeout} s:\n{out[-5000:]}")
    assert proc.returncode == 0, out[-6000:]
    return out


def _jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def _last_val_mca(job: Path) -> float:
    rows = [r for r in csv.DictReader(open(job / "csv" / "metrics.csv")) if r.get("val/mca")]
    return float(rows[-1]["val/mca"])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_class_images(tmp_path / "data", {"AC-1": 8, "AC-2": 8})


def test_grid_sweep_through_submitit_slurm(data, tmp_path):
    """Two jobs with trainer=cpu and only the partition given: two job folders, two metrics.json,
    and each job's optimized_metric (val/mca) returned to the sweep through submitit."""
    start = time.monotonic()
    out = _finish(_sweep([*_tiny(data), "model.optimizer.lr=0.01,0.02"], tmp_path))
    seconds = time.monotonic() - start
    # accounting is off on the test cluster: one line says so, the jobs are followed with squeue, no noise
    assert "Bypassing sacct error" not in out and out.count("following the jobs with squeue") == 1, out[
        -3000:
    ]
    [sweep] = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    jobs = _jobs(sweep)
    assert [p.name for p in jobs] == ["0", "1"]
    returned = {}
    for pkl in sweep.glob(".submitit/*/*_result.pkl"):
        status, value = pickle.loads(pkl.read_bytes())
        assert status == "success", value
        returned[value.hydra_cfg.hydra.job.num] = value.return_value
    assert sorted(returned) == [0, 1]
    for job, lr in zip(jobs, (0.01, 0.02), strict=True):
        cfg = yaml.safe_load((job / "config_resolved.yaml").read_text())
        assert cfg["model"]["optimizer"]["lr"] == lr
        assert (job / "metrics.json").is_file()
        assert returned[int(job.name)] == pytest.approx(_last_val_mca(job))
    print(f"\nsweep: 2 jobs, {seconds:.0f} s wall, val/mca returned {returned}")


def test_ddp_two_tasks_under_srun(data, tmp_path):
    """One SLURM job of 2 tasks; srun starts both ranks (gloo on CPU); one run folder, written by rank 0."""
    args = " ".join(_tiny(data) + ["trainer=ddp_cpu", "trainer.strategy=ddp", "trainer.devices=2"])
    start = time.monotonic()
    job = _sbatch(
        f"srun {ANA_TRAIN} {args}", tmp_path, "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"
    )
    info = _wait(job, 600, tmp_path)
    seconds = time.monotonic() - start
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _job_output(tmp_path)
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert [r.name for r in runs] == [f"slurm-{job}"]  # one folder for both ranks, named by the job
    run = runs[0]
    logs = {p.name: p.read_text() for p in run.glob("train*.log")}
    assert set(logs) == {"train.log", "train.rank1.log"}
    found = [
        re.search(r"rank (\d) of 2: hyperparameter digest (\w+) \(the same on every rank\)", t)
        for t in logs.values()
    ]
    assert all(found) and {m.group(1) for m in found} == {"0", "1"} and len({m.group(2) for m in found}) == 1
    assert (run / "metrics.json").is_file() and (run / ".hydra").is_dir()
    assert not list(run.glob("**/*rank1*.json")) and len(list(run.glob("csv/metrics.csv"))) == 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    per_epoch = _steps_per_epoch(run, 8, ranks=2)
    assert ckpt["global_step"] == 2 * per_epoch
    print(
        f"\nDDP under srun: 2 ranks, {ckpt['global_step']} steps per rank over 2 epochs, {seconds:.0f} s wall"
    )


def test_scontrol_requeue_mid_epoch_resumes_from_last(tmp_path):
    """`scontrol requeue` in the 2nd epoch: the job restarts in its folder, resumes from last.ckpt and
    ends with every optimizer step once; csv/metrics.csv holds every epoch once."""
    data = write_class_images(tmp_path / "data", {"AC-1": 12, "AC-2": 12, "AC-4": 12})
    epochs, batch = 3, 4
    marker = tmp_path / "step.txt"
    args = " ".join(
        _tiny(data, epochs=epochs, batch=batch)
        + [
            "callbacks.last_step_checkpoint.every_n_train_steps=2",
            "+callbacks.pace._target_=test_slurm_cluster.SlowFirstRun",
            f"+callbacks.pace.marker={marker}",
            "+callbacks.pace.seconds=0.5",
        ]
    )
    start = time.monotonic()
    job = _sbatch(f"srun {ANA_TRAIN} {args}", tmp_path, "--ntasks=1", "--requeue")
    runs_root = tmp_path / "outputs" / "train" / "runs"
    requeued_at = None
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and requeued_at is None:
        if marker.exists() and runs_root.exists():
            run = runs_root / f"slurm-{job}"
            per_epoch = _steps_per_epoch(run, batch)
            if int(marker.read_text() or 0) >= per_epoch + 3:  # the 4th step of the 2nd epoch
                subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
                requeued_at = int(marker.read_text() or 0)
        time.sleep(0.1)
    assert requeued_at is not None, _job_output(tmp_path)
    info = _wait(job, 600, tmp_path)
    seconds = time.monotonic() - start
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _job_output(tmp_path)
    assert info["Restarts"] == "1"
    log = (run / "train.log").read_text()
    assert f"SLURM restarted this job: resuming from {run / 'checkpoints' / 'last.ckpt'}" in log
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == epochs * per_epoch  # what an uninterrupted run takes: none lost, none twice
    rows = assert_every_epoch_once(run, epochs)
    assert (run / "metrics.json").is_file() and sum(1 for r in rows if r.get("test/mca")) == 1
    print(
        f"\nrequeue: {per_epoch} steps/epoch, requeued at step {requeued_at}, ended at step {ckpt['global_step']} "
        f"= {epochs} x {per_epoch}, {len(rows)} CSV rows, {seconds:.0f} s wall"
    )


def test_time_limit_signal_checkpoints_and_requeues(data, tmp_path):
    """A 2-minute job with `signal: USR1@45` (submitit launcher): Lightning saves an HPC checkpoint on
    the signal and requeues the job, whose second run resumes from it and finishes."""
    marker = tmp_path / "step.txt"
    start = time.monotonic()
    out = _finish(
        _sweep(
            [
                *_tiny(data, epochs=3, batch=2),
                "model.optimizer.lr=0.01",
                "hydra.launcher.timeout_min=2",
                "hydra.launcher.signal_delay_s=45",
                "+callbacks.pace._target_=test_slurm_cluster.SlowFirstRun",
                f"+callbacks.pace.marker={marker}",
                "+callbacks.pace.seconds=6",
            ],
            tmp_path,
        ),
        timeout=900,
    )
    seconds = time.monotonic() - start
    [sweep] = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    [job] = _jobs(sweep)
    logs = "\n".join(p.read_text() for p in sweep.glob(".submitit/*/*.err"))
    assert "Handling auto-requeue signal" in logs and "Requeued SLURM job" in logs, logs[-3000:]
    [hpc] = list(job.glob("hpc_ckpt_*.ckpt"))
    stepped_at = torch.load(hpc, weights_only=False)["global_step"]
    last = torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)
    per_epoch = _steps_per_epoch(job, 2)
    assert 0 < stepped_at < 3 * per_epoch == last["global_step"]
    assert (job / "metrics.json").is_file() and (job / "training_finished.json").is_file()
    [err] = list(sweep.glob(".submitit/*/*_log.err"))
    info = _job(err.name.split("_")[0])
    assert info.get("Restarts") == "1", info  # finished on its second run
    assert_every_epoch_once(job, 3)
    print(
        f"\ntime limit: signal checkpoint at step {stepped_at} of {3 * per_epoch}, finished on run 2, {seconds:.0f} s wall"
        f"{'' if 'Bypassing sacct' not in out else ' (sacct noise!)'}"
    )


# The console command with the clock of its run-folder names pinned to one second (given first on the
# command line), so that two sweeps started together are named in the same second however slow the
# machine is; everything else (random ids, SLURM, the sweep) is the real thing.
_AT_SECOND = """
import sys, time
import ana_lightning.resolvers as resolvers
stamp = sys.argv.pop(1)
class PinnedClock:
    def __getattr__(self, name):
        return getattr(time, name)
    def strftime(self, fmt, *args):
        return time.strftime(fmt, time.strptime(stamp, "%Y-%m-%d_%H-%M-%S"))
resolvers.time = PinnedClock()
from ana_lightning.cli.train import main
main()
"""


def test_two_sweeps_in_the_same_second_never_share_a_folder(data, tmp_path):
    """Two sweeps started together whose folder names get the same second: separate sweep folders,
    each with its own job and submitit folder."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _AT_SECOND,
                stamp,
                "-m",
                "hydra/launcher=submitit_slurm",
                f"hydra.launcher.partition={PARTITION}",
                *_tiny(data, epochs=1),
                f"model.optimizer.lr={lr}",
                "test=false",
            ],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for lr in (0.01, 0.02)
    ]
    for proc in procs:
        _finish(proc)
    sweeps = sorted((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 2, sweeps
    stamps = {s.name.rsplit("_", 1)[0] for s in sweeps}
    assert stamps == {stamp}, sweeps
    lrs = sorted(
        yaml.safe_load((s / "0" / "config_resolved.yaml").read_text())["model"]["optimizer"]["lr"]
        for s in sweeps
    )
    assert lrs == [0.01, 0.02]  # each sweep's job in its own folder
    for sweep in sweeps:
        assert [p.name for p in _jobs(sweep)] == ["0"] and len(
            list(sweep.glob(".submitit/*/*_result.pkl"))
        ) == 1
    print(f"\ntwo sweeps in one second: folders {[s.name for s in sweeps]}")
