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
        meta = dict(meta or {})
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


@register_decision_rule("single_label")
class SingleLabelRule(DecisionRule):
    """One class per image: the most probable (softmax outputs)."""

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)

    def decide(self, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> list[int]:
        return [int(np.argmax(probs))]


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
    from .utils import load_checkpoint_model, read_checkpoint

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        meta = read_checkpoint(path, trust_checkpoint=trust_checkpoint).get("ana_lightning")
    except CheckpointError as e:
        if "is not a readable checkpoint" in str(e):
            raise CheckpointError(str(e).replace("is not a readable checkpoint", "is not an ana-lightning checkpoint, ONNX or TorchScript model")) from None
        raise
    model = load_checkpoint_model(path, map_location=map_location, trust_checkpoint=trust_checkpoint)
    return model, dict(meta or {})


def _not_a_model(path: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} ({path.stat().st_size:,} bytes) is not an ana-lightning checkpoint, ONNX or TorchScript model: "
        f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}. "
        "It may be truncated (a run killed while saving) or another kind of file."
    )


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
    """Files → ``(index, image tensor | None, error | None)``; a bad file is a result, not an exception."""

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
            return i, self.transform(load_image(path)), None
        except BadImageError as e:
            return i, None, e.reason


def _check_size(path: str | Path, max_bytes: int | None) -> None:
    if max_bytes is None:
        return
    try:
        size = Path(path).stat().st_size
    except OSError as e:
        raise BadImageError(path, f"cannot read file: {e.strerror or e}") from None
    if size > max_bytes:
        raise BadImageError(path, f"file is {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.0f} MiB (max_file_mb)")


def _collate(items):
    idx = [i for i, _, _ in items]
    good = [(i, x) for i, x, _ in items if x is not None]
    errors = {i: err for i, _, err in items if err is not None}
    batch = torch.stack([x for _, x in good]) if good else None
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
             threads: int | None = None) -> Predictor:
        """A checkpoint (``.ckpt``), an ONNX file (``.onnx``, run by onnxruntime) or a TorchScript file.

        Checkpoints load with ``weights_only=True``; ``trust_checkpoint=True`` allows one that needs
        full unpickling (it could run code: only for files you trust)."""
        path = Path(path).expanduser()
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
        return cls.from_model(model, meta, device=dev, source=str(path))

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
        return tuple(self.class_names[i] for i in self.rule.decide(np.asarray(probs), thr))

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
                      max_file_mb: float | None = 512) -> Iterator[Prediction]:
        """Stream predictions for files, in their order, one batch in memory at a time."""
        max_bytes = int(max_file_mb * 2**20) if max_file_mb else None
        loader = DataLoader(
            _PathDataset(paths, self.transform, max_bytes),
            batch_size=max(1, int(batch_size)),
            num_workers=int(num_workers),
            collate_fn=_collate,
            shuffle=False,
        )
        names = [str(p) for p in paths]
        for idx, good, batch, errors in loader:
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
            "top3", "top3_prob", "level1", "level2", "level3", *[f"p_{c}" for c in class_names]]


def _row(pred: Prediction, predictor: Predictor) -> tuple[dict[str, str], dict[str, Any]]:
    names = predictor.class_names
    if not pred.ok:
        row = dict.fromkeys(prediction_columns(names), "")
        row.update(path=pred.path, status="error", error=pred.error or "")
        return row, {"path": pred.path, "status": "error", "error": pred.error}
    probs = pred.probabilities
    assert probs is not None
    top = predictor.top_k(probs, 3)
    paths = [predictor.hierarchy(c) for c in pred.labels]
    conf = [float(probs[names.index(c)]) for c in pred.labels]
    row = {"path": pred.path, "status": "ok", "error": "", "pred": ";".join(pred.labels),
           "confidence": ";".join(f"{c:.6f}" for c in conf)}
    for j in range(3):
        row[f"top{j + 1}"], row[f"top{j + 1}_prob"] = (top[j][0], f"{top[j][1]:.6f}") if j < len(top) else ("", "")
    for lvl in range(3):
        row[f"level{lvl + 1}"] = ";".join(p[lvl] for p in paths)
    row.update({f"p_{c}": f"{float(x):.6f}" for c, x in zip(names, probs, strict=True)})
    js = {"path": pred.path, "status": "ok", "labels": list(pred.labels), "confidence": conf,
          "top3": [{"label": c, "prob": p} for c, p in top],
          "hierarchy": [{"level1": a, "level2": b, "level3": c} for a, b, c in paths],
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


def run_predict(cfg) -> PredictSummary:
    """The ``ana-predict`` job: predict every image of ``cfg.input`` with ``cfg.ckpt_path``."""
    from omegaconf import OmegaConf

    from .utils import setup_torch

    if not cfg.get("ckpt_path"):
        raise ValueError("ana-predict needs ckpt_path=<file.ckpt | file.onnx>")
    if not cfg.get("input"):
        raise ValueError("ana-predict needs input=<image file or folder>")
    setup_torch(cfg.get("torch_threads"))
    predictor = Predictor.load(cfg.ckpt_path, device=cfg.get("device", "auto"), trust_checkpoint=bool(cfg.get("trust_checkpoint")),
                               threads=cfg.get("torch_threads"))
    files = list_inputs(cfg.input)
    run_dir = Path(cfg.paths.output_dir)
    csv_path, json_path = _output_paths(cfg.get("output"), run_dir)
    existing = [str(q) for q in (csv_path, json_path) if q.exists()]
    if existing and not cfg.get("overwrite", False):
        raise FileExistsError(f"output={cfg.get('output')}: {' and '.join(existing)} already exist(s); pass overwrite=true "
                              "to replace them, or choose another output=<file.csv or folder>")
    log.info("predicting %d image(s) with %s (%s, %s, %d classes) → %s", len(files), cfg.ckpt_path,
             predictor.backend_name, predictor.task, len(predictor.class_names), csv_path)
    stream = predictor.predict_paths(files, batch_size=cfg.get("batch_size", 32), num_workers=cfg.get("num_workers", 0),
                                     max_file_mb=cfg.get("max_file_mb", 512))
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
