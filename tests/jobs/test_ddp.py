"""DDP on 2 CPU processes (gloo): one job folder, rank-0-only writing, samplers left to shard themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, TensorDataset

from ana_lightning.distributed import SameHparamsOnAllRanks
from ana_lightning.pipeline import train
from ana_lightning.utils import load_checkpoint_model

from conftest import compose, tiny_train_overrides


@pytest.mark.dist
def test_ddp_spawn_trains_and_writes_one_folder(tiny_folder, tmp_path):
    run = tmp_path / "outputs" / "train" / "runs" / "job"
    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder, epochs=2) + ["trainer=ddp_cpu", "trainer.devices=2"],
        output_dir=run,
    )
    metrics, objs = train(cfg)
    trainer = objs["trainer"]
    assert trainer.world_size == 2 and trainer.strategy.__class__.__name__ == "DDPStrategy"
    # Everything of the job is in its one folder; nothing per rank, nothing beside it.
    assert [p.name for p in (tmp_path / "outputs" / "train" / "runs").iterdir()] == ["job"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "tiny"]
    for name in (
        "config_resolved.yaml",
        "split_manifest.csv",
        "metrics.json",
        "test_report.md",
        "test_predictions.csv",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
    ):
        assert (run / name).is_file(), name
    assert not list(run.rglob("*rank1*")) and not (run / "lightning_logs").exists()
    # Both ranks trained on disjoint halves: every epoch took ceil(n_train / 2 / batch) steps.
    n_train = len(objs["datamodule"].splits["train"])
    per_rank = (n_train + 1) // 2
    steps_per_epoch = (per_rank + 7) // 8
    assert (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
        == 2 * steps_per_epoch
    )
    # The test predictions cover every test image once (DistributedSampler padding removed).
    rows = (run / "test_predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(objs["datamodule"].splits["test"])
    best = Path((run / "best_checkpoint.txt").read_text().strip())
    assert load_checkpoint_model(best).class_names == ["AC-1", "AC-2", "AC-10"]
    assert 0.0 <= metrics["test/mca"] <= 1.0


def test_other_ranks_write_nothing(tiny_folder, tmp_path, monkeypatch):
    """Rank > 0 runs the whole pipeline (as ranks started by SLURM or `trainer=ddp` do) and writes no file."""
    monkeypatch.setattr(SingleDeviceStrategy, "is_global_zero", property(lambda self: False))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    run = tmp_path / "run"
    # No checkpoint callbacks: rank 0, which would write the best checkpoint that all ranks test, is not here.
    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder, epochs=1)
        + ["logger=many_loggers", "~logger.wandb", "callbacks=none", "+trainer.enable_checkpointing=false"],
        output_dir=run,
    )
    metrics, _ = train(cfg)
    assert "test/mca" in metrics  # it did train and test
    written = [p for p in run.rglob("*") if p.is_file()]
    assert written == [], written


def test_ranks_with_different_hparams_stop():
    class _Trainer:
        world_size, global_rank = 2, 0

        class strategy:  # noqa: N801 - stands in for trainer.strategy
            @staticmethod
            def all_gather(t):
                return torch.stack([t, t + 1])

    class _Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"lr": 0.1})

    with pytest.raises(RuntimeError, match="different hyperparameters"):
        SameHparamsOnAllRanks().setup(_Trainer(), _Module(), "fit")


# ---------------------------------------------------------------------------------------------------
# Samplers that shard across ranks themselves (ana_lightning.data.samplers) under a real 2-process fit.

N_SINGLE, N_HOSP, BATCH = 20, 40, 5


class _SamplerProbe(L.LightningModule):
    """Trains on two loaders at once, one per sampler, and records every index each rank was given."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir
        self.layer = torch.nn.Linear(1, 1)
        self.seen: dict[str, list[list[int]]] = {"mixed": [], "balanced": []}

    def train_dataloader(self):
        from ana_lightning.data.samplers import ClassBalancedSampler, MixedRatioSampler

        ds = TensorDataset(torch.arange(N_SINGLE + N_HOSP))
        targets = torch.tensor([1] * 10 + [0] * 90)
        # num_replicas / rank left to the samplers: they read the process group Lightning set up.
        self.samplers = {
            "mixed": MixedRatioSampler(
                range(N_SINGLE), range(N_SINGLE, N_SINGLE + N_HOSP), BATCH, 0.6, seed=3
            ),
            "balanced": ClassBalancedSampler(targets, seed=3),
        }
        return {
            "mixed": DataLoader(ds, batch_size=BATCH, sampler=self.samplers["mixed"]),
            "balanced": DataLoader(
                TensorDataset(torch.arange(100)), batch_size=BATCH, sampler=self.samplers["balanced"]
            ),
        }

    def training_step(self, batch, batch_idx):
        for k in self.seen:
            self.seen[k].append(batch[k][0].tolist())
        return self.layer(batch["mixed"][0].float()[:, None]).sum() * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_train_end(self):
        loaders = self.trainer.train_dataloader
        untouched = {k: loaders[k].sampler is self.samplers[k] for k in self.samplers}
        out = {
            "rank": self.global_rank,
            "epochs": self.current_epoch,
            "seen": self.seen,
            "untouched": untouched,
            "epoch_of": {k: s.epoch for k, s in self.samplers.items()},
        }
        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(out))


