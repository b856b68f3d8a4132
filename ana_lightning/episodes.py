"""Episodic few-shot evaluation: N-way K-shot episodes with a 95% confidence interval.

An episode draws ``n_way`` classes, then ``k_shot`` support and ``n_query`` query images per class,
all distinct (a support image is never a query). When the images have groups (specimens, patients, fields),
a class's queries come from other groups than its support images. The classifier sees only the support set of the
episode and labels its queries; the reported figure is the mean query accuracy over ``episodes``
episodes (600 by default, the usual few-shot protocol) with a Student-t 95% interval (scipy).

Images are embedded once for all episodes (``embed``), so an episode costs only the scoring of its
queries against its support embeddings:

- a :class:`~ana_lightning.models.siamese.SiameseClassifier` scores with its own similarity (mean or
  prototype, ensemble averaged);
- any other checkpoint with a timm network (e.g. the softmax CNN) is scored by nearest class mean
  (cosine) of its pooled features — the usual way to evaluate a classifier's embedding few-shot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .data.records import ImageRecord

__all__ = ["Episode", "EpisodeResult", "sample_episode", "run_episodes", "mean_ci95", "evaluate_episodes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Episode:
    """Indices into the dataset; ``*_labels`` are episode class positions ``0…n_way-1``."""

    classes: tuple[int, ...]
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


@dataclass
class EpisodeResult:
    n_way: int
    k_shot: int
    n_query: int
    episodes: int
    accuracy: float
    ci95: float
    accuracies: list[float] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, float]:
        d = asdict(self)
        d.pop("accuracies")
        return d


_TRIES = 200  # random halvings of a class's groups tried before it counts as unable to fill an episode


def _disjoint_draw(
    idx: np.ndarray, groups: np.ndarray, k_shot: int, n_query: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """``k_shot`` support and ``n_query`` query images of one class (``idx``) from disjoint groups: the class's
    groups are cut at random into a support side and a query side until both sides hold enough images."""
    own = groups[idx]
    names = np.unique(own)
    if len(names) < 2:
        return None
    for _ in range(_TRIES):
        side = rng.random(len(names)) < 0.5
        if side.all() or not side.any():
            continue
        in_support = np.isin(own, names[side])
        support, query = idx[in_support], idx[~in_support]
        if len(support) >= k_shot and len(query) >= n_query:
            return rng.permutation(support)[:k_shot], rng.permutation(query)[:n_query]
    return None


def sample_episode(
    labels: np.ndarray,
    n_way: int,
    k_shot: int,
    n_query: int,
    rng: np.random.Generator,
    groups: Sequence[str | None] | None = None,
) -> Episode:
    """Draw one episode from ``labels`` (one class index per image). With ``groups`` (one per image: the
    specimen, patient or field; None for an image of its own), each class's queries come from other groups
    than its support images, so an episode measures reading a new specimen, not recognising one it was shown."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if groups is not None:
        g = np.asarray([x if x else f"#image{i}" for i, x in enumerate(groups)], dtype=object)
        check = np.random.default_rng(0)  # eligibility does not move the episodes' own draws
        fits = [
            _disjoint_draw(np.flatnonzero(labels == c), g, k_shot, n_query, check) is not None
            for c in classes
        ]
        eligible = classes[np.asarray(fits, dtype=bool)]
        need = f"at least {k_shot} support and {n_query} query images in other groups (specimens, patients, fields)"
    else:
        eligible = classes[counts >= k_shot + n_query]
        need = f"at least {k_shot + n_query} images each"
    if len(eligible) < n_way:
        raise ValueError(
            f"{n_way}-way {k_shot}-shot episodes with {n_query} queries need {n_way} classes with {need}; only "
            f"{len(eligible)} of {len(classes)} classes have that many"
        )
    chosen = rng.choice(eligible, size=n_way, replace=False)
    sup, sup_y, qry, qry_y = [], [], [], []
    for pos, c in enumerate(chosen):
        if groups is not None:
            drawn = _disjoint_draw(np.flatnonzero(labels == c), g, k_shot, n_query, rng)
            if drawn is None:  # pragma: no cover - eligible above: a class that fits once fits again
                raise RuntimeError(f"class {c}: no support/query draw from disjoint groups in {_TRIES} tries")
            sup.append(drawn[0])
            qry.append(drawn[1])
        else:
            idx = rng.permutation(np.flatnonzero(labels == c))[: k_shot + n_query]
            sup.append(idx[:k_shot])
            qry.append(idx[k_shot:])
        sup_y += [pos] * k_shot
        qry_y += [pos] * n_query
    return Episode(
        tuple(int(c) for c in chosen),
        np.concatenate(sup),
        np.asarray(sup_y),
        np.concatenate(qry),
        np.asarray(qry_y),
    )


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its Student-t 95% confidence interval."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * stats.sem(v))


