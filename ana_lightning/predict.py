"""Use a trained model: one :class:`Predictor` behind ``ana-predict``, ``ana-export`` and ``ana-app``.

A predictor is built from a model file alone — a Lightning checkpoint written by ana-lightning, an
ONNX file or a TorchScript file written by ``ana-export`` — and takes from it everything needed to use
the model on new images (:class:`ModelInfo`): the task, the class list, the input size, the
normalisation and, for multi-label models, the decision thresholds. Nothing is re-typed by hand.

Images are read by :mod:`ana_lightning.data.images` (so 16-bit, grey, truncated and decompression-bomb
files behave exactly as in training) and preprocessed by the evaluation transform of
:mod:`ana_lightning.data.transforms`. A folder is streamed through a ``DataLoader`` one batch at a time:
memory does not grow with the number of images. A file that cannot be read becomes a row with the
reason; the others are still predicted.

Tasks: what turns probabilities into labels is the task's :class:`DecisionRule`, chosen by
``checkpoint["ana_lightning"]["task"]`` (stored again in exported files). ``single_label`` (argmax)
and ``multi_label`` (per-class thresholds) are registered here. To add a task (``hierarchical``):
subclass :class:`DecisionRule` below, decorate it with ``@register_decision_rule("<task>")``, and give
the model a ``predict_proba(x) -> (N, K)`` method (or an ``activation`` in the rule).

>>> p = Predictor.load("outputs/train/runs/<run>/checkpoints/best-epoch007.ckpt")  # doctest: +SKIP
>>> next(p.predict_paths(["field.png"])).labels  # doctest: +SKIP
('AC-4',)
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .data.images import BadImageError, decode_image, is_file_entry, is_ignored, is_image_path, load_image
from .data.transforms import build_transform
from .taxonomy import Taxonomy
from .utils import CheckpointError

__all__ = [
    "ModelInfo",
    "Prediction",
    "PredictSummary",
    "Predictor",
    "DecisionRule",
    "SingleLabelRule",
    "MultiLabelRule",
    "register_decision_rule",
    "decision_rule",
    "load_model",
    "list_inputs",
    "prediction_columns",
    "HierarchicalRule",
    "load_pipeline",
    "load_predictor",
    "use_support",
    "write_predictions",
    "run_predict",
    "METADATA_KEY",
]

log = logging.getLogger(__name__)

#: Key of the JSON metadata stored in exported ONNX files (``metadata_props``) and TorchScript files
#: (``_extra_files``): the :class:`ModelInfo` of the model.
METADATA_KEY = "ana_lightning"
EXIT_SOME_FAILED = 2  # exit status of ana-predict when it ran to the end but some files failed


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
    decision_rule: str = ""  # a task's variant, e.g. multi-label "reference_repo" (threshold + top-1 fallback)
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
                thresholds=tuple(float(x) for x in d["thresholds"]) if d.get("thresholds") is not None else None,
                decision_rule=str(d.get("decision_rule") or ""),
                class_path=str(d.get("class_path", "")),
                extra=dict(d.get("extra") or {}),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{source}: the stored ana-lightning metadata is unreadable ({type(e).__name__}: {e})") from None

    @classmethod
    def from_model(cls, model: torch.nn.Module, meta: Mapping[str, Any] | None = None) -> ModelInfo:
        """From a LightningModule's hparams and the checkpoint's ``ana_lightning`` metadata."""
        serving = getattr(model, "serving_metadata", None)  # a task's own metadata, e.g. a hierarchy's level names
        meta = {**dict(meta or {}), **(serving() if callable(serving) else {})}
        hp = dict(getattr(model, "hparams", {}) or {})
        names = meta.get("class_names") or getattr(model, "class_names", None) or hp.get("class_names")
        missing = [k for k in ("image_size", "mean", "std") if hp.get(k) is None] + (["class_names"] if not names else [])
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
            extra={**_json_safe({k: v for k, v in meta.items() if k not in _META_FIELDS}),
                   **({"backbone": " + ".join(backbones)} if backbones else {})},
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

    def top_k(self, probs: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-np.asarray(probs), kind="stable")[:k]
        return [(self.output_names[i], float(probs[i])) for i in order]

    def hierarchy(self, label: str) -> tuple[str, str, str]:
        """``(level 1, level 2, code)`` of a label of the ICAP tree (empty levels for other names)."""
        if self.tree.is_code(label):
            return self.tree.level_of(label, 1), self.tree.level_of(label, 2), self.tree.parse_code(label)
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
        under = [(self.tree.level_of(c, 1), self.tree.level_of(c, 2)) if self.tree.is_code(c) else ("", "") for c in names]
        p1 = float(sum(p for p, (a, _) in zip(probs, under, strict=True) if a == l1))
        p2 = float(sum(p for p, (_, b) in zip(probs, under, strict=True) if b == l2))
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
        from .models.hierarchical import ROUTINGS, TreePaths

        x = info.extra
        missing = [k for k in ("level1_names", "level2_names") if not x.get(k)]
        if missing:
            raise CheckpointError(f"a hierarchical model must store {missing} in its metadata")
        self.names1, self.names2 = list(x["level1_names"]), list(x["level2_names"])
        groups = x.get("groups")
        if not groups:  # multi-head checkpoints written before the groups were stored: every leaf's level-2 node
            groups = {}
            for c in info.class_names:
                groups.setdefault(self.tree.level_of(c, 2), []).append(c)
        pairs = groups.items() if isinstance(groups, Mapping) else groups  # [[group, [leaves]], …] keeps the column order
        self.groups = {str(g): list(cs) for g, cs in pairs}
        self.leaves = [c for cs in self.groups.values() for c in cs]
        if sorted(self.leaves) != sorted(info.class_names):
            raise CheckpointError(f"hierarchical metadata: leaf groups {self.groups} do not match the classes {info.class_names}")
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
            p3[g] = (p[:, start:start + len(cs)], cs)
            start += len(cs)
        return p[:, :a], p[:, a:b], p3

    def route(self, probs: np.ndarray):
        """The routed :class:`~ana_lightning.models.hierarchical.PathPrediction` of ``(N, outputs)`` or ``(outputs,)``."""
        from .models.hierarchical import route

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
        return [(r.level1[0], float(r.level1_prob[0])), (r.level2[0], float(r.level2_prob[0])),
                (r.leaf[0] or "", float(r.score[0]) if r.leaf[0] else None)]

    def confidence(self, probs: np.ndarray, label: str) -> float:
        r = self.route(probs)
        return float(r.score[0] if r.leaf[0] else r.level2_prob[0])

    def hierarchy(self, label: str) -> tuple[str, str, str]:
        if self.tree.is_code(label):
            return super().hierarchy(label)
        return self.tree.parent(label), label, ""  # a level-2 node (no leaf decided)

    def _all_paths(self, probs: np.ndarray) -> list[tuple[str, float]]:
        from .models.hierarchical import path_scores

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


# ---------------------------------------------------------------------------------------------- loading
def load_model(path: str | Path, map_location: str | torch.device = "cpu", trust_checkpoint: bool = False):
    """Rebuild the LightningModule of an ana-lightning checkpoint, loading it with ``weights_only=True``.

    A checkpoint that needs full unpickling (objects other than tensors and plain containers: it could
    run code) is refused, naming the file, unless ``trust_checkpoint=True``
    (:func:`~ana_lightning.utils.load_checkpoint_model`). Returns ``(model, metadata)``.
    """
    from .utils import load_checkpoint_model, safe_torch_load

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        ckpt = safe_torch_load(path, trust_checkpoint=trust_checkpoint)
    except CheckpointError as e:
        if "is not a readable checkpoint" in str(e):
            raise CheckpointError(str(e).replace("is not a readable checkpoint", "is not an ana-lightning checkpoint, ONNX or TorchScript model")) from None
        raise
    if _is_bundle(ckpt):  # the level-1/2/3 pipeline in one file (ana-eval --config-name eval_hierarchy)
        return _bundle_model(ckpt, path, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    meta = ckpt.get("ana_lightning")
    del ckpt
    model = load_checkpoint_model(path, map_location=map_location, trust_checkpoint=trust_checkpoint)
    return model, dict(meta or {})


def _is_bundle(ckpt: Any) -> bool:
    from .models.hierarchical import BUNDLE_KIND

    return isinstance(ckpt, dict) and isinstance(ckpt.get("ana_lightning"), dict) and ckpt["ana_lightning"].get("kind") == BUNDLE_KIND


def _bundle_model(ckpt: dict, path: Path, map_location: str | torch.device = "cpu"):
    from .models.hierarchical import HierarchicalPipeline

    net = HierarchicalPipeline.from_bundle(ckpt, str(path)).as_module().to(map_location).eval()
    return net, net.serving_metadata()


def load_pipeline(level1: str | None = None, level2: str | None = None, level3: Any = None, multihead: str | None = None,
                  routing: str = "hard", tree: str | None = None, map_location: str | torch.device = "cpu",
                  trust_checkpoint: bool = False):
    """``(module, metadata)`` of a hierarchical pipeline given as checkpoints or run folders (the keys of
    ``pipeline`` in ``conf/eval_hierarchy.yaml``): what :class:`Predictor` and ``ana-export`` use."""
    from .models.hierarchical import HierarchicalPipeline

    pipe = HierarchicalPipeline.from_checkpoints(level1=level1, level2=level2, level3=level3, multihead=multihead,
                                                 routing=routing, tree=tree, trust_checkpoint=trust_checkpoint)
    net = pipe.as_module().to(map_location).eval()
    net.pipeline = pipe  # kept for write_bundle
    return net, net.serving_metadata()


def pipeline_args(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``pipeline.*`` keys of a job's config when they name models (None when none does)."""
    if not cfg:
        return None
    keys = ("level1", "level2", "level3", "multihead", "routing", "tree")
    args = {k: cfg.get(k) for k in keys if cfg.get(k) is not None}
    if not any(args.get(k) for k in ("level1", "level2", "level3", "multihead")):
        return None
    if args.get("level3") is not None and not isinstance(args["level3"], str | Path):
        args["level3"] = {str(k): str(v) for k, v in dict(args["level3"]).items()}
    return args


