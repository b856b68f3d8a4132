"""Hierarchical classification over the ICAP tree: the multi-head LightningModule, and the names
this module always offered.

:class:`MultiHeadClassifier` is one shared backbone with a softmax head per level (the plain
:class:`~ana_lightning.models.networks.MultiHeadNet`), trained with a consistency-aware loss and
routed over the tree. Routing lives in :mod:`~ana_lightning.models.routing`, the three-model
pipeline and its bundle in :mod:`~ana_lightning.models.hierarchy_pipeline`; both are re-exported
here, because configs (``conf/eval_hierarchy.yaml``), checkpoints and bundles name
``ana_lightning.models.hierarchical.<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..metrics import multiclass_metrics
from ..taxonomy import Taxonomy
from .base import ANAModule, OptimizerFactory, SchedulerFactory
from .hierarchy_pipeline import (
    _BUNDLE_KEYS,  # noqa: F401 - re-exported for callers of the old module
    BUNDLE_KIND,
    HierarchicalPipeline,
    HierarchyNet,
    _level3_checkpoints,  # noqa: F401 - re-exported (hierarchy jobs)
    resolve_checkpoint,
)
from .networks import MultiHeadNet
from .routing import ROUTINGS, PathPrediction, TreePaths, path_scores, route

__all__ = [
    "ROUTINGS",
    "TreePaths",
    "PathPrediction",
    "route",
    "path_scores",
    "HierarchicalPipeline",
    "HierarchyNet",
    "MultiHeadNet",
    "MultiHeadClassifier",
    "resolve_checkpoint",
    "BUNDLE_KIND",
]

LEVEL_NAMES = ("level1", "level2", "leaf")


class MultiHeadClassifier(ANAModule):
    """One backbone, a softmax head per level of the tree, and a consistency-aware loss.

    Loss: cross-entropy at each level (targets ``-1`` — a contest label that stops higher up — are
    ignored) plus ``consistency_weight`` × KL divergence between each coarse head and the leaf head
    summed over each node's leaves, so the heads agree on the tree. Predictions are routed over the
    tree (``routing``), so the predicted leaf is always under the predicted level-2 and level-1 nodes.

    Args:
        backbone: keyword arguments of :func:`create_backbone`.
        class_names: the leaf codes (from the datamodule).
        level1_names, level2_names: the level-1/level-2 nodes (default: the nodes of ``class_names``).
        tree: a tree YAML (default: the packaged ICAP tree).
        consistency_weight: weight of the consistency term.
        routing: ``hard`` or ``product`` (see :func:`route`).
        optimizer, scheduler, scheduler_interval, image_size, class_weights, label_smoothing: as in
            :class:`~ana_lightning.models.classifier.SoftmaxClassifier` (``class_weights`` weight the leaf loss).
    """

    task = "hierarchical"
    calibration_kind = "hierarchical"  # one temperature per level

    def __init__(
        self,
        backbone: Mapping[str, Any],
        class_names: Sequence[str],
        level1_names: Sequence[str] | None = None,
        level2_names: Sequence[str] | None = None,
        tree: str | None = None,
        consistency_weight: float = 0.5,
        routing: str = "product",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        image_size: int = 224,
    ) -> None:
        super().__init__(optimizer, scheduler, temperatures=3)  # one temperature per level (calibration)
        self.tree = Taxonomy.load(tree)
        self.class_names = [self.tree.parse_code(c) for c in self.hparams.class_names]
        self.level1_names = (
            list(level1_names)
            if level1_names
            else list(dict.fromkeys(self.tree.level_of(c, 1) for c in self.class_names))
        )
        self.level2_names = (
            list(level2_names)
            if level2_names
            else list(dict.fromkeys(self.tree.level_of(c, 2) for c in self.class_names))
        )
        self.hparams["level1_names"], self.hparams["level2_names"] = self.level1_names, self.level2_names
        sizes = (len(self.level1_names), len(self.level2_names), len(self.class_names))
        self.net = MultiHeadNet(dict(self.hparams.backbone), sizes)
        self.freeze_backbone_hparams()
        self.store_normalization(self.net.encoder)
        # leaf → node membership (k3 × k1, k3 × k2) and leaf → node index, for targets and consistency
        m1 = torch.zeros(sizes[2], sizes[0])
        m2 = torch.zeros(sizes[2], sizes[1])
        for j, c in enumerate(self.class_names):
            m1[j, self.level1_names.index(self.tree.level_of(c, 1))] = 1
            m2[j, self.level2_names.index(self.tree.level_of(c, 2))] = 1
        self.register_buffer("member1", m1, persistent=False)
        self.register_buffer("member2", m2, persistent=False)
        self.weight_buffer("class_weight", class_weights, "class_weights")
        self.paths = TreePaths(self.tree, self.groups())
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{lv}": multiclass_metrics(max(k, 2)).clone(
                    prefix=f"{stage}/level{lv}_"
                )  # torchmetrics needs ≥ 2
                for stage in ("val", "test")
                for lv, k in zip((1, 2, 3), sizes, strict=True)
            }
        )

    @property
    def level_names(self) -> tuple[list[str], list[str], list[str]]:
        """The classes of the three heads: level-1 nodes, level-2 nodes, leaves."""
        return self.level1_names, self.level2_names, self.class_names

    def groups(self) -> dict[str, list[str]]:
        """The leaves of this model under each level-2 node."""
        return self.tree.leaves_by_group(self.class_names)

    _groups = groups  # the name callers used before

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {
            "level1_names": self.level1_names,
            "level2_names": self.level2_names,
            "groups": [[g, cs] for g, cs in self.groups().items()],
            "routing": self.hparams.routing,
        }

    def serving_metadata(self) -> dict[str, Any]:
        """What prediction and export need to route: the same as the checkpoint's metadata."""
        return self.checkpoint_metadata()

    @torch.no_grad()
    def predict_hierarchy(self, x: torch.Tensor) -> torch.Tensor:
        """``[P(level 1) | P(level 2) | P(leaf)]`` side by side (calibrated), routed by the predictor."""
        return torch.cat(self.predict_level_proba(x), -1)

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated leaf probabilities (the leaf head alone, not routed)."""
        return self.scaled(self(x), 2).softmax(-1)

    @torch.no_grad()
    def predict_level_proba(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Calibrated probabilities of the three heads."""
        return [self.scaled(z, i).softmax(-1) for i, z in enumerate(self.net.forward_levels(x))]

    def calibration_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.forward_levels(x)

    def calibration_targets(self, target: torch.Tensor) -> torch.Tensor:
        return self._targets(target)

    def route(self, probs: Sequence[torch.Tensor], routing: str | None = None) -> PathPrediction:
        p1, p2, p3 = (p.detach().float().cpu() for p in probs)
        groups = {g: [self.class_names.index(c) for c in cs] for g, cs in self.groups().items()}
        p3g = {g: (p3[:, idx], [self.class_names[j] for j in idx]) for g, idx in groups.items()}
        return route(
            self.paths, p1, self.level1_names, p2, self.level2_names, p3g, routing or self.hparams.routing
        )

    # ------------------------------------------------------------ training
    def _targets(self, target: torch.Tensor) -> torch.Tensor:
        """``(B, 3)`` level targets from ``(B, 3)`` (datamodule ``level=all``) or leaf indices ``(B,)``."""
        if target.ndim == 2:
            return target
        return torch.stack([self.member1.argmax(1)[target], self.member2.argmax(1)[target], target], 1)

    def _loss(self, logits: Sequence[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        ls = self.hparams.label_smoothing
        loss = logits[0].new_zeros(())
        for lv, (z, weight) in enumerate(zip(logits, (None, None, self.class_weight), strict=True)):
            if (t[:, lv] >= 0).any():
                loss = loss + F.cross_entropy(z, t[:, lv], weight=weight, ignore_index=-1, label_smoothing=ls)
        if self.hparams.consistency_weight:
            p3 = logits[2].softmax(-1)
            for z, member in ((logits[0], self.member1), (logits[1], self.member2)):
                covered = member.sum(0) > 0  # nodes with at least one leaf among this model's classes
                marg = (p3 @ member)[:, covered].clamp(min=1e-8)
                coarse = z[:, covered].log_softmax(-1)
                loss = loss + self.hparams.consistency_weight * F.kl_div(
                    marg.log(), coarse, log_target=True, reduction="batchmean"
                )
        return loss

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        t = self._targets(batch["target"])
        loss = self._loss(self.net.forward_levels(batch["image"]), t)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(t))
        return loss

    def _eval_step(
        self, batch: Mapping[str, torch.Tensor], stage: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Level targets ``(B, 3)``, routed predictions as head indices ``(B, 3)`` (-1: not a class of
        that head), the path scores ``(B,)`` and the three heads' logits; updates and logs the stage's metrics."""
        t = self._targets(batch["target"])
        logits = self.net.forward_levels(batch["image"])
        loss = self._loss(logits, t)
        routed = self.route([self.scaled(z, i).softmax(-1) for i, z in enumerate(logits)])
        pred = torch.tensor(
            [
                [nm.index(v) if v in nm else -1 for v in col]
                for col, nm in zip((routed.level1, routed.level2, routed.leaf), self.level_names, strict=True)
            ],
            dtype=torch.long,
            device=t.device,
        ).T.reshape(len(t), 3)
        self._update_level_metrics(stage, pred, t)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(t), sync_dist=True)
        for lv in (1, 2, 3):
            self.log_dict(self.metrics[f"{stage}_{lv}"], on_step=False, on_epoch=True, batch_size=len(t))
        return t, pred, routed.score.to(t.device), logits

    def _update_level_metrics(self, stage: str, pred: torch.Tensor, t: torch.Tensor) -> None:
        for lv in range(3):
            keep = t[:, lv] >= 0  # a contest label that stops higher up scores the levels it reaches
            if keep.any():
                self.metrics[f"{stage}_{lv + 1}"].update(pred[keep, lv], t[keep, lv])

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        # `val/mca`: the routed leaf MCA, the metric the default callbacks monitor.
        self.log("val/mca", self.metrics["val_3"]["mca"].compute(), prog_bar=True)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        t, pred, score, logits = self._eval_step(batch, "test")
        self.collect_test(batch, logits, target=t, pred=pred, score=score.float())

    def refill_test_metrics(self, share: Mapping[str, torch.Tensor]) -> None:
        for lv in (1, 2, 3):
            self.metrics[f"test_{lv}"].reset()
        self._update_level_metrics("test", share["pred"], share["target"])

    def finish_test(self) -> None:
        self.log("test/mca", self.metrics["test_3"]["mca"].compute())
