"""One field through a model: :class:`FieldPredictor` (tiles for a field model, segmented cells for a
cell model) and its :class:`FieldResult`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from .combine import INSUFFICIENT, METHODS
from .crops import CellCrop, cell_crops, tiles
from .scale import ScaleEstimate
from .segment import ClassicalSegmenter, Segmentation, build_segmenter, segment_field

__all__ = ["FieldResult", "FieldPredictor", "FieldCut", "FieldCutter", "Predictor"]


class Predictor(Protocol):
    """What the fields package uses of a model: :class:`ana_lightning.predict.Predictor` answers it
    (a protocol here, so that ``fields`` does not import ``predict`` for its type hints)."""

    class_names: Sequence[str]
    task: str
    info: Any  # ModelInfo: image_size, thresholds, extra
    source: str

    def preprocess(self, image: np.ndarray) -> torch.Tensor: ...
    def predict_proba(self, batch: torch.Tensor) -> np.ndarray: ...
    def decide(self, probs: np.ndarray) -> tuple[str, ...]: ...
    def hierarchy(self, label: str) -> tuple[str, str]: ...
    @property
    def rule(self) -> Any: ...  # DecisionRule: combine(probs, method) makes one output of many units


@dataclass
class FieldResult:
    path: str
    status: str = "ok"
    error: str = ""
    verdict: tuple[str, ...] = ()
    probs: np.ndarray | None = None
    unit: str = ""  # "tiles" or "cells"
    n_used: int = 0
    n_cells: int = 0
    n_mitotic: int = 0
    scale: ScaleEstimate | None = None
    factor: float = 1.0
    group: str = ""
    overlay: str = ""
    cells: list[dict[str, Any]] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.status == "ok" and self.probs is not None and self.verdict != (INSUFFICIENT,)


class FieldPredictor:
    """A :class:`~ana_lightning.predict.Predictor` applied to whole fields (see the module docstring)."""

    def __init__(
        self,
        predictor: Predictor,
        model_kind: str,
        model_diameter_px: float | None,
        combine: str = "mean_log",
        min_cells: int = 5,
        tile_overlap: float = 0.25,
        segmenter: str | Mapping[str, Any] | ClassicalSegmenter = "classical",
        crop_from: str = "nuclei",
        crop_margin: float = 0.1,
        crop_grey: bool = True,
        cell_mask: str = "none",
        crop_fraction: float | None = None,
        use_border_cells: bool = False,
        batch_size: int = 64,
    ) -> None:
        if combine not in METHODS:
            raise ValueError(f"combine={combine!r} is not one of {METHODS}")
        if model_kind == "field" and not model_diameter_px:
            raise ValueError(
                "a field model needs the nucleus diameter it was trained at (model_nucleus_diameter_px)"
            )
        self.p = predictor
        self.kind = model_kind
        self.combine = combine
        self.min_cells = int(min_cells)
        #: what :meth:`predict_field` does before the model: picklable, for worker processes (``num_workers``)
        self.cutter = FieldCutter(
            model_kind,
            model_diameter_px,
            int(predictor.info.image_size) if model_kind == "field" else 0,
            float(tile_overlap),
            build_segmenter(segmenter),  # a name (classical, cellpose) or a _target_ config
            crop_from,
            float(crop_margin),
            bool(crop_grey),
            cell_mask,
            crop_fraction,
        )
        self.use_border_cells = bool(use_border_cells)
        self.batch_size = max(1, int(batch_size))
        self.names = tuple(predictor.class_names)

    def _probs(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack([self.p.preprocess(x) for x in images[i : i + self.batch_size]])
            out.append(np.asarray(self.p.predict_proba(batch), np.float64))
        return np.concatenate(out) if out else np.zeros((0, len(self.names)))

    def _combine(self, probs: np.ndarray) -> np.ndarray:
        # the decision rule's way: multi-label outputs are not renormalised, hierarchical ones combine level by level
        return self.p.rule.combine(probs, self.combine)

    def predict_field(
        self,
        image: np.ndarray,
        scale: ScaleEstimate,
        path: str = "<field>",
        want_overlay_labels: bool = False,
    ) -> tuple[FieldResult, Any]:
        """One decoded field → its result, and (for overlays) ``(labels, label→class)``."""
        return self.read(self.cutter(image, scale, want_overlay_labels), path)

    def read(self, cut: FieldCut, path: str = "<field>") -> tuple[FieldResult, Any]:
        """A field cut by :attr:`cutter` through the model → its result, and (when the cut kept its
        segmentation, for overlays) ``(labels, label→class)``."""
        res = FieldResult(path, scale=cut.scale)
        seg = cut.seg
        if self.kind == "field":
            probs = self._probs(cut.images)
            res.unit, res.n_used, res.factor = "tiles", len(cut.images), cut.factor
            res.probs = self._combine(probs)
            res.verdict = self.p.decide(res.probs)
            if seg is not None:
                centres = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in cut.boxes])
                tile_cls = [self.names[int(np.argmax(p))] for p in probs]
                lab_cls = {}
                from scipy import ndimage as ndi

                for i, (r, c) in enumerate(
                    ndi.center_of_mass(seg.nuclei > 0, seg.nuclei, seg.labels), start=1
                ):
                    lab_cls[i] = tile_cls[int(np.argmin(np.hypot(centres[:, 0] - r, centres[:, 1] - c)))]
                res.n_cells, res.n_mitotic = seg.n, int(seg.mitotic.sum())
                return res, (seg.cells, lab_cls)
            return res, None
        crops = cut.crops
        res.unit, res.n_cells, res.n_mitotic = "cells", seg.n, int(seg.mitotic.sum())
        probs = self._probs([c.image for c in crops])
        used = np.array(
            [not c.mitotic and (self.use_border_cells or not c.touches_border) for c in crops], bool
        )
        res.n_used = int(used.sum())
        lab_cls: dict[int, str | None] = {}
        for c, p, u in zip(crops, probs, used, strict=True):
            pred = self.p.decide(p)
            lab_cls[c.label] = pred[0] if (u and pred) else None
            r0, c0, r1, c1 = c.bbox
            res.cells.append(
                {
                    "path": path,
                    "cell": c.label,
                    "row": (r0 + r1) // 2,
                    "col": (c0 + c1) // 2,
                    "area": c.area,
                    "mitotic": int(c.mitotic),
                    "border": int(c.touches_border),
                    "used": int(u),
                    "pred": ";".join(pred),
                    **{f"p_{n}": f"{float(x):.6f}" for n, x in zip(self.names, p, strict=True)},
                }
            )
        if res.n_used:
            res.probs = self._combine(probs[used])
        res.verdict = self.p.decide(res.probs) if res.n_used >= max(self.min_cells, 1) else (INSUFFICIENT,)
        return res, ((seg.cells, lab_cls) if seg.cells.size else None)


@dataclass
class FieldCut:
    """A field as a model reads it, cut without the model: tiles at the model's scale (``boxes``: where
    each lies in the field) or one crop per segmented cell, and the segmentation (cells; tiles: only
    when it was asked for, for overlays)."""

    scale: ScaleEstimate
    images: list[np.ndarray] = field(default_factory=list)
    factor: float = 1.0
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    crops: list[CellCrop] = field(default_factory=list)
    seg: Segmentation | None = None
    #: ``(crop, mask)`` of each interphase cell not cut by the border, as cut before masking or re-framing
    #: (only when asked for: ``ana-predict cells_out=``)
    cells: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


@dataclass(frozen=True)
class FieldCutter:
    """The model-free part of :meth:`FieldPredictor.predict_field` (segmentation, crops, tiles): its
    settings and nothing else, so that worker processes can cut fields while the model reads others."""

    kind: str
    model_d: float | None
    image_size: int
    tile_overlap: float
    segmenter: ClassicalSegmenter
    crop_from: str
    crop_margin: float
    crop_grey: bool
    cell_mask: str
    crop_fraction: float | None

    def __call__(
        self,
        image: np.ndarray,
        scale: ScaleEstimate,
        want_overlay_labels: bool = False,
        want_cells: bool = False,
    ) -> FieldCut:
        if self.kind == "field":
            factor = float(self.model_d) / scale.diameter_px
            ts = list(tiles(image, factor, self.image_size, self.tile_overlap))
            seg = (
                segment_field(image, scale.diameter_px, backend=self.segmenter)
                if want_overlay_labels
                else None
            )
            return FieldCut(scale, [t.image for t in ts], factor, [t.box for t in ts], seg=seg)
        seg = segment_field(image, scale.diameter_px, backend=self.segmenter)
        crops = cell_crops(
            image,
            seg,
            crop_from=self.crop_from,
            margin=self.crop_margin,
            grey=self.crop_grey,
            mask_mode=self.cell_mask,
            fraction=self.crop_fraction,
        )
        cells = []
        if want_cells:  # the same cells, cut as the model's crops are but neither masked nor re-framed
            plain = cell_crops(
                image,
                seg,
                crop_from=self.crop_from,
                margin=self.crop_margin,
                grey=self.crop_grey,
                mask_mode="none",
            )
            cells = [
                (c.image[..., 0] if self.crop_grey else c.image, c.mask)
                for c in plain
                if not c.mitotic and not c.touches_border
            ]
        # only the overlay needs the label maps (two int32 maps of the field) back from a worker
        return FieldCut(
            scale, crops=crops, seg=seg if want_overlay_labels else _counts_only(seg), cells=cells
        )


def _counts_only(seg: Segmentation) -> Segmentation:
    """``seg`` without its label maps: what a field's result needs (cells found, mitotic flags)."""
    empty = np.zeros((0, 0), np.int32)
    return replace(seg, nuclei=empty, cells=empty)
