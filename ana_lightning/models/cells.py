"""The network side of the cell recipe (``experiment=i3a_cells``): a compact CNN and the cell input.

- :class:`CellNet` (timm name ``cellnet``): a plain VGG-style CNN with a stride-2 stem, sized for a CPU
  (about 0.7 M parameters at ``width=24``; a train step on 128 cells of 64 px costs about a quarter
  of resnet10t's). Registered with timm, so ``model.backbone.name=cellnet`` works wherever a timm
  name does.
- :class:`CellInput`: wraps any backbone with **per-cell intensity normalisation** — each cell is
  divided by a high percentile of its intensity inside the mask, so a brighter specimen, lab or
  camera gain gives the same input and brightness cannot be learnt — and with optional **dihedral
  test-time augmentation** (the mean logits of the 8 flips/90° rotations, in eval mode only).
  Because it is part of the network, training, ``ana-eval``, ``ana-predict``, export and the app all
  see the same normalisation. Its ``pretrained_cfg`` says mean 0 / std 1, so the data pipeline only
  scales pixels to ``[0, 1]``.

The intensity of a pixel is the maximum over the cell's colour channels, so an 8-bit grey cell
(replicated to RGB) and the same cell stored as RGB with the signal in green give the same input.
With ``mask=channel`` the blue channel carries the mask (see :func:`~ana_lightning.data.contest.apply_mask`)
and the output is ``(I, I, mask)``; with ``apply`` the mask is the non-zero pixels, with ``none`` the
whole image; the output is then ``(I, I, I)``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from timm.models import register_model
from torch import nn

__all__ = [
    "CellNet",
    "CellInput",
    "TTAAtEvaluationOnly",
    "pause_tta",
    "MixStyle",
    "cell_background",
    "cell_equalize",
    "cell_tophat",
    "cell_normalize",
    "dihedral_views",
    "cellnet",
]

MASK_MODES = ("apply", "channel", "none")


def _cbr(i: int, o: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(o),
        nn.ReLU(inplace=True),
    ]


class CellNet(nn.Module):
    """Compact CNN for single-cell crops: four stages of two 3×3 conv-BN-ReLU, each starting with stride 2.

    >>> CellNet(num_classes=6)(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 6])
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: int = 24, drop_rate: float = 0.0):
        super().__init__()
        w = int(width)
        layers: list[nn.Module] = []
        chans = [in_chans, w, 2 * w, 4 * w, 8 * w]
        for k in range(4):
            layers += _cbr(chans[k], chans[k + 1], 2) + _cbr(chans[k + 1], chans[k + 1])
        self.features = nn.Sequential(*layers)
        self.num_features = chans[-1]
        self.drop = nn.Dropout(drop_rate)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = {
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "input_size": (in_chans, 64, 64),
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


@register_model
def cellnet(pretrained: bool = False, **kwargs: Any) -> CellNet:
    """timm entry point (no pretrained weights exist: use ``weights=<file>`` for your own)."""
    if pretrained:
        raise RuntimeError("cellnet has no published weights: set pretrained=false (or weights=<local file>)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's own, passed to every model
        kwargs.pop(key, None)
    # any other key reaches CellNet, which rejects what it does not take (e.g. a resnet's depth), and
    # create_backbone names it: a key silently ignored would train another network than the config says
    return CellNet(**kwargs)


def _levels(
    inten: torch.Tensor, m: torch.Tensor, percentile: float, mask: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's ``percentile`` level inside the mask and its background level, from ONE sort.

    Pixels inside the mask are lifted by 2 (intensities are in ``[0, 1]``), so an ascending sort puts
    the outside pixels first and the inside ones after them, each group in order. A cell without mask
    pixels is all inside (as in :func:`cell_normalize`).
    """
    n = inten.shape[0]
    flat = inten.reshape(n, -1)
    inside = m.reshape(n, -1)
    hw = flat.shape[1]
    count = inside.sum(dim=1)
    empty = count == 0  # no branch on the data, so torch.export / ONNX can trace it
    inside = inside | empty[:, None]
    count = torch.where(empty, torch.full_like(count, hw), count)
    ordered = (flat + 2.0 * inside.to(flat.dtype)).sort(dim=1).values
    n_out = hw - count
    k = (count.to(flat.dtype) * (1 - percentile / 100.0)).floor().long().clamp(max=hw - 1)
    level = ordered.gather(1, (hw - 1 - k).clamp(min=0)[:, None]).squeeze(1) - 2.0
    low = (
        ordered.gather(1, (n_out + ((count - 1).to(flat.dtype) * 0.05).floor().long())[:, None]).squeeze(1)
        - 2.0
    )
    if mask != "channel":
        return level, low
    med = ordered.gather(1, ((n_out - 1).clamp(min=0) // 2)[:, None]).squeeze(1)
    return level, torch.where(n_out >= 16, med, low)


def cell_background(inten: torch.Tensor, m: torch.Tensor, mask: str = "channel") -> torch.Tensor:
    """Each cell's background level (``N``) from its intensity ``inten`` (``N×H×W``) and mask ``m``.

    With ``mask=channel`` the median of the pixels outside the mask (the slide around the cell; the
    lower median for an even count); where a crop has fewer than 16 outside pixels, and for
    ``apply``/``none`` (no outside pixels to read), the 5th percentile inside the mask (the lower
    value, no interpolation). A cell without mask pixels is all inside.
    """
    return _levels(inten, m, 99.0, mask)[1]


def cell_equalize(inten: torch.Tensor, m: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Each pixel's rank among its cell's mask pixels: the fraction of them at or below its intensity.

    ``inten`` is ``N×H×W`` in ``[0, 1]``, ``m`` the boolean mask (a cell without mask pixels ranks
    against all of them). Intensities are read on ``levels`` grey levels (the 8 bits of the cells), so
    the rank comes from one histogram per cell rather than a sort. The result lies in ``[0, 1]`` and
    does not change under any increasing map of the grey levels that keeps them apart — gain, gamma, a
    background offset — so the shape of a specimen's intensity curve cannot be learnt either. Ties
    share the highest rank, so an 8-bit cell's flat dark floor does not become a ramp.

    >>> x = torch.randint(0, 128, (2, 8, 8)) / 255.0
    >>> m = torch.ones(2, 8, 8, dtype=torch.bool)
    >>> torch.equal(cell_equalize(x, m), cell_equalize(x * 2, m))
    True
    """
    n = inten.shape[0]
    top = levels - 1
    bins = (inten.reshape(n, -1) * top).round().long().clamp(0, top)
    inside = m.reshape(n, -1)
    empty = ~inside.any(dim=1)
    inside = inside | empty[:, None]
    hist = torch.zeros(n, levels, dtype=inten.dtype, device=inten.device)
    hist.scatter_add_(1, bins, inside.to(inten.dtype))
    cdf = hist.cumsum(dim=1) / hist.sum(dim=1, keepdim=True)
    return cdf.gather(1, bins).view_as(inten)


def cell_tophat(i: torch.Tensor, radius: int) -> torch.Tensor:
    """The white top-hat of ``N×H×W`` images: ``i`` minus its grey opening by a ``(2r+1)²`` square.

    What is left are the structures narrower than the square (centromere dots, speckles, Golgi
    granules) without the smooth level they sit on, so dots on a diffuse nucleoplasmic plateau look
    like dots on a dark nucleus.

    >>> i = torch.zeros(1, 9, 9); i[0, 4, 4] = 1.0; i += 0.5
    >>> cell_tophat(i, 1)[0, 4, 4].item(), cell_tophat(i, 1)[0, 0, 0].item()
    (1.0, 0.0)
    """
    if int(radius) < 1:
        raise ValueError(f"cell_tophat: radius must be >= 1 pixel, got {radius!r}")
    k = 2 * int(radius) + 1
    x = i[:, None]
    eroded = -nn.functional.max_pool2d(-x, k, stride=1, padding=k // 2)
    opened = nn.functional.max_pool2d(eroded, k, stride=1, padding=k // 2)
    return (x - opened)[:, 0]


def cell_normalize(
    x: torch.Tensor,
    mask: str = "channel",
    percentile: float = 99.0,
    clip: float = 4.0,
    background: bool = False,
    equalize: bool = False,
    tophat: int = 0,
) -> torch.Tensor:
    """Divide each cell by the ``percentile`` of its intensity inside its mask (see the module doc).

    ``x``: ``N×3×H×W`` in ``[0, 1]``. Returns ``N×3×H×W``: ``(I, I, mask)`` for ``mask=channel``,
    ``(I, I, I)`` otherwise, ``I`` clipped to ``[0, clip]``. With ``background`` each cell's
    background level ``b`` (:func:`cell_background`) is subtracted first: ``I = (x - b) / (p - b)``,
    so a specimen's glow around the cells (0.1–0.9 of the cell's brightest level on the I3A cells)
    does not change the input either. With ``equalize`` the second channel is the cell's rank image
    (:func:`cell_equalize`) instead of a copy of ``I``: invariant to gamma and to any other increasing
    intensity map, where ``I`` is invariant to gain only. With ``tophat`` (a radius in pixels) the second
    channel is the white top-hat of ``I`` (:func:`cell_tophat`): the dots and fibres narrower than
    ``2·tophat + 1`` pixels with the smooth level under them removed.

    >>> x = torch.rand(2, 3, 8, 8) * 0.1
    >>> torch.allclose(cell_normalize(x, "none"), cell_normalize(x * 5, "none"), atol=1e-5)
    True
    """
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"cell_normalize expects N×3×H×W images, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if mask == "channel":
        inten = x[:, :2].amax(dim=1)
        m = x[:, 2] > 0.5
    else:
        inten = x.amax(dim=1)
        m = inten > 0 if mask == "apply" else torch.ones_like(inten, dtype=torch.bool)
    if background:  # one sort gives both levels (the exact same scale as below)
        level, b = _levels(inten, m, percentile, mask)
        scale = level.clamp_min(1.0 / 255.0).view(n, 1, 1)
        b = torch.minimum(b.clamp_min(0).view(n, 1, 1), scale - 1.0 / 255.0).clamp_min(0)
        i = ((inten - b) / (scale - b)).clamp(0.0, float(clip))
    else:
        flat = torch.where(m, inten, torch.full_like(inten, -1.0)).reshape(n, -1)
        count = m.reshape(n, -1).sum(dim=1)
        empty = count == 0
        # no mask pixel: use the whole image (no branch on the data, so torch.export / ONNX can trace it)
        flat = torch.where(empty[:, None], inten.reshape(n, -1), flat)
        count = torch.where(empty, torch.full_like(count, flat.shape[1]), count)
        ordered = flat.sort(dim=1, descending=True).values
        k = ((count.to(x.dtype) * (1 - percentile / 100.0)).floor().long()).clamp(max=flat.shape[1] - 1)
        scale = ordered.gather(1, k[:, None]).clamp_min(1.0 / 255.0)
        i = (inten / scale.view(n, 1, 1)).clamp(0.0, float(clip))
    if equalize and tophat:
        raise ValueError("cell_normalize: equalize and tophat both claim the second channel; choose one")
    second = cell_equalize(inten, m) if equalize else cell_tophat(i, tophat) if tophat else i
    third = m.to(x.dtype) if mask == "channel" else i
    return torch.stack([i, second, third], dim=1)


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/90° rotations of a square batch (the identity first)."""
    views = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return views + [v.flip(-1) for v in views]


class MixStyle(nn.Module):
    """Mixes the feature statistics of cells in a training batch (Zhou et al., ICLR 2021, "MixStyle").

    Each feature map is normalised by its own channel means and standard deviations and rescaled by a
    blend of its statistics and those of another cell of the batch (weight ``Beta(alpha, alpha)``), with
    probability ``p`` per batch. The statistics carry a specimen's "style" (haze, a diffuse plateau,
    stain texture); mixing them across the batch, which holds cells of many specimens, asks the network
    to read the pattern under another specimen's style. Identity in eval mode; no parameters, so a
    checkpoint's weights are the same with or without it.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mixstyle: p is a probability in [0, 1], got {p!r}")
        if not alpha > 0.0:
            raise ValueError(f"mixstyle: alpha is the Beta parameter, > 0, got {alpha!r}")
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] < 2 or torch.rand(()) >= self.p:
            return x
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sig = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((x.shape[0], 1, 1, 1)).to(x)
        perm = torch.randperm(x.shape[0], device=x.device)
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        return (x - mu) / sig * sig_mix + mu_mix

    def hook(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        """A forward hook that mixes a module's output (a bound method: copies and pickles follow the module)."""
        return self(output)


def pause_tta(module: nn.Module, paused: bool) -> None:
    """Set ``tta_paused`` on every :class:`CellInput` inside ``module`` (no-op without one)."""
    for m in module.modules():
        if isinstance(m, CellInput):
            m.tta_paused = paused


class TTAAtEvaluationOnly(L.Callback):
    """Dihedral TTA (``cell_input.tta``) is for evaluation: the validation passes inside ``fit``, which
    pick the kept epoch, read the plain view (as the TTA default was measured, round 14), at an eighth
    of the cost. ``trainer.validate``, ``trainer.test``, ``ana-eval``, prediction and export use TTA.

    Works for any LightningModule that holds a :class:`CellInput`: the project's
    :class:`~ana_lightning.trainer.Trainer` adds it to every run, and
    :class:`~ana_lightning.models.base.ANAModule` returns it from ``configure_callbacks`` for runs on a
    plain Lightning Trainer (Lightning keeps one callback of a type).
    """

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pause_tta(pl_module, trainer.state.fn == "fit")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pause_tta(pl_module, False)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # a fit stopped inside a validation pass (Ctrl-C): what runs after it (tests, ana-eval) still uses TTA
        pause_tta(pl_module, False)


class CellInput(nn.Module):
    """A backbone behind per-cell intensity normalisation, with optional dihedral TTA.

    Args:
        body: the timm-style network.
        mask: how the dataset delivers the mask: ``channel`` | ``apply`` | ``none``.
        normalize: per-cell normalisation on (``false`` = the raw ``[0, 1]`` cell reaches the body).
        percentile: the intensity percentile inside the mask that becomes 1.
        tta: in eval mode, average the logits of the 8 dihedral views. The validation passes inside
            training (which pick the kept epoch) read the plain view: :class:`TTAAtEvaluationOnly` sets
            ``tta_paused`` for them (the project's Trainer and every ``ANAModule`` add it); testing,
            ``ana-eval``, prediction and export average the 8 views.
        background: subtract each cell's background level before scaling (:func:`cell_normalize`);
            off by default, so checkpoints trained without it load and predict as before.
        equalize: the second input channel is the cell's rank image (:func:`cell_equalize`);
            off by default, for the same reason.
        tophat: the second input channel is the white top-hat of radius ``tophat`` pixels
            (:func:`cell_tophat`); 0 = off.
        mixstyle: ``{p, alpha, layers}``: :class:`MixStyle` on the outputs of the body's modules named in
            ``layers`` (default ``[layer1, layer2]``, the first two stages of a timm ResNet), in
            training only; ``None`` = off.
    """

    def __init__(
        self,
        body: nn.Module,
        mask: str = "channel",
        normalize: bool = True,
        percentile: float = 99.0,
        tta: bool = False,
        background: bool = False,
        equalize: bool = False,
        mixstyle: dict[str, Any] | None = None,
        tophat: int = 0,
    ):
        super().__init__()
        if mask not in MASK_MODES:
            raise ValueError(f"cell input: mask must be one of {MASK_MODES}, got {mask!r}")
        self.body = body
        self.mask, self.normalize, self.percentile, self.tta = (
            mask,
            bool(normalize),
            float(percentile),
            bool(tta),
        )
        self.tta_paused = False  # set by TTAAtEvaluationOnly during training's validation passes
        self.background = bool(background)
        self.equalize = bool(equalize)
        self.tophat = int(tophat)
        if self.tophat < 0 or (self.tophat and self.equalize):
            raise ValueError(
                f"cell input: tophat={tophat!r} must be >= 0 and cannot be combined with equalize"
            )
        if mixstyle:
            self._hook_mixstyle(dict(mixstyle))
        cfg = dict(getattr(body, "pretrained_cfg", {}) or {})
        self.pretrained_cfg = {**cfg, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
        self.num_features = getattr(body, "num_features", None)

    def _hook_mixstyle(self, settings: dict[str, Any]) -> None:
        layers = list(settings.pop("layers", ["layer1", "layer2"]))
        unknown = set(settings) - {"p", "alpha"}
        if unknown:
            raise ValueError(f"mixstyle: unknown keys {sorted(unknown)}; it takes p, alpha and layers")
        self.mixstyle = MixStyle(**settings)
        modules = dict(self.body.named_modules())
        for name in layers:
            if not name or name not in modules:
                stages = [n for n, _ in self.body.named_children()]
                raise ValueError(
                    f"mixstyle: the backbone has no module {name!r}; its top-level modules are {stages}"
                )
            modules[name].register_forward_hook(self.mixstyle.hook)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return x
        return cell_normalize(
            x,
            self.mask,
            self.percentile,
            background=self.background,
            equalize=self.equalize,
            tophat=self.tophat,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(self.prepare(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.body.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        if self.tta and not self.tta_paused and not self.training and x.shape[-1] == x.shape[-2]:
            return torch.stack([self.body(v) for v in dihedral_views(x)]).mean(0)
        return self.body(x)

    def get_classifier(self) -> nn.Module:
        return self.body.get_classifier()

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        self.body.reset_classifier(num_classes, *args, **kwargs)
