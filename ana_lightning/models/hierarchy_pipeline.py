"""The hierarchical pipeline: level-1, level-2 and per-group level-3 checkpoints (or one multi-head
checkpoint) routed over the tree (:mod:`~ana_lightning.models.routing`), its one-file bundle, and
:class:`HierarchyNet`, the pipeline as one ``nn.Module`` for prediction and export.

Importable as ``ana_lightning.models.hierarchical.HierarchicalPipeline`` too (configs and bundles name it so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from ..taxonomy import Taxonomy
from .routing import ROUTINGS, PathPrediction, TreePaths, route

__all__ = ["HierarchicalPipeline", "HierarchyNet", "resolve_checkpoint", "BUNDLE_KIND"]

log = logging.getLogger(__name__)

#: The class path bundles and serving metadata record (the module where it always lived; still importable).
PIPELINE_CLASS_PATH = "ana_lightning.models.hierarchical.HierarchicalPipeline"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``best_checkpoint.txt``, else its one ``checkpoints/best-*.ckpt``,
    or ``final-*.ckpt`` for a run without a validation split)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        note = p / "best_checkpoint.txt"
        if note.is_file():
            best = Path(note.read_text().strip())
            return best if best.is_absolute() else p / best
        found = sorted((p / "checkpoints").glob("best-*.ckpt")) or sorted(
            (p / "checkpoints").glob("final-*.ckpt")
        )
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(
            f"run folder {p} has {len(found)} best-epoch*.ckpt (or final-epoch*.ckpt) files and no best_checkpoint.txt: "
            "give the checkpoint file"
        )
    raise FileNotFoundError(f"checkpoint {p} does not exist")


def _level3_checkpoints(level3: str | Path | Mapping[str, str] | None) -> dict[str, Path]:
    if not level3:
        return {}
    if isinstance(level3, Mapping):
        return {str(g): resolve_checkpoint(c) for g, c in level3.items()}
    folder = Path(level3).expanduser()
    index = folder / "level3_models.yaml"
    if not index.is_file():
        raise FileNotFoundError(
            f"{folder} is not a level-3 run folder (no level3_models.yaml); give a mapping group: checkpoint"
        )
    table = yaml.safe_load(index.read_text()) or {}
    return {str(g): resolve_checkpoint(c if Path(c).is_absolute() else folder / c) for g, c in table.items()}


def pipeline_checkpoints(pipe_cfg: Mapping[str, Any]) -> list[Path]:
    """Every checkpoint of a ``pipeline.*`` config: levels 1 and 2, each level-3 group model, or the
    multi-head model."""
    out = [resolve_checkpoint(pipe_cfg[k]) for k in ("level1", "level2", "multihead") if pipe_cfg.get(k)]
    level3 = pipe_cfg.get("level3")
    if level3 and not isinstance(level3, str | Path) and hasattr(level3, "items"):
        level3 = {str(g): str(c) for g, c in level3.items()}  # a DictConfig mapping as plain strings
    return out + list(_level3_checkpoints(level3).values())


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
            raise ValueError(
                "a hierarchical pipeline needs level1 and level2 models (and level3 models), or a multihead model"
            )
        self.tree = tree or Taxonomy.load()
        self.routing = routing
        self.multihead = _Member(multihead) if multihead is not None else None
        self.level1 = _Member(level1) if level1 is not None else None
        self.level2 = _Member(level2) if level2 is not None else None
        self.level3 = {g: _Member(m) for g, m in (level3 or {}).items()}
        if self.multihead is not None:
            self.paths = TreePaths(self.tree, self.tree.leaves_by_group(self.multihead.model.class_names))
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
            return (
                load_checkpoint_model(resolve_checkpoint(p), trust_checkpoint=trust_checkpoint) if p else None
            )

        level3_files = _level3_checkpoints(level3)
        level3_models = {
            g: load_checkpoint_model(c, trust_checkpoint=trust_checkpoint) for g, c in level3_files.items()
        }
        pipe = cls(load(level1), load(level2), level3_models, load(multihead), routing, Taxonomy.load(tree))
        pipe.trust_checkpoint = trust_checkpoint
        pipe.sources = {
            k: resolve_checkpoint(v)
            for k, v in (("level1", level1), ("level2", level2), ("multihead", multihead))
            if v
        }
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
        members, depths = {}, {}
        for key, src in sources.items():
            ckpt = safe_torch_load(src, trust_checkpoint=getattr(self, "trust_checkpoint", False))
            members[key] = {k: v for k, v in ckpt.items() if k in _BUNDLE_KEYS}
            depths[key] = (ckpt.get("datamodule_hyper_parameters") or {}).get("bit_depth")
        # data.bit_depth (how the members' 16-bit files were read), for ana-predict / ana-app / ana-export
        bit_depth = next(iter(set(depths.values())), None) if len(set(depths.values())) == 1 else None
        if len(set(depths.values())) > 1:
            log.warning(
                "the pipeline's models were trained at different data.bit_depth (%s): the bundle stores none, so "
                "ana-predict needs bit_depth=<the camera's>",
                ", ".join(f"{k} {v}" for k, v in depths.items()),
            )
        bundle = {
            "ana_lightning": {
                "class_path": PIPELINE_CLASS_PATH,
                "kind": BUNDLE_KIND,
                "task": "hierarchical",
                "routing": self.routing,
                "tree": self.tree.source if hasattr(self.tree, "source") else None,
                "sources": {k: str(v) for k, v in sources.items()},
                "bit_depth": bit_depth,
            },
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
            raise CheckpointError(
                f"{source} is not a hierarchy bundle written by ana-eval --config-name eval_hierarchy"
            )
        models: dict[str, nn.Module] = {}
        for key, ckpt in members.items():
            class_path = str((ckpt.get("ana_lightning") or {}).get("class_path", ""))
            module_name, _, cls_name = class_path.rpartition(".")
            try:
                model_cls = getattr(importlib.import_module(module_name), cls_name)
            except (ImportError, AttributeError, ValueError) as e:
                raise CheckpointError(
                    f"{source}: member {key!r} was trained as {class_path!r}, which cannot be imported: {e}"
                ) from None
            buf = io.BytesIO()
            torch.save(dict(ckpt), buf)
            buf.seek(0)
            if not (isinstance(model_cls, type) and issubclass(model_cls, L.LightningModule)):
                raise CheckpointError(
                    f"{source}: member {key!r} names {class_path!r}, which is not a LightningModule"
                )
            with torch.serialization.safe_globals(checkpoint_safe_globals()):
                models[key] = model_cls.load_from_checkpoint(
                    buf, map_location="cpu", weights_only=True
                ).eval()
        level3 = {k.split("/", 1)[1]: m for k, m in models.items() if k.startswith("level3/")}
        pipe = cls(
            models.get("level1"),
            models.get("level2"),
            level3,
            models.get("multihead"),
            str(meta.get("routing", "hard")),
        )
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
            groups = {
                g: [mh.class_names.index(c) for c in cs]
                for g, cs in self.tree.leaves_by_group(mh.class_names).items()
            }
            p3_by_group = {g: (p3[:, idx], [mh.class_names[j] for j in idx]) for g, idx in groups.items()}
            return route(
                self.paths,
                p1.cpu(),
                mh.level1_names,
                p2.cpu(),
                mh.level2_names,
                {g: (p.cpu(), n) for g, (p, n) in p3_by_group.items()},
                self.routing,
            )
        p1 = self.level1(images).cpu()
        p2 = self.level2(images).cpu()
        p3 = {g: (m(images).cpu(), m.model.class_names) for g, m in self.level3.items()}
        return route(
            self.paths, p1, self.level1.model.class_names, p2, self.level2.model.class_names, p3, self.routing
        )

    def predict_paths(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 32,
        loader: Callable[[str], np.ndarray] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> PathPrediction:
        """Route image files (read with ``loader``, default :func:`~ana_lightning.data.images.load_image`)."""
        from ..data.images import load_image

        loader = loader or load_image
        parts = []
        for start in range(0, len(paths), batch_size):
            chunk = [loader(str(p)) for p in paths[start : start + batch_size]]
            parts.append(self.predict_images(chunk))
            if progress:
                progress(len(chunk))
        if not parts:
            return PathPrediction([], [], [], torch.zeros(0))
        return PathPrediction(
            level1=[x for p in parts for x in p.level1],
            level2=[x for p in parts for x in p.level2],
            leaf=[x for p in parts for x in p.leaf],
            score=torch.cat([p.score for p in parts]),
        )


BUNDLE_KIND = "hierarchy_bundle"
_BUNDLE_KEYS = (
    "state_dict",
    "hyper_parameters",
    "ana_lightning",
    "pytorch-lightning_version",
    "hparams_name",
)


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
            self.groups = {g: list(cs) for g, cs in mh.groups().items()}
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
                log.warning(
                    "%s was trained at %d px, the pipeline's input is %d px: its input is resized",
                    key,
                    int(m.hparams.image_size),
                    self.hparams["image_size"],
                )

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
        return {
            "class_path": PIPELINE_CLASS_PATH,
            "task": "hierarchical",
            "class_names": self.class_names,
            "level1_names": self.level1_names,
            "level2_names": self.level2_names,
            "groups": [[g, cs] for g, cs in self.groups.items()],  # a list: JSON metadata sorts dict keys
            "routing": self.routing,
            "temperature": temps,
            "members": {
                k: f"{type(m).__name__} ({len(m.class_names)} classes)" for k, m in self.members.items()
            },
        }
