"""Hierarchical classification over the ICAP tree: routing, the three-model pipeline, the multi-head model.

An image is routed level 1 → level 2 → level 3. Every candidate *path* ``(level-1 node, level-2
node, leaf)`` of the tree gets the score ``P(l1) · P(l2 | l1) · P(leaf | l2)``, where ``P(l2 | l1)`` is
the level-2 probability renormalised over the children of ``l1`` (1 for an only child), and
``P(leaf | l2)`` comes from that group's level-3 model (1 for a group with a single leaf; a group
with several leaves and no level-3 model ends its paths at level 2, leaf unknown, with ``1/n``).

- ``routing="hard"``: take the best level-1 node, then the best of *its* level-2 children, then the
  best leaf of that group — errors at a level cannot be undone below it.
- ``routing="product"``: take the path with the highest product.

Either way the predicted leaf is a child of the predicted level-2 node, which is a child of the
predicted level-1 node: :func:`route` only ever picks whole paths of the tree.

:class:`HierarchicalPipeline` runs three (sets of) checkpoints; :class:`MultiHeadClassifier` is one
shared backbone with a head per level, trained with a consistency-aware loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from ..calibration import TemperatureMixin
from ..metrics import multiclass_metrics
from ..taxonomy import Taxonomy
from ..utils import plain_hparams
from .backbones import create_backbone, normalization

__all__ = ["ROUTINGS", "TreePaths", "PathPrediction", "route", "HierarchicalPipeline", "MultiHeadNet", "MultiHeadClassifier",
           "resolve_checkpoint"]

log = logging.getLogger(__name__)

ROUTINGS = ("hard", "product")


@dataclass
class PathPrediction:
    """Predicted path per image: level-1 node, level-2 node, leaf (None when no level-3 model decides),
    and the path's probability product."""

    level1: list[str]
    level2: list[str]
    leaf: list[str | None]
    score: torch.Tensor
    level1_prob: torch.Tensor | None = None  # P(level-1 node)
    level2_prob: torch.Tensor | None = None  # P(level-1 node) · P(level-2 node | level-1 node); score is the leaf's

    def __len__(self) -> int:
        return len(self.level1)

    def rows(self) -> list[tuple[str, str, str | None]]:
        return list(zip(self.level1, self.level2, self.leaf, strict=True))


class TreePaths:
    """The candidate paths of a tree, given which leaves each group's level-3 model can name.

    ``level3_classes[g]`` lists the leaves the level-3 model of group ``g`` predicts; groups with a
    single leaf need none; other groups without an entry end at level 2.
    """

    def __init__(self, tree: Taxonomy, level3_classes: Mapping[str, Sequence[str]]):
        self.tree = tree
        self.paths: list[tuple[str, str, str | None]] = []
        for g in tree.nodes(2):
            leaves = tree.children(g)
            l1 = tree.level_of(leaves[0], 1)
            if len(leaves) == 1:
                self.paths.append((l1, g, leaves[0]))
            elif g in level3_classes:
                unknown = sorted(set(level3_classes[g]) - set(leaves))
                if unknown:
                    raise ValueError(f"the level-3 model of {g!r} names {unknown}, which are not leaves of {g!r}")
                self.paths += [(l1, g, c) for c in level3_classes[g]]
            else:
                self.paths.append((l1, g, None))
        self.level1 = list(tree.nodes(1))
        self.level2 = list(tree.nodes(2))
        self.l2_siblings = {g: [h for h in self.level2 if tree.parent(h) == tree.parent(g)] for g in self.level2}


def _gather(p: torch.Tensor, names: Sequence[str], wanted: Sequence[str]) -> torch.Tensor:
    """Columns of ``p`` (N, len(names)) for ``wanted`` (0 for names the model does not know)."""
    idx = {n: i for i, n in enumerate(names)}
    out = p.new_zeros(p.shape[0], len(wanted))
    for j, w in enumerate(wanted):
        if w in idx:
            out[:, j] = p[:, idx[w]]
    return out


