"""The LightningModule base: a new model is one small subclass (plus a YAML), and ana-train runs it
end to end — optimizer from the config, checkpoint that loads alone, test report in the run folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from ana_lightning.metrics import multiclass_metrics, multiclass_per_class_metrics
from ana_lightning.models.backbones import create_backbone
from ana_lightning.models.base import ANAModule, OptimizerFactory, SchedulerFactory
from ana_lightning.utils import load_checkpoint_model

from conftest import TINY_BACKBONE, compose, tiny_train_overrides


class LinearProbe(ANAModule):
    """A new LightningModule, written against the base: only what differs."""

    def __init__(
        self,
        backbone: Mapping[str, Any],
        class_names: Sequence[str],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        class_weights: Sequence[float] | None = None,
        image_size: int = 224,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.net = create_backbone(num_classes=len(self.class_names), **dict(self.hparams.backbone))
        self.freeze_backbone_hparams()
        self.store_normalization(self.net)
        self.stage_metrics(multiclass_metrics(len(self.class_names)), ("val", "test"))
        self.test_details = multiclass_per_class_metrics(len(self.class_names))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(self(x)).softmax(-1)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["image"]), batch["target"])

    def _eval(self, batch: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor:
        z = self(batch["image"])
        self.log(f"{stage}/loss", F.cross_entropy(z, batch["target"]), batch_size=len(z))
        getattr(self, f"{stage}_metrics").update(z, batch["target"])
        self.log_dict(getattr(self, f"{stage}_metrics"), batch_size=len(z))
        return z

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        z = self._eval(batch, "test")
        self.test_details.update(z, batch["target"])
        self.collect("test", index=batch["index"], prob=self.scaled(z).softmax(-1), target=batch["target"])


@pytest.mark.slow  # a whole ana-train run (~10 s idle; minutes on a loaded machine)
def test_a_new_model_trains_and_reports_through_ana_train(tiny_folder, tmp_path):
    from ana_lightning.pipeline import train

    run = tmp_path / "runs" / "probe"
    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder, epochs=1)
        + [
            "model._target_=test_model_base.LinearProbe",
            "~model.label_smoothing",
            "~model.scheduler_interval",
        ],
        output_dir=run,
    )
    metrics, objs = train(cfg)
    model = objs["model"]
    assert isinstance(model, LinearProbe) and "test/mca" in metrics
    # every test image once, in the order of the test split; the report is written from these
    assert model.test_predictions["index"].tolist() == list(range(len(objs["datamodule"].splits["test"])))
    for name in ("test_report.md", "test_per_class.csv", "test_predictions.csv", "test_confusion_matrix.png"):
        assert (run / name).is_file(), name
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    loaded = load_checkpoint_model(best)  # by the class path the base recorded: no config needed
    assert isinstance(loaded, LinearProbe) and loaded.class_names == model.class_names
    meta = torch.load(best, weights_only=True)["ana_lightning"]
    assert meta["class_path"] == "test_model_base.LinearProbe" and meta["task"] == "single_label"
    assert loaded.hparams.backbone == {
        "name": TINY_BACKBONE,
        "pretrained": False,
        "weights": None,
        "drop_rate": 0.0,
    }


def test_training_without_an_optimizer_names_the_fix():
    model = LinearProbe({"name": TINY_BACKBONE}, ["AC-1", "AC-2"], image_size=32)
    with pytest.raises(ValueError, match="model.optimizer"):
        model.configure_optimizers()


def test_the_optimizer_and_scheduler_come_from_the_partial_configs():
    import functools

    model = LinearProbe(
        {"name": TINY_BACKBONE},
        ["AC-1", "AC-2"],
        image_size=32,
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau),
    )
    got = model.configure_optimizers()
    assert isinstance(got["optimizer"], torch.optim.SGD) and got["optimizer"].defaults["lr"] == 0.5
    assert got["lr_scheduler"]["monitor"] == "val/loss" and got["lr_scheduler"]["interval"] == "epoch"
    assert "optimizer" not in model.hparams and "scheduler" not in model.hparams
