"""The one LightningModule base of ana-lightning: what every task shares, written once.

:class:`ANAModule` owns

- the hyperparameters: a subclass's constructor arguments (the config keys) are saved as plain
  Python values (so checkpoints load with ``weights_only=True``); ``optimizer`` / ``scheduler`` are not;
- the optimizer and LR scheduler, built from ``_partial_: true`` configs (``conf/model/*.yaml``;
  there is no default optimizer in code);
- the checkpoint metadata a generic loader needs (``ana_lightning``: class path, task, classes, plus
  :meth:`checkpoint_metadata` of the subclass, and the temperature);
- freezing a backbone config once its weights are in the state dict, and the input mean / std;
- metric collections per stage (``train/``, ``val/``, ``test/`` prefixes);
- per-image predictions of a stage, gathered across DDP ranks with the DistributedSampler's
  padding duplicates dropped (:meth:`collect` / :meth:`gathered`); after a test run they are in
  :attr:`test_predictions` (``index`` into the tested records, ``prob``, ``target``, …), from which
  :mod:`ana_lightning.reports` writes the run folder's report: models never write reports.

A subclass defines ``task``, builds its network (a plain ``nn.Module``, :mod:`~ana_lightning.models.networks`),
and writes only what differs: ``forward``, ``predict_proba``, the steps and the loss.

>>> import functools
>>> from ana_lightning.models.classifier import SoftmaxClassifier
>>> m = SoftmaxClassifier({"name": "test_resnet"}, ["AC-1", "AC-2"], image_size=32,
...                       optimizer=functools.partial(torch.optim.SGD, lr=0.1))
>>> isinstance(m, ANAModule), m.task, sorted(m.hparams)[:3]
(True, 'single_label', ['backbone', 'class_names', 'class_weights'])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from ..calibration import TemperatureMixin
from ..utils import plain_hparams
from .backbones import normalization

__all__ = ["ANAModule", "OptimizerFactory", "SchedulerFactory"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class ANAModule(TemperatureMixin, L.LightningModule):
    """Base of every ana-lightning LightningModule (see the module docstring).

    Args:
        optimizer: a partially applied optimizer (Hydra ``_partial_: true``), called with ``params=``.
            Required to train; a model loaded for evaluation needs none.
        scheduler: a partially applied LR scheduler (called with ``optimizer=``), or None.
        temperatures: how many temperatures calibration fits (one per output level).
    """

    #: ``single_label`` | ``multi_label`` | ``hierarchical``: what checkpoints and reports call the task.
    task: ClassVar[str] = "single_label"
    #: constructor arguments that are not hyperparameters (besides ``optimizer`` and ``scheduler``).
    hparams_ignore: ClassVar[tuple[str, ...]] = ()
    #: whether ``forward`` reads a batch of images on its own, so that the model summary at the start of a fit can
    #: count FLOPs on one (a Siamese model also needs its support set).
    summary_input: ClassVar[bool] = True

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        temperatures: int = 1,
    ) -> None:
        super().__init__()
        # The subclass's arguments, read from its __init__ frame (and those of its own subclasses).
        caller = inspect.currentframe().f_back  # type: ignore[union-attr]
        self.save_hyperparameters(ignore=["optimizer", "scheduler", *self.hparams_ignore], frame=caller)
        plain_hparams(self)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        if "class_names" in self.hparams:
            self.class_names: list[str] = list(self.hparams.class_names)
        self._init_temperature(temperatures)  # fitted on the validation split after training (calibration)
        self._collected: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.test_predictions: dict[str, torch.Tensor] = {}
        #: the name the test loop logs its figures under: ``test``, or ``val`` / ``train`` while ``ana-eval``
        #: scores the training run's validation or training split (see :meth:`log`)
        self.test_logged_as = "test"

    def log(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``log`` (``log_dict`` goes through it), with the test loop's ``test/<metric>`` logged
        as ``<test_logged_as>/<metric>``: an evaluation of the validation split says ``val/mca`` everywhere
        the figure goes (``trainer.callback_metrics``, callbacks, loggers, the returned results)."""
        stage = getattr(self, "test_logged_as", "test")
        if stage != "test" and name.startswith("test/"):
            name = f"{stage}/{name.removeprefix('test/')}"
        super().log(name, *args, **kwargs)

    # ------------------------------------------------------------------ hparams
    def freeze_backbone_hparams(self, key: str = "backbone") -> None:
        """The backbone config(s) under ``key`` with ``pretrained=False, weights=None``: the weights are
        now part of this module's state dict, so a reload must not look for them again."""
        spec = self.hparams[key]
        frozen = lambda b: {**dict(b), "pretrained": False, "weights": None}  # noqa: E731
        self.hparams[key] = [frozen(b) for b in spec] if isinstance(spec, list | tuple) else frozen(spec)

    def store_normalization(self, net: nn.Module) -> None:
        """The input mean / std of ``net``'s weights (timm's ``pretrained_cfg``) into the hparams."""
        mean, std = normalization(net)
        self.hparams["mean"], self.hparams["std"] = list(mean), list(std)

    def weight_buffer(self, name: str, values: Sequence[float] | None, what: str) -> None:
        """A non-persistent per-class weight buffer (``class_weight``, ``pos_weight``), or None."""
        w = torch.tensor(values, dtype=torch.float32) if values is not None else None
        if w is not None and w.numel() != len(self.class_names):
            raise ValueError(f"{what} has {w.numel()} values for {len(self.class_names)} classes")
        self.register_buffer(name, w, persistent=False)

    def stage_metrics(
        self, metrics: MetricCollection, stages: Sequence[str] = ("train", "val", "test")
    ) -> None:
        """``{stage}_metrics``: a clone of ``metrics`` per stage, logged as ``{stage}/{metric}``."""
        for stage in stages:
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a subclass adds to the checkpoint's ``ana_lightning`` metadata (decision rule, tree, …)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Enough for a generic loader (ana-eval, prediction, export) to rebuild the right class.
        checkpoint["ana_lightning"] = {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "task": self.task,
            "class_names": self.class_names,
            **self.checkpoint_metadata(),
        }
        self._save_temperature(checkpoint)

    def setup(self, stage: str) -> None:
        """Before a fit: one blank image of the datamodule's size as ``example_input_array``, so the model summary
        counts FLOPs (and input/output sizes) instead of showing 0. Counted in evaluation mode, as Lightning does:
        a cell model with test-time augmentation shows its 8 views. Not for a compiled module
        (``trainer.compile``), which would compile that one-image evaluation graph as well."""
        super().setup(stage)
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(dm, "hparams", {}).get("image_size") if dm is not None else None
        wanted = stage == "fit" and self.summary_input and not getattr(self, "_ana_compiled", False)
        if wanted and isinstance(size, int) and self.example_input_array is None:
            self.example_input_array = torch.zeros(1, 3, size, size)

    # ------------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(B, classes)`` of a normalised image batch: what every prediction
        path (``ana-predict``, ``ana-export``, ``ana-app``, ``ana-eval``) serves."""
        raise NotImplementedError

    def calibration_logits(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """What the temperature divides (the logits by default)."""
        return self(x)

    def calibration_targets(self, target: torch.Tensor) -> torch.Tensor:
        return target

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError(
                f"{type(self).__name__} has no optimizer: give model.optimizer as a `_partial_: true` config "
                "(every conf/model/*.yaml has one), or optimizer=functools.partial(torch.optim.AdamW, lr=1e-3) in Python"
            )
        opt = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        cfg = {"scheduler": sched, "interval": self.hparams.get("scheduler_interval", "epoch")}
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            cfg["monitor"] = "val/loss"
        return {"optimizer": opt, "lr_scheduler": cfg}

    # ------------------------------------------------------------------ per-image predictions
    def collect(self, stage: str, **tensors: torch.Tensor) -> None:
        """Keep a batch's per-image tensors of ``stage`` (``index`` first: the image's position in the
        stage's records) for :meth:`gathered`."""
        self._collected.setdefault(stage, []).append({k: v.detach() for k, v in tensors.items()})

    def collect_test(
        self,
        batch: Mapping[str, torch.Tensor],
        calibration_logits: torch.Tensor | Sequence[torch.Tensor],
        **tensors: torch.Tensor,
    ) -> None:
        """``collect("test", …)`` with the batch's :meth:`calibration_logits` (given: the test step has computed
        them; one tensor, or one per level) and :meth:`calibration_targets`, which the calibration report after
        a test reads instead of running the model over the test images a second time (eight views per image
        with TTA): keys ``calibration_logit_<i>`` and ``calibration_target``."""
        z = calibration_logits if isinstance(calibration_logits, list | tuple) else [calibration_logits]
        self.collect(
            "test",
            index=batch["index"],
            **{f"calibration_logit_{i}": zi for i, zi in enumerate(z)},
            calibration_target=self.calibration_targets(batch["target"]),
            **tensors,
        )

    def gathered(self, stage: str) -> dict[str, torch.Tensor] | None:
        """The collected tensors of ``stage`` from every rank, sorted by ``index`` with each image once
        (a DistributedSampler pads the ranks with repeated images); None when nothing was collected.
        Clears the collection."""
        parts = self._collected.pop(stage, [])
        if not parts:
            return None
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        if self.trainer.world_size > 1:
            out = {k: self.all_gather(v).flatten(0, 1) for k, v in out.items()}
        order = torch.argsort(out["index"], stable=True)
        out = {k: v[order] for k, v in out.items()}
        keep = torch.ones_like(out["index"], dtype=torch.bool)
        keep[1:] = out["index"][1:] != out["index"][:-1]
        return {k: v[keep] for k, v in out.items()}

    def configure_callbacks(self):
        # Dihedral TTA at evaluation only (models/cells.py). The project's Trainer adds the callback itself;
        # this covers a plain Lightning Trainer (returning it to a Trainer that has one logs an override notice).
        from .cells import TTAAtEvaluationOnly

        trainer = self._trainer
        if trainer is not None and any(isinstance(c, TTAAtEvaluationOnly) for c in trainer.callbacks):
            return []
        return [TTAAtEvaluationOnly()]

    def on_validation_epoch_start(self) -> None:
        self._collected.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._collected.pop("test", None)
        self.test_predictions = {}
        if isinstance(getattr(self, "test_details", None), MetricCollection):
            self.test_details.reset()

    def on_test_epoch_end(self) -> None:
        got = self.gathered("test")
        if got is not None:
            world = self.trainer.world_size
            if world > 1:
                # Each rank feeds a disjoint share of the de-duplicated predictions to its metrics, so
                # their cross-rank sum counts every test image exactly once.
                self.refill_test_metrics({k: v[self.global_rank :: world] for k, v in got.items()})
            self.test_predictions = {
                k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in got.items()
            }
        self.finish_test()

    def refill_test_metrics(self, share: Mapping[str, torch.Tensor]) -> None:
        """Under DDP: reset the test metrics and update them with this rank's ``share`` of the gathered
        predictions. Default (single-label): ``test_metrics`` and ``test_details`` from ``prob`` / ``target``."""
        for name in ("test_metrics", "test_details"):
            if isinstance(m := getattr(self, name, None), MetricCollection):
                m.reset()
                m.update(share["prob"], share["target"])

    def finish_test(self) -> None:
        """After the test predictions are gathered (:attr:`test_predictions`): what the task computes and
        logs. Default (single-label): ``test_details_result``, the per-class precision / recall / F1 and
        confusion matrix of ``test_details``, computed once for the report."""
        if isinstance(getattr(self, "test_details", None), MetricCollection):
            self.test_details_result = {k: v.detach().cpu() for k, v in self.test_details.compute().items()}