def _not_a_model(path: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} ({path.stat().st_size:,} bytes) is not an ana-lightning checkpoint, ONNX or TorchScript model: "
        f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}. "
        "It may be truncated (a run killed while saving) or another kind of file."
    )


def use_support(model: torch.nn.Module, support: str | Path | None) -> None:
    """Give a Siamese model ``support`` (a folder of ``<AC code>/<images>``) as its support set; check that a
    Siamese model without one gets one (its checkpoint normally carries the training split's)."""
    setter = getattr(model, "set_support_folder", None)
    if support is not None:
        if setter is None:
            raise ValueError(f"support={support}: only Siamese models use a support set, not {type(model).__name__}")
        setter(Path(support).expanduser())
        log.info("support set: %s", support)
        return
    net = getattr(model, "net", None)
    if setter is not None and net is not None and not getattr(net, "has_support", True):
        raise CheckpointError("this Siamese checkpoint carries no support set: give support=<folder of <AC code>/<images>>")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith(f"/extra/{METADATA_KEY}.json") for n in z.namelist())


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} was asked for but no CUDA GPU is available here; use device=cpu or auto")
    return dev


# ---------------------------------------------------------------------------------------------- backends
class _TorchBackend:
    """A LightningModule (or TorchScript module) in eval mode: float32 NCHW → probabilities."""

    name = "pytorch"

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        # Set by the Predictor to its task rule's model_outputs; an exported module's output is already it.
        self.outputs: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = lambda m, x: m(x)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(batch).to(self.device, non_blocking=True)
        return self.outputs(self.model, x).float().cpu().numpy()