def route(
    paths: TreePaths,
    p1: torch.Tensor,
    names1: Sequence[str],
    p2: torch.Tensor,
    names2: Sequence[str],
    p3: Mapping[str, tuple[torch.Tensor, Sequence[str]]],
    routing: str = "hard",
) -> PathPrediction:
    """Pick one path of the tree per image from level-wise probabilities (see the module docstring).

    ``p1``/``p2`` are ``(N, len(names))`` probabilities of the level-1/level-2 classifiers; ``p3[g]`` is
    ``(probabilities (N, k_g), class names)`` of group ``g``'s level-3 model.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    n = p1.shape[0]
    P1, s1, s2, s3 = path_scores(paths, p1, names1, p2, names2, p3)
    l1_index = {v: i for i, v in enumerate(paths.level1)}
    l2_index = {v: i for i, v in enumerate(paths.level2)}
    score = s1 * s2 * s3
    if routing == "product":
        best = score.argmax(1)
    else:
        l1_of = torch.tensor([l1_index[p[0]] for p in paths.paths])
        l2_of = torch.tensor([l2_index[p[1]] for p in paths.paths])
        chosen1 = P1.argmax(1)  # (N,)
        mask = l1_of[None, :] == chosen1[:, None]
        g_score = torch.where(mask, s2, torch.full_like(s2, -1.0))
        chosen2 = l2_of[g_score.argmax(1)]
        mask = mask & (l2_of[None, :] == chosen2[:, None])
        best = torch.where(mask, s3, torch.full_like(s3, -1.0)).argmax(1)
    picked = [paths.paths[int(b)] for b in best]
    rows = torch.arange(n)
    return PathPrediction(
        level1=[p[0] for p in picked], level2=[p[1] for p in picked], leaf=[p[2] for p in picked],
        score=score[rows, best], level1_prob=s1[rows, best], level2_prob=(s1 * s2)[rows, best],
    )


def path_scores(
    paths: TreePaths,
    p1: torch.Tensor,
    names1: Sequence[str],
    p2: torch.Tensor,
    names2: Sequence[str],
    p3: Mapping[str, tuple[torch.Tensor, Sequence[str]]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P1, s1, s2, s3)``: level-1 probabilities over ``paths.level1`` and, per candidate path (columns of
    ``paths.paths``), ``P(l1)``, ``P(l2 | l1)`` and ``P(leaf | l2)`` (see :func:`route`)."""
    n = p1.shape[0]
    P1 = _gather(p1.float(), names1, paths.level1)  # (N, |L1|)
    P2 = _gather(p2.float(), names2, paths.level2)  # (N, |L2|)
    l1_index = {v: i for i, v in enumerate(paths.level1)}
    l2_index = {v: i for i, v in enumerate(paths.level2)}
    cond2 = torch.zeros_like(P2)
    for g, sibs in paths.l2_siblings.items():
        j = l2_index[g]
        if len(sibs) == 1:
            cond2[:, j] = 1.0
        else:
            total = P2[:, [l2_index[h] for h in sibs]].sum(1)
            cond2[:, j] = torch.where(total > 0, P2[:, j] / total.clamp(min=1e-12), torch.zeros_like(total))
    cols1, cols2, cols3 = [], [], []
    p3_cond = {g: (pr.float() / pr.float().sum(1, keepdim=True).clamp(min=1e-12), list(nm)) for g, (pr, nm) in p3.items()}
    for l1, g, leaf in paths.paths:
        cols1.append(P1[:, l1_index[l1]])
        cols2.append(cond2[:, l2_index[g]])
        n_leaves = len(paths.tree.children(g))
        if leaf is None:
            cols3.append(torch.full((n,), 1.0 / n_leaves))
        elif n_leaves == 1:
            cols3.append(torch.ones(n))
        else:
            pr, nm = p3_cond[g]
            cols3.append(pr[:, nm.index(leaf)])
    return P1, *(torch.stack(c, 1) for c in (cols1, cols2, cols3))  # (N, |L1|), 3 × (N, paths)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``best_checkpoint.txt``, else its one ``checkpoints/best-*.ckpt``)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        note = p / "best_checkpoint.txt"
        if note.is_file():
            best = Path(note.read_text().strip())
            return best if best.is_absolute() else p / best
        found = sorted((p / "checkpoints").glob("best-*.ckpt"))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(f"run folder {p} has {len(found)} best-*.ckpt files and no best_checkpoint.txt: give the checkpoint file")
    raise FileNotFoundError(f"checkpoint {p} does not exist")