@pytest.mark.dist
def test_our_samplers_survive_lightning_ddp(tmp_path):
    from ana_lightning.data import samplers  # the project's own module: an import error must fail, not skip

    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=True,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(_SamplerProbe(str(tmp_path)))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        # Lightning (use_distributed_sampler=True) neither replaced nor wrapped them, and set their epoch.
        assert r["untouched"] == {"mixed": True, "balanced": True}
        assert r["epoch_of"] == {"mixed": 1, "balanced": 1}
    steps = [len(r["seen"]["mixed"]) for r in ranks]
    assert steps[0] == steps[1] == 2 * (N_HOSP // (2 * 2))  # 2 hospital images per batch, 2 ranks, 2 epochs
    n_single = samplers.single_per_batch(0.6, BATCH)
    per_epoch = steps[0] // 2
    for e in range(2):
        hosp = []
        for r in ranks:
            for b in r["seen"]["mixed"][e * per_epoch : (e + 1) * per_epoch]:
                assert (
                    sum(i < N_SINGLE for i in b) == n_single
                )  # the ratio holds in every batch of every rank
                hosp.append([i for i in b if i >= N_SINGLE])
        flat = [i for b in hosp for i in b]
        assert sorted(flat) == list(range(N_SINGLE, N_SINGLE + N_HOSP))  # disjoint shards covering the epoch
    # Balanced: the shards are this rank's slice of the one global draw (disjoint positions), not copies.
    for r in ranks:
        ref = samplers.ClassBalancedSampler(
            torch.tensor([1] * 10 + [0] * 90), num_replicas=2, rank=r["rank"], seed=3
        )
        ref.set_epoch(1)
        last_epoch = [i for b in r["seen"]["balanced"][per_epoch:] for i in b]
        assert last_epoch == list(ref)
    a, b = ([i for bb in r["seen"]["balanced"] for i in bb] for r in ranks)
    assert a != b
    rare = sum(i < 10 for i in a + b) / len(a + b)
    assert 0.3 < rare < 0.7  # 10 % of the data, about half of the draws


@pytest.mark.dist
def test_slurm_tasks_agree_on_one_job_folder(tiny_folder, tmp_path):
    """Two ranks started together the way srun starts them (same command, SLURM_PROCID 0 and 1)."""
    job = "4242"
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "ANA_ROOT": str(tmp_path),
            "SLURM_JOB_ID": job,
            "SLURM_JOB_NAME": "train",
            "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "2",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NODEID": "0",
            "SLURM_NODELIST": "localhost",
            "SLURM_JOB_NUM_NODES": "1",
        }
        for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
            env.pop(k, None)
        cmd = [
            sys.executable,
            "-m",
            "ana_lightning.cli.train",
            *tiny_train_overrides(tiny_folder, epochs=1),
            "trainer=ddp_cpu",
            "trainer.strategy=ddp",
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert [r.name for r in runs] == [f"slurm-{job}"]  # one folder, named after the job, for both tasks
    run = runs[0]
    assert (run / "train.log").is_file() and (run / "train.rank1.log").is_file()
    assert "rank 1 of 2" in (run / "train.rank1.log").read_text()  # rank 1 really trained in this job
    assert (run / "metrics.json").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert "SLURM auto-requeueing enabled" in outs[0]  # Lightning's requeue-on-signal handling is on