class _TorchScriptBackend(_TorchBackend):
    """A TorchScript file written by ana-export: its output already is the probabilities."""

    name = "torchscript"


class _OnnxBackend:
    """An ONNX Runtime session (CUDA when asked for and available, otherwise CPU)."""

    name = "onnxruntime"

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(f"running {path} needs onnxruntime: pip install 'ana-lightning[export]'") from None

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # By default ORT's worker threads spin after each run, waiting for the next: end to end, that is
        # exactly when the next image is decoded and resized, and they take its CPU (measured in
        # experiments/benchmarks/predict.py). They sleep instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("onnxruntime here has no CUDA provider; running %s on CPU", path)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001
            raise _not_a_model(path, e) from None
        self.input_name = self.session.get_inputs()[0].name
        self.device = device

    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        x = batch.numpy() if isinstance(batch, torch.Tensor) else batch
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


# ---------------------------------------------------------------------------------------------- results
@dataclass
class Prediction:
    """One image's result: its probabilities and predicted labels, or why it could not be read."""

    path: str
    probabilities: np.ndarray | None = None  # (K,)
    labels: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class PredictSummary:
    """What a prediction run wrote and how many files failed."""

    n_images: int
    n_failed: int
    csv_path: Path | None
    json_path: Path | None

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.n_failed else 0


