"""Any Lightning Trainer argument is a plain override (`trainer.fast_dev_run=true`), as users of
lightning-hydra-template type them; `+trainer.<key>=…` keeps working for keys left at null."""

from __future__ import annotations

import inspect

import lightning as L
import pytest

from ana_lightning.pipeline import build_trainer

from conftest import compose, tiny_train_overrides

PASSED_BY_THE_PIPELINE = {"self", "logger", "callbacks"}


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_cpu", "multinode"])
def test_every_trainer_argument_is_in_the_config(trainer):
    cfg = compose("train", [f"trainer={trainer}"])
    wanted = set(inspect.signature(L.Trainer.__init__).parameters) - PASSED_BY_THE_PIPELINE
    missing = wanted - set(cfg.trainer)
    assert not missing, f"conf/trainer/default.yaml lacks Trainer argument(s) {sorted(missing)}"


def test_plain_overrides_reach_the_trainer(tiny_folder, tmp_path):
    overrides = tiny_train_overrides(tiny_folder) + [
        "trainer.limit_train_batches=2",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=1",
        "trainer.val_check_interval=1.0",
    ]
    cfg = compose("train", overrides, output_dir=tmp_path / "run")
    trainer = build_trainer(cfg, tmp_path / "run")
    assert trainer.limit_train_batches == 2 and trainer.max_steps == 3 and trainer.limit_val_batches == 1
    # The pipeline's own keys and `+` on a null key still work.
    cfg = compose(
        "train",
        ["trainer.fast_dev_run=true", "+trainer.enable_model_summary=false"],
        output_dir=tmp_path / "r2",
    )
    trainer = build_trainer(cfg, tmp_path / "r2")
    assert trainer.fast_dev_run is True and trainer.max_steps == 1


def test_fast_dev_run_override_trains(tiny_folder, tmp_path):
    from ana_lightning.pipeline import train

    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder) + ["trainer.fast_dev_run=true"],
        output_dir=tmp_path / "run",
    )
    metrics, objs = train(cfg)
    assert objs["trainer"].fast_dev_run is True and objs["trainer"].global_step == 1
    assert "test/mca" in metrics
