"""Training samplers that survive DDP: an exact per-batch mixed-ratio sampler and a class-balanced one.

Both are subclasses of :class:`torch.utils.data.DistributedSampler`. That is what keeps Lightning
from touching them: with ``use_distributed_sampler=True`` (its default) Lightning wraps any other
sampler in a fresh ``DistributedSampler`` and re-instantiates a custom ``batch_sampler`` with that
sampler injected (or refuses it), which silently destroys a per-batch ratio. A loader whose sampler
already *is* a ``DistributedSampler`` is left alone, whatever ``use_distributed_sampler`` says, and
Lightning still calls its :meth:`set_epoch` before every epoch.

Each rank gets its own disjoint shard of one global, epoch-seeded order (the same on every rank), and
every rank gets the same number of samples, so no rank waits for another at a collective.

Written here because no library has them: torch's ``WeightedRandomSampler`` is not distributed,
and neither torch nor Lightning offers a fixed per-batch mixture of two sources.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

__all__ = [
    "MixedRatioSampler",
    "ClassBalancedSampler",
    "balance_weights",
    "single_per_batch",
    "resolve_replicas",
]


def resolve_replicas(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """World size and rank: as given, else from ``torch.distributed`` when it is initialised, else (1, 0)."""
    if num_replicas is None or rank is None:
        if dist.is_available() and dist.is_initialized():
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        else:
            num_replicas = 1 if num_replicas is None else num_replicas
            rank = 0 if rank is None else rank
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
    return int(num_replicas), int(rank)


def balance_weights(
    targets: torch.Tensor, groups: Sequence | None = None, equal_classes: bool = True
) -> torch.Tensor:
    """Draw weights of multi-hot ``targets`` ``(N, K)``: a sample's weight is the largest, over its
    classes ``c``, of ``share_c / G_c / n_cg``, where ``share_c`` is ``1`` (``equal_classes``) or the
    class's count ``n_c``, ``G_c`` the number of groups holding ``c`` and ``n_cg`` the samples of ``c``
    in the sample's group (without ``groups``: ``G_c = 1``, ``n_cg = n_c``). Unnormalised, float64.
    """
    t = (torch.as_tensor(targets) > 0).double()
    n = len(t)
    if groups is None:
        gid = torch.zeros(n, dtype=torch.long)
    else:
        groups = list(groups)
        if len(groups) != n:
            raise ValueError(f"groups must name the group of each of the {n} samples, got {len(groups)}")
        # a sample without a group is a group of its own
        keys = [("group", g) if g is not None else ("sample", i) for i, g in enumerate(groups)]
        index = {k: j for j, k in enumerate(dict.fromkeys(keys))}
        gid = torch.tensor([index[k] for k in keys], dtype=torch.long)
    per_group = torch.zeros(int(gid.max()) + 1, t.shape[1], dtype=torch.float64).index_add_(0, gid, t)
    n_c = per_group.sum(0)  # samples per class
    g_c = (per_group > 0).sum(0).double()  # groups holding each class
    share = torch.ones_like(n_c) if equal_classes else n_c
    n_cg = per_group[gid]  # (N, K): samples of each class in the sample's group
    w = torch.where(t > 0, share / g_c.clamp(min=1) / n_cg.clamp(min=1), torch.zeros_like(t))
    return w.max(dim=1).values


def single_per_batch(mix_ratio: float, batch_size: int) -> int:
    """``round(mix_ratio · batch_size)``, halves rounded up (0.5 · 5 → 3).

    >>> single_per_batch(0.6, 32), single_per_batch(0.5, 5), single_per_batch(0.0, 8)
    (19, 3, 0)
    """
    if not 0.0 <= float(mix_ratio) <= 1.0:
        raise ValueError(f"mix_ratio must be between 0 and 1, got {mix_ratio!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
    return int(math.floor(float(mix_ratio) * int(batch_size) + 0.5 + 1e-9))


class MixedRatioSampler(DistributedSampler):
    """Indices laid out in whole batches, each holding exactly ``round(mix_ratio·B)`` single-label
    samples and ``B − round(mix_ratio·B)`` hospital samples. Use it with ``DataLoader(batch_size=B)``.

    An epoch is defined by the hospital set: every hospital index is drawn once per epoch, in a
    fresh order each epoch. The last global step is topped up with hospital indices from the start
    of that order, so every batch keeps the exact ratio (at most ``B_h · world_size − 1`` repeats).
    Single-label indices are cycled: a stream of reshuffled passes over the single-label set that
    continues from one epoch to the next, so all of them are used evenly over epochs.

    Under DDP, global step ``t`` of rank ``r`` takes slot ``t·world_size + r`` of both streams, so
    the ranks' hospital samples are disjoint (apart from the top-up repeats), the ratio holds per
    rank, and every rank runs ``ceil(H / (B_h · world_size))`` steps.

    Args:
        single_indices: dataset indices of the single-label samples.
        hospital_indices: dataset indices of the hospital (multi-label) samples.
        batch_size: the loader's batch size ``B``.
        mix_ratio: the fraction ``p`` of single-label samples in every batch.
        num_replicas, rank: DDP world size and rank (default: from ``torch.distributed``, else 1 and 0).
        seed: the same on every rank.

    >>> s = MixedRatioSampler(range(0, 10), range(10, 20), batch_size=5, mix_ratio=0.6)
    >>> idx = list(s); len(idx), s.num_batches, sum(i < 10 for i in idx[:5])
    (25, 5, 3)
    """

    def __init__(
        self,
        single_indices: Sequence[int],
        hospital_indices: Sequence[int],
        batch_size: int,
        mix_ratio: float,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ):
        self.single = np.asarray(list(single_indices), dtype=np.int64)
        self.hospital = np.asarray(list(hospital_indices), dtype=np.int64)
        self.batch_size = int(batch_size)
        self.mix_ratio = float(mix_ratio)
        self.n_single = single_per_batch(mix_ratio, batch_size)
        self.n_hospital = self.batch_size - self.n_single
        if self.n_hospital < 1:
            raise ValueError(
                f"mix_ratio={mix_ratio} with batch_size={batch_size} leaves no hospital image in a batch "
                f"(round({mix_ratio}·{batch_size}) = {self.n_single}); an epoch is defined by the hospital set, "
                "so lower mix_ratio (or use data=single_label for single-label images only)"
            )
        if len(self.hospital) == 0:
            raise ValueError("MixedRatioSampler needs at least one hospital sample")
        if self.n_single > 0 and len(self.single) == 0:
            raise ValueError(
                f"mix_ratio={mix_ratio} asks for {self.n_single} single-label samples per batch, but there are none"
            )
        num_replicas, rank = resolve_replicas(num_replicas, rank)
        n = int(max(self.single.max(initial=-1), self.hospital.max(initial=-1))) + 1
        super().__init__(
            range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.num_batches = math.ceil(len(self.hospital) / (self.n_hospital * self.num_replicas))
        self.num_samples = self.num_batches * self.batch_size
        self.total_size = self.num_samples * self.num_replicas

    def _hospital_stream(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0, self.epoch])
        order = self.hospital[rng.permutation(len(self.hospital))]
        return np.resize(order, self.num_batches * self.n_hospital * self.num_replicas)  # wraps: the top-up

    def _single_stream(self) -> np.ndarray:
        need = self.num_batches * self.n_single * self.num_replicas
        if need == 0:
            return self.single[:0]
        s = len(self.single)
        start = self.epoch * need  # the stream continues across epochs
        first, last = start // s, (start + need - 1) // s
        passes = [
            self.single[np.random.default_rng([self.seed, 1, j]).permutation(s)]
            for j in range(first, last + 1)
        ]
        stream = np.concatenate(passes)
        off = start - first * s
        return stream[off : off + need]

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (what the loader will form from :meth:`__iter__`)."""
        hosp, single = self._hospital_stream(), self._single_stream()
        out = []
        for t in range(self.num_batches):
            slot = t * self.num_replicas + self.rank
            s = single[slot * self.n_single : (slot + 1) * self.n_single]
            h = hosp[slot * self.n_hospital : (slot + 1) * self.n_hospital]
            out.append([int(i) for i in np.concatenate([s, h])])
        return out

    def __iter__(self):
        for b in self.batches():
            yield from b

    def __len__(self) -> int:
        return self.num_samples


