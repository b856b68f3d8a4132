"""Episodic few-shot evaluation: N-way K-shot episodes with a 95% confidence interval.

An episode draws ``n_way`` classes, then ``k_shot`` support and ``n_query`` query images per class,
all distinct (a support image is never a query). The classifier sees only the support set of the
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

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .data.records import ImageRecord

__all__ = ["Episode", "EpisodeResult", "sample_episode", "run_episodes", "mean_ci95", "evaluate_episodes",
           "evaluate_episodes_job"]

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


def sample_episode(labels: np.ndarray, n_way: int, k_shot: int, n_query: int, rng: np.random.Generator) -> Episode:
    """Draw one episode from ``labels`` (one class index per image)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    eligible = classes[counts >= k_shot + n_query]
    if len(eligible) < n_way:
        raise ValueError(
            f"{n_way}-way {k_shot}-shot episodes with {n_query} queries need {n_way} classes with at least "
            f"{k_shot + n_query} images each; only {len(eligible)} of {len(classes)} classes have that many"
        )
    chosen = rng.choice(eligible, size=n_way, replace=False)
    sup, sup_y, qry, qry_y = [], [], [], []
    for pos, c in enumerate(chosen):
        idx = rng.permutation(np.flatnonzero(labels == c))[: k_shot + n_query]
        sup.append(idx[:k_shot])
        qry.append(idx[k_shot:])
        sup_y += [pos] * k_shot
        qry_y += [pos] * n_query
    return Episode(tuple(int(c) for c in chosen), np.concatenate(sup), np.asarray(sup_y), np.concatenate(qry), np.asarray(qry_y))


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
) -> EpisodeResult:
    """Mean accuracy of ``classify(support_idx, support_labels, query_idx, n_way) → predicted labels``."""
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(int(episodes)):
        ep = sample_episode(labels, n_way, k_shot, n_query, rng)
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
        f = encoder.forward_head(encoder.forward_features(x), pre_logits=True) if hasattr(encoder, "forward_head") else encoder(x)
        feats.append(f.cpu())
        labels.append(torch.as_tensor(batch["target"]))
    return [torch.cat(feats)], torch.cat(labels).numpy()


def evaluate_episodes(model, dataset, n_way: int = 5, k_shot: int = 1, n_query: int = 5, episodes: int = 600,
                      seed: int = 0, batch_size: int = 64) -> EpisodeResult:
    """Episodic accuracy of a model's embedding on ``dataset`` (its targets give the classes)."""
    from .models.siamese import SiameseClassifier

    embs, labels = _features(model, dataset, batch_size)
    if isinstance(model, SiameseClassifier):
        net = model.net

        def classify(s, s_y, q, n):
            with torch.no_grad():
                scores = net.scores_against([e[q] for e in embs], [e[s] for e in embs], torch.as_tensor(s_y), n)
            return scores.argmax(1).numpy()
    else:
        feats = F.normalize(embs[0], dim=-1)

        def classify(s, s_y, q, n):
            onehot = F.one_hot(torch.as_tensor(s_y), n).float()
            protos = F.normalize(onehot.T @ feats[s], dim=-1)
            return (feats[q] @ protos.T).argmax(1).numpy()

    return run_episodes(labels, classify, n_way, k_shot, n_query, episodes, seed)


def unique_images(records: Sequence[ImageRecord], near_duplicates: Sequence[Any] = ()) -> tuple[list[ImageRecord], int]:
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


def evaluate_episodes_job(cfg) -> tuple[dict[str, float], dict[str, Any]]:
    """``ana-eval --config-name eval_episodes ckpt_path=<.ckpt>``: episodes over a dataset's classes
    (novel classes welcome: the model's own class list is not imposed on the data)."""
    from .pipeline import build_datamodule
    from .reports import write_metrics_json
    from .utils import load_checkpoint_model

    if not cfg.get("ckpt_path"):
        raise ValueError("episodic evaluation needs ckpt_path=<file.ckpt>")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint_model(cfg.ckpt_path, trust_checkpoint=bool(cfg.get("trust_checkpoint")))
    split = cfg.get("split", "auto")
    overrides: dict[str, Any] = {"image_size": int(model.hparams.image_size)}
    manifest = Path(cfg.ckpt_path).resolve().parent.parent / "split_manifest.csv"
    if split in ("auto", "test", "val", "train") and not cfg.data.get("split_manifest") and manifest.is_file():
        overrides["split_manifest"] = str(manifest)
    dm = build_datamodule(cfg, **overrides)
    dm.prepare_data()
    try:
        dm.setup("test")
    except Exception as e:  # noqa: BLE001 - another dataset than the checkpoint's: no manifest applies
        if "split_manifest" not in overrides:
            raise
        log.info("the training run's split manifest does not fit this data (%s)", str(e).splitlines()[0])
        overrides.pop("split_manifest")
        dm = build_datamodule(cfg, **overrides)
        dm.prepare_data()
        dm.setup("test")
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    has_split = "split_manifest" in overrides or bool(cfg.data.get("split_manifest"))
    if split == "auto":
        seen = set(model.class_names) & set(dm.class_names)
        if has_split:
            split = "test"  # the run's test split: images the checkpoint never trained on
        elif not seen:
            split = "all"  # a novel-class folder: the checkpoint has seen none of these classes
        else:
            raise ValueError(
                f"split=auto: {cfg.ckpt_path} was trained on {sorted(seen)}, which this data holds too, and no split "
                f"manifest of its training run fits it ({manifest}), so episodes could draw images it trained on. "
                "Pass data.split_manifest=<its run>/split_manifest.csv, a folder of novel classes, or split=all "
                "if you know these images are unseen."
            )
    elif split in ("test", "val", "train") and not has_split:
        raise FileNotFoundError(f"split={split} needs the training run's split manifest: none at {manifest}; "
                                "pass data.split_manifest=<file> or split=all")
    if split == "train":
        log.warning("split=train: episodes from the images %s trained on measure memory, not few-shot accuracy",
                    cfg.ckpt_path)
    records = [r for s in ("train", "val", "test") for r in dm.splits[s]] if split == "all" else dm.splits[split]
    records, dropped = unique_images(records, dm.near_duplicates)
    if dropped:
        log.info("%d duplicate image(s) left out so that no picture is support and query at once", dropped)
    ep = cfg.episodes
    result = evaluate_episodes(model, dm.make_dataset(records, train=False), int(ep.n_way), int(ep.k_shot),
                               int(ep.n_query), int(ep.episodes), int(ep.seed), int(cfg.data.batch_size))
    key = f"test/{result.n_way}way_{result.k_shot}shot"
    metrics = {f"{key}_acc": result.accuracy, f"{key}_ci95": result.ci95}
    write_metrics_json(metrics, run_dir / "metrics.json")
    (run_dir / "episodes.json").write_text(json.dumps({**result.summary(), "checkpoint": str(cfg.ckpt_path),
                                                       "split": split, "images": len(records),
                                                       "classes": dm.class_names}, indent=2) + "\n")
    print(f"{result.n_way}-way {result.k_shot}-shot ({result.n_query} queries/class, {result.episodes} episodes, "
          f"{len(records)} images of {dm.num_classes} classes): accuracy {result.accuracy:.4f} ± {result.ci95:.4f} (95% CI)")
    return metrics, {"result": result, "model": model, "datamodule": dm, "run_dir": run_dir}
