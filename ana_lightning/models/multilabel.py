"""Multi-label sigmoid ensemble, decision rules, and ensembles assembled from checkpoints.

- :class:`AverageEnsemble` (in :mod:`~ana_lightning.models.networks`, re-exported) — a plain ``nn.Module``: N member networks whose logits are averaged
  (``combine="logits"``) or whose probabilities are averaged (``combine="probs"``, returned as the
  logit of the mean sigmoid, or the log of the mean softmax, so ``sigmoid``/``softmax`` of the
  output is the mean probability). Members expecting another input normalisation get the input
  re-normalised on the way in.
- :class:`SigmoidEnsemble` — the LightningModule: N timm backbones trained jointly in one run, each
  with its own BCE-with-logits loss (optional ``pos_weight`` from the training split), predictions
  from the combined output.
- Decision rules: ``global`` (one threshold, default 0.5), ``per_class`` (per-class thresholds
  tuned on the *validation* split to maximise each class's F1, stored in the checkpoint), and
  ``reference_repo`` (the reference repository's rule: threshold 0.3, and the top-1 class when no
  class reaches it). The test split never tunes anything.
- :func:`ensemble_from_checkpoints` — separately trained checkpoints averaged into one model: sigmoid
  ensembles (multi-label) or single-label softmax classifiers (probability averaging, the reference
  repository's single-label ensemble). ``ana-eval ensemble.members=[a.ckpt,b.ckpt]`` uses it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..metrics_multilabel import as_multi_hot, multilabel_details, multilabel_scalar_metrics
from .backbones import create_backbone, normalization
from .base import ANAModule, OptimizerFactory, SchedulerFactory
from .networks import AverageEnsemble

__all__ = [
    "AverageEnsemble",
    "SigmoidEnsemble",
    "decide",
    "tune_thresholds",
    "ensemble_from_checkpoints",
    "DECISION_RULES",
    "REFERENCE_REPO_THRESHOLD",
]

log = logging.getLogger(__name__)

DECISION_RULES = ("global", "per_class", "reference_repo")
#: The reference repository's threshold (with a top-1 fallback); its origin is not documented there.
REFERENCE_REPO_THRESHOLD = 0.3
DEFAULT_BACKBONES: tuple[dict[str, Any], ...] = (
    {"name": "resnet50", "pretrained": False, "weights": None, "drop_rate": 0.2},
    {"name": "efficientnet_b0", "pretrained": False, "weights": None, "drop_rate": 0.2},
)


# ---------------------------------------------------------------------------------- decisions
def decide(
    probs: torch.Tensor, thresholds: torch.Tensor | float, top1_fallback: bool = False
) -> torch.Tensor:
    """0/1 predictions: ``probs >= thresholds`` (a number or one per class); with ``top1_fallback``
    an image where no class reaches its threshold gets its most probable class.

    >>> decide(torch.tensor([[0.2, 0.1], [0.6, 0.4]]), 0.3, top1_fallback=True).tolist()
    [[1, 0], [1, 1]]
    """
    th = torch.as_tensor(thresholds, dtype=probs.dtype, device=probs.device)
    preds = (probs >= th).long()
    if top1_fallback and len(probs):
        empty = preds.sum(dim=1) == 0
        preds[empty, probs[empty].argmax(dim=1)] = 1
    return preds


def tune_thresholds(
    probs: torch.Tensor, target: torch.Tensor, default: float = 0.5, grid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-class thresholds maximising each class's F1 on ``(probs, target)`` — call it with the
    validation split only. Ties go to the threshold closest to ``default``; a class without
    positives keeps ``default``. Written here because no library tunes per-class thresholds for
    precomputed multi-label scores (scikit-learn's ``TunedThresholdClassifierCV`` wraps estimators).

    >>> p = torch.tensor([[0.9, 0.2], [0.3, 0.25], [0.1, 0.8]]); t = torch.tensor([[1, 0], [1, 0], [0, 1]])
    >>> [round(x, 2) for x in tune_thresholds(p, t).tolist()]
    [0.3, 0.5]
    """
    grid = torch.linspace(0.05, 0.95, 91) if grid is None else torch.as_tensor(grid, dtype=torch.float32)
    probs, tgt = probs.float().cpu(), target.cpu() > 0.5
    pred = probs.unsqueeze(0) >= grid.view(-1, 1, 1)  # (G, N, K)
    t = tgt.unsqueeze(0)
    tp = (pred & t).sum(1).float()
    fp = (pred & ~t).sum(1).float()
    fn = (~pred & t).sum(1).float()
    f1 = torch.where(
        2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp)
    )  # (G, K)
    best = f1.max(dim=0, keepdim=True).values
    closeness = -(grid.view(-1, 1) - default).abs().expand_as(f1)
    score = torch.where(torch.isclose(f1, best), closeness, torch.full_like(f1, -math.inf))
    out = grid[score.argmax(dim=0)].clone()
    out[tgt.sum(0) == 0] = default
    return out


