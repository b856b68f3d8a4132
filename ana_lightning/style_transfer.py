"""Neural Style Transfer synthesis of class-preserving training images (``ana-stylize``).

Gatys et al. (2016): an image is optimised so that its deep VGG-19 features match a *content* image
and the Gram matrices of its features (texture statistics) match a *style* image. Here both are
training images of the **same class**, so the result keeps the label: the cells and layout of one
field, re-painted with the staining texture of another field of the same pattern.

- **No leakage, by construction**: only records of the training split are sources (the stylize job
  reads the run's split manifest, or splits with the same ``split_records`` and seed); the output
  manifest records, for every image, its content and style path and sha256, the parameters and the
  seed; :func:`read_stylized_set` (used by ``data.extra_train``) refuses a set whose sources are in
  val or test, or not in the data at all.
- **Batched**: many content/style pairs are optimised together in one batch (each image's loss only
  depends on its own pixels, so with Adam a batch gives the same images as one-at-a-time); on a GPU the
  VGG passes run under autocast (bf16 where supported) while Gram matrices and losses stay float32.
- **Resumable and safe**: each image is written to a hidden temporary file and renamed; re-running
  skips finished outputs; Ctrl-C leaves no half-written image and a manifest of what is done.

VGG-19 weights come from ``weights=<file>`` (a torchvision ``vgg19`` state dict, ``.pth`` or
``.safetensors``) or the torch hub cache (``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``); nothing
is downloaded. ``allow_random_weights=True`` uses a fixed random VGG-19 instead (random-feature texture
synthesis, Ustyuzhaninov et al. 2017): lower quality, meant for tests and trials.

The optimisation loop is written here because no maintained library offers batched Gatys-style NST
with these controls (torchvision and timm provide the network only).

>>> sorted(VGG19_LAYERS)[:2], VGG19_LAYERS.index("relu4_2")
(['conv1_1', 'conv1_2'], 22)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.images import load_image, sha256_file
from .data.records import ImageRecord
from .data.splits import STYLIZED_MANIFEST, read_stylized_set

__all__ = [
    "VGG19_LAYERS",
    "VGG19_WEIGHTS_FILE",
    "WeightsNotFoundError",
    "default_weights_path",
    "VGGFeatures",
    "StyleTransfer",
    "StyleJob",
    "plan_jobs",
    "stylize",
    "stylize_job",
    "read_stylized_set",
    "MANIFEST",
]

log = logging.getLogger(__name__)

#: The manifest of a stylized set, inside its output folder.
MANIFEST = STYLIZED_MANIFEST  # the set's manifest.csv (named in data.splits, which reads it back)
#: Generation parameters of a stylized set, inside its output folder (a re-run must match them).
PARAMS_FILE = "stylize_params.json"
#: torchvision's file name for VGG19_Weights.IMAGENET1K_V1 (what torch.hub would have cached).
VGG19_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"
# torchvision's vgg cfgs["E"] (kept here so layer names need no torchvision import)
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> tuple[str, ...]:
    names, block, conv = [], 1, 1
    for v in _VGG19_CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return tuple(names)


#: Names of the modules of ``torchvision.models.vgg19().features``, in order (index = module index).
VGG19_LAYERS: tuple[str, ...] = _layer_names()


class WeightsNotFoundError(FileNotFoundError):
    """No VGG-19 weights where they were looked for (the message says where to put them)."""


def default_weights_path() -> Path:
    """Where torchvision would have cached VGG-19's ImageNet weights: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_WEIGHTS_FILE


