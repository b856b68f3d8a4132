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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..calibration import TemperatureMixin
from ..metrics import multiclass_metrics, multiclass_per_class_metrics
from ..utils import plain_hparams
from .backbones import create_backbone, normalization
from .classifier import SoftmaxClassifier

__all__ = ["SiameseNetwork", "SiameseEnsembleNet", "SiameseClassifier", "sample_pairs", "class_scores", "LOSSES", "SCORINGS"]

log = logging.getLogger(__name__)

LOSSES = ("bce", "contrastive")
SCORINGS = ("mean", "prototype")


def class_scores(sim: torch.Tensor, support_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean similarity per class: ``sim`` is ``(Q, S)``; classes without support images score 0."""
    onehot = F.one_hot(support_labels, num_classes).to(sim.dtype)  # (S, k)
    counts = onehot.sum(0).clamp(min=1)
    return sim @ onehot / counts


class DistanceHead(nn.Module):
    """Koch et al. (2015) pair head: ``logit = b - Σ_i α_i |e1_i - e2_i|`` with learned ``α_i ≥ 0``
    (softplus), so an image is always most similar to itself and similarity falls with distance
    along every coordinate (Koch's ``w`` is unconstrained; constraining it gives the right behaviour
    from the first step, which matters with a handful of images)."""

    def __init__(self, dim: int, init_weight: float = 0.125, init_bias: float = 1.0):
        super().__init__()
        self.raw_weight = nn.Parameter(torch.full((dim,), math.log(math.expm1(init_weight))))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, absdiff: torch.Tensor) -> torch.Tensor:
        return (self.bias - absdiff @ F.softplus(self.raw_weight)).unsqueeze(-1)


class SiameseNetwork(nn.Module):
    """Embedding network + pair similarity + cached support set.

    ``forward(x)`` returns ``(B, num_classes)`` scores in ``[0, 1]`` against the cached support set
    (0 for a class with no support image; all 0 before :meth:`set_support`).
    """

    def __init__(
        self,
        backbone: Mapping[str, Any],
        num_classes: int,
        embed_dim: int = 128,
        dropout: float = 0.2,
        loss: str = "bce",
        margin: float = 1.0,
        scoring: str = "mean",
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        self.encoder = create_backbone(num_classes=0, **dict(backbone))
        self.projection = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.num_features, embed_dim))
        self.head = DistanceHead(embed_dim)
        self.num_classes, self.loss, self.margin, self.scoring = int(num_classes), loss, float(margin), scoring
        self.register_buffer("support_embeddings", torch.zeros(0, embed_dim))
        self.register_buffer("support_labels", torch.zeros(0, dtype=torch.long))
        self._warned = False

    # ------------------------------------------------------------ embeddings and similarities
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings (distances lie in ``[0, 2]`` whatever the backbone's scale)."""
        return F.normalize(self.projection(self.encoder(x)), dim=-1)

    def pair_logits(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """Koch head logits for aligned pairs ``(N, d), (N, d) → (N,)``."""
        return self.head((e1 - e2).abs()).squeeze(-1)

    def similarity(self, q: torch.Tensor, s: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        """``(Q, S)`` similarities in ``[0, 1]``: the head's probability of "same class" (bce), or
        ``exp(-distance / margin)`` (contrastive). Chunked over the support set (whose size is fixed, so
        the graph exports with any batch size) to bound memory."""
        if self.loss == "contrastive":
            return torch.exp(-torch.cdist(q, s) / self.margin)
        out = [torch.sigmoid(self.head((q[:, None, :] - sc[None, :, :]).abs()).squeeze(-1)) for sc in s.split(chunk)]
        return torch.cat(out, 1) if out else q.new_zeros(len(q), 0)

    def scores_against(self, q: torch.Tensor, s: torch.Tensor, s_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``(Q, num_classes)`` scores of query embeddings against support embeddings."""
        if self.scoring == "prototype":
            onehot = F.one_hot(s_labels, num_classes).to(s.dtype)
            protos = (onehot.T @ s) / onehot.sum(0).clamp(min=1)[:, None]
            if self.loss == "contrastive":
                protos = F.normalize(protos, dim=-1)
            present = onehot.sum(0) > 0
            return self.similarity(q, protos) * present.to(q.dtype)
        return class_scores(self.similarity(q, s), s_labels, num_classes)

    # ------------------------------------------------------------ support set
    @property
    def has_support(self) -> bool:
        return len(self.support_labels) > 0

    def set_support(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Cache the support set (embeddings from :meth:`embed`, class indices)."""
        if len(embeddings) != len(labels):
            raise ValueError(f"{len(embeddings)} support embeddings for {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"support labels must be class indices 0…{self.num_classes - 1}")
        self.support_embeddings = embeddings.detach().to(self.support_embeddings)
        self.support_labels = labels.detach().long().to(self.support_labels.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_support and not self._warned:
            log.warning("Siamese network has no support set yet: every class scores 0 (set one with set_support)")
            self._warned = True
        return self.scores_against(self.embed(x), self.support_embeddings, self.support_labels, self.num_classes)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The support set's size is data, not architecture: take the checkpoint's.
        for name in ("support_embeddings", "support_labels"):
            if prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name], device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SiameseEnsembleNet(nn.Module):
    """Several Siamese networks (e.g. different dropout rates) whose class scores are averaged."""

    def __init__(self, members: Sequence[SiameseNetwork]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one network")
        self.members = nn.ModuleList(members)

    @property
    def has_support(self) -> bool:
        return all(m.has_support for m in self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m.embed(x) for m in self.members]

    def scores_against(self, q: Sequence[torch.Tensor], s: Sequence[torch.Tensor], s_labels: torch.Tensor, k: int) -> torch.Tensor:
        return torch.stack([m.scores_against(qi, si, s_labels, k) for m, qi, si in zip(self.members, q, s, strict=True)]).mean(0)

    def set_support(self, embeddings: Sequence[torch.Tensor], labels: torch.Tensor) -> None:
        for m, e in zip(self.members, embeddings, strict=True):
            m.set_support(e, labels)


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


class SiameseClassifier(TemperatureMixin, L.LightningModule):
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
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        class_weights: Sequence[float] | None = None,
        image_size: int = 224,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "class_weights"])
        plain_hparams(self)
        backbone = dict(self.hparams.backbone)
        self.class_names = list(self.hparams.class_names)
        k = len(self.class_names)
        rates = list(self.hparams.dropout_rates)
        members = [SiameseNetwork(backbone, k, embed_dim, float(r), loss, margin, scoring) for r in rates]
        self.net = SiameseEnsembleNet(members)
        self.hparams["backbone"] = {**backbone, "pretrained": False, "weights": None}
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        mean, std = normalization(members[0].encoder)
        self.hparams["mean"], self.hparams["std"] = list(mean), list(std)
        if loss == "contrastive":
            from pytorch_metric_learning.losses import ContrastiveLoss

            self.contrastive = ContrastiveLoss(pos_margin=0.0, neg_margin=margin)
        base = multiclass_metrics(k)
        self.val_metrics = base.clone(prefix="val/")
        self.test_metrics = base.clone(prefix="test/")
        self.test_details = multiclass_per_class_metrics(k)
        self.test_predictions: dict[str, torch.Tensor] = {}
        self._test_buffer: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._support_key: tuple | None = None
        self._init_temperature()  # on the log of the normalised scores (ana_lightning.calibration)
        self.support_computations = 0  # how many times a support set was embedded (tests read it)

    # The softmax classifier's test-time collection, reports and optimiser set-up work unchanged
    # on this model's scores (they only use class_names, test_details, _test_buffer and the factories).
    on_test_epoch_end = SoftmaxClassifier.on_test_epoch_end
    write_report = SoftmaxClassifier.write_report
    configure_optimizers = SoftmaxClassifier.configure_optimizers

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        SoftmaxClassifier.on_save_checkpoint(self, checkpoint)
        checkpoint["ana_lightning"]["support_size"] = len(self.net.members[0].support_labels)

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

    def calibration_targets(self, target: torch.Tensor) -> torch.Tensor:
        return target

    @torch.no_grad()
    def embed_dataset(self, dataset: Dataset, batch_size: int = 64) -> tuple[list[torch.Tensor], torch.Tensor]:
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
            log.warning("support set has no image of %s: they score 0", [self.class_names[i] for i in missing])

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

            raise DatasetError(folder, [BadFile(str(folder), f"support images of {extra}, which this model does not "
                                                             f"classify (its classes: {self.class_names})")])
        tf = build_transform(self.hparams.image_size, None, self.hparams.mean, self.hparams.std)
        targets = torch.tensor([self.class_names.index(r.label) for r in records])
        key = ("folder", tuple((r.path, r.sha256) for r in records))
        self.set_support_dataset(RecordDataset(records, targets, tf), key=key, batch_size=batch_size)

    def _support_from_datamodule(self) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not getattr(dm, "splits", None) or not dm.splits.get("train"):
            if not self.net.has_support:
                raise RuntimeError("no support set: train with a datamodule, or call set_support_folder(<folder>)")
            return
        train = dm.splits["train"]
        key = ("train", id(dm), len(train))
        self.set_support_dataset(dm.make_dataset(train, train=False), key=key, batch_size=dm.hparams.batch_size)

    # ------------------------------------------------------------ training
    def _pair_loss(self, embs: Sequence[torch.Tensor], labels: torch.Tensor, hard: bool) -> tuple[torch.Tensor, torch.Tensor]:
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

    def training_step(self, batch, batch_idx):
        x, y = batch["image"], batch["target"]
        if self.hparams.self_pairs:
            x = torch.cat([x, _dihedral_crop(x)])
            y = torch.cat([y, y])
        loss, acc = self._pair_loss(self.net.embed(x), y, hard=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/pair_acc", acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch["image"], batch["target"]
        embs = self.net.embed(x)
        loss, acc = self._pair_loss(embs, y, hard=False)
        scores = torch.stack([m.scores_against(e, m.support_embeddings, m.support_labels, m.num_classes)
                              for m, e in zip(self.net.members, embs, strict=True)]).mean(0)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(scores, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/pair_acc", acc, on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return scores

    def on_validation_epoch_start(self) -> None:
        self._support_from_datamodule()  # the current weights' embeddings of the training split, once

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_test_epoch_start(self) -> None:
        self._test_buffer.clear()
        self.test_details.reset()
        if not self.net.has_support:
            self._support_from_datamodule()

    def test_step(self, batch, batch_idx):
        scores = self._eval_step(batch, "test")
        self.test_details.update(scores, batch["target"])
        self._test_buffer.append((batch["index"].detach(), self._calibrated(scores).detach(), batch["target"].detach()))
