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

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.images import BadImageError, decode_image, load_image, saturated_share
from ..data.transforms import build_transform
from ..taxonomy import Taxonomy
from ..utils import CheckpointError
from .loading import (
    _is_torchscript,
    _OnnxBackend,
    _resolve_device,
    _TorchBackend,
    _TorchScriptBackend,
    load_model,
    load_pipeline,
    pipeline_args,
    use_support,
)
from .rules import METADATA_KEY, ModelInfo, _per_class, decision_rule

__all__ = ["Prediction", "PredictSummary", "Predictor", "EXIT_SOME_FAILED"]

log = logging.getLogger(__name__)

EXIT_SOME_FAILED = 2  # exit status of ana-predict when it ran to the end but some files failed


# ---------------------------------------------------------------------------------------------- results
@dataclass
class Prediction:
    """One image's result: its probabilities and predicted labels, or why it could not be read."""

    path: str
    probabilities: np.ndarray | None = None  # (K,)
    labels: tuple[str, ...] = ()
    error: str | None = None
    # share of saturated pixels (whole images read as they are; None otherwise)
    saturated: float | None = None

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

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform,
        max_bytes: int | None,
        loader: Callable[[str], np.ndarray] | None = None,
    ):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.max_bytes = max_bytes
        self.loader = loader or load_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            _check_size(path, self.max_bytes)
            image = self.loader(path)
            # overexposure is a whole image's: a cell loader's crop carries its mask as a 255 channel
            share = saturated_share(image) if self.loader is load_image else None
            return i, _to_array(self.transform, image), None, share
        except BadImageError as e:
            return i, None, e.reason, None


def _to_array(transform, image: np.ndarray) -> np.ndarray:
    """The evaluation transform (resize, normalise) as a ``3×S×S`` float32 array: the same values as
    ``transform(image)``, without a torch tensor."""
    return np.ascontiguousarray(
        transform.normalize(image=transform.resize(image))["image"].transpose(2, 0, 1), dtype=np.float32
    )


def max_bytes_of(max_file_mb: float | None) -> int | None:
    """``max_file_mb`` (the config key) in bytes; None (or 0) for no limit."""
    return int(float(max_file_mb) * 2**20) if max_file_mb else None


