"""What a trained model is (:class:`ModelInfo`) and how its outputs become labels (:class:`DecisionRule`).

The metadata a model file carries (task, class list, input size, normalisation, thresholds) and the
registry of decision rules, one per task (``single_label``, ``multi_label``, ``hierarchical``). To add
a task: subclass :class:`DecisionRule`, decorate it with ``@register_decision_rule("<task>")``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..taxonomy import Taxonomy
from ..utils import CheckpointError

if TYPE_CHECKING:
    from ..models.hierarchical import PathPrediction

__all__ = [
    "METADATA_KEY",
    "ModelInfo",
    "DecisionRule",
    "SingleLabelRule",
    "MultiLabelRule",
    "HierarchicalRule",
    "register_decision_rule",
    "decision_rule",
]

log = logging.getLogger(__name__)

#: Key of the JSON metadata stored in exported ONNX files (``metadata_props``) and TorchScript files
#: (``_extra_files``): the :class:`ModelInfo` of the model.
METADATA_KEY = "ana_lightning"


# ---------------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class ModelInfo:
    """What a model needs to be used on a new image, read from the model file."""

    task: str
    class_names: tuple[str, ...]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    thresholds: tuple[float, ...] | None = None  # multi-label: one per class
    decision_rule: str = (
        ""  # a task's variant, e.g. multi-label "reference_repo" (threshold + top-1 fallback)
    )
    class_path: str = ""  # the LightningModule class it was trained as
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # backbone name, a task's own metadata

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<metadata>") -> ModelInfo:
        try:
            d = json.loads(text)
            return cls(
                task=str(d["task"]),
                class_names=tuple(d["class_names"]),
                image_size=int(d["image_size"]),
                mean=tuple(float(x) for x in d["mean"]),
                std=tuple(float(x) for x in d["std"]),
                thresholds=tuple(float(x) for x in d["thresholds"])
                if d.get("thresholds") is not None
                else None,
                decision_rule=str(d.get("decision_rule") or ""),
                class_path=str(d.get("class_path", "")),
                extra=dict(d.get("extra") or {}),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{source}: the stored ana-lightning metadata is unreadable ({type(e).__name__}: {e})"
            ) from None

    @classmethod
    def from_model(cls, model: torch.nn.Module, meta: Mapping[str, Any] | None = None) -> ModelInfo:
        """From a LightningModule's hparams and the checkpoint's ``ana_lightning`` metadata."""
        serving = getattr(
            model, "serving_metadata", None
        )  # a task's own metadata, e.g. a hierarchy's level names
        meta = {**dict(meta or {}), **(serving() if callable(serving) else {})}
        hp = dict(getattr(model, "hparams", {}) or {})
        names = meta.get("class_names") or getattr(model, "class_names", None) or hp.get("class_names")
        missing = [k for k in ("image_size", "mean", "std") if hp.get(k) is None] + (
            ["class_names"] if not names else []
        )
        if missing:
            raise CheckpointError(
                f"{type(model).__name__} does not store {missing} in its hparams: the predictor cannot know how to "
                "preprocess images for it (save them with save_hyperparameters / hparams in the model)"
            )
        task = str(meta.get("task") or "single_label")
        thr = meta.get("thresholds", hp.get("thresholds", hp.get("threshold")))
        bb = hp.get("backbones") or ([hp["backbone"]] if isinstance(hp.get("backbone"), Mapping) else [])
        backbones = [b.get("name") for b in bb if isinstance(b, Mapping) and b.get("name")]
        return cls(
            task=task,
            class_names=tuple(str(c) for c in names),
            image_size=int(hp["image_size"]),
            mean=tuple(float(x) for x in hp["mean"]),
            std=tuple(float(x) for x in hp["std"]),
            thresholds=_per_class(thr, len(names)) if thr is not None else None,
            decision_rule=str(meta.get("decision_rule") or hp.get("decision_rule") or ""),
            class_path=str(meta.get("class_path") or f"{type(model).__module__}.{type(model).__qualname__}"),
            extra={
                **_json_safe({k: v for k, v in meta.items() if k not in _META_FIELDS}),
                **({"backbone": " + ".join(backbones)} if backbones else {}),
            },
        )


# Metadata keys ModelInfo holds in its own fields; any other key (a task's extras, such as a hierarchical
# model's level-1/2 node names) is kept in ModelInfo.extra and travels into exported files.
_META_FIELDS = frozenset({"task", "class_names", "thresholds", "decision_rule", "class_path"})


def _json_safe(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


def _per_class(thresholds: float | Sequence[float], k: int) -> tuple[float, ...]:
    if isinstance(thresholds, int | float):
        return (float(thresholds),) * k
    out = tuple(float(t) for t in thresholds)
    if len(out) == 1:
        return out * k
    if len(out) != k:
        raise ValueError(f"{len(out)} thresholds given for {k} classes")
    return out


# ---------------------------------------------------------------------------------------------- decision rules
_RULES: dict[str, type[DecisionRule]] = {}


def register_decision_rule(task: str) -> Callable[[type[DecisionRule]], type[DecisionRule]]:
    """Class decorator: the rule used for models whose checkpoint metadata says ``task``."""

    def deco(cls: type[DecisionRule]) -> type[DecisionRule]:
        cls.task = task
        _RULES[task] = cls
        return cls

    return deco


class DecisionRule:
    """How the models of one task are used: what they output and how outputs become labels.

    What a new task may override (``hierarchical``, say, outputting the level-1, level-2 and leaf
    probabilities side by side and routing over the tree in :meth:`decide`):

    - :attr:`output_names`: the names of the model's output columns (default: its class names);
    - :meth:`model_outputs`: the ``(N, len(output_names))`` probabilities of a batch — what the
      predictor runs and what ``ana-export`` exports (default: the model's ``predict_proba``, else
      :meth:`activation` of its logits);
    - :meth:`decide`: indices of the predicted outputs; :meth:`top_k` and :meth:`hierarchy` for reports.
    """

    task: ClassVar[str] = ""

    def __init__(self, info: ModelInfo):
        self.info = info
        self.tree = Taxonomy.load()

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def model_outputs(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        proba = getattr(model, "predict_proba", None)
        return proba(x) if proba is not None else self.activation(model(x))

    def decide(self, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> list[int]:
        """Indices of the predicted outputs, most probable first."""
        raise NotImplementedError

    def combine(self, probs: np.ndarray, method: str = "mean_log") -> np.ndarray:
        """``(N, outputs)`` of many units (the cells or tiles of a field, the fields of a specimen) →
        ``(outputs,)`` by ``method`` (:mod:`ana_lightning.fields.combine`); ``vote``: the share of units
        whose decision (:meth:`decide`) names each output."""
        from ..fields.combine import combine_probs

        p = np.asarray(probs, np.float64)
        if method != "vote":
            return combine_probs(p, method)
        votes = np.zeros(p.shape[1])
        for row in p:
            votes[self.decide(row)] += 1
        return votes / max(len(p), 1)

    def top_k(self, probs: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-np.asarray(probs), kind="stable")[:k]
        return [(self.output_names[i], float(probs[i])) for i in order]

    def hierarchy(self, label: str) -> tuple[str, str, str]:
        """``(level 1, level 2, code)`` of a label of the ICAP tree; a class that stands for a tree node
        (a contest class such as ``Speckled``, through the model's ``class_nodes``) gets that node's levels
        and its code when the node is one (``Homogeneous`` -> AC-1); empty levels for other names."""
        node = (
            label
            if self.tree.is_code(label)
            else str((self.info.extra.get("class_nodes") or {}).get(label) or "")
        )
        if self.tree.is_code(node):
            return self.tree.level_of(node, 1), self.tree.level_of(node, 2), self.tree.parse_code(node)
        if node in self.tree.nodes(2):
            return self.tree.parent(node), node, ""
        if node in self.tree.nodes(1):
            return node, "", ""
        return "", "", label

    def labels(self, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> tuple[str, ...]:
        """The predicted label(s) of one image's outputs."""
        return tuple(self.output_names[i] for i in self.decide(np.asarray(probs), thresholds))

    def confidence(self, probs: np.ndarray, label: str) -> float:
        """The probability of a predicted ``label``."""
        return float(probs[self.output_names.index(label)])

    def path(self, probs: np.ndarray, label: str) -> list[tuple[str, float | None]]:
        """``[(level-1 node, p), (level-2 node, p), (leaf, p)]`` of a predicted label: the probability of
        each node is the sum of its classes' probabilities (``None`` where that is not a probability)."""
        l1, l2, l3 = self.hierarchy(label)
        return [(l1, None), (l2, None), (l3, self.confidence(probs, label))]

    def chart(self, probs: np.ndarray) -> list[tuple[str, float]]:
        """``(name, probability)`` bars for the app: one per output column."""
        return [(n, float(p)) for n, p in zip(self.output_names, probs, strict=True)]


@register_decision_rule("single_label")
class SingleLabelRule(DecisionRule):
    """One class per image: the most probable (softmax outputs)."""

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)

    def decide(self, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> list[int]:
        return [int(np.argmax(probs))]

    def path(self, probs: np.ndarray, label: str) -> list[tuple[str, float | None]]:
        """Probabilities of the label's level-1 and level-2 nodes: sums over the classes under them."""
        l1, l2, l3 = self.hierarchy(label)
        if not l1:
            return [(l1, None), (l2, None), (l3, self.confidence(probs, label))]
        names = self.output_names
        under = [self.hierarchy(c)[:2] for c in names]
        p1 = float(sum(p for p, (a, _) in zip(probs, under, strict=True) if a == l1))
        p2 = float(sum(p for p, (_, b) in zip(probs, under, strict=True) if b == l2)) if l2 else None
        return [(l1, p1), (l2, p2), (l3, self.confidence(probs, label))]


@register_decision_rule("multi_label")
class MultiLabelRule(DecisionRule):
    """Every class whose (sigmoid) probability reaches its threshold; none when no class does, except
    under ``decision_rule="reference_repo"`` (the reference repository's rule), which then takes the top-1.

    The thresholds are the model's own (``checkpoint["ana_lightning"]["thresholds"]`` or
    ``hparams.thresholds``, tuned on the validation split); 0.5 with a warning when it stores none.
    """

    def __init__(self, info: ModelInfo):
        super().__init__(info)
        if info.thresholds is None:
            log.warning("the %s model stores no decision thresholds; using 0.5 for every class", info.task)
        self.thresholds = np.asarray(info.thresholds or (0.5,) * len(info.class_names), dtype=np.float64)
        self.top1_fallback = info.decision_rule == "reference_repo"

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def combine(self, probs: np.ndarray, method: str = "mean_log") -> np.ndarray:
        """As :meth:`DecisionRule.combine`, but ``mean_log`` is the geometric mean of each class's sigmoid,
        not renormalised: the classes are independent."""
        if method == "mean_log":
            return np.exp(np.log(np.clip(np.asarray(probs, np.float64), 1e-6, 1.0)).mean(axis=0))
        return super().combine(probs, method)

    def decide(self, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> list[int]:
        thr = self.thresholds if thresholds is None else np.asarray(_per_class(thresholds, len(probs)))
        hits = np.flatnonzero(probs >= thr)
        if not len(hits) and self.top1_fallback:
            return [int(np.argmax(probs))]
        return [int(i) for i in hits[np.argsort(-probs[hits], kind="stable")]]


@register_decision_rule("hierarchical")
class HierarchicalRule(DecisionRule):
    """Hierarchical models (a multi-head model, or the level-1/2/3 pipeline): the outputs are the level-1,
    level-2 and leaf probabilities side by side, and :meth:`decide` routes them over the tree
    (:func:`~ana_lightning.models.hierarchical.route`, the model's ``routing``), so the predicted leaf is
    always a child of the predicted level-2 node, itself a child of the predicted level-1 node.

    Each prediction carries its path with a probability per level: ``P(l1)``, ``P(l1)·P(l2 | l1)`` and
    ``P(l1)·P(l2 | l1)·P(leaf | l2)`` (so they never increase down the path).
    """

    def __init__(self, info: ModelInfo):
        super().__init__(info)
        from ..models.hierarchical import ROUTINGS, TreePaths

        x = info.extra
        missing = [k for k in ("level1_names", "level2_names") if not x.get(k)]
        if missing:
            raise CheckpointError(f"a hierarchical model must store {missing} in its metadata")
        self.names1, self.names2 = list(x["level1_names"]), list(x["level2_names"])
        groups = x.get("groups")
        if (
            not groups
        ):  # multi-head checkpoints written before the groups were stored: every leaf's level-2 node
            groups = self.tree.leaves_by_group(info.class_names)
        pairs = (
            groups.items() if isinstance(groups, Mapping) else groups
        )  # [[group, [leaves]], …] keeps the column order
        self.groups = {str(g): list(cs) for g, cs in pairs}
        self.leaves = [c for cs in self.groups.values() for c in cs]
        if sorted(self.leaves) != sorted(info.class_names):
            raise CheckpointError(
                f"hierarchical metadata: leaf groups {self.groups} do not match the classes {info.class_names}"
            )
        self.routing = str(x.get("routing") or "hard")
        if self.routing not in ROUTINGS:
            raise CheckpointError(f"hierarchical metadata: routing {self.routing!r} is not one of {ROUTINGS}")
        self.paths = TreePaths(self.tree, self.groups)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (*(f"level1:{n}" for n in self.names1), *(f"level2:{n}" for n in self.names2), *self.leaves)

    def model_outputs(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.predict_hierarchy(x)

    def _split(self, probs: np.ndarray):
        p = torch.as_tensor(np.atleast_2d(np.asarray(probs, dtype=np.float32)))
        a, b = len(self.names1), len(self.names1) + len(self.names2)
        p3, start = {}, b
        for g, cs in self.groups.items():
            p3[g] = (p[:, start : start + len(cs)], cs)
            start += len(cs)
        return p[:, :a], p[:, a:b], p3

    def combine(self, probs: np.ndarray, method: str = "mean_log") -> np.ndarray:
        """As :meth:`DecisionRule.combine`, block by block: the level-1 probabilities, the level-2 ones and the
        leaves are combined on their own (``vote``: each unit's most probable output of the block), so every
        block that is a distribution stays one and the combined outputs route over the tree like a unit's.
        The leaves are one block when they are one distribution (a multi-head model's leaf head), else one
        block per group (a pipeline's level-3 models); a group no model decides (all zeros) stays zeros."""
        from ..fields.combine import combine_probs

        p = np.asarray(probs, np.float64)
        a, b = len(self.names1), len(self.names1) + len(self.names2)
        sizes = [len(cs) for cs in self.groups.values()]
        if b + sum(sizes) != p.shape[1]:
            raise ValueError(f"hierarchical outputs: expected {b + sum(sizes)} columns, got {p.shape[1]}")
        cuts = [0, a, b]
        if not np.allclose(p[:, b:].sum(axis=1), 1.0, atol=1e-3):
            for n in sizes[:-1]:
                cuts.append(cuts[-1] + n)
        cuts.append(p.shape[1])
        parts = []
        for i, j in zip(cuts[:-1], cuts[1:], strict=True):
            block = p[:, i:j]
            parts.append(np.zeros(j - i) if not block.any() else combine_probs(block, method))
        return np.concatenate(parts)

    def route(self, probs: np.ndarray) -> PathPrediction:
        """The routed :class:`~ana_lightning.models.hierarchical.PathPrediction` of ``(N, outputs)`` or ``(outputs,)``."""
        from ..models.hierarchical import route

        p1, p2, p3 = self._split(probs)
        return route(self.paths, p1, self.names1, p2, self.names2, p3, self.routing)

    def decide(self, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> list[int]:
        r = self.route(probs)
        name = r.leaf[0] or f"level2:{r.level2[0]}"
        names = self.output_names
        return [names.index(name)] if name in names else []

    def labels(self, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> tuple[str, ...]:
        r = self.route(probs)
        return (r.leaf[0] or r.level2[0],)  # a group whose leaf no model decides ends at level 2

    def path(self, probs: np.ndarray, label: str | None = None) -> list[tuple[str, float | None]]:
        r = self.route(probs)
        return [
            (r.level1[0], float(r.level1_prob[0])),
            (r.level2[0], float(r.level2_prob[0])),
            (r.leaf[0] or "", float(r.score[0]) if r.leaf[0] else None),
        ]

    def confidence(self, probs: np.ndarray, label: str) -> float:
        r = self.route(probs)
        return float(r.score[0] if r.leaf[0] else r.level2_prob[0])

    def hierarchy(self, label: str) -> tuple[str, str, str]:
        if self.tree.is_code(label):
            return super().hierarchy(label)
        return self.tree.parent(label), label, ""  # a level-2 node (no leaf decided)

    def _all_paths(self, probs: np.ndarray) -> list[tuple[str, float]]:
        from ..models.hierarchical import path_scores

        p1, p2, p3 = self._split(probs)
        _, s1, s2, s3 = path_scores(self.paths, p1, self.names1, p2, self.names2, p3)
        score = (s1 * s2 * s3)[0]
        return [(leaf or g, float(score[j])) for j, (_, g, leaf) in enumerate(self.paths.paths)]

    def top_k(self, probs: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable paths of the tree, by ``P(l1)·P(l2 | l1)·P(leaf | l2)``."""
        return sorted(self._all_paths(probs), key=lambda t: -t[1])[:k]

    def chart(self, probs: np.ndarray) -> list[tuple[str, float]]:
        return self._all_paths(probs)


def decision_rule(info: ModelInfo) -> DecisionRule:
    """The registered rule of ``info.task`` (clear error for a task this version does not know)."""
    try:
        return _RULES[info.task](info)
    except KeyError:
        raise CheckpointError(
            f"the model's task is {info.task!r}, which this version of ana-lightning cannot predict with "
            f"(known tasks: {sorted(_RULES)}); register a DecisionRule for it in ana_lightning.predict"
        ) from None