# ---------------------------------------------------------------------------------------------- network
class VGGFeatures(nn.Module):
    """VGG-19 convolutional features, cut after the deepest layer asked for; ``forward`` returns them by name.

    Input: ``B×3×H×W`` RGB in ``[0, 1]`` (ImageNet normalisation is applied inside).

    Args:
        layers: layer names from :data:`VGG19_LAYERS` (``relu4_2``, ``conv1_1``, …).
        weights: a state-dict file of torchvision's ``vgg19`` (``features.N.weight`` keys, or
            ``N.weight`` for a features-only dict; ``.pth`` or ``.safetensors``); ``None`` looks in the
            torch hub cache (:func:`default_weights_path`).
        allow_random_weights: without weights, use a fixed random network instead of failing.
        pooling: ``avg`` (Gatys et al.'s choice: smoother gradients) or ``max`` (the trained network's own).
        seed: seed of the random network.
    """

    def __init__(
        self,
        layers: Sequence[str],
        weights: str | Path | None = None,
        allow_random_weights: bool = False,
        pooling: str = "avg",
        seed: int = 0,
    ):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG-19 layer(s) {unknown or list(layers)}; choose from {', '.join(VGG19_LAYERS)}")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        self.layers = tuple(dict.fromkeys(layers))
        depth = max(VGG19_LAYERS.index(name) for name in self.layers) + 1
        from torchvision.models import vgg  # torchvision's VGG-19 ("E") layers, without the classifier

        modules: list[nn.Module] = []
        for m in vgg.make_layers(vgg.cfgs["E"]):
            if isinstance(m, nn.ReLU):  # not in-place: a captured conv output must not be overwritten
                m = nn.ReLU(inplace=False)
            elif isinstance(m, nn.MaxPool2d) and pooling == "avg":
                m = nn.AvgPool2d(2, 2)
            modules.append(m)
        self.body = nn.Sequential(*modules[:depth])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.source = self._load(weights, allow_random_weights, seed)
        self.requires_grad_(False)
        self.eval()

    @property
    def random(self) -> bool:
        return self.source == "random"

    def _load(self, weights: str | Path | None, allow_random: bool, seed: int) -> str:
        path = Path(weights).expanduser() if weights else default_weights_path()
        if weights and not path.is_file():
            raise WeightsNotFoundError(f"VGG-19 weights file {path} (weights=...) does not exist")
        if path.is_file():
            self._load_file(path)
            return str(path)
        if not allow_random:
            raise WeightsNotFoundError(
                f"No VGG-19 weights found: looked for {path} (the torch hub cache; set TORCH_HOME to move it). "
                f"Nothing is downloaded. On a machine with internet, get torchvision's vgg19 ImageNet weights "
                f"(torchvision.models.vgg19(weights='IMAGENET1K_V1') caches them as {VGG19_WEIGHTS_FILE}) and copy "
                f"the file to {path}, or pass weights=/path/to/vgg19.pth; or set allow_random_weights=true for "
                f"random-feature texture synthesis (lower quality)."
            )
        log.warning("no VGG-19 weights at %s: using a fixed random network (allow_random_weights=true; lower quality)", path)
        gen = torch.Generator().manual_seed(seed)
        for m in self.body:
            if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation, seeded
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                nn.init.zeros_(m.bias)
        return "random"

    def _load_file(self, path: Path) -> None:
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"VGG-19 weights file {path} cannot be read: {type(e).__name__}: {str(e)[:200]}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"VGG-19 weights file {path} does not hold a state dict")
        feats = {k.removeprefix("features."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
        own = self.body.state_dict()
        missing = [k for k in own if k not in feats]
        if missing:
            raise ValueError(
                f"VGG-19 weights file {path} lacks features.{missing[0]} (and {len(missing) - 1} more): "
                "is it a torchvision vgg19 state dict?"
            )
        bad = [k for k in own if feats[k].shape != own[k].shape]
        if bad:
            k = bad[0]
            raise ValueError(f"VGG-19 weights file {path}: features.{k} has shape {tuple(feats[k].shape)}, expected {tuple(own[k].shape)}")
        self.body.load_state_dict({k: feats[k] for k in own})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        for name, module in zip(VGG19_LAYERS, self.body, strict=False):
            x = module(x)
            if name in self.layers:
                out[name] = x
        return out


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices ``B×C×C`` of ``B×C×H×W`` features, normalised by ``C·H·W``, in float32."""
    b, c, h, w = features.shape
    f = features.float().reshape(b, c, h * w)
    with torch.autocast(f.device.type, enabled=False):  # sums of products: keep them in float32
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


# ---------------------------------------------------------------------------------------------- optimiser
class StyleTransfer:
    """Batched Gatys-style optimisation of images (content of one image, texture of another).

    Args:
        content_layers: VGG-19 layers whose activations must match the content image.
        style_layers: layers whose Gram matrices must match the style image.
        content_weight, style_weight: weights of the two losses.
        style_layer_weights: per style layer (default: equal).
        tv_weight: total-variation weight (smoothness); 0 = off.
        iterations: optimiser steps (Adam) or function evaluations (L-BFGS).
        optimizer: ``adam`` or ``lbfgs`` (``lbfgs`` optimises a batch as one joint problem).
        lr: learning rate; ``None``: 0.02 for Adam (pixels are in ``[0, 1]``), 1.0 for L-BFGS.
        init: start from the ``content`` image or from ``noise`` (seeded per image).
        pooling, weights, allow_random_weights: passed to :class:`VGGFeatures`.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, …
        amp: mixed precision on CUDA (bf16 where the GPU has it, else fp16 with loss scaling for Adam);
            Gram matrices and losses stay float32. Ignored on CPU.
    """

    def __init__(
        self,
        content_layers: Sequence[str] = ("relu4_2",),
        style_layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        content_weight: float = 1.0,
        style_weight: float = 1.0e6,
        style_layer_weights: Sequence[float] | None = None,
        tv_weight: float = 0.0,
        iterations: int = 300,
        optimizer: str = "adam",
        lr: float | None = None,
        init: str = "content",
        pooling: str = "avg",
        weights: str | None = None,
        allow_random_weights: bool = False,
        device: str = "auto",
        amp: bool = True,
    ):
        if optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
        if init not in ("content", "noise"):
            raise ValueError(f"init must be 'content' or 'noise', got {init!r}")
        if int(iterations) < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations!r}")
        self.content_layers = tuple(content_layers)
        self.style_layers = tuple(style_layers)
        if style_layer_weights is not None and len(style_layer_weights) != len(self.style_layers):
            raise ValueError(
                f"style_layer_weights has {len(style_layer_weights)} values for {len(self.style_layers)} style layers"
            )
        self.style_layer_weights = tuple(float(w) for w in (style_layer_weights or [1.0] * len(self.style_layers)))
        self.content_weight, self.style_weight, self.tv_weight = float(content_weight), float(style_weight), float(tv_weight)
        self.iterations, self.optimizer, self.init = int(iterations), optimizer, init
        self.lr = float(lr) if lr is not None else (0.02 if optimizer == "adam" else 1.0)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        self.net = VGGFeatures(self.content_layers + self.style_layers, weights, allow_random_weights, pooling).to(self.device)
        self.pooling = pooling
        self.amp_dtype: torch.dtype | None = None
        if amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.amp_dtype == torch.float16 and optimizer == "lbfgs":
                log.warning("fp16 autocast is not used with L-BFGS (its line search needs unscaled losses): running in float32")
                self.amp_dtype = None
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)

    @property
    def weights_source(self) -> str:
        return self.net.source

    def params(self) -> dict[str, Any]:
        """The parameters that decide the output images (recorded in the manifest)."""
        return {
            "iterations": self.iterations,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "init": self.init,
            "content_layers": list(self.content_layers),
            "style_layers": list(self.style_layers),
            "content_weight": self.content_weight,
            "style_weight": self.style_weight,
            "style_layer_weights": list(self.style_layer_weights),
            "tv_weight": self.tv_weight,
            "pooling": self.pooling,
            "weights": self.weights_source,
        }

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _losses(self, x: torch.Tensor, content_t: dict[str, torch.Tensor], style_t: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-image total loss (``B``), float32."""
        with self._autocast():
            feats = self.net(x)
        loss = x.new_zeros(x.shape[0], dtype=torch.float32)
        for name in self.content_layers:
            loss = loss + self.content_weight * (feats[name].float() - content_t[name]).pow(2).mean(dim=(1, 2, 3))
        for name, w in zip(self.style_layers, self.style_layer_weights, strict=True):
            loss = loss + self.style_weight * w * (gram(feats[name]) - style_t[name]).pow(2).mean(dim=(1, 2))
        if self.tv_weight:
            tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3)) + (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
            loss = loss + self.tv_weight * tv.float()
        return loss

    def __call__(
        self,
        content: torch.Tensor,
        style: torch.Tensor,
        seeds: Sequence[int] | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, list[float]]:
        """Optimise one batch. ``content``/``style``: ``B×3×H×W`` in ``[0, 1]``.

        Returns the images (``B×3×H×W`` float in ``[0, 1]``, on the CPU) and each image's final loss.
        """
        if content.shape[0] != style.shape[0] or content.ndim != 4:
            raise ValueError(f"content {tuple(content.shape)} and style {tuple(style.shape)} must be B×3×H×W batches of one size")
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        content = content.to(self.device, torch.float32).contiguous(memory_format=fmt)
        style = style.to(self.device, torch.float32).contiguous(memory_format=fmt)
        with torch.no_grad(), self._autocast():
            cf, sf = self.net(content), self.net(style)
            content_t = {n: cf[n].float() for n in self.content_layers}
            style_t = {n: gram(sf[n]) for n in self.style_layers}
        del cf, sf
        if self.init == "content":
            x = content.clone()
        else:
            seeds = list(seeds) if seeds is not None else list(range(content.shape[0]))
            noise = [torch.rand(content.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds]
            x = torch.stack(noise).to(self.device).contiguous(memory_format=fmt)
        x.requires_grad_(True)
        last = torch.zeros(content.shape[0])
        if self.optimizer == "adam":
            opt = torch.optim.Adam([x], lr=self.lr)
            scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
            for i in range(self.iterations):
                opt.zero_grad(set_to_none=True)
                per_image = self._losses(x, content_t, style_t)
                loss = per_image.sum()  # images are independent: the sum's gradient is each image's own
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
                last = per_image.detach()
                if on_step is not None:
                    on_step(i + 1)
        else:
            opt = torch.optim.LBFGS([x], lr=self.lr, max_iter=self.iterations,
                                    max_eval=self.iterations, history_size=50, line_search_fn="strong_wolfe")
            evals = [0]

            def closure() -> torch.Tensor:
                nonlocal last
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
                opt.zero_grad(set_to_none=True)
                per_image = self._losses(x, content_t, style_t)
                loss = per_image.sum()
                loss.backward()
                last = per_image.detach()
                evals[0] += 1
                if on_step is not None:
                    on_step(min(evals[0], self.iterations))
                return loss

            opt.step(closure)
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        out = x.detach().float().cpu().contiguous()
        return out, [float(v) for v in last.float().cpu()]


# ---------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class StyleJob:
    """One output image: the ``index``-th restyling of ``content`` with the texture of ``style``."""

    content: ImageRecord
    style: ImageRecord
    index: int
    seed: int
    relpath: str  # path of the output image inside the output folder


def _stable_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


def _safe_stem(path: str, limit: int = 40) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(path).stem)
    return stem[:limit] or "img"


def label_folder(codes: Sequence[str]) -> str:
    """Folder name of a label: ``AC-4``, or ``AC-1+AC-4`` for a multi-label record."""
    return "+".join(codes)


def plan_jobs(records: Sequence[ImageRecord], n_per_image: int, seed: int = 0) -> tuple[list[StyleJob], list[str]]:
    """Pair every record (content) with up to ``n_per_image`` different records of the same label (style).

    The plan depends only on the records and the seed, and the first ``k`` styles of a content image
    are the same for any ``n_per_image >= k`` (so a larger re-run extends a set). Byte-identical copies
    count once (never their own style, never two contents). Returns the jobs and warnings (labels or images with too few partners).
    """
    if n_per_image < 1:
        raise ValueError(f"n_per_image must be at least 1, got {n_per_image!r}")
    by_label: dict[tuple[str, ...], list[ImageRecord]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r.path):
        by_label[tuple(r.codes)].append(r)
    jobs: list[StyleJob] = []
    warnings: list[str] = []
    short = 0
    def key(r: ImageRecord) -> str:  # identity of an image: its bytes, else where it is
        return r.sha256 or str(Path(r.path).resolve())

    for codes, recs in by_label.items():
        first: dict[str, ImageRecord] = {}
        for r in recs:  # byte-identical copies count once (the first path)
            first.setdefault(key(r), r)
        unique = list(first.values())
        if len(unique) < 2:
            warnings.append(f"{label_folder(codes)}: only one training image ({recs[0].path}), no style partner: skipped")
            continue
        for c in unique:
            partners = [s for s in unique if key(s) != key(c)]
            rng = np.random.default_rng([seed, _stable_int(key(c)) % (2**63)])
            order = [partners[i] for i in rng.permutation(len(partners))]
            if len(order) < n_per_image:
                short += 1
            for k, s in enumerate(order[:n_per_image]):
                job_seed = _stable_int(seed, key(c), k) % (2**31)
                tag = hashlib.sha1(f"{key(c)}\x1f{key(s)}\x1f{k}".encode()).hexdigest()[:8]
                rel = f"{label_folder(codes)}/{_safe_stem(c.path)}__{k:02d}_{tag}.png"
                jobs.append(StyleJob(c, s, k, job_seed, rel))
    if short:
        warnings.append(
            f"{short} content image(s) have fewer than n_per_image={n_per_image} same-class partners: "
            "they get one image per partner (the same pair would give the same image)"
        )
    return jobs, warnings


# ---------------------------------------------------------------------------------------------- writing
def _write_png_atomic(path: Path, image: np.ndarray) -> str:
    """Write ``image`` (``H×W×3 uint8``) as PNG through a hidden temporary file + rename; returns its sha256."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden: readers ignore it
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: never leave a partial file behind
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _verified_output(path: Path, row: dict[str, Any] | None) -> dict[str, Any] | None:
    """``row`` (``{}`` when the manifest has none) if ``path`` is a finished output: its sha256 is the
    manifest's, or — without a manifest row — it decodes completely; None when it must be made again
    (a truncated or corrupt PNG, e.g. copied in part or written by another tool)."""
    from .data.images import BadImageError, load_image

    if row and row.get("sha256"):
        return row if sha256_file(path) == row["sha256"] else None
    try:
        load_image(path)
    except BadImageError:
        return None
    return row or {}


_COLUMNS = (
    "path", "label", "group", "sha256", "content", "style", "content_sha256", "style_sha256",
    "index", "seed", "image_size", "iterations", "optimizer", "lr", "init", "content_layers", "style_layers",
    "content_weight", "style_weight", "style_layer_weights", "tv_weight", "pooling", "weights", "final_loss",
)


def _write_manifest(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_manifest_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _to_unit_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    import cv2

    if image.shape[:2] != (size, size):  # as the datamodules resize (ImageTransform.resize)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0


class _ImageCache:
    """A small LRU of loaded, resized images (each content image is used ``n_per_image`` times)."""

    def __init__(self, size: int, capacity: int = 256):
        self.size, self.capacity = size, capacity
        self.items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, path: str) -> torch.Tensor:
        if path in self.items:
            self.items.move_to_end(path)
            return self.items[path]
        t = _to_unit_tensor(load_image(path), self.size)
        self.items[path] = t
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return t


@dataclass
class StylizeSummary:
    """What :func:`stylize` did."""

    output: str
    planned: int
    already_done: int
    written: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else math.nan


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
    )


def _batches(items: Sequence[StyleJob], size: int) -> Iterator[list[StyleJob]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def stylize(
    records: Sequence[ImageRecord],
    output: str | Path,
    transfer: StyleTransfer,
    n_per_image: int = 4,
    image_size: int = 256,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> StylizeSummary:
    """Write a stylized, class-preserving set made from ``records`` (the *training* split) into ``output``.

    Layout: ``<output>/<label>/<content stem>__<k>_<tag>.png``, ``<output>/manifest.csv`` (one row per
    image: label, content/style path and sha256, parameters, seed, final loss) and
    ``<output>/stylize_params.json``. Finished images are skipped, so an interrupted run resumes where
    it stopped; an output folder made with other parameters is refused.
    """
    if batch_size < 1 or image_size < 16:
        raise ValueError(f"batch_size must be >= 1 and image_size >= 16, got {batch_size!r} and {image_size!r}")
    out = Path(output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    params = {**transfer.params(), "image_size": int(image_size), "seed": int(seed)}
    params_file = out / PARAMS_FILE
    if params_file.is_file():
        old = json.loads(params_file.read_text())
        diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} holds a stylized set made with other parameters ({lines}). Use a new output folder, "
                "or delete this one to start over."
            )
    else:
        params_file.write_text(json.dumps(params, indent=2) + "\n")
    for stale in out.rglob(".*.tmp"):  # left by a killed process (SIGKILL): never a finished image
        stale.unlink(missing_ok=True)

    jobs, warnings = plan_jobs(records, n_per_image, seed)
    for w in warnings:
        log.warning(w)
    manifest = out / MANIFEST
    previous = {row["path"]: row for row in _read_manifest_rows(manifest)}
    rows: dict[str, dict[str, Any]] = {}
    pending: list[StyleJob] = []
    redo = []
    for job in jobs:
        done = out / job.relpath
        if done.is_file() and (row := _verified_output(done, previous.get(job.relpath))) is not None:
            rows[job.relpath] = row or _row(job, params, sha256_file(done), math.nan)
        else:
            if done.exists() or done.is_symlink():
                redo.append(str(done))
                done.unlink()
            pending.append(job)
    if redo:
        log.warning("%d existing output(s) are truncated, unreadable or differ from the manifest and are made again, "
                    "e.g. %s", len(redo), redo[0])
    orphans = [p for p in previous if p not in {j.relpath for j in jobs}]
    if orphans:
        log.warning("%d image(s) of an earlier plan in %s are not part of this one and are left out of the manifest, e.g. %s",
                    len(orphans), out, orphans[0])
    done_before = len(rows)
    log.info("stylize: %d image(s) planned, %d already done, %d to make (batch %d, %d iterations, %d px, %s, weights: %s)",
             len(jobs), done_before, len(pending), batch_size, transfer.iterations, image_size, transfer.device, transfer.weights_source)
    cache = _ImageCache(int(image_size))
    start = time.perf_counter()
    written = 0
    try:
        with _progress(progress) as bar:
            task = bar.add_task("stylizing", total=len(jobs), completed=done_before, rate="") if bar else None
            sub = bar.add_task("  iterations", total=transfer.iterations, rate="") if bar else None
            for batch in _batches(pending, batch_size):
                content = torch.stack([cache(j.content.path) for j in batch])
                style = torch.stack([cache(j.style.path) for j in batch])
                if bar is not None:
                    bar.reset(sub, total=transfer.iterations)
                images, losses = transfer(
                    content, style, [j.seed for j in batch],
                    on_step=(lambda i: bar.update(sub, completed=i)) if bar is not None else None,
                )
                arrays = (images.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
                for job, arr, loss in zip(batch, arrays, losses, strict=True):
                    digest = _write_png_atomic(out / job.relpath, arr)
                    rows[job.relpath] = _row(job, params, digest, loss)
                    written += 1
                _write_manifest(manifest, [rows[j.relpath] for j in jobs if j.relpath in rows])
                if bar is not None:
                    elapsed = time.perf_counter() - start
                    bar.update(task, advance=len(batch), rate=f"{written / elapsed:.2f} img/s")
    finally:
        _write_manifest(manifest, [rows[j.relpath] for j in jobs if j.relpath in rows])
    seconds = time.perf_counter() - start
    log.info("stylize: wrote %d image(s) in %.1f s into %s (%d in total)", written, seconds, out, len(rows))
    return StylizeSummary(str(out), len(jobs), done_before, written, seconds, warnings)


def _row(job: StyleJob, params: dict[str, Any], digest: str, loss: float) -> dict[str, Any]:
    c, s = job.content, job.style
    row = {
        "path": job.relpath,
        "label": ";".join(c.codes),
        "group": c.group or "",
        "sha256": digest,
        "content": str(Path(c.path).resolve()),
        "style": str(Path(s.path).resolve()),
        "content_sha256": c.sha256,
        "style_sha256": s.sha256,
        "index": job.index,
        "seed": job.seed,
        "final_loss": "" if math.isnan(loss) else f"{loss:.6g}",
    }
    for k in _COLUMNS:
        if k not in row:
            v = params[k]
            row[k] = ";".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return row


# ---------------------------------------------------------------------------------------------- reading back
# read_stylized_set (data.extra_train) checks a stylized set against a run's split: it lives with
# the other leakage checks in ana_lightning.data.splits and is imported above under its old name.


# ---------------------------------------------------------------------------------------------- job
def stylize_job(cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``ana-stylize`` job: training split of ``cfg.data`` → stylized set in ``cfg.output``."""
    from omegaconf import OmegaConf

    from .pipeline import build_datamodule

    if not cfg.get("output"):
        raise ValueError("ana-stylize needs output=<folder> (where the stylized set is written)")
    manifest = cfg.get("split_manifest") or cfg.data.get("split_manifest")
    overrides = {"split_manifest": str(manifest)} if manifest else {}
    if manifest and not Path(manifest).is_file():
        raise FileNotFoundError(f"split_manifest={manifest} does not exist (give <run folder>/split_manifest.csv)")
    dm = build_datamodule(cfg, **overrides)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.splits["train"]
    log.info("sources: the %d training image(s) of %s (%s)", len(train), dm.root,
             f"split manifest {manifest}" if manifest else f"split seed {dm.hparams.seed}")
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    transfer = StyleTransfer(
        content_layers=list(cfg.content_layers),
        style_layers=list(cfg.style_layers),
        content_weight=cfg.content_weight,
        style_weight=cfg.style_weight,
        style_layer_weights=list(cfg.style_layer_weights) if cfg.get("style_layer_weights") else None,
        tv_weight=cfg.tv_weight,
        iterations=cfg.iterations,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        init=cfg.init,
        pooling=cfg.pooling,
        weights=cfg.get("weights"),
        allow_random_weights=cfg.allow_random_weights,
        device=cfg.device,
        amp=cfg.amp,
    )
    if transfer.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    summary = stylize(train, cfg.output, transfer, n_per_image=cfg.n_per_image, image_size=cfg.image_size,
                      batch_size=cfg.batch_size, seed=cfg.seed, progress=cfg.get("progress", True))
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)
    (run_dir / "stylize_summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return asdict(summary), {"datamodule": dm, "transfer": transfer, "summary": summary}
