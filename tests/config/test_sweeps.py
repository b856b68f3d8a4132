"""Hydra multirun through the console command: a grid with W&B offline, an Optuna study under DDP,
the submitit launchers' configs, and one folder / one W&B run per job."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY_BACKBONE, write_class_images

ANA_TRAIN = shutil.which("ana-train", path=str(Path(sys.executable).parent)) or "ana-train"


def _tiny(root: Path) -> list[str]:
    return [
        "data=single_label",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=8",
        f"model.backbone.name={TINY_BACKBONE}",
        "trainer.max_epochs=1",
        "callbacks.rich_progress_bar=null",
        "+trainer.enable_model_summary=false",
    ]


def _run(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ANA_ROOT": str(tmp_path),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    proc = subprocess.run(
        [ANA_TRAIN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _sweep_dir(tmp_path: Path) -> Path:
    sweeps = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps  # one folder for the whole sweep
    assert not (tmp_path / "outputs" / "train" / "runs").exists()  # and no stray single-run folder
    return sweeps[0]


def _last_val_mca(job: Path) -> float:
    rows = [r for r in csv.DictReader(open(job / "csv" / "metrics.csv")) if r.get("val/mca")]
    return float(rows[-1]["val/mca"])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_class_images(tmp_path / "data", {"AC-1": 8, "AC-2": 8})


@pytest.mark.dist
def test_grid_multirun_one_folder_and_one_wandb_run_per_job(data, tmp_path):
    _run(["-m", *_tiny(data), "model.optimizer.lr=0.01,0.02", "logger=wandb", "test=false"], tmp_path)
    sweep = _sweep_dir(tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    groups = set()
    for job, lr in zip(jobs, (0.01, 0.02), strict=True):
        cfg = yaml.safe_load((job / "config_resolved.yaml").read_text())
        assert cfg["model"]["optimizer"]["lr"] == lr and cfg["paths"]["output_dir"] == str(job)
        assert (job / "checkpoints" / "last.ckpt").is_file()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # each job finished its own W&B run
        record = next(runs[0].glob("*.wandb")).read_bytes()
        assert b"val/mca" in record
        groups |= set(re.findall(rb"train-" + re.escape(sweep.name.encode()), record))
    assert groups == {f"train-{sweep.name}".encode()}  # both runs in the sweep's W&B group


@pytest.mark.dist
def test_optuna_sweep_under_ddp_samples_once_per_job(data, tmp_path):
    """Two Optuna trials, each a 2-process DDP job (ranks started by Lightning as new processes):
    every rank of a trial holds the trial's hyperparameters, in the trial's one folder."""
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper",
        reason="the cluster extra (hydra-optuna-sweeper) is not installed",
    )
    _run(
        [
            "hparams_search=optuna_mca",
            "hydra.sweeper.n_trials=2",
            "~hydra.sweeper.params.augmentation",
            "trainer=ddp_cpu",
            "trainer.strategy=ddp",
            "trainer.devices=2",
            *_tiny(data),
        ],
        tmp_path,
    )
    sweep = _sweep_dir(tmp_path)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    lrs, scores = [], []
    for job in jobs:
        logs = {p.name: p.read_text() for p in job.glob("train*.log")}
        assert set(logs) == {"train.log", "train.rank1.log"}  # both ranks logged into the job folder
        digests = [
            re.search(r"rank (\d) of 2: hyperparameter digest (\w+) \(the same on every rank\)", t)
            for t in logs.values()
        ]
        assert (
            all(digests)
            and len({d.group(2) for d in digests}) == 1
            and {d.group(1) for d in digests} == {"0", "1"}
        )
        cfg = yaml.safe_load((job / "config_resolved.yaml").read_text())
        lrs.append(cfg["model"]["optimizer"]["lr"])
        scores.append(_last_val_mca(job))
        assert (job / "metrics.json").is_file()
    assert lrs[0] != lrs[1] and all(1e-5 <= lr <= 3e-3 for lr in lrs)  # sampled by the sweeper, per trial
    assert result["best_value"] == pytest.approx(max(scores))  # the jobs returned optimized_metric (val/mca)


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_jobs(data, tmp_path):
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="the cluster extra (hydra-submitit-launcher) is not installed",
    )
    _run(
        ["-m", "hydra/launcher=submitit_local", *_tiny(data), "model.optimizer.lr=0.01,0.02", "test=false"],
        tmp_path,
    )
    sweep = _sweep_dir(tmp_path)
    assert (sweep / ".submitit").is_dir()
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()


def _with_hydra(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ana_lightning.resolvers import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="ana_lightning.conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_launcher_and_search_configs_compose():
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper",
        reason="the cluster extra (hydra-optuna-sweeper) is not installed",
    )
    cfg = _with_hydra(["hydra/launcher=submitit_slurm", "trainer=multinode", "hparams_search=optuna_mca"])
    launcher, trainer = cfg.hydra.launcher, cfg.trainer
    assert launcher.nodes == trainer.num_nodes == 2
    assert launcher.tasks_per_node == launcher.gpus_per_node == trainer.devices  # one task per GPU
    assert (
        launcher.additional_parameters.signal == f"USR1@{launcher.signal_delay_s}"
        and launcher.additional_parameters.requeue
    )
    assert trainer.plugins[0].auto_requeue is True
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/mca"
    local = _with_hydra(["hydra/launcher=submitit_local"]).hydra.launcher
    assert local.tasks_per_node == 1 and local._target_.endswith("LocalLauncher")


@pytest.mark.parametrize(
    "trainer", sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "trainer").glob("*.yaml"))
)
def test_slurm_launcher_resolves_for_every_trainer(trainer):
    """hydra/launcher=submitit_slurm with any trainer and no launcher overrides: nodes and tasks follow
    the trainer; GPUs, CPUs and memory are asked for by GPU trainers only."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="the cluster extra (hydra-submitit-launcher) is not installed",
    )
    from omegaconf import OmegaConf

    cfg = _with_hydra(["hydra/launcher=submitit_slurm", f"trainer={trainer}"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    devices = cfg.trainer.devices
    assert launcher["nodes"] == cfg.trainer.get("num_nodes", 1)
    assert launcher["tasks_per_node"] == (devices if isinstance(devices, int) else 1)
    gpu = cfg.trainer.accelerator == "gpu"
    assert (launcher["gpus_per_node"], launcher["cpus_per_task"], launcher["mem_gb"]) == (
        (launcher["tasks_per_node"], 8, 64) if gpu else (None, None, None)
    )
    assert launcher["_target_"] == "hydra_plugins.ana_lightning_launcher.SlurmLauncher"


def test_squeue_watcher_reads_states_and_ends_vanished_jobs():
    """Without SLURM accounting the launcher follows jobs with squeue: listed states are kept (requeued
    and pending jobs are unfinished), a registered job that squeue no longer lists has ended."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="the cluster extra (hydra-submitit-launcher) is not installed",
    )
    from hydra_plugins.ana_lightning_launcher import _squeue_watcher

    watcher = _squeue_watcher()(delay_s=60)
    for job in ("7_0", "7_1", "8", "9"):
        watcher.register_job(job)
    info = watcher.read_info("7_0|RUNNING|vm\n7_1|PENDING|\n8|CONFIGURING|vm\n")
    assert {k: v["State"] for k, v in info.items()} == {
        "7_0": "RUNNING",
        "7_1": "PENDING",
        "8": "RUNNING",
        "9": "COMPLETED",
    }
    watcher._info_dict.update(info)
    assert [watcher.is_done(j, mode="cache") for j in ("7_0", "7_1", "8", "9")] == [False, False, False, True]
    assert watcher._make_command()[0] == "squeue"