class ClassBalancedSampler(DistributedSampler):
    """Draws samples with replacement so that every class is seen about equally often; DDP-aware.

    The weight of a sample is ``1 / n_c`` of its rarest class ``c`` (counts over the given targets;
    a multi-label sample without any label counts as its own class). Each epoch one global draw of
    ``ceil(num_samples / world_size) · world_size`` indices is made from a generator seeded by
    ``seed + epoch`` (identical on every rank) and rank ``r`` takes every ``world_size``-th draw
    starting at ``r``: the shards are disjoint slices of one draw and have equal lengths.

    With ``groups`` (the specimen, patient or field of every sample) each class's share is split
    equally between the groups that hold it, so a specimen of 500 cells is drawn as often as one of
    130 cells of the same class. ``equal_classes=False`` keeps the classes' shares as in the data
    (only the groups are balanced); a sample whose group is ``None`` is a group of its own.

    Args:
        targets: class indices ``(N,)`` or a multi-hot matrix ``(N, K)``.
        num_samples: draws per epoch over all ranks (default ``N``).
        num_replicas, rank, seed: as for :class:`MixedRatioSampler`.
        groups: ``N`` group names (or ``None`` entries), or ``None``: no group balance.
        equal_classes: every class drawn equally often (``True``) or as often as in the data.

    >>> s = ClassBalancedSampler(torch.tensor([0] * 90 + [1] * 10), num_samples=1000)
    >>> rare = sum(i >= 90 for i in s); 400 < rare < 600  # class 1 is 10 % of the data, ~50 % of the draws
    True
    >>> g = ["a"] * 80 + ["b"] * 20  # one class, two specimens of 80 and 20
    >>> s = ClassBalancedSampler(torch.zeros(100, dtype=torch.long), 1000, groups=g, equal_classes=False)
    >>> small = sum(i >= 80 for i in s); 400 < small < 600  # specimen b: 20 % of the cells, ~50 % of the draws
    True
    """

    def __init__(
        self,
        targets: torch.Tensor | np.ndarray | Sequence,
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        groups: Sequence | None = None,
        equal_classes: bool = True,
    ):
        t = torch.as_tensor(np.asarray(targets))
        if t.ndim == 1:
            t = torch.nn.functional.one_hot(t.long(), int(t.max()) + 1 if len(t) else 1)
        if t.ndim != 2 or len(t) == 0:
            raise ValueError(f"targets must be a non-empty (N,) or (N, K) array, got shape {tuple(t.shape)}")
        t = (t > 0).float()
        t = torch.cat([t, (t.sum(1, keepdim=True) == 0).float()], dim=1)  # "no label" as a class of its own
        self.weights = balance_weights(t, groups, equal_classes)
        num_replicas, rank = resolve_replicas(num_replicas, rank)
        super().__init__(
            range(len(t)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        total = int(num_samples) if num_samples is not None else len(t)
        if total < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples!r}")
        self.num_samples = math.ceil(total / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        g = torch.Generator().manual_seed(int(self.seed) + int(self.epoch))
        draw = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)
        return iter(draw[self.rank : self.total_size : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