class _PathDataset(Dataset):
    """Files → ``(index, CHW float32 array | None, error | None)``; a bad file is a result, not an exception.

    Arrays, not tensors: batches are stacked by numpy and handed to ONNX Runtime without touching torch,
    whose parallel ops (a ``torch.stack`` per batch) cost tens of milliseconds on a loaded machine
    (experiments/benchmarks/predict.py, "collate"); the PyTorch backend wraps the batch without a copy."""

    def __init__(self, paths: Sequence[str | Path], transform, max_bytes: int | None):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            _check_size(path, self.max_bytes)
            return i, _to_array(self.transform, load_image(path)), None
        except BadImageError as e:
            return i, None, e.reason


def _to_array(transform, image: np.ndarray) -> np.ndarray:
    """The evaluation transform (resize, normalise) as a ``3×S×S`` float32 array: the same values as
    ``transform(image)``, without a torch tensor."""
    return np.ascontiguousarray(transform.normalize(image=transform.resize(image))["image"].transpose(2, 0, 1),
                                dtype=np.float32)


def _check_size(path: str | Path, max_bytes: int | None) -> None:
    if max_bytes is None:
        return
    try:
        size = Path(path).stat().st_size
    except OSError as e:
        raise BadImageError(path, f"cannot read file: {e.strerror or e}") from None
    if size > max_bytes:
        raise BadImageError(path, f"file is {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.0f} MiB (max_file_mb)")