def _level3_checkpoints(level3: str | Path | Mapping[str, str] | None) -> dict[str, Path]:
    if not level3:
        return {}
    if isinstance(level3, Mapping):
        return {str(g): resolve_checkpoint(c) for g, c in level3.items()}
    folder = Path(level3).expanduser()
    index = folder / "level3_models.yaml"
    if not index.is_file():
        raise FileNotFoundError(f"{folder} is not a level-3 run folder (no level3_models.yaml); give a mapping group: checkpoint")
    table = yaml.safe_load(index.read_text()) or {}
    return {str(g): resolve_checkpoint(c if Path(c).is_absolute() else folder / c) for g, c in table.items()}


class _Member:
    """One model of the pipeline with its own input size and normalisation."""

    def __init__(self, model: nn.Module):
        from ..data.transforms import build_transform

        self.model = model.eval()
        hp = model.hparams
        self.transform = build_transform(int(hp.image_size), None, hp.mean, hp.std)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], fn: str = "predict_proba"):
        x = torch.stack([self.transform(im) for im in images]).to(self.model.device)
        return getattr(self.model, fn)(x)


class HierarchicalPipeline:
    """Level-1, level-2 and per-group level-3 models (or one multi-head model) routed over the tree.

    Build it with :meth:`from_checkpoints`: ``level1``/``level2`` are checkpoints or run folders,
    ``level3`` the run folder of ``experiment=paper_level3`` (its ``level3_models.yaml``) or a mapping
    ``{level-2 node: checkpoint}``; or ``multihead`` alone.
    """

    def __init__(
        self,
        level1: nn.Module | None = None,
        level2: nn.Module | None = None,
        level3: Mapping[str, nn.Module] | None = None,
        multihead: nn.Module | None = None,
        routing: str = "hard",
        tree: Taxonomy | None = None,
    ):
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if multihead is None and (level1 is None or level2 is None):
            raise ValueError("a hierarchical pipeline needs level1 and level2 models (and level3 models), or a multihead model")
        self.tree = tree or Taxonomy.load()
        self.routing = routing
        self.multihead = _Member(multihead) if multihead is not None else None
        self.level1 = _Member(level1) if level1 is not None else None
        self.level2 = _Member(level2) if level2 is not None else None
        self.level3 = {g: _Member(m) for g, m in (level3 or {}).items()}
        if self.multihead is not None:
            mh = self.multihead.model
            groups = {}
            for c in mh.class_names:
                groups.setdefault(self.tree.level_of(c, 2), []).append(c)
            self.paths = TreePaths(self.tree, groups)
        else:
            for g in self.level3:
                if g not in self.tree.nodes(2):
                    raise ValueError(f"level-3 model for {g!r}, which is not a level-2 node of the tree")
            self.paths = TreePaths(self.tree, {g: m.model.class_names for g, m in self.level3.items()})

    @classmethod
    def from_checkpoints(
        cls,
        level1: str | None = None,
        level2: str | None = None,
        level3: str | Mapping[str, str] | None = None,
        multihead: str | None = None,
        routing: str = "hard",
        tree: str | None = None,
        trust_checkpoint: bool = False,
    ) -> HierarchicalPipeline:
        from ..utils import load_checkpoint_model

        def load(p):
            return load_checkpoint_model(resolve_checkpoint(p), trust_checkpoint=trust_checkpoint) if p else None

        level3_files = _level3_checkpoints(level3)
        level3_models = {g: load_checkpoint_model(c, trust_checkpoint=trust_checkpoint) for g, c in level3_files.items()}
        pipe = cls(load(level1), load(level2), level3_models, load(multihead), routing, Taxonomy.load(tree))
        pipe.trust_checkpoint = trust_checkpoint
        pipe.sources = {k: resolve_checkpoint(v) for k, v in (("level1", level1), ("level2", level2), ("multihead", multihead)) if v}
        pipe.sources.update({f"level3/{g}": c for g, c in level3_files.items()})
        return pipe

    def write_bundle(self, path: str | Path) -> Path:
        """One file holding every model of the pipeline (their checkpoints without optimizer state) and the
        routing: what ``ana-predict``, ``ana-export`` and ``ana-app`` take as ``ckpt_path``."""
        import io

        from ..utils import safe_torch_load

        sources = getattr(self, "sources", None)
        if not sources:
            raise ValueError("only a pipeline built with from_checkpoints() knows its checkpoint files")
        members = {}
        for key, src in sources.items():
            ckpt = safe_torch_load(src, trust_checkpoint=getattr(self, "trust_checkpoint", False))
            members[key] = {k: v for k, v in ckpt.items() if k in _BUNDLE_KEYS}
        bundle = {
            "ana_lightning": {"class_path": f"{__name__}.HierarchicalPipeline", "kind": BUNDLE_KIND, "task": "hierarchical",
                              "routing": self.routing, "tree": self.tree.source if hasattr(self.tree, "source") else None,
                              "sources": {k: str(v) for k, v in sources.items()}},
            "members": members,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(bundle, buf)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)
        return path

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any], source: str = "<bundle>") -> HierarchicalPipeline:
        """Rebuild the pipeline from a bundle written by :meth:`write_bundle` (already ``torch.load``-ed)."""
        import importlib
        import io

        from ..utils import CheckpointError, checkpoint_safe_globals

        meta = bundle.get("ana_lightning") or {}
        members = bundle.get("members")
        if meta.get("kind") != BUNDLE_KIND or not isinstance(members, Mapping):
            raise CheckpointError(f"{source} is not a hierarchy bundle written by ana-eval --config-name eval_hierarchy")
        models: dict[str, nn.Module] = {}
        for key, ckpt in members.items():
            class_path = str((ckpt.get("ana_lightning") or {}).get("class_path", ""))
            module_name, _, cls_name = class_path.rpartition(".")
            try:
                model_cls = getattr(importlib.import_module(module_name), cls_name)
            except (ImportError, AttributeError, ValueError) as e:
                raise CheckpointError(f"{source}: member {key!r} was trained as {class_path!r}, which cannot be imported: {e}") from None
            buf = io.BytesIO()
            torch.save(dict(ckpt), buf)
            buf.seek(0)
            if not (isinstance(model_cls, type) and issubclass(model_cls, L.LightningModule)):
                raise CheckpointError(f"{source}: member {key!r} names {class_path!r}, which is not a LightningModule")
            with torch.serialization.safe_globals(checkpoint_safe_globals()):
                models[key] = model_cls.load_from_checkpoint(buf, map_location="cpu", weights_only=True).eval()
        level3 = {k.split("/", 1)[1]: m for k, m in models.items() if k.startswith("level3/")}
        pipe = cls(models.get("level1"), models.get("level2"), level3, models.get("multihead"), str(meta.get("routing", "hard")))
        pipe.sources = dict(meta.get("sources") or {})
        return pipe

    def as_module(self) -> HierarchyNet:
        """The pipeline as one ``nn.Module`` (image batch → level-wise probabilities), for prediction and export."""
        return HierarchyNet(self)

    def describe(self) -> dict[str, Any]:
        if self.multihead is not None:
            return {"multihead": self.multihead.model.class_names, "routing": self.routing}
        return {
            "level1": self.level1.model.class_names,
            "level2": self.level2.model.class_names,
            "level3": {g: m.model.class_names for g, m in self.level3.items()},
            "routing": self.routing,
        }

    def predict_images(self, images: Sequence[np.ndarray]) -> PathPrediction:
        """Route ``H×W×3 uint8`` images (each model resizes and normalises them its own way)."""
        if self.multihead is not None:
            mh = self.multihead.model
            p1, p2, p3 = self.multihead(images, "predict_level_proba")
            groups = {}
            for j, c in enumerate(mh.class_names):
                groups.setdefault(self.tree.level_of(c, 2), []).append(j)
            p3_by_group = {g: (p3[:, idx], [mh.class_names[j] for j in idx]) for g, idx in groups.items()}
            return route(self.paths, p1.cpu(), mh.level1_names, p2.cpu(), mh.level2_names,
                         {g: (p.cpu(), n) for g, (p, n) in p3_by_group.items()}, self.routing)
        p1 = self.level1(images).cpu()
        p2 = self.level2(images).cpu()
        p3 = {g: (m(images).cpu(), m.model.class_names) for g, m in self.level3.items()}
        return route(self.paths, p1, self.level1.model.class_names, p2, self.level2.model.class_names, p3, self.routing)

    def predict_paths(self, paths: Sequence[str | Path], batch_size: int = 32,
                      loader: Callable[[str], np.ndarray] | None = None,
                      progress: Callable[[int], None] | None = None) -> PathPrediction:
        """Route image files (read with ``loader``, default :func:`~ana_lightning.data.images.load_image`)."""
        from ..data.images import load_image

        loader = loader or load_image
        parts = []
        for start in range(0, len(paths), batch_size):
            chunk = [loader(str(p)) for p in paths[start:start + batch_size]]
            parts.append(self.predict_images(chunk))
            if progress:
                progress(len(chunk))
        if not parts:
            return PathPrediction([], [], [], torch.zeros(0))
        return PathPrediction(
            level1=[x for p in parts for x in p.level1], level2=[x for p in parts for x in p.level2],
            leaf=[x for p in parts for x in p.leaf], score=torch.cat([p.score for p in parts]),
        )


