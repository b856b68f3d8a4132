"""Siamese few-shot networks (the paper's level 3): pair training, support-set inference, ensembles.

- :class:`SiameseNetwork` (plain ``nn.Module``): a shared timm embedding network with dropout and a
  projection; a Koch-style pair head (a learned weighting of ``|e1 - e2|``, trained with binary
  cross-entropy) or a contrastive embedding (Euclidean distance, margin); and a cached **support set**:
  the embeddings of K labelled images per class, computed once, against which every query is scored
  (highest mean similarity, or nearest prototype), one score in ``[0, 1]`` per class.
- :class:`SiameseEnsembleNet`: several such networks (different dropout rates); scores are averaged.
- :class:`SiameseClassifier` (LightningModule): trains on pairs built inside each batch — all
  positive pairs (same class; plus, with ``self_pairs``, each image against a re-cropped copy of itself,
  so one image per class still gives positives) and as many negatives, drawn at random or the hardest
  ones of the batch. Validation and testing score images against the support set (by default the
  training split, re-embedded once per validation epoch and saved in the checkpoint, so a checkpoint
  alone can predict); :meth:`SiameseClassifier.set_support_folder` swaps in a folder of examples.

The networks are plain ``nn.Module``\ s in :mod:`~ana_lightning.models.networks` (re-exported here).
The training split to embed is handed to the model by the job (:meth:`SiameseClassifier.set_support_source`);
the model never reads a datamodule.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..metrics import multiclass_metrics, multiclass_per_class_metrics
from .base import ANAModule, OptimizerFactory, SchedulerFactory
from .networks import LOSSES, SCORINGS, DistanceHead, SiameseEnsembleNet, SiameseNetwork, class_scores

__all__ = [
    "SiameseNetwork",
    "SiameseEnsembleNet",
    "SiameseClassifier",
    "DistanceHead",
    "sample_pairs",
    "class_scores",
    "LOSSES",
    "SCORINGS",
]

log = logging.getLogger(__name__)


def sample_pairs(
    labels: torch.Tensor,
    sim: torch.Tensor | None = None,
    hard_negatives: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced pairs of a batch: every positive pair ``i < j`` (same label) and as many negatives.

    Negatives are drawn at random, or (``hard_negatives``) the most similar ones according to
    ``sim`` (``(B, B)``). Returns ``(i, j, is_same)``. Without any positive pair, ``B // 2`` negatives
    are returned so the loss still sees the batch.
    """
    from pytorch_metric_learning.utils.loss_and_miner_utils import get_all_pairs_indices

    a1, p, a2, n = get_all_pairs_indices(labels)
    keep_p, keep_n = a1 < p, a2 < n  # each unordered pair once
    a1, p, a2, n = a1[keep_p], p[keep_p], a2[keep_n], n[keep_n]
    want = min(len(n), max(len(a1), len(labels) // 2))
    if want < len(n):
        if hard_negatives and sim is not None:
            order = torch.argsort(sim[a2, n].detach(), descending=True)[:want]
        else:
            order = torch.randperm(len(n), generator=generator, device=n.device)[:want]
        a2, n = a2[order], n[order]
    i, j = torch.cat([a1, a2]), torch.cat([p, n])
    same = torch.cat([torch.ones(len(a1)), torch.zeros(len(a2))]).to(labels.device)
    return i, j, same


def _dihedral_crop(x: torch.Tensor, scale: tuple[float, float] = (0.5, 1.0)) -> torch.Tensor:
    """A differently cropped, flipped and rotated copy of each image (label-preserving for HEp-2
    fields, which have no orientation): the positive partner of an image in self-pairs."""
    from torchvision.transforms import v2

    crop = v2.RandomResizedCrop(size=tuple(x.shape[-2:]), scale=scale, antialias=True)
    out = []
    for img in x:
        img = crop(img)
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        out.append(torch.rot90(img, int(torch.randint(4, ())), dims=(-2, -1)))
    return torch.stack(out)


class SiameseClassifier(ANAModule):
    """A Siamese few-shot model, or an ensemble of them (one network per entry of ``dropout_rates``).

    Args:
        backbone: keyword arguments of :func:`create_backbone` for the shared embedding network.
        class_names: the classes in index order (from the datamodule).
        dropout_rates: one dropout rate per network; two or more make an ensemble (scores averaged).
        embed_dim: size of the projected embedding.
        loss: ``bce`` (Koch-style head on ``|e1 - e2|``) or ``contrastive`` (margin on the distance).
        margin: contrastive margin (embeddings are L2-normalised, so distances lie in ``[0, 2]``).
        hard_negatives: use the batch's most similar negative pairs instead of random ones.
        self_pairs: also pair every training image with a re-cropped copy of itself (a positive).
        scoring: ``mean`` (highest mean similarity to a class's support images) or ``prototype``
            (similarity to the mean support embedding of each class).
        optimizer, scheduler, scheduler_interval, image_size: as in :class:`SoftmaxClassifier`.
        class_weights: accepted for interface compatibility and unused (pairs are balanced instead).
    """

    task = "single_label"
    hparams_ignore = ("class_weights",)
    summary_input = False  # forward scores against the support set, embedded only after training

    def __init__(
        self,
        backbone: Mapping[str, Any],
        class_names: Sequence[str],
        dropout_rates: Sequence[float] = (0.2,),
        embed_dim: int = 128,
        loss: str = "bce",
        margin: float = 1.0,
        hard_negatives: bool = False,
        self_pairs: bool = True,
        scoring: str = "mean",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        class_weights: Sequence[float] | None = None,
        image_size: int = 224,
    ) -> None:
        super().__init__(
            optimizer, scheduler
        )  # on the log of the normalised scores (ana_lightning.calibration)
        k = len(self.class_names)
        backbone = dict(self.hparams.backbone)
        members = [
            SiameseNetwork(backbone, k, embed_dim, float(r), loss, margin, scoring)
            for r in self.hparams.dropout_rates
        ]
        self.net = SiameseEnsembleNet(members)
        self.freeze_backbone_hparams()
        self.store_normalization(members[0].encoder)
        if loss == "contrastive":
            from pytorch_metric_learning.losses import ContrastiveLoss

            self.contrastive = ContrastiveLoss(pos_margin=0.0, neg_margin=margin)
        self.stage_metrics(multiclass_metrics(k), ("val", "test"))
        self.test_details = multiclass_per_class_metrics(k)
        self.test_details_result: dict[str, torch.Tensor] = {}
        self.support_source: Dataset | None = None  # the training split, handed over by the job
        self._support_batch_size = 64
        self._support_key: tuple | None = None
        self.support_computations = 0  # how many times a support set was embedded (tests read it)

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"support_size": len(self.net.members[0].support_labels)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores in ``[0, 1]`` against the cached support set (ensemble mean)."""
        return self.net(x)

    # ------------------------------------------------------------ inference
    @staticmethod
    def _normalised(s: torch.Tensor) -> torch.Tensor:
        total = s.sum(-1, keepdim=True)
        return torch.where(total > 0, s / total.clamp(min=1e-12), torch.full_like(s, 1.0 / s.shape[-1]))

    def _calibrated(self, s: torch.Tensor) -> torch.Tensor:
        """Normalised scores at the model's temperature: ``softmax(log(p) / T)`` (``p`` itself when T = 1)."""
        p = self._normalised(s)
        return p if not self.is_calibrated else self.scaled(p.clamp(min=1e-12).log()).softmax(-1)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores normalised to sum to 1 (uniform where every score is 0), then calibrated."""
        return self._calibrated(self(x))

    def calibration_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalised(self(x)).clamp(min=1e-12).log()

    @torch.no_grad()
    def embed_dataset(
        self, dataset: Dataset, batch_size: int = 64
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Embeddings (one tensor per network) and targets of every image of ``dataset`` (eval mode)."""
        was_training = self.training
        self.eval()
        embs: list[list[torch.Tensor]] = [[] for _ in self.net.members]
        labels = []
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            for store, e in zip(embs, self.net.embed(batch["image"].to(self.device)), strict=True):
                store.append(e)
            labels.append(torch.as_tensor(batch["target"]).to(self.device))
        self.train(was_training)
        self.support_computations += 1
        return [torch.cat(e) for e in embs], torch.cat(labels)

    def set_support_dataset(self, dataset: Dataset, key: Any = None, batch_size: int = 64) -> None:
        """Embed ``dataset`` (targets = class indices of this model) once and cache it as the support set.

        With the same ``key`` as the cached set (and unchanged weights) nothing is recomputed.
        """
        full_key = (key, self.global_step) if key is not None else None
        if full_key is not None and full_key == self._support_key and self.net.has_support:
            return
        embs, labels = self.embed_dataset(dataset, batch_size)
        self.net.set_support(embs, labels)
        self._support_key = full_key
        missing = sorted(set(range(len(self.class_names))) - set(labels.tolist()))
        if missing:
            log.warning(
                "support set has no image of %s: they score 0", [self.class_names[i] for i in missing]
            )

    def set_support_folder(self, folder: str | Path, batch_size: int = 64) -> None:
        """Use a folder of ``<AC code>/<images>`` as the support set (its classes must be this model's)."""
        from ..data.datamodules import RecordDataset
        from ..data.records import DatasetError, read_single_label_folder
        from ..data.transforms import build_transform
        from ..taxonomy import Taxonomy

        records, _ = read_single_label_folder(folder, Taxonomy.load())
        extra = sorted({r.label for r in records} - set(self.class_names))
        if extra:
            from ..data.images import BadFile

            raise DatasetError(
                folder,
                [
                    BadFile(
                        str(folder),
                        f"support images of {extra}, which this model does not "
                        f"classify (its classes: {self.class_names})",
                    )
                ],
            )
        tf = build_transform(self.hparams.image_size, None, self.hparams.mean, self.hparams.std)
        targets = torch.tensor([self.class_names.index(r.label) for r in records])
        key = ("folder", tuple((r.path, r.sha256) for r in records))
        self.set_support_dataset(RecordDataset(records, targets, tf), key=key, batch_size=batch_size)

    def set_support_source(self, dataset: Dataset | None, batch_size: int = 64) -> None:
        """The images validation and testing score against when no support set is cached: the training
        split in evaluation transforms (:func:`ana_lightning.pipeline.train` hands it over), re-embedded
        once per validation epoch with the current weights."""
        self.support_source, self._support_batch_size = dataset, int(batch_size)

    def _support_from_source(self) -> None:
        if self.support_source is None:
            if not self.net.has_support:
                raise RuntimeError(
                    "no support set: hand the model its training split with set_support_source(<dataset>) "
                    "(ana-train does), or call set_support_folder(<folder>)"
                )
            return
        key = ("source", id(self.support_source), len(self.support_source))
        self.set_support_dataset(self.support_source, key=key, batch_size=self._support_batch_size)

    # ------------------------------------------------------------ training
    def _pair_loss(
        self, embs: Sequence[torch.Tensor], labels: torch.Tensor, hard: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean pair loss over the networks and the fraction of pairs each gets right."""
        losses, accs = [], []
        for m, e in zip(self.net.members, embs, strict=True):
            sim = None
            if self.hparams.hard_negatives and hard:
                sim = -torch.cdist(e, e) if m.loss == "contrastive" else m.pair_logits(e[:, None], e[None, :])
            i, j, same = sample_pairs(labels, sim, hard_negatives=self.hparams.hard_negatives and hard)
            if m.loss == "bce":
                logits = m.pair_logits(e[i], e[j])
                losses.append(F.binary_cross_entropy_with_logits(logits, same))
                accs.append(((logits > 0).float() == same).float().mean())
            else:
                pos, neg = same.bool(), ~same.bool()
                tup = (i[pos], j[pos], i[neg], j[neg])
                losses.append(self.contrastive(e, labels, indices_tuple=tup))
                d = (e[i] - e[j]).norm(dim=-1)
                accs.append(((d < m.margin / 2).float() == same).float().mean())
        return torch.stack(losses).mean(), torch.stack(accs).mean()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch["image"], batch["target"]
        if self.hparams.self_pairs:
            x = torch.cat([x, _dihedral_crop(x)])
            y = torch.cat([y, y])
        loss, acc = self._pair_loss(self.net.embed(x), y, hard=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/pair_acc", acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch["image"], batch["target"]
        embs = self.net.embed(x)
        loss, acc = self._pair_loss(embs, y, hard=False)
        scores = torch.stack(
            [
                m.scores_against(e, m.support_embeddings, m.support_labels, m.num_classes)
                for m, e in zip(self.net.members, embs, strict=True)
            ]
        ).mean(0)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(scores, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/pair_acc", acc, on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return scores

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._support_from_source()  # the current weights' embeddings of the training split, once

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        if not self.net.has_support:
            self._support_from_source()

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        scores = self._eval_step(batch, "test")
        self.test_details.update(scores, batch["target"])
        self.collect_test(
            batch,
            self._normalised(scores).clamp(min=1e-12).log(),  # calibration_logits: scores are self(x)
            prob=self._calibrated(scores),
            target=batch["target"],
        )