def run_episodes(
    labels: np.ndarray,
    classify: Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray],
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 5,
    episodes: int = 600,
    seed: int = 0,
    groups: Sequence[str | None] | None = None,
) -> EpisodeResult:
    """Mean accuracy of ``classify(support_idx, support_labels, query_idx, n_way) → predicted labels``
    (``groups``: queries from other groups than the support, see :func:`sample_episode`)."""
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(int(episodes)):
        ep = sample_episode(labels, n_way, k_shot, n_query, rng, groups)
        pred = np.asarray(classify(ep.support, ep.support_labels, ep.query, n_way))
        accs.append(float((pred == ep.query_labels).mean()))
    mean, ci = mean_ci95(accs)
    return EpisodeResult(n_way, k_shot, n_query, int(episodes), mean, ci, accs)


# ============================================================================================ models
@torch.no_grad()
def _features(model, dataset, batch_size: int = 64) -> tuple[list[torch.Tensor], np.ndarray]:
    """Embeddings of every image (a list: one tensor per Siamese network, or pooled CNN features)."""
    from torch.utils.data import DataLoader

    from .models.siamese import SiameseClassifier

    if isinstance(model, SiameseClassifier):
        embs, labels = model.embed_dataset(dataset, batch_size)
        return [e.cpu() for e in embs], labels.cpu().numpy()
    net = model.net
    encoder = getattr(net, "encoder", net)
    model.eval()
    feats, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = batch["image"].to(model.device)
        f = (
            encoder.forward_head(encoder.forward_features(x), pre_logits=True)
            if hasattr(encoder, "forward_head")
            else encoder(x)
        )
        feats.append(f.cpu())
        labels.append(torch.as_tensor(batch["target"]))
    return [torch.cat(feats)], torch.cat(labels).numpy()


def evaluate_episodes(
    model,
    dataset,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 5,
    episodes: int = 600,
    seed: int = 0,
    batch_size: int = 64,
    groups: Sequence[str | None] | None = None,
) -> EpisodeResult:
    """Episodic accuracy of a model's embedding on ``dataset`` (its targets give the classes; ``groups``, one
    per image: queries from other groups than the support)."""
    from .models.siamese import SiameseClassifier

    embs, labels = _features(model, dataset, batch_size)
    if isinstance(model, SiameseClassifier):
        net = model.net

        def classify(s, s_y, q, n):
            with torch.no_grad():
                scores = net.scores_against(
                    [e[q] for e in embs], [e[s] for e in embs], torch.as_tensor(s_y), n
                )
            return scores.argmax(1).numpy()
    else:
        feats = F.normalize(embs[0], dim=-1)

        def classify(s, s_y, q, n):
            onehot = F.one_hot(torch.as_tensor(s_y), n).float()
            protos = F.normalize(onehot.T @ feats[s], dim=-1)
            return (feats[q] @ protos.T).argmax(1).numpy()

    return run_episodes(labels, classify, n_way, k_shot, n_query, episodes, seed, groups)


def unique_images(
    records: Sequence[ImageRecord], near_duplicates: Sequence[Any] = ()
) -> tuple[list[ImageRecord], int]:
    """``records`` with each picture once: byte-identical files (sha256) and each near-duplicate set
    (:func:`~ana_lightning.data.splits.near_duplicate_sets`) keep their first record. Returns the
    kept records and how many were left out."""
    copy_of: dict[str, str] = {}
    for d in near_duplicates:
        for r in d.records[1:]:
            copy_of[r.path] = d.records[0].path
    seen_sha: set[str] = set()
    seen_pic: set[str] = set()
    out = []
    for r in records:
        pic = copy_of.get(r.path, r.path)
        if (r.sha256 and r.sha256 in seen_sha) or pic in seen_pic:
            continue
        seen_pic.add(pic)
        if r.sha256:
            seen_sha.add(r.sha256)
        out.append(r)
    return out, len(records) - len(out)


def __getattr__(name: str) -> Any:
    """The episodic-evaluation job moved to :mod:`ana_lightning.jobs.episodes` (this old import path still works)."""
    if name in ("evaluate_episodes_job",):
        import importlib

        return getattr(importlib.import_module("ana_lightning.jobs.episodes"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
