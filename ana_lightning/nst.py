"""Neural Style Transfer (Gatys et al. 2016), batched: the VGG-19 feature network and the optimiser.

One cohesive thing (~440 lines): the feature network, the Gram/TV losses and the optimisation loop that
uses them, with the settings that tie them together (:class:`StyleTransfer`).

An image is optimised so that its deep VGG-19 features match a *content* image and the Gram matrices of
its features (texture statistics) match a *style* image. Many content/style pairs are optimised together
in one batch (each image's loss only depends on its own pixels, so with Adam a batch gives the same
images as one-at-a-time); on a GPU the VGG passes run under autocast (bf16 where supported) while Gram
matrices and losses stay float32.

VGG-19 weights come from ``weights=<file>`` (a torchvision ``vgg19`` state dict, ``.pth`` or
``.safetensors``) or the torch hub cache (``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``); nothing
is downloaded. ``allow_random_weights=True`` uses a fixed random VGG-19 instead (random-feature texture
synthesis, Ustyuzhaninov et al. 2017): lower quality, meant for tests and trials.

The optimisation loop is written here because no maintained library offers batched Gatys-style NST
with these controls (torchvision and timm provide the network only). :class:`StyleTransfer` holds the
NST settings; ``conf/stylize.yaml``'s ``transfer`` block instantiates it (keys = its arguments). What is
done with the images (planning same-class pairs, writing, the manifest) is :mod:`ana_lightning.style_transfer`.

>>> sorted(VGG19_LAYERS)[:2], VGG19_LAYERS.index("relu4_2")
(['conv1_1', 'conv1_2'], 22)
"""

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "VGG19_LAYERS",
    "VGG19_WEIGHTS_FILE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WeightsNotFoundError",
    "default_weights_path",
    "VGGFeatures",
    "StyleTransfer",
    "gram",
]

log = logging.getLogger(__name__)

#: torchvision's file name for VGG19_Weights.IMAGENET1K_V1 (what torch.hub would have cached).
VGG19_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"
# torchvision's vgg cfgs["E"] (kept here so layer names need no torchvision import)
_VGG19_CFG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
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
            raise ValueError(
                f"unknown VGG-19 layer(s) {unknown or list(layers)}; choose from {', '.join(VGG19_LAYERS)}"
            )
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
        log.warning(
            "no VGG-19 weights at %s: using a fixed random network (allow_random_weights=true; lower quality)",
            path,
        )
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
            raise ValueError(
                f"VGG-19 weights file {path} cannot be read: {type(e).__name__}: {str(e)[:200]}"
            ) from None
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
            raise ValueError(
                f"VGG-19 weights file {path}: features.{k} has shape {tuple(feats[k].shape)}, expected {tuple(own[k].shape)}"
            )
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
        if style_layer_weights and len(style_layer_weights) != len(self.style_layers):  # [] or None: equal
            raise ValueError(
                f"style_layer_weights has {len(style_layer_weights)} values for {len(self.style_layers)} style layers"
            )
        self.style_layer_weights = tuple(
            float(w) for w in (style_layer_weights or [1.0] * len(self.style_layers))
        )
        self.content_weight, self.style_weight, self.tv_weight = (
            float(content_weight),
            float(style_weight),
            float(tv_weight),
        )
        self.iterations, self.optimizer, self.init = int(iterations), optimizer, init
        self.lr = float(lr) if lr is not None else (0.02 if optimizer == "adam" else 1.0)
        self.device = torch.device(
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        self.net = VGGFeatures(
            self.content_layers + self.style_layers, weights, allow_random_weights, pooling
        ).to(self.device)
        self.pooling = pooling
        self.amp_dtype: torch.dtype | None = None
        if amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.amp_dtype == torch.float16 and optimizer == "lbfgs":
                log.warning(
                    "fp16 autocast is not used with L-BFGS (its line search needs unscaled losses): running in float32"
                )
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

    def _losses(
        self, x: torch.Tensor, content_t: dict[str, torch.Tensor], style_t: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Per-image total loss (``B``), float32."""
        with self._autocast():
            feats = self.net(x)
        loss = x.new_zeros(x.shape[0], dtype=torch.float32)
        for name in self.content_layers:
            loss = loss + self.content_weight * (feats[name].float() - content_t[name]).pow(2).mean(
                dim=(1, 2, 3)
            )
        for name, w in zip(self.style_layers, self.style_layer_weights, strict=True):
            loss = loss + self.style_weight * w * (gram(feats[name]) - style_t[name]).pow(2).mean(dim=(1, 2))
        if self.tv_weight:
            tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3)) + (
                x[..., :, 1:] - x[..., :, :-1]
            ).abs().mean(dim=(1, 2, 3))
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
            raise ValueError(
                f"content {tuple(content.shape)} and style {tuple(style.shape)} must be B×3×H×W batches of one size"
            )
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
            noise = [
                torch.rand(content.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds
            ]
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
            opt = torch.optim.LBFGS(
                [x],
                lr=self.lr,
                max_iter=self.iterations,
                max_eval=self.iterations,
                history_size=50,
                line_search_fn="strong_wolfe",
            )
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