def _check_size(path: str | Path, max_bytes: int | None) -> None:
    if max_bytes is None:
        return
    try:
        size = Path(path).stat().st_size
    except OSError as e:
        raise BadImageError(path, f"cannot read file: {e.strerror or e}") from None
    if size > max_bytes:
        raise BadImageError(
            path,
            f"file is {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.0f} MiB (max_file_mb)",
        )


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
    idx = [i for i, _, _, _ in items]
    good = [(i, x) for i, x, _, _ in items if x is not None]
    errors = {i: err for i, _, err, _ in items if err is not None}
    shares = {i: s for i, _, _, s in items if s is not None}
    batch = np.stack([x for _, x in good]) if good else None
    return idx, [i for i, _ in good], batch, errors, shares


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
    def load(
        cls,
        path: str | Path,
        device: str | None = "auto",
        trust_checkpoint: bool = False,
        threads: int | None = None,
        support: str | Path | None = None,
    ) -> Predictor:
        """A checkpoint (``.ckpt``; also a hierarchy bundle), an ONNX file (``.onnx``, run by onnxruntime) or a
        TorchScript file. ``support``: a folder ``<AC code>/<images>`` replacing a Siamese model's support set.

        Checkpoints load with ``weights_only=True``; ``trust_checkpoint=True`` allows one that needs
        full unpickling (it could run code: only for files you trust)."""
        path = Path(path).expanduser()
        if (
            support is not None
            and path.suffix.lower() != ".ckpt"
            and (path.suffix.lower() == ".onnx" or _is_torchscript(path))
        ):
            raise ValueError(
                f"support={support}: an exported file carries the support set it was exported with; "
                "give the checkpoint (or export it again with support=<folder>)"
            )
        if not path.is_file():
            raise CheckpointError(f"model file {path} does not exist")
        dev = _resolve_device(device)
        if path.suffix.lower() == ".onnx":
            backend = _OnnxBackend(path, dev, threads)
            meta = backend.session.get_modelmeta().custom_metadata_map
            if METADATA_KEY not in meta:
                raise CheckpointError(
                    f"{path} was not exported by ana-export (no '{METADATA_KEY}' metadata in the ONNX file)"
                )
            return cls(backend, ModelInfo.from_json(meta[METADATA_KEY], str(path)), str(path))
        if _is_torchscript(path):
            extra = {f"{METADATA_KEY}.json": ""}
            with (
                warnings.catch_warnings()
            ):  # deprecated by PyTorch, still supported: files written by ana-export
                warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
                module = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
            info = ModelInfo.from_json(extra[f"{METADATA_KEY}.json"], str(path))
            return cls(_TorchScriptBackend(module, dev), info, str(path))
        model, meta = load_model(path, map_location=dev, trust_checkpoint=trust_checkpoint)
        use_support(model, support)
        return cls.from_model(model, meta, device=dev, source=str(path))

    @classmethod
    def from_pipeline(
        cls, pipeline: Mapping[str, Any], device: str | None = "auto", trust_checkpoint: bool = False
    ) -> Predictor:
        """A hierarchical pipeline given as checkpoints or run folders (``pipeline.level1=… level2=… level3=…``)."""
        dev = _resolve_device(device)
        args = pipeline_args(pipeline)
        if args is None:
            raise ValueError(
                "pipeline: give level1, level2 (and level3) checkpoints or run folders, or multihead"
            )
        model, meta = load_pipeline(**args, map_location=dev, trust_checkpoint=trust_checkpoint)
        source = " + ".join(
            f"{k}={v}" for k, v in args.items() if k in ("level1", "level2", "level3", "multihead")
        )
        return cls.from_model(model, meta, device=dev, source=source)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        meta: Mapping[str, Any] | None = None,
        device: str | torch.device | None = "cpu",
        source: str = "<model>",
    ) -> Predictor:
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
                raise BadImageError(
                    name,
                    f"file is {len(data) / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.0f} MiB",
                )
            if not data:
                raise BadImageError(name, "empty file (0 bytes)")
            image = decode_image(data, name)
        except BadImageError as e:
            return Prediction(name, error=e.reason)
        return self.predict_image(image, name)

    def predict_paths(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 32,
        num_workers: int = 0,
        max_file_mb: float | None = 512,
        prefetch: bool = False,
        loader: Callable[[str], np.ndarray] | None = None,
    ) -> Iterator[Prediction]:
        """Stream predictions for files, in their order, one batch in memory at a time (two with ``prefetch``).

        ``loader``: ``path → H×W×3 uint8`` (default: the file as it is; cell crops: :func:`.cells.cell_loader`);
        a :class:`BadImageError` it raises becomes that file's error row.

        ``num_workers=0``: the files are read in this process; with ``prefetch`` a background thread reads,
        decodes and resizes the next batch while the model runs on this one (decoding, resizing and both
        backends release the GIL): it pays when a core is free, and measured no gain on a fully loaded
        2-core machine (experiments/benchmarks/predict.py), hence off by default. ``num_workers > 0``: a ``DataLoader`` with that many worker processes.
        """
        dataset = _PathDataset(paths, self.transform, max_bytes_of(max_file_mb), loader)
        bs = max(1, int(batch_size))
        if int(num_workers) > 0:
            batches: Iterable = DataLoader(
                dataset, batch_size=bs, num_workers=int(num_workers), collate_fn=_collate, shuffle=False
            )
        else:
            chunks = (range(i, min(i + bs, len(dataset))) for i in range(0, len(dataset), bs))
            read = lambda r: _collate([dataset[i] for i in r])  # noqa: E731
            batches = _prefetched(read, chunks) if prefetch else map(read, chunks)
        names = [str(p) for p in paths]
        for idx, good, batch, errors, shares in batches:
            probs = self.predict_proba(batch) if batch is not None else np.empty((0, len(self.class_names)))
            by_index = dict(zip(good, probs, strict=True))
            for i in idx:
                if i in errors:
                    yield Prediction(names[i], error=errors[i])
                else:
                    yield Prediction(names[i], by_index[i], self.decide(by_index[i]), saturated=shares.get(i))

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