# ---------------------------------------------------------------------------------- LightningModule
class SigmoidEnsemble(ANAModule):
    """Multi-label classification by an ensemble of timm backbones (``model=sigmoid_ensemble``).

    Args:
        class_names: the classes in index order (from the taxonomy).
        backbones: one :func:`create_backbone` config per member (default resnet50 + efficientnet_b0).
        optimizer, scheduler, scheduler_interval: as for :class:`~ana_lightning.models.classifier.SoftmaxClassifier`.
        pos_weight: BCE ``pos_weight`` per class (from the training split), or None.
        combine: ``logits`` (average the members' logits) or ``probs`` (average their probabilities).
        decision_rule: ``global``, ``per_class`` (tuned on validation) or ``reference_repo`` (0.3 + top-1).
        threshold: the global threshold, and the start / fallback value of per-class thresholds.
        image_size: input size the model was trained at (stored for prediction).

    Each member is trained on its own BCE loss (the training loss is their mean), so every member
    is a classifier by itself; validation / test loss and predictions use the combined output.
    """

    task = "multi_label"
    calibration_kind = "multilabel"  # one temperature, or one per class (ana_lightning.calibration)

    def __init__(
        self,
        class_names: Sequence[str],
        backbones: Sequence[Mapping[str, Any]] | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        pos_weight: Sequence[float] | None = None,
        combine: str = "logits",
        decision_rule: str = "global",
        threshold: float = 0.5,
        image_size: int = 224,
    ) -> None:
        super().__init__(optimizer, scheduler)
        if not self.class_names:
            raise ValueError("SigmoidEnsemble needs class_names (the datamodule provides them)")
        if decision_rule not in DECISION_RULES:
            raise ValueError(f"decision_rule must be one of {DECISION_RULES}, got {decision_rule!r}")
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
        specs = [dict(b) for b in (self.hparams.backbones or DEFAULT_BACKBONES)]
        if not specs:
            raise ValueError("model.backbones is empty: give at least one backbone")
        nets = [create_backbone(num_classes=len(self.class_names), **b) for b in specs]
        self.hparams["backbones"] = specs
        self.freeze_backbone_hparams("backbones")
        norms = [normalization(n) for n in nets]
        self.store_normalization(nets[0])
        self.net = AverageEnsemble(
            nets, combine=combine, activation="sigmoid", norms=norms, input_norm=norms[0]
        )
        self.weight_buffer("pos_weight", pos_weight, "pos_weight")
        self.register_buffer("thresholds", torch.full((len(self.class_names),), self._base_threshold()))
        self.assembled_from: list[str] | None = None
        self.test_details_result: dict[str, Any] | None = None

    def _base_threshold(self) -> float:
        return (
            REFERENCE_REPO_THRESHOLD
            if self.hparams.decision_rule == "reference_repo"
            else float(self.hparams.threshold)
        )

    def set_decision_rule(self, decision_rule: str, threshold: float | None = None) -> None:
        """Switch the rule (resets per-class thresholds to the global value until tuned again)."""
        if decision_rule not in DECISION_RULES:
            raise ValueError(f"decision_rule must be one of {DECISION_RULES}, got {decision_rule!r}")
        self.hparams["decision_rule"] = decision_rule
        if threshold is not None:
            self.hparams["threshold"] = float(threshold)
        self.thresholds.fill_(self._base_threshold())

    def checkpoint_metadata(self) -> dict[str, Any]:
        if self.assembled_from:
            raise RuntimeError(
                "an ensemble assembled from checkpoints is not saved: keep its member checkpoints"
            )
        return {
            "decision_rule": self.hparams.decision_rule,
            "thresholds": [round(float(t), 6) for t in self.thresholds],
        }

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated per-class probabilities (sigmoid of the logits over the temperature(s))."""
        return self.scaled(self(x)).sigmoid()

    def calibration_targets(self, target: torch.Tensor) -> torch.Tensor:
        return as_multi_hot(target, len(self.class_names)).float()

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """0/1 predictions of this model's decision rule (its thresholds move with its temperature, so
        calibration never changes a decision)."""
        if self.hparams.decision_rule == "reference_repo":  # 0.3 (moved with the temperature) + top-1
            return decide(probs, self.thresholds.to(probs.device), top1_fallback=True)
        return decide(probs, self.thresholds.to(probs.device))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.decide(self.predict_proba(x))

    # ------------------------------------------------------------------ training
    def _target(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return as_multi_hot(batch["target"], len(self.class_names)).float()

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        target = self._target(batch)
        z = self.net.member_logits(batch["image"])
        loss = torch.stack([self._loss(zm, target) for zm in z]).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(target))
        return loss

    def _eval_step(self, batch: Mapping[str, torch.Tensor], stage: str) -> None:
        target = self._target(batch)
        logits = self(batch["image"])
        self.log(
            f"{stage}/loss",
            self._loss(logits, target),
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(target),
            sync_dist=True,
        )
        if stage == "test":
            self.collect_test(batch, logits, prob=self.scaled(logits).sigmoid(), target=target)
        else:
            self.collect(stage, index=batch["index"], prob=self.scaled(logits).sigmoid(), target=target)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_scalars(self, stage: str, scalars: Mapping[str, float]) -> None:
        for k, v in scalars.items():
            self.log(
                f"{stage}/{k}",
                float(v),
                on_step=False,
                on_epoch=True,
                prog_bar=k in ("micro_f1", "exact_match"),
                sync_dist=True,
            )

    def on_validation_epoch_end(self) -> None:
        got = self.gathered("val")
        if got is None:
            return
        prob, tgt = got["prob"].float().cpu(), got["target"].cpu()
        if self.hparams.decision_rule == "per_class" and not self.trainer.sanity_checking:
            # Tuned on this epoch's validation predictions; the checkpoint of this epoch stores them.
            self.thresholds.copy_(
                tune_thresholds(prob, tgt, float(self.hparams.threshold)).to(self.thresholds)
            )
        self._log_scalars("val", multilabel_scalar_metrics(prob, self.decide(prob), tgt))

    def finish_test(self) -> None:
        if not self.test_predictions:
            return
        prob, tgt = self.test_predictions["prob"], self.test_predictions["target"]
        preds = self.decide(prob)  # thresholds as they are: nothing is tuned on the test split
        self.test_details_result = multilabel_details(prob, preds, tgt)
        self.test_predictions.update(pred=preds, target=tgt.long())
        self._log_scalars("test", self.test_details_result["scalars"])

    def configure_optimizers(self) -> Any:
        if self.assembled_from:
            raise RuntimeError(
                "an ensemble assembled from checkpoints is for evaluation; train its members instead"
            )
        return super().configure_optimizers()

    # ------------------------------------------------------------------ evaluation of checkpoints
    @torch.no_grad()
    def predict_dataset(self, dataset: Dataset, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and multi-hot targets of every image of ``dataset`` (in order), outside a Trainer."""
        was_training = self.training
        self.eval()
        probs, tgts = [], []
        for batch in DataLoader(dataset, batch_size=batch_size):
            probs.append(self.predict_proba(batch["image"].to(self.device)).cpu())
            tgts.append(as_multi_hot(batch["target"], len(self.class_names)).cpu())
        self.train(was_training)
        return torch.cat(probs), torch.cat(tgts)

    def prepare_evaluation(self, split: str, val: Dataset | None = None, batch_size: int = 32) -> None:
        """Called by ``ana-eval`` before testing ``split``, with the validation split's ``val`` dataset.
        An assembled ensemble with ``decision_rule=per_class`` tunes its thresholds here, on the
        validation split, which must not be part of what is evaluated."""
        if self.hparams.decision_rule != "per_class":
            return
        if not self.assembled_from:
            if split in ("val", "all"):
                log.warning(
                    "per-class thresholds were tuned on the training run's validation split, which is part of the "
                    "evaluated split=%s: these metrics are optimistic",
                    split,
                )
            return
        if split in ("val", "all"):
            raise ValueError(
                f"decision_rule=per_class tunes thresholds on the validation split, which is part of the evaluated split={split}; "
                "evaluate split=test (with the training run's split manifest) or use ensemble.decision_rule=global"
            )
        if val is None or not len(val):
            raise ValueError(
                "decision_rule=per_class needs a validation split to tune the thresholds on, and it is empty"
            )
        prob, tgt = self.predict_dataset(val, batch_size)
        self.thresholds.copy_(tune_thresholds(prob, tgt, float(self.hparams.threshold)).to(self.thresholds))
        log.info(
            "per-class thresholds tuned on %d validation images: %s",
            len(val),
            ", ".join(
                f"{c}={t:.2f}" for c, t in zip(self.class_names, self.thresholds.tolist(), strict=True)
            ),
        )


