"""Softmax classifier: the training logic around a plain timm network.

The network itself is a plain ``nn.Module`` built by :func:`~ana_lightning.models.backbones.create_backbone`
from the ``backbone`` config, which is stored in the checkpoint so that
``SoftmaxClassifier.load_from_checkpoint(path)`` alone rebuilds the model (no config needed).
What every model shares (optimizer, checkpoint metadata, gathering the test predictions) is in
:class:`~ana_lightning.models.base.ANAModule`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..metrics import multiclass_metrics, multiclass_per_class_metrics
from .backbones import create_backbone
from .base import ANAModule, OptimizerFactory, SchedulerFactory

__all__ = ["SoftmaxClassifier"]


class SoftmaxClassifier(ANAModule):
    """Single-label classification with (class-weighted) cross-entropy.

    Args:
        backbone: keyword arguments of :func:`create_backbone` (``name``, ``pretrained``, ``weights``, …).
        class_names: the classes in index order (from the taxonomy); sets the number of outputs.
        optimizer: a partially applied optimizer (Hydra ``_partial_: true``); needed to train.
        scheduler: a partially applied LR scheduler, or None.
        class_weights: per-class CE weights computed on the training split, or None.
        label_smoothing: cross-entropy label smoothing.
        image_size: input size the model was trained at (stored for prediction).
        mixup: ``alpha`` of mixup in training (0 = off): each training batch is blended with a shuffled
            copy of itself, ``λ ~ Beta(alpha, alpha)``, and the loss is the same blend of the two targets'
            losses. A network with a ``prepare`` step (:class:`~ana_lightning.models.cells.CellInput`)
            is blended after it, so cells are mixed after their per-cell normalisation.
    """

    task = "single_label"

    def __init__(
        self,
        backbone: Mapping[str, Any],
        class_names: Sequence[str],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        image_size: int = 224,
        mixup: float = 0.0,
    ) -> None:
        super().__init__(optimizer, scheduler)
        if not mixup >= 0.0:
            raise ValueError(f"model.mixup is the Beta alpha of mixup, >= 0 (0 = off); got {mixup!r}")
        if not mixup:  # off: not stored, so the checkpoint keeps the layout older code reads
            self.hparams.pop("mixup", None)
        self.net: nn.Module = create_backbone(
            num_classes=len(self.class_names), **dict(self.hparams.backbone)
        )
        self.freeze_backbone_hparams()
        self.store_normalization(self.net)
        self.weight_buffer("class_weight", class_weights, "class_weights")
        k = len(self.class_names)
        self.stage_metrics(multiclass_metrics(k))
        self.test_details = multiclass_per_class_metrics(k)
        self.test_details_result: dict[str, torch.Tensor] = {}
        self._train_buffer: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities (softmax of the logits over the model's temperature)."""
        return self.scaled(self(x)).softmax(dim=-1)

    # ------------------------------------------------------------------ training
    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, weight=self.class_weight, label_smoothing=self.hparams.label_smoothing
        )

    def _mixup_step(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the mixed batch and the mixed loss (see ``mixup`` in the class docstring)."""
        alpha = float(self.hparams.mixup)
        body = self.net
        if hasattr(self.net, "prepare"):  # CellInput: mix the normalised cells, then its body
            x, body = self.net.prepare(x), self.net.body
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(x), device=x.device)
        logits = body(lam * x + (1.0 - lam) * x[perm])
        return logits, lam * self._ce(logits, target) + (1.0 - lam) * self._ce(logits, target[perm])

    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        target = batch["target"]
        if stage == "train" and self.hparams.get("mixup", 0.0) > 0:
            logits, loss = self._mixup_step(batch["image"], target)
        else:
            logits = self(batch["image"])
            loss = self._ce(logits, target)
        on_step = stage == "train"
        # No host-device sync in a training step (each costs a fast GPU ~5-10% of its step time):
        # the training loss is not shown in the progress bar (that is an .item() per step), and the
        # training metrics get the epoch's predictions at once in on_train_epoch_end (torchmetrics'
        # per-batch update waits for the GPU); same values. experiments/benchmarks/throughput.py.
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=not on_step,
            batch_size=len(target),
            sync_dist=not on_step,
        )
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

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        _, logits = self._step(batch, "test")
        self.test_details.update(logits, batch["target"])
        self.collect_test(batch, logits, prob=self.scaled(logits).softmax(-1), target=batch["target"])
