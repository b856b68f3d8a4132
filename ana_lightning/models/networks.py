"""Plain ``nn.Module`` networks and heads (no training logic), as anomalib separates ``torch_model``
from ``lightning_model``: the LightningModules of :mod:`ana_lightning.models` receive these.

- :class:`AverageEnsemble`: N member networks averaged by logits or by probabilities
  (:class:`~ana_lightning.models.multilabel.SigmoidEnsemble`, checkpoint ensembles).
- :class:`DistanceHead`, :class:`SiameseNetwork`, :class:`SiameseEnsembleNet`: the Siamese few-shot
  embedding, pair head and cached support set (:class:`~ana_lightning.models.siamese.SiameseClassifier`).
- :class:`MultiHeadNet`: one backbone, one linear head per tree level
  (:class:`~ana_lightning.models.hierarchical.MultiHeadClassifier`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import create_backbone

__all__ = [
    "AverageEnsemble",
    "DistanceHead",
    "SiameseNetwork",
    "SiameseEnsembleNet",
    "MultiHeadNet",
    "class_scores",
    "LOSSES",
    "SCORINGS",
]

log = logging.getLogger("ana_lightning.models.siamese")  # the logger its warnings always used


class AverageEnsemble(nn.Module):
    """Plain ``nn.Module`` averaging N members that each map an image batch to ``(B, K)`` logits.

    Args:
        members: the member networks.
        combine: ``logits`` (mean of logits) or ``probs`` (mean of probabilities).
        activation: ``sigmoid`` (multi-label) or ``softmax`` (single-label): how ``probs`` are formed.
        norms: per member, the ``(mean, std)`` it expects; ``input_norm`` is what the input carries.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        combine: str = "logits",
        activation: str = "sigmoid",
        norms: Sequence[tuple[Sequence[float], Sequence[float]]] | None = None,
        input_norm: tuple[Sequence[float], Sequence[float]] | None = None,
    ):
        super().__init__()
        if combine not in ("logits", "probs"):
            raise ValueError(f"combine must be 'logits' or 'probs', got {combine!r}")
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.combine, self.activation = combine, activation
        self._renorm: list[bool] = []
        for i in range(len(members)):
            scale, shift = torch.ones(3), torch.zeros(3)
            if norms is not None and input_norm is not None:
                (m_in, s_in), (m_own, s_own) = input_norm, norms[i]
                m_in, s_in, m_own, s_own = (
                    torch.tensor(v, dtype=torch.float32) for v in (m_in, s_in, m_own, s_own)
                )
                scale, shift = s_in / s_own, (m_in - m_own) / s_own  # (x·s_in + m_in − m_own) / s_own
            self.register_buffer(f"scale{i}", scale.view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"shift{i}", shift.view(1, 3, 1, 1), persistent=False)
            self._renorm.append(
                not (torch.allclose(scale, torch.ones(3)) and torch.allclose(shift, torch.zeros(3)))
            )

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, B, K)``: every member's logits."""
        outs = []
        for i, m in enumerate(self.members):
            xi = x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}") if self._renorm[i] else x
            outs.append(m(xi))
        return torch.stack(outs)

    def combine_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Combine ``(M, B, K)`` member logits into ``(B, K)`` logits of the ensemble."""
        if self.combine == "logits":
            return z.mean(dim=0)
        if self.activation == "sigmoid":  # logit(mean σ(z)) = log Σ σ(z) − log Σ σ(−z), computed stably
            return torch.logsumexp(F.logsigmoid(z), dim=0) - torch.logsumexp(F.logsigmoid(-z), dim=0)
        return torch.logsumexp(F.log_softmax(z, dim=-1), dim=0) - math.log(z.shape[0])  # log(mean softmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine_logits(self.member_logits(x))


# ---------------------------------------------------------------------------------- Siamese
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
        self.num_classes, self.loss, self.margin, self.scoring = (
            int(num_classes),
            loss,
            float(margin),
            scoring,
        )
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
        out = [
            torch.sigmoid(self.head((q[:, None, :] - sc[None, :, :]).abs()).squeeze(-1))
            for sc in s.split(chunk)
        ]
        return torch.cat(out, 1) if out else q.new_zeros(len(q), 0)

    def scores_against(
        self, q: torch.Tensor, s: torch.Tensor, s_labels: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
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
            log.warning(
                "Siamese network has no support set yet: every class scores 0 (set one with set_support)"
            )
            self._warned = True
        return self.scores_against(
            self.embed(x), self.support_embeddings, self.support_labels, self.num_classes
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The support set's size is data, not architecture: take the checkpoint's.
        for name in ("support_embeddings", "support_labels"):
            if prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(
                    state_dict[prefix + name], device=self._buffers[name].device
                )
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

    def scores_against(
        self, q: Sequence[torch.Tensor], s: Sequence[torch.Tensor], s_labels: torch.Tensor, k: int
    ) -> torch.Tensor:
        return torch.stack(
            [m.scores_against(qi, si, s_labels, k) for m, qi, si in zip(self.members, q, s, strict=True)]
        ).mean(0)

    def set_support(self, embeddings: Sequence[torch.Tensor], labels: torch.Tensor) -> None:
        for m, e in zip(self.members, embeddings, strict=True):
            m.set_support(e, labels)


# ---------------------------------------------------------------------------------- multi-head
class MultiHeadNet(nn.Module):
    """A shared timm backbone with one linear head per level. ``forward`` gives the leaf logits;
    :meth:`forward_levels` all three."""

    def __init__(self, backbone: Mapping[str, Any], sizes: Sequence[int]):
        super().__init__()
        self.encoder = create_backbone(
            num_classes=0, **dict(backbone)
        )  # timm applies backbone.drop_rate to the features
        self.heads = nn.ModuleList(nn.Linear(self.encoder.num_features, int(k)) for k in sizes)

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.encoder(x)
        return [h(f) for h in self.heads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_levels(x)[-1]