# ---------------------------------------------------------------------------------- assembled ensembles
def _task_of(path: str | Path, trust_checkpoint: bool = False) -> str:
    from ..utils import CheckpointError, read_checkpoint

    meta = read_checkpoint(path, trust_checkpoint=trust_checkpoint).get("ana_lightning") or {}
    if "task" not in meta:
        raise CheckpointError(f"{path} was not written by ana-lightning (no 'ana_lightning' task metadata)")
    return str(meta["task"])


def ensemble_from_checkpoints(
    paths: Sequence[str | Path],
    combine: str = "probs",
    decision_rule: str | None = None,
    threshold: float = 0.5,
    map_location: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
) -> L.LightningModule:
    """One evaluable model averaging separately trained checkpoints (all of one task, same classes).

    - single-label softmax classifiers: probabilities averaged (``combine="probs"``, the reference
      repository's single-label ensemble) or logits; the result evaluates and reports like a
      :class:`~ana_lightning.models.classifier.SoftmaxClassifier`;
    - sigmoid ensembles: probabilities or logits averaged; ``decision_rule`` (default ``global``
      with ``threshold``) is the ensemble's own: ``per_class`` thresholds are tuned on the
      validation split by ``ana-eval`` before testing.

    Members expecting another input normalisation get the input re-normalised for them.
    """
    from ..utils import CheckpointError, load_checkpoint_model

    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("ensemble.members is empty: give two or more checkpoints")
    tasks = {p: _task_of(p, trust_checkpoint) for p in paths}
    if len(set(tasks.values())) > 1:
        raise CheckpointError(f"cannot ensemble checkpoints of different tasks: {tasks}")
    task = tasks[paths[0]]
    if task not in ("single_label", "multi_label"):
        raise CheckpointError(
            f"{paths[0]}: checkpoints of task {task!r} cannot be averaged (single_label or multi_label only)"
        )
    members = [
        load_checkpoint_model(p, map_location=map_location, trust_checkpoint=trust_checkpoint) for p in paths
    ]
    ref = list(members[0].class_names)
    for p, m in zip(paths[1:], members[1:], strict=True):
        if list(m.class_names) != ref:
            raise CheckpointError(
                f"{p} predicts classes {list(m.class_names)}, but {paths[0]} predicts {ref}: members must share classes"
            )
    sizes = {int(m.hparams.image_size) for m in members}
    if len(sizes) > 1:
        log.warning(
            "ensemble members were trained at different image sizes %s; evaluating at %d",
            sorted(sizes),
            int(members[0].hparams.image_size),
        )
    if len(paths) == 1:
        log.warning("an ensemble of one checkpoint is that checkpoint")
    norms = [(tuple(m.hparams.mean), tuple(m.hparams.std)) for m in members]
    nets = [m.net for m in members]
    shell = load_checkpoint_model(
        paths[0], map_location=map_location, trust_checkpoint=trust_checkpoint
    )  # a fresh copy: the task's training/eval logic
    shell.net = AverageEnsemble(
        nets,
        combine=combine,
        activation="softmax" if task == "single_label" else "sigmoid",
        norms=norms,
        input_norm=norms[0],
    )
    shell.hparams["ensemble_members"] = paths
    shell.hparams["ensemble_combine"] = combine
    shell.set_temperature(None)  # the members' temperatures do not apply to their average
    if task == "multi_label":
        shell.assembled_from = paths
        shell.set_decision_rule(decision_rule or "global", threshold)
    elif decision_rule not in (None, "argmax"):
        raise ValueError(
            f"single-label checkpoints predict the most probable class; decision_rule={decision_rule!r} does not apply"
        )
    shell.eval()
    return shell
