"""Opening a model file: checkpoints (through :func:`ana_lightning.utils.load_checkpoint_model`, the one
checkpoint loader), hierarchy bundles and pipelines, and the runtime backends (PyTorch, TorchScript, ONNX)."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils import CheckpointError, load_checkpoint_model, safe_torch_load
from .rules import METADATA_KEY

__all__ = ["load_model", "load_pipeline", "pipeline_args", "use_support"]

log = logging.getLogger(__name__)


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", trust_checkpoint: bool = False
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the LightningModule of an ana-lightning checkpoint, loading it with ``weights_only=True``.

    A checkpoint that needs full unpickling (objects other than tensors and plain containers: it could
    run code) is refused, naming the file, unless ``trust_checkpoint=True``
    (:func:`~ana_lightning.utils.load_checkpoint_model`). Returns ``(model, metadata)``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        ckpt = safe_torch_load(path, trust_checkpoint=trust_checkpoint)
    except CheckpointError as e:
        if "is not a readable checkpoint" in str(e):
            raise CheckpointError(
                str(e).replace(
                    "is not a readable checkpoint",
                    "is not an ana-lightning checkpoint, ONNX or TorchScript model",
                )
            ) from None
        raise
    if _is_bundle(ckpt):  # the level-1/2/3 pipeline in one file (ana-eval --config-name eval_hierarchy)
        return _bundle_model(ckpt, path, map_location)
    model = load_checkpoint_model(  # checks that it is a Lightning checkpoint
        path, map_location=map_location, trust_checkpoint=trust_checkpoint, checkpoint=ckpt
    )
    from ..data.run_config import stored_data_state

    meta = dict(ckpt.get("ana_lightning") or {})
    nodes = (stored_data_state(ckpt) or ({}, {}))[1]
    if nodes and "class_nodes" not in meta:  # contest classes (Speckled) and the ICAP node each stands for
        meta["class_nodes"] = nodes
    return model, meta


def _is_bundle(ckpt: Any) -> bool:
    from ..models.hierarchical import BUNDLE_KIND

    return (
        isinstance(ckpt, dict)
        and isinstance(ckpt.get("ana_lightning"), dict)
        and ckpt["ana_lightning"].get("kind") == BUNDLE_KIND
    )


def _bundle_model(ckpt: dict, path: Path, map_location: str | torch.device = "cpu"):
    from ..models.hierarchical import HierarchicalPipeline

    net = HierarchicalPipeline.from_bundle(ckpt, str(path)).as_module().to(map_location).eval()
    return net, net.serving_metadata()


def load_pipeline(
    level1: str | None = None,
    level2: str | None = None,
    level3: Any = None,
    multihead: str | None = None,
    routing: str = "hard",
    tree: str | None = None,
    map_location: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(module, metadata)`` of a hierarchical pipeline given as checkpoints or run folders (the keys of
    ``pipeline`` in ``conf/eval_hierarchy.yaml``): what :class:`Predictor` and ``ana-export`` use."""
    from ..models.hierarchical import HierarchicalPipeline

    pipe = HierarchicalPipeline.from_checkpoints(
        level1=level1,
        level2=level2,
        level3=level3,
        multihead=multihead,
        routing=routing,
        tree=tree,
        trust_checkpoint=trust_checkpoint,
    )
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
            raise ValueError(
                f"support={support}: only Siamese models use a support set, not {type(model).__name__}"
            )
        setter(Path(support).expanduser())
        log.info("support set: %s", support)
        return
    net = getattr(model, "net", None)
    if setter is not None and net is not None and not getattr(net, "has_support", True):
        raise CheckpointError(
            "this Siamese checkpoint carries no support set: give support=<folder of <AC code>/<images>>"
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
        raise ValueError(
            f"device={device} was asked for but no CUDA GPU is available here; use device=cpu or auto"
        )
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
            raise ImportError(
                f"running {path} needs onnxruntime: pip install 'ana-lightning[export]'"
            ) from None

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
