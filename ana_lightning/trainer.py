"""Lightning's Trainer with the two speed switches of the trainer configs.

``conf/trainer/*.yaml`` instantiate :class:`Trainer`, so ``trainer.channels_last=true`` and
``trainer.compile=true`` are constructor arguments like every other trainer key; all other arguments
go to :class:`lightning.pytorch.Trainer` unchanged. The switches are applied to whatever
LightningModule is fitted or tested (by :class:`SpeedSwitches`), so no model needs code for them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from .distributed import SameHparamsOnAllRanks
from .models.cells import TTAAtEvaluationOnly

__all__ = ["Trainer", "SpeedSwitches"]


def _no_cloud_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def _quiet_lightning() -> None:
    """Two things every run printed that are not the user's business (each filter matches one message; set by
    every Trainer, not at import, where a caller's ``catch_warnings`` could drop it; setting it again is a no-op):

    - Lightning's "💡 Tip: … try installing litlogger / litmodels" adverts: runs here are offline by design (a
      lab's machine, a cluster node) and log to CSV, W&B offline or TensorBoard;
    - torch's FutureWarning that Lightning 2.6 builds the deprecated ``LeafSpec`` (every fit and test): about
      Lightning's code, and gone when Lightning moves to ``TreeSpec.is_leaf``.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_cloud_tips)
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )


class SpeedSwitches(L.Callback):
    """Channels-last memory format and ``torch.compile`` for the fitted/tested LightningModule.

    Args:
        channels_last: store 4-D weights channels-last (NHWC); convolutions then run NHWC kernels
            (tensor cores on GPUs) and convert their input once.
        compile: ``True`` or a dict of ``torch.compile`` arguments (``mode``, ``dynamic``, …). The
            module is compiled in place (``nn.Module.compile``), so checkpoint keys do not change.
    """

    def __init__(self, channels_last: bool = False, compile: bool | Mapping[str, Any] = False):
        self.channels_last = bool(channels_last)
        self.compile = compile

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.compile and not getattr(pl_module, "_ana_compiled", False):
            kwargs = dict(self.compile) if isinstance(self.compile, Mapping) else {}
            pl_module.compile(**kwargs)
            pl_module._ana_compiled = True


class Trainer(L.Trainer):
    """:class:`lightning.pytorch.Trainer` plus ``channels_last`` and ``compile`` (see
    :class:`SpeedSwitches`). Every DDP run also checks that all ranks hold the same
    hyperparameters (:class:`~ana_lightning.distributed.SameHparamsOnAllRanks`), and a model with a
    :class:`~ana_lightning.models.cells.CellInput` validates inside ``fit`` without its dihedral TTA
    (:class:`~ana_lightning.models.cells.TTAAtEvaluationOnly`), whatever LightningModule holds it.

    >>> Trainer(accelerator="cpu", channels_last=True, logger=False).callbacks[0].channels_last
    True
    """

    def __init__(
        self, *, channels_last: bool = False, compile: bool | Mapping[str, Any] = False, **kwargs: Any
    ):
        _quiet_lightning()
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if channels_last or compile:
            callbacks.insert(0, SpeedSwitches(channels_last=channels_last, compile=compile))
        callbacks.append(SameHparamsOnAllRanks())
        if not any(isinstance(c, TTAAtEvaluationOnly) for c in callbacks):
            callbacks.append(TTAAtEvaluationOnly())
        self.channels_last = bool(channels_last)
        self.compile = compile
        super().__init__(callbacks=callbacks, **kwargs)
