"""Softmax classifier: the training logic around a plain timm network.

The network itself is a plain ``nn.Module`` built by :func:`~ana_lightning.models.backbones.create_backbone`
from the ``backbone`` config, which is stored in the checkpoint so that
``SoftmaxClassifier.load_from_checkpoint(path)`` alone rebuilds the model (no config needed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from ..calibration import TemperatureMixin
from ..metrics import multiclass_metrics, multiclass_per_class_metrics
from ..utils import plain_hparams
from .backbones import create_backbone, normalization

__all__ = ["SoftmaxClassifier"]


class SoftmaxClassifier(TemperatureMixin, L.LightningModule):
    """Single-label classification with (class-weighted) cross-entropy.

    Args:
        backbone: keyword arguments of :func:`create_backbone` (``name``, ``pretrained``, ``weights``, …).
        class_names: the classes in index order (from the taxonomy); sets the number of outputs.
        optimizer: a partially applied optimizer (Hydra ``_partial_: true``); AdamW(1e-3) when None.
        scheduler: a partially applied LR scheduler, or None.
        class_weights: per-class CE weights computed on the training split, or None.
        label_smoothing: cross-entropy label smoothing.
        image_size: input size the model was trained at (stored for prediction).
    """

    def __init__(
        self,
        backbone: Mapping[str, Any],
        class_names: Sequence[str],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        image_size: int = 224,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        plain_hparams(self)
        backbone = dict(self.hparams.backbone)
        class_names = list(self.hparams.class_names)
        self.net: nn.Module = create_backbone(num_classes=len(class_names), **backbone)
        # Weights are now part of this module's state dict: a reload must not look for the file again.
        self.hparams["backbone"] = {**backbone, "pretrained": False, "weights": None}
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        mean, std = normalization(self.net)
        self.hparams["mean"], self.hparams["std"] = list(mean), list(std)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        if weight is not None and weight.numel() != len(class_names):
            raise ValueError(f"class_weights has {weight.numel()} values for {len(class_names)} classes")
        self.register_buffer("class_weight", weight, persistent=False)
        self._init_temperature()  # fitted on the validation split after training (ana_lightning.calibration)
        k = len(class_names)
        base = multiclass_metrics(k)
        self.train_metrics = base.clone(prefix="train/")
        self.val_metrics = base.clone(prefix="val/")
        self.test_metrics = base.clone(prefix="test/")
        self.test_details = multiclass_per_class_metrics(k)
        self.test_predictions: dict[str, torch.Tensor] = {}
        self._test_buffer: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._train_buffer: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Enough for a generic loader (ana-eval, prediction) to rebuild the right class.
        checkpoint["ana_lightning"] = {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "task": "single_label",
            "class_names": self.class_names,
        }
        self._save_temperature(checkpoint)

    # ------------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities (softmax of the logits over the model's temperature)."""
        return self.scaled(self(x)).softmax(dim=-1)

    def calibration_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def calibration_targets(self, target: torch.Tensor) -> torch.Tensor:
        return target

    # ------------------------------------------------------------------ training
    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        target = batch["target"]
        loss = F.cross_entropy(logits, target, weight=self.class_weight, label_smoothing=self.hparams.label_smoothing)
        on_step = stage == "train"
        # No host-device sync in a training step (each costs a fast GPU ~5-10% of its step time):
        # the training loss is not shown in the progress bar (that is an .item() per step), and the
        # training metrics get the epoch's predictions at once in on_train_epoch_end (torchmetrics'
        # per-batch update waits for the GPU); same values. experiments/benchmarks/throughput.py.
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=not on_step, batch_size=len(target),
                 sync_dist=not on_step)
        if on_step:
            self._train_buffer.append((logits.detach().argmax(-1), target.detach()))
        else:
            metrics = getattr(self, f"{stage}_metrics")
            metrics.update(logits, target)
            self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(target))
        return loss, logits

    def on_train_epoch_start(self) -> None:
        self._train_buffer.clear()

    def on_train_epoch_end(self) -> None:
        if self._train_buffer:
            preds, target = (torch.cat(t) for t in zip(*self._train_buffer, strict=True))
            self._train_buffer.clear()
            self.train_metrics.update(preds, target)
            self.log_dict(self.train_metrics.compute(), on_step=False, on_epoch=True)
            self.train_metrics.reset()

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        _, logits = self._step(batch, "test")
        self.test_details.update(logits, batch["target"])
        self._test_buffer.append((batch["index"].detach(), self.scaled(logits).softmax(-1).detach(), batch["target"].detach()))

    def on_test_epoch_start(self) -> None:
        self._test_buffer.clear()
        self.test_details.reset()

    def on_test_epoch_end(self) -> None:
        if self._test_buffer:
            idx, prob, tgt = (torch.cat(t) for t in zip(*self._test_buffer, strict=True))
            world = self.trainer.world_size
            if world > 1:
                idx, prob, tgt = (self.all_gather(t).flatten(0, 1) for t in (idx, prob, tgt))
            # DistributedSampler pads ranks with repeated samples: keep each index once.
            order = torch.argsort(idx, stable=True)
            idx, prob, tgt = idx[order], prob[order], tgt[order]
            keep = torch.ones_like(idx, dtype=torch.bool)
            keep[1:] = idx[1:] != idx[:-1]
            idx, prob, tgt = idx[keep], prob[keep], tgt[keep]
            if world > 1:
                # The logged test metrics too: each rank feeds a disjoint share of the de-duplicated
                # predictions, so the metrics' cross-rank sum counts every test image exactly once.
                share = slice(self.global_rank, None, world)
                for m in (self.test_metrics, self.test_details):
                    m.reset()
                    m.update(prob[share], tgt[share])
            self.test_predictions = {"index": idx.cpu(), "prob": prob.cpu(), "target": tgt.cpu()}
        details = self.test_details.compute()
        self.test_details_result = {k: v.detach().cpu() for k, v in details.items()}
        self._test_buffer.clear()

    def write_report(self, out_dir, records, metrics, stage: str = "test") -> None:
        """Confusion matrix PNG, per-class report (CSV + Markdown) and per-image predictions of the
        last test run, for ``records`` (the dataset that was tested, in loader order)."""
        from pathlib import Path

        from ..reports import plot_confusion_matrix, write_classification_report, write_predictions
        from ..taxonomy import Taxonomy

        out_dir = Path(out_dir)
        tree = Taxonomy.load()
        display = [tree.display_name(c) if tree.is_code(c) else c for c in self.class_names]
        details = getattr(self, "test_details_result", None)
        if details:
            mca = metrics.get(f"{stage}/mca", float("nan"))
            plot_confusion_matrix(details["confmat"], self.class_names, out_dir / f"{stage}_confusion_matrix.png",
                                  title=f"{stage}: MCA {mca:.3f}")
            write_classification_report(details, self.class_names, out_dir, summary=metrics, display_names=display, stage=stage)
        if self.test_predictions:
            paths = [records[int(i)].path for i in self.test_predictions["index"]]
            write_predictions(paths, self.test_predictions["prob"], self.test_predictions["target"], self.class_names,
                              out_dir / f"{stage}_predictions.csv")

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params=params) if self.optimizer_factory else torch.optim.AdamW(params, lr=1e-3)
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        cfg = {"scheduler": sched, "interval": self.hparams.scheduler_interval}
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            cfg["monitor"] = "val/loss"
        return {"optimizer": opt, "lr_scheduler": cfg}