def _prefetched(read: Callable[[Any], Any], chunks: Iterable[Any]) -> Iterator[Any]:
    """``read(chunk)`` for every chunk, in order, the next one read in a background thread meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(chunks)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ana-predict-read") as pool:
        first = next(it, None)
        pending = pool.submit(read, first) if first is not None else None
        while pending is not None:
            nxt = next(it, None)
            result = pending.result()
            pending = pool.submit(read, nxt) if nxt is not None else None
            yield result


def _collate(items):
    idx = [i for i, _, _ in items]
    good = [(i, x) for i, x, _ in items if x is not None]
    errors = {i: err for i, _, err in items if err is not None}
    batch = np.stack([x for _, x in good]) if good else None
    return idx, [i for i, _ in good], batch, errors


# ---------------------------------------------------------------------------------------------- predictor
class Predictor:
    """A model and its preprocessing, ready for images (see the module docstring).

    Build it with :meth:`load` (any model file) or :meth:`from_model` (a LightningModule in memory).
    """

    def __init__(self, backend, info: ModelInfo, source: str = ""):
        self.backend = backend
        self.info = info
        self.source = source
        self.rule = decision_rule(info)
        if type(backend) is _TorchBackend:
            backend.outputs = self.rule.model_outputs
        self.transform = build_transform(info.image_size, None, info.mean, info.std)
        self.tree = Taxonomy.load()

    # -------------------------------------------------------------- construction
    @classmethod
    def load(cls, path: str | Path, device: str | None = "auto", trust_checkpoint: bool = False,
             threads: int | None = None, support: str | Path | None = None) -> Predictor:
        """A checkpoint (``.ckpt``; also a hierarchy bundle), an ONNX file (``.onnx``, run by onnxruntime) or a
        TorchScript file. ``support``: a folder ``<AC code>/<images>`` replacing a Siamese model's support set.

        Checkpoints load with ``weights_only=True``; ``trust_checkpoint=True`` allows one that needs
        full unpickling (it could run code: only for files you trust)."""
        path = Path(path).expanduser()
        if support is not None and path.suffix.lower() != ".ckpt" and (path.suffix.lower() == ".onnx" or _is_torchscript(path)):
            raise ValueError(f"support={support}: an exported file carries the support set it was exported with; "
                             "give the checkpoint (or export it again with support=<folder>)")
        if not path.is_file():
            raise CheckpointError(f"model file {path} does not exist")
        dev = _resolve_device(device)
        if path.suffix.lower() == ".onnx":
            backend = _OnnxBackend(path, dev, threads)
            meta = backend.session.get_modelmeta().custom_metadata_map
            if METADATA_KEY not in meta:
                raise CheckpointError(f"{path} was not exported by ana-export (no '{METADATA_KEY}' metadata in the ONNX file)")
            return cls(backend, ModelInfo.from_json(meta[METADATA_KEY], str(path)), str(path))
        if _is_torchscript(path):
            extra = {f"{METADATA_KEY}.json": ""}
            with warnings.catch_warnings():  # deprecated by PyTorch, still supported: files written by ana-export
                warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
                module = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
            info = ModelInfo.from_json(extra[f"{METADATA_KEY}.json"], str(path))
            return cls(_TorchScriptBackend(module, dev), info, str(path))
        model, meta = load_model(path, map_location=dev, trust_checkpoint=trust_checkpoint)
        use_support(model, support)
        return cls.from_model(model, meta, device=dev, source=str(path))

    @classmethod
    def from_pipeline(cls, pipeline: Mapping[str, Any], device: str | None = "auto", trust_checkpoint: bool = False
                      ) -> Predictor:
        """A hierarchical pipeline given as checkpoints or run folders (``pipeline.level1=… level2=… level3=…``)."""
        dev = _resolve_device(device)
        args = pipeline_args(pipeline)
        if args is None:
            raise ValueError("pipeline: give level1, level2 (and level3) checkpoints or run folders, or multihead")
        model, meta = load_pipeline(**args, map_location=dev, trust_checkpoint=trust_checkpoint)
        source = " + ".join(f"{k}={v}" for k, v in args.items() if k in ("level1", "level2", "level3", "multihead"))
        return cls.from_model(model, meta, device=dev, source=source)

    @classmethod
    def from_model(cls, model: torch.nn.Module, meta: Mapping[str, Any] | None = None,
                   device: str | torch.device | None = "cpu", source: str = "<model>") -> Predictor:
        """A predictor over a LightningModule already in memory (``meta``: the checkpoint metadata)."""
        info = ModelInfo.from_model(model, meta)
        return cls(_TorchBackend(model, _resolve_device(device)), info, source)

    # -------------------------------------------------------------- properties
    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the model's output columns (its classes, for the single- and multi-label tasks)."""
        return self.rule.output_names

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # -------------------------------------------------------------- core
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``H×W×3 uint8`` → the model's normalised ``3×S×S`` float32 input."""
        return self.transform(image)

    def predict_proba(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities ``(N, K)`` of a preprocessed batch ``(N, 3, S, S)``."""
        return self.backend(batch)

    def decide(self, probs: np.ndarray, thresholds: Sequence[float] | float | None = None) -> tuple[str, ...]:
        """Predicted label(s) of one image's probabilities (``thresholds``: multi-label override)."""
        thr = None if thresholds is None else _per_class(thresholds, len(self.class_names))
        return self.rule.labels(np.asarray(probs), thr)

    def predict_image(self, image: np.ndarray, path: str = "<image>") -> Prediction:
        """One decoded ``H×W×3 uint8`` image."""
        probs = self.predict_proba(self.preprocess(image)[None])[0]
        return Prediction(path, probs, self.decide(probs))

    def predict_bytes(self, data: bytes, name: str = "<upload>", max_bytes: int | None = None) -> Prediction:
        """Encoded image bytes (an upload): decoded by the project's reader, with its limits."""
        try:
            if max_bytes is not None and len(data) > max_bytes:
                raise BadImageError(name, f"file is {len(data) / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.0f} MiB")
            if not data:
                raise BadImageError(name, "empty file (0 bytes)")
            image = decode_image(data, name)
        except BadImageError as e:
            return Prediction(name, error=e.reason)
        return self.predict_image(image, name)

    def predict_paths(self, paths: Sequence[str | Path], batch_size: int = 32, num_workers: int = 0,
                      max_file_mb: float | None = 512, prefetch: bool = False) -> Iterator[Prediction]:
        """Stream predictions for files, in their order, one batch in memory at a time (two with ``prefetch``).

        ``num_workers=0``: the files are read in this process; with ``prefetch`` a background thread reads,
        decodes and resizes the next batch while the model runs on this one (decoding, resizing and both
        backends release the GIL): it pays when a core is free, and measured no gain on a fully loaded
        2-core machine (experiments/benchmarks/predict.py), hence off by default. ``num_workers > 0``: a ``DataLoader`` with that many worker processes.
        """
        max_bytes = int(max_file_mb * 2**20) if max_file_mb else None
        dataset = _PathDataset(paths, self.transform, max_bytes)
        bs = max(1, int(batch_size))
        if int(num_workers) > 0:
            batches: Iterable = DataLoader(dataset, batch_size=bs, num_workers=int(num_workers), collate_fn=_collate,
                                           shuffle=False)
        else:
            chunks = (range(i, min(i + bs, len(dataset))) for i in range(0, len(dataset), bs))
            read = lambda r: _collate([dataset[i] for i in r])  # noqa: E731
            batches = _prefetched(read, chunks) if prefetch else map(read, chunks)
        names = [str(p) for p in paths]
        for idx, good, batch, errors in batches:
            probs = self.predict_proba(batch) if batch is not None else np.empty((0, len(self.class_names)))
            by_index = dict(zip(good, probs, strict=True))
            for i in idx:
                if i in errors:
                    yield Prediction(names[i], error=errors[i])
                else:
                    yield Prediction(names[i], by_index[i], self.decide(by_index[i]))

    # -------------------------------------------------------------- presentation
    def hierarchy(self, label: str) -> tuple[str, str, str]:
        """``(level 1, level 2, code)`` of a predicted label (the task rule's)."""
        return self.rule.hierarchy(label)

    def display_name(self, code: str) -> str:
        return self.tree.display_name(code) if self.tree.is_code(code) else code

    def top_k(self, probs: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        return self.rule.top_k(probs, k)

    def path(self, probs: np.ndarray, label: str) -> list[tuple[str, float | None]]:
        """``[(level 1, p), (level 2, p), (leaf, p)]`` of a predicted label (``p`` None where unknown)."""
        return self.rule.path(np.asarray(probs), label)

    @property
    def temperature(self) -> Any:
        """The calibration temperature(s) the model's probabilities carry (None: uncalibrated)."""
        return self.info.extra.get("temperature")


# ---------------------------------------------------------------------------------------------- files
def list_inputs(input: str | Path) -> list[Path]:
    """The image files of ``input``: one file, or every image file under a folder (recursively, sorted).

    Hidden files and files without an image extension in a folder are left out (and counted in the log);
    a single file is always tried, whatever its name.
    """
    p = Path(input).expanduser()
    if p.is_file():
        return [p]
    if p.is_symlink() and not p.is_dir():
        raise FileNotFoundError(f"input={input} is a broken or looping symlink")
    if not p.is_dir():
        raise FileNotFoundError(f"input={input} is neither an image file nor a folder")
    files, other = [], []
    for f in sorted(p.rglob("*")):  # dangling/looping symlinks are kept: reported as unreadable rows
        if not is_file_entry(f) or any(is_ignored(part) for part in f.relative_to(p).parts):
            continue
        (files if is_image_path(f) else other).append(f)
    if other:
        log.info("%d file(s) without an image extension left out, e.g. %s", len(other), other[0])
    if not files:
        raise FileNotFoundError(f"input={input}: no image files (.jpg, .png, .bmp, .tif) in this folder")
    return files


def prediction_columns(class_names: Sequence[str]) -> list[str]:
    """The CSV header: path, status, error, predicted label(s), top-3, hierarchy path, every probability."""
    return ["path", "status", "error", "pred", "confidence", "top1", "top1_prob", "top2", "top2_prob",
            "top3", "top3_prob", "level1", "level2", "level3", "level1_prob", "level2_prob", "level3_prob",
            *[f"p_{c}" for c in class_names]]


def _row(pred: Prediction, predictor: Predictor) -> tuple[dict[str, str], dict[str, Any]]:
    names = predictor.class_names
    if not pred.ok:
        row = dict.fromkeys(prediction_columns(names), "")
        row.update(path=pred.path, status="error", error=pred.error or "")
        return row, {"path": pred.path, "status": "error", "error": pred.error}
    probs = pred.probabilities
    assert probs is not None
    top = predictor.top_k(probs, 3)
    trees = [predictor.path(probs, c) for c in pred.labels]  # [(node, p)] per level, per label
    paths = [tuple(n for n, _ in t) for t in trees]
    conf = [predictor.rule.confidence(probs, c) for c in pred.labels]
    row = {"path": pred.path, "status": "ok", "error": "", "pred": ";".join(pred.labels),
           "confidence": ";".join(f"{c:.6f}" for c in conf)}
    for j in range(3):
        row[f"top{j + 1}"], row[f"top{j + 1}_prob"] = (top[j][0], f"{top[j][1]:.6f}") if j < len(top) else ("", "")
    for lvl in range(3):
        row[f"level{lvl + 1}"] = ";".join(p[lvl] for p in paths)
        row[f"level{lvl + 1}_prob"] = ";".join("" if t[lvl][1] is None else f"{t[lvl][1]:.6f}" for t in trees)
    row.update({f"p_{c}": f"{float(x):.6f}" for c, x in zip(names, probs, strict=True)})
    js = {"path": pred.path, "status": "ok", "labels": list(pred.labels), "confidence": conf,
          "top3": [{"label": c, "prob": p} for c, p in top],
          "hierarchy": [{f"level{j + 1}{suffix}": (t[j][0] if suffix == "" else t[j][1]) for j in range(3)
                         for suffix in ("", "_prob")} for t in trees],
          "probabilities": {c: float(x) for c, x in zip(names, probs, strict=True)}}
    return row, js


def write_predictions(predictions: Iterable[Prediction], predictor: Predictor, csv_path: str | Path,
                      json_path: str | Path | None = None) -> PredictSummary:
    """Write rows as they come (a CSV and a JSON document), so memory stays flat for any number of images."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    n = failed = 0
    info = asdict(predictor.info)
    header = {"model": {**info, "source": predictor.source, "backend": predictor.backend_name}}
    jf = open(json_path, "w") if json_path else None  # noqa: SIM115 - closed in finally
    try:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=prediction_columns(predictor.class_names))
            w.writeheader()
            if jf:  # a JSON document written piece by piece: {"model": …, "predictions": [ … ], "summary": …}
                jf.write(json.dumps(header, indent=1)[:-2] + ',\n "predictions": [\n')
            for pred in predictions:
                row, js = _row(pred, predictor)
                w.writerow(row)
                if jf:
                    jf.write(("  " if n == 0 else ",\n  ") + json.dumps(js))
                n += 1
                failed += not pred.ok
            if jf:
                jf.write('\n ],\n "summary": ' + json.dumps({"images": n, "failed": failed}) + "\n}\n")
    finally:
        if jf:
            jf.close()
    return PredictSummary(n, failed, csv_path, Path(json_path) if json_path else None)


def _output_paths(output: str | None, run_dir: Path) -> tuple[Path, Path]:
    if not output:
        return run_dir / "predictions.csv", run_dir / "predictions.json"
    out = Path(output).expanduser()
    if out.suffix.lower() in (".csv", ".json"):
        return out.with_suffix(".csv"), out.with_suffix(".json")
    return out / "predictions.csv", out / "predictions.json"


def load_predictor(cfg, command: str = "ana-predict") -> Predictor:
    """The :class:`Predictor` a job's config names: ``ckpt_path`` (a checkpoint, hierarchy bundle, ONNX or
    TorchScript file; ``support`` for Siamese models) or ``pipeline.level1/level2/level3`` (or ``multihead``)."""
    pipe = pipeline_args(cfg.get("pipeline"))
    if pipe is not None and cfg.get("ckpt_path"):
        raise ValueError(f"{command}: give either ckpt_path or pipeline.level1/level2/level3, not both")
    if pipe is not None:
        return Predictor.from_pipeline(pipe, device=cfg.get("device", "auto"), trust_checkpoint=bool(cfg.get("trust_checkpoint")))
    if not cfg.get("ckpt_path"):
        raise ValueError(f"{command} needs ckpt_path=<file.ckpt | file.onnx | bundle.ckpt> "
                         "(or pipeline.level1=… pipeline.level2=… pipeline.level3=…)")
    return Predictor.load(cfg.ckpt_path, device=cfg.get("device", "auto"), trust_checkpoint=bool(cfg.get("trust_checkpoint")),
                          threads=cfg.get("torch_threads"), support=cfg.get("support"))


def run_predict(cfg) -> PredictSummary:
    """The ``ana-predict`` job: predict every image of ``cfg.input`` with ``cfg.ckpt_path``."""
    from omegaconf import OmegaConf

    from .utils import setup_torch

    if not cfg.get("input"):
        raise ValueError("ana-predict needs input=<image file or folder>")
    setup_torch(cfg.get("torch_threads"))
    predictor = load_predictor(cfg, "ana-predict")
    files = list_inputs(cfg.input)
    run_dir = Path(cfg.paths.output_dir)
    csv_path, json_path = _output_paths(cfg.get("output"), run_dir)
    existing = [str(q) for q in (csv_path, json_path) if q.exists()]
    if existing and not cfg.get("overwrite", False):
        raise FileExistsError(f"output={cfg.get('output')}: {' and '.join(existing)} already exist(s); pass overwrite=true "
                              "to replace them, or choose another output=<file.csv or folder>")
    log.info("predicting %d image(s) with %s (%s, %s, %d classes) → %s", len(files), predictor.source,
             predictor.backend_name, predictor.task, len(predictor.class_names), csv_path)
    stream = predictor.predict_paths(files, batch_size=cfg.get("batch_size", 32), num_workers=cfg.get("num_workers", 0),
                                     max_file_mb=cfg.get("max_file_mb", 512), prefetch=bool(cfg.get("prefetch", False)))
    if cfg.get("progress", True):
        from rich.progress import track

        stream = track(stream, total=len(files), description="predicting", transient=False)
    summary = write_predictions(stream, predictor, csv_path, json_path)
    if run_dir.is_dir() and csv_path.parent != run_dir:
        (run_dir / "predicted.txt").write_text(f"predictions: {csv_path.resolve()}\n")
    if run_dir.is_dir():
        OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)
    msg = f"{summary.n_images - summary.n_failed}/{summary.n_images} image(s) predicted → {csv_path}"
    if summary.n_failed:
        log.error("%s; %d file(s) could not be read: see the 'error' column", msg, summary.n_failed)
    else:
        log.info(msg)
    return summary