BUNDLE_KIND = "hierarchy_bundle"
_BUNDLE_KEYS = ("state_dict", "hyper_parameters", "ana_lightning", "pytorch-lightning_version", "hparams_name")


def _slug(node: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in node)


class HierarchyNet(nn.Module):
    """A hierarchical pipeline (level-1, level-2 and per-group level-3 models) or a multi-head model as one
    module: a normalised image batch → ``[P(level 1) | P(level 2) | P(leaf | group)]`` side by side
    (:meth:`predict_hierarchy`), which :class:`~ana_lightning.predict.HierarchicalRule` routes over the
    tree. Each member gets its input in its own normalisation (and size, when it differs)."""

    def __init__(self, pipeline: HierarchicalPipeline):
        super().__init__()
        self.routing = pipeline.routing
        self.tree = pipeline.tree
        if pipeline.multihead is not None:
            mh = pipeline.multihead.model
            self.members = nn.ModuleDict({"multihead": mh})
            self.level1_names, self.level2_names = list(mh.level1_names), list(mh.level2_names)
            self.groups = {g: list(cs) for g, cs in mh._groups().items()}
            ref = mh
        else:
            self.members = nn.ModuleDict({"level1": pipeline.level1.model, "level2": pipeline.level2.model})
            self.level3_keys = {}
            for g, m in pipeline.level3.items():
                self.members[f"level3_{_slug(g)}"] = m.model
                self.level3_keys[g] = f"level3_{_slug(g)}"
            self.level1_names = list(pipeline.level1.model.class_names)
            self.level2_names = list(pipeline.level2.model.class_names)
            self.groups = {g: list(m.model.class_names) for g, m in pipeline.level3.items()}
            ref = pipeline.level1.model
        hp = ref.hparams
        self.hparams = {"image_size": int(hp.image_size), "mean": list(hp.mean), "std": list(hp.std)}
        self.class_names = [c for cs in self.groups.values() for c in cs]  # the leaf columns
        for key, m in self.members.items():
            mean_in, std_in = torch.tensor(self.hparams["mean"]), torch.tensor(self.hparams["std"])
            mean, std = torch.tensor(list(m.hparams.mean)), torch.tensor(list(m.hparams.std))
            self.register_buffer(f"scale_{key}", (std_in / std).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"shift_{key}", ((mean_in - mean) / std).view(1, 3, 1, 1), persistent=False)
            if int(m.hparams.image_size) != self.hparams["image_size"]:
                log.warning("%s was trained at %d px, the pipeline's input is %d px: its input is resized", key,
                            int(m.hparams.image_size), self.hparams["image_size"])

    def _input(self, key: str, x: torch.Tensor) -> torch.Tensor:
        x = x * getattr(self, f"scale_{key}") + getattr(self, f"shift_{key}")
        size = int(self.members[key].hparams.image_size)
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x

    def predict_hierarchy(self, x: torch.Tensor) -> torch.Tensor:
        if "multihead" in self.members:
            return torch.cat(self.members["multihead"].predict_level_proba(self._input("multihead", x)), -1)
        out = [self.members[k].predict_proba(self._input(k, x)) for k in ("level1", "level2")]
        out += [self.members[k].predict_proba(self._input(k, x)) for k in self.level3_keys.values()]
        return torch.cat(out, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_hierarchy(x)

    def serving_metadata(self) -> dict[str, Any]:
        temps = {k: m.hparams.get("temperature") for k, m in self.members.items()}
        return {"class_path": f"{__name__}.HierarchicalPipeline", "task": "hierarchical", "class_names": self.class_names,
                "level1_names": self.level1_names, "level2_names": self.level2_names,
                "groups": [[g, cs] for g, cs in self.groups.items()],  # a list: JSON metadata sorts dict keys
                "routing": self.routing, "temperature": temps,
                "members": {k: f"{type(m).__name__} ({len(m.class_names)} classes)" for k, m in self.members.items()}}


# ============================================================================================ multi-head
class MultiHeadNet(nn.Module):
    """A shared timm backbone with one linear head per level. ``forward`` gives the leaf logits;
    :meth:`forward_levels` all three."""

    def __init__(self, backbone: Mapping[str, Any], sizes: Sequence[int]):
        super().__init__()
        self.encoder = create_backbone(num_classes=0, **dict(backbone))  # timm applies backbone.drop_rate to the features
        self.heads = nn.ModuleList(nn.Linear(self.encoder.num_features, int(k)) for k in sizes)

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.encoder(x)
        return [h(f) for h in self.heads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_levels(x)[-1]


class MultiHeadClassifier(TemperatureMixin, L.LightningModule):
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

    def __init__(
        self,
        backbone: Mapping[str, Any],
        class_names: Sequence[str],
        level1_names: Sequence[str] | None = None,
        level2_names: Sequence[str] | None = None,
        tree: str | None = None,
        consistency_weight: float = 0.5,
        routing: str = "product",
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        image_size: int = 224,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        plain_hparams(self)
        self.tree = Taxonomy.load(tree)
        self.class_names = [self.tree.parse_code(c) for c in self.hparams.class_names]
        self.level1_names = list(level1_names) if level1_names else list(dict.fromkeys(self.tree.level_of(c, 1) for c in self.class_names))
        self.level2_names = list(level2_names) if level2_names else list(dict.fromkeys(self.tree.level_of(c, 2) for c in self.class_names))
        self.hparams["level1_names"], self.hparams["level2_names"] = self.level1_names, self.level2_names
        backbone = dict(self.hparams.backbone)
        sizes = (len(self.level1_names), len(self.level2_names), len(self.class_names))
        self.net = MultiHeadNet(backbone, sizes)
        self.hparams["backbone"] = {**backbone, "pretrained": False, "weights": None}
        mean, std = normalization(self.net.encoder)
        self.hparams["mean"], self.hparams["std"] = list(mean), list(std)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # leaf → node membership (k3 × k1, k3 × k2) and leaf → node index, for targets and consistency
        m1 = torch.zeros(sizes[2], sizes[0])
        m2 = torch.zeros(sizes[2], sizes[1])
        for j, c in enumerate(self.class_names):
            m1[j, self.level1_names.index(self.tree.level_of(c, 1))] = 1
            m2[j, self.level2_names.index(self.tree.level_of(c, 2))] = 1
        self.register_buffer("member1", m1, persistent=False)
        self.register_buffer("member2", m2, persistent=False)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weight", weight, persistent=False)
        self.paths = TreePaths(self.tree, self._groups())
        self.metrics = nn.ModuleDict({
            f"{stage}_{lv}": multiclass_metrics(max(k, 2)).clone(prefix=f"{stage}/level{lv}_")  # torchmetrics needs ≥ 2
            for stage in ("val", "test") for lv, k in zip((1, 2, 3), sizes, strict=True)
        })
        self.test_rows: list[tuple[int, tuple, tuple]] = []
        self._init_temperature(3)  # one per level (ana_lightning.calibration)

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for c in self.class_names:
            groups.setdefault(self.tree.level_of(c, 2), []).append(c)
        return groups

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ana_lightning"] = {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "task": "hierarchical",
            "class_names": self.class_names,
            "level1_names": self.level1_names,
            "level2_names": self.level2_names,
            "groups": [[g, cs] for g, cs in self._groups().items()],
            "routing": self.hparams.routing,
        }
        self._save_temperature(checkpoint)

    def serving_metadata(self) -> dict[str, Any]:
        return {"level1_names": self.level1_names, "level2_names": self.level2_names,
                "groups": [[g, cs] for g, cs in self._groups().items()], "routing": self.hparams.routing}

    @torch.no_grad()
    def predict_hierarchy(self, x: torch.Tensor) -> torch.Tensor:
        """``[P(level 1) | P(level 2) | P(leaf)]`` side by side (calibrated), routed by the predictor."""
        return torch.cat(self.predict_level_proba(x), -1)

    # ------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    calibration_kind = "hierarchical"

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
        groups = {g: [self.class_names.index(c) for c in cs] for g, cs in self._groups().items()}
        p3g = {g: (p3[:, idx], [self.class_names[j] for j in idx]) for g, idx in groups.items()}
        return route(self.paths, p1, self.level1_names, p2, self.level2_names, p3g, routing or self.hparams.routing)

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
                loss = loss + self.hparams.consistency_weight * F.kl_div(marg.log(), coarse, log_target=True, reduction="batchmean")
        return loss

    def training_step(self, batch, batch_idx):
        t = self._targets(batch["target"])
        loss = self._loss(self.net.forward_levels(batch["image"]), t)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(t))
        return loss

    def _eval_step(self, batch, stage: str) -> tuple[torch.Tensor, PathPrediction]:
        t = self._targets(batch["target"])
        logits = self.net.forward_levels(batch["image"])
        loss = self._loss(logits, t)
        pred = self.route([self.scaled(z, i).softmax(-1) for i, z in enumerate(logits)])
        names = (self.level1_names, self.level2_names, self.class_names)
        for lv, (col, nm) in enumerate(zip((pred.level1, pred.level2, pred.leaf), names, strict=True)):
            keep = t[:, lv] >= 0
            if keep.any():
                p = torch.tensor([nm.index(v) for v in col], device=t.device)
                self.metrics[f"{stage}_{lv + 1}"].update(p[keep], t[keep, lv])
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(t), sync_dist=True)
        for lv in (1, 2, 3):
            self.log_dict(self.metrics[f"{stage}_{lv}"], on_step=False, on_epoch=True, batch_size=len(t))
        return t, pred

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        # `val/mca`: the routed leaf MCA, the metric the default callbacks monitor.
        self.log("val/mca", self.metrics["val_3"]["mca"].compute(), prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self.test_rows = []

    def test_step(self, batch, batch_idx):
        t, pred = self._eval_step(batch, "test")
        rows = pred.rows()
        for i, idx in enumerate(batch["index"].tolist()):
            self.test_rows.append((idx, tuple(int(v) for v in t[i]), rows[i] + (float(pred.score[i]),)))

    def on_test_epoch_end(self) -> None:
        world = self.trainer.world_size
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # DistributedSampler pads the ranks with repeated images: gather every rank's rows, keep each
            # image once (the report's paths), and let each rank feed a disjoint share of them to the
            # metrics, whose cross-rank sum then counts every test image exactly once.
            parts: list[Any] = [None] * world
            torch.distributed.all_gather_object(parts, self.test_rows)
            self.test_rows = sorted({r[0]: r for part in parts for r in part}.values())
            self._refill_test_metrics(self.test_rows[self.global_rank::world])
        self.log("test/mca", self.metrics["test_3"]["mca"].compute())

    def _refill_test_metrics(self, rows: Sequence[tuple[int, tuple[int, ...], tuple]]) -> None:
        names = (self.level1_names, self.level2_names, self.class_names)
        for lv in range(3):
            metric = self.metrics[f"test_{lv + 1}"]
            metric.reset()
            kept = [(names[lv].index(r[2][lv]), r[1][lv]) for r in rows if r[1][lv] >= 0]
            if kept:
                p, t = torch.tensor(kept, device=self.device).T
                metric.update(p, t)

    def write_report(self, out_dir, records, metrics, stage: str = "test") -> None:
        """Per-level confusion matrices and reports, and the predicted path of every test image."""
        from ..jobs.hierarchy import write_hierarchy_report

        names = (self.level1_names, self.level2_names, self.class_names)
        rows = sorted(self.test_rows)
        truth = [tuple(names[lv][v] if v >= 0 else None for lv, v in enumerate(t)) for _, t, _ in rows]
        pred = PathPrediction([p[0] for _, _, p in rows], [p[1] for _, _, p in rows], [p[2] for _, _, p in rows],
                              torch.tensor([p[3] for _, _, p in rows]))
        write_hierarchy_report(out_dir, [records[i].path for i, _, _ in rows], truth, pred, self.tree, stage=stage,
                               summary=metrics)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params=params) if self.optimizer_factory else torch.optim.AdamW(params, lr=1e-3)
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        cfg = {"scheduler": sched, "interval": self.hparams.scheduler_interval}
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            cfg["monitor"] = "val/loss"
        return {"optimizer": opt, "lr_scheduler": cfg}
