"""Field and specimen verdicts: ``ana-predict`` on whole fields of any size and magnification.

Each field is brought to the scale the model was trained at (:mod:`~ana_lightning.fields.scale`):

- a **field model** (trained on fields with ``data.nucleus_diameter_px``) reads square tiles of its
  input size cut from the rescaled field; the tile probabilities are combined;
- a **cell model** (trained on contest-style cell crops) reads one crop per segmented interphase
  cell (:mod:`~ana_lightning.fields.segment`, :mod:`~ana_lightning.fields.crops`); mitotic cells and
  cells cut by the border are segmented and drawn but not used; the cell probabilities are combined,
  and a field with fewer than ``min_cells`` usable cells is ``insufficient cells``.

``group_by=folder`` (or a CSV of ``path,<group_column>``) combines the fields of one specimen the same
way into ``specimens.csv``: positive/negative screening and up to ``top_k`` patterns whose probability
passes the model's threshold (``pattern_min_prob`` for single-label models), with a Markdown and an
HTML report beside it.
"""

from __future__ import annotations

import csv
import html
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .combine import INSUFFICIENT, METHODS, combine_probs
from .scale import NUCLEUS_DIAMETER_UM, ScaleEstimate, resolve_scale

__all__ = [
    "training_scale",
    "field_mode",
    "FieldPredictor",
    "FieldResult",
    "run_field_predict",
    "specimen_verdicts",
    "FIELD_KEYS",
]

log = logging.getLogger(__name__)

#: ana-predict keys that switch on field mode when given (fields=auto).
FIELD_KEYS = ("nucleus_diameter_px", "pixel_size", "overlays", "group_by", "per_cell_csv")


# ---------------------------------------------------------------------------------------------- model scale
def training_scale(ckpt_path: str | Path | None) -> dict[str, Any]:
    """What a checkpoint says about the scale and input its model was trained on:
    ``{"nucleus_diameter_px": float | None, "input_kind": "field" | "cell" | None}``.

    Read from the datamodule hyperparameters Lightning stores in the checkpoint
    (``data.nucleus_diameter_px``; ``data.input_kind``, or ``data.reader`` a contest cell layout →
    ``cell``, with ``data.mask``, how its I3A cell masks were used, as ``cell_mask``), or
    from the ``ana_lightning`` metadata (exported files carry it in :attr:`ModelInfo.extra`)."""
    out: dict[str, Any] = {"nucleus_diameter_px": None, "input_kind": None, "cell_mask": "none"}
    p = Path(str(ckpt_path or ""))
    if not ckpt_path or p.suffix.lower() not in (".ckpt", ".pt", ".pth") or not p.is_file():
        return out
    try:  # never the trusting way: a checkpoint that needs it simply tells nothing here
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        return out
    if not isinstance(ckpt, dict):
        return out
    dm = dict(ckpt.get("datamodule_hyper_parameters") or {})
    meta = dict(ckpt.get("ana_lightning") or {})
    d = meta.get("nucleus_diameter_px", dm.get("nucleus_diameter_px"))
    out["nucleus_diameter_px"] = float(d) if d else None
    kind = meta.get("input_kind") or dm.get("input_kind")
    if not kind and str(dm.get("reader", "")) in ("icpr2012", "i3a2014"):  # trained on contest cell crops
        kind = "cell"
    out["input_kind"] = kind
    out["cell_mask"] = (
        str(dm.get("mask") or "none") if kind == "cell" and dm.get("reader") == "i3a2014" else "none"
    )
    return out


def field_mode(cfg, predictor) -> tuple[str, float | None, str] | None:
    """``(model kind, model nucleus diameter, cell mask mode)`` when ana-predict should read fields,
    else ``None``."""
    fields = cfg.get("fields", "auto")
    if fields is False or str(fields).lower() == "false":
        return None
    source = cfg.get("ckpt_path") or getattr(predictor, "source", "")
    stored = training_scale(source)
    extra = getattr(predictor.info, "extra", {}) or {}
    model_d = (
        cfg.get("model_nucleus_diameter_px")
        or stored["nucleus_diameter_px"]
        or extra.get("nucleus_diameter_px")
    )
    kind = cfg.get("model_kind", "auto")
    if kind in (None, "auto"):
        kind = stored["input_kind"] or extra.get("input_kind") or "field"
    if kind not in ("field", "cell"):
        raise ValueError(f"model_kind={kind!r} must be field, cell or auto")
    asked = any(cfg.get(k) not in (None, False) for k in FIELD_KEYS)
    on = fields is True or str(fields).lower() == "true" or model_d is not None or kind == "cell" or asked
    if not on:
        return None
    if kind == "field" and model_d is None:
        raise ValueError(
            f"{source} does not store the nucleus diameter it was trained at (train with "
            "data.nucleus_diameter_px=<px>), so fields cannot be brought to its scale: give "
            "model_nucleus_diameter_px=<px> (e.g. 13 for a model trained on 256-px simulator fields resized to 128), "
            "or fields=false to resize whole images as before"
        )
    mask = cfg.get("cell_mask", "auto")
    if mask in (None, "auto"):
        mask = stored["cell_mask"]
    return kind, (float(model_d) if model_d else None), str(mask)


# ---------------------------------------------------------------------------------------------- one field
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
        predictor,
        model_kind: str,
        model_diameter_px: float | None,
        combine: str = "mean_log",
        min_cells: int = 5,
        tile_overlap: float = 0.25,
        segmenter: str = "classical",
        crop_from: str = "nuclei",
        crop_margin: float = 0.1,
        crop_grey: bool = True,
        cell_mask: str = "none",
        use_border_cells: bool = False,
        batch_size: int = 64,
    ):
        if combine not in METHODS:
            raise ValueError(f"combine={combine!r} is not one of {METHODS}")
        if model_kind == "field" and not model_diameter_px:
            raise ValueError(
                "a field model needs the nucleus diameter it was trained at (model_nucleus_diameter_px)"
            )
        self.p = predictor
        self.kind = model_kind
        self.model_d = model_diameter_px
        self.combine = combine
        self.min_cells = int(min_cells)
        self.tile_overlap = float(tile_overlap)
        self.segmenter = segmenter
        self.crop_from, self.crop_margin, self.crop_grey = crop_from, float(crop_margin), bool(crop_grey)
        self.cell_mask = cell_mask
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
        if self.combine == "vote":
            votes = np.zeros(len(self.names))
            for row in probs:
                for lab in self.p.decide(row):
                    votes[self.names.index(lab)] += 1
            return votes / max(len(probs), 1)
        if (
            self.combine == "mean_log" and self.p.task == "multi_label"
        ):  # independent sigmoids: no renormalising
            return np.exp(np.log(np.clip(probs, 1e-6, 1.0)).mean(axis=0))
        return combine_probs(probs, self.combine)

    def predict_field(
        self,
        image: np.ndarray,
        scale: ScaleEstimate,
        path: str = "<field>",
        want_overlay_labels: bool = False,
    ) -> tuple[FieldResult, Any]:
        """One decoded field → its result, and (for overlays) ``(labels, label→class)``."""
        from .crops import cell_crops, tiles
        from .segment import segment_field

        res = FieldResult(path, scale=scale)
        seg = None
        if self.kind == "field":
            factor = float(self.model_d) / scale.diameter_px
            ts = list(tiles(image, factor, self.p.info.image_size, self.tile_overlap))
            probs = self._probs([t.image for t in ts])
            res.unit, res.n_used, res.factor = "tiles", len(ts), factor
            res.probs = self._combine(probs)
            res.verdict = self.p.decide(res.probs)
            if want_overlay_labels:
                seg = segment_field(image, scale.diameter_px, backend=self.segmenter)
                centres = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (t.box for t in ts)])
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
        seg = segment_field(image, scale.diameter_px, backend=self.segmenter)
        crops = cell_crops(
            image,
            seg,
            crop_from=self.crop_from,
            margin=self.crop_margin,
            grey=self.crop_grey,
            mask_mode=self.cell_mask,
        )
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
        return res, (seg.cells, lab_cls)


# ---------------------------------------------------------------------------------------------- specimens
def specimen_verdicts(
    results: Sequence[FieldResult],
    predictor,
    combine: str = "mean_log",
    top_k: int = 3,
    pattern_min_prob: float = 0.25,
    negative: str = "AC-0",
) -> list[dict[str, Any]]:
    """One row per group of fields: combined probabilities, screening and the top-k patterns."""
    names = tuple(predictor.class_names)
    thr = predictor.info.thresholds
    by: dict[str, list[FieldResult]] = defaultdict(list)
    for r in results:
        by[r.group].append(r)
    rows = []
    for g, rs in by.items():
        ok = [r for r in rs if r.usable]
        row: dict[str, Any] = {"specimen": g, "n_fields": len(rs), "n_fields_used": len(ok)}
        if not ok:
            row.update(screening=INSUFFICIENT, patterns="", verdict=INSUFFICIENT, probs=None, fields=rs)
            rows.append(row)
            continue
        P = np.stack([r.probs for r in ok])
        if combine == "vote":
            probs = np.zeros(len(names))
            for r in ok:
                for lab in r.verdict:
                    probs[names.index(lab)] += 1
            probs /= len(ok)
        elif combine == "mean_log" and predictor.task == "multi_label":
            probs = np.exp(np.log(np.clip(P, 1e-6, 1.0)).mean(axis=0))
        else:
            probs = combine_probs(P, combine)
        order = [int(i) for i in np.argsort(-probs, kind="stable")]
        cut = [thr[i] if thr is not None else pattern_min_prob for i in range(len(names))]
        pats = [names[i] for i in order if names[i] != negative and probs[i] >= cut[i]][: max(1, int(top_k))]
        top = names[order[0]]
        screening = (
            "negative" if (top == negative and not (predictor.task == "multi_label" and pats)) else "positive"
        )
        if screening == "positive" and not pats:
            pats = [next(names[i] for i in order if names[i] != negative)]
        row.update(
            screening=screening,
            patterns=";".join(pats) if screening == "positive" else "",
            verdict=top,
            probs=probs,
            fields=rs,
        )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- the job
def _groups(
    files: Sequence[Path], input_root: Path, group_by: str | None, group_column: str
) -> dict[Path, str]:
    if not group_by:
        return dict.fromkeys(files, "")
    if str(group_by) == "folder":
        out = {}
        for f in files:
            try:
                rel = f.parent.relative_to(input_root)
            except ValueError:
                rel = Path(f.parent.name)
            out[f] = rel.as_posix() if str(rel) != "." else input_root.name
        return out
    table = Path(str(group_by)).expanduser()
    if not table.is_file():
        raise FileNotFoundError(
            f"group_by={group_by}: expected 'folder' or a CSV file with columns path,{group_column}"
        )
    with open(table, newline="") as fh:
        rd = csv.DictReader(fh)
        if not rd.fieldnames or "path" not in rd.fieldnames or group_column not in rd.fieldnames:
            raise ValueError(
                f"{table}: needs columns 'path' and '{group_column}' (group_column=…); has {rd.fieldnames}"
            )
        m = {r["path"].strip(): r[group_column].strip() for r in rd}
    out = {}
    for f in files:
        rel = f.relative_to(input_root).as_posix() if input_root.is_dir() else f.name
        g = m.get(rel, m.get(f.name, m.get(str(f))))
        if g is None:
            raise ValueError(f"{table}: no row for {rel} (rows give paths relative to input=, or file names)")
        out[f] = g
    return out


def _scales(files: Sequence[Path], groups: dict[Path, str], cfg) -> dict[Path, ScaleEstimate | str]:
    """Every field's scale; an unreliable estimate is replaced by the median of the reliable ones of
    the same group, else of the whole input."""
    from ..data.images import BadImageError, load_image

    out: dict[Path, ScaleEstimate | str] = {}
    failed: dict[Path, str] = {}
    for f in files:
        try:
            out[f] = resolve_scale(
                load_image(f),
                cfg.get("nucleus_diameter_px"),
                cfg.get("pixel_size"),
                cfg.get("nucleus_diameter_um") or NUCLEUS_DIAMETER_UM,
            )
        except BadImageError as e:
            out[f] = e.reason
        except ValueError as e:
            failed[f] = str(e)
            out[f] = ScaleEstimate(float("nan"), "estimated", reliable=False)
    good = {f: s for f, s in out.items() if isinstance(s, ScaleEstimate) and s.reliable}
    everyone = [s.diameter_px for s in good.values()]
    for f, s in list(out.items()):
        if isinstance(s, ScaleEstimate) and not s.reliable:
            same = [g.diameter_px for h, g in good.items() if groups[h] == groups[f]]
            pool = same or everyone
            if pool:
                out[f] = ScaleEstimate(
                    float(np.median(pool)),
                    "median of reliable estimates" + (" in group" if same else ""),
                    s.channel,
                    s.n_objects,
                    s.polarity,
                    False,
                )
            elif not math.isfinite(s.diameter_px):
                out[f] = (
                    f"no nucleus scale: {failed.get(f, 'no reliable estimate')}; give nucleus_diameter_px or pixel_size"
                )
    return out


def field_columns(names: Sequence[str]) -> list[str]:
    return [
        "path",
        "group",
        "status",
        "error",
        "verdict",
        "confidence",
        "level1",
        "level2",
        "unit",
        "n_used",
        "n_cells",
        "n_mitotic",
        "nucleus_diameter_px",
        "scale_source",
        "scale_channel",
        "scale_reliable",
        "rescale_factor",
        "overlay",
        *[f"p_{c}" for c in names],
    ]


def run_field_predict(
    cfg, predictor, files: Sequence[Path], run_dir: Path, mode: tuple[str, float | None, str]
):
    """The field part of ``ana-predict`` (see the module docstring). Returns a ``PredictSummary``."""
    from ..data.images import BadImageError, load_image
    from ..predict import PredictSummary, _output_paths
    from .overlay import class_colours, draw_overlay, save_png

    kind, model_d, _ = mode
    fp = FieldPredictor(
        predictor,
        kind,
        model_d,
        combine=cfg.get("combine", "mean_log"),
        min_cells=cfg.get("min_cells", 5),
        tile_overlap=cfg.get("tile_overlap", 0.25),
        segmenter=cfg.get("segmenter", "classical"),
        crop_from=cfg.get("crop_from", "nuclei"),
        crop_margin=cfg.get("crop_margin", 0.1),
        crop_grey=cfg.get("crop_grey", True),
        cell_mask=mode[2],
        use_border_cells=cfg.get("use_border_cells", False),
        batch_size=cfg.get("batch_size", 64),
    )
    csv_path, _ = _output_paths(cfg.get("output"), run_dir)
    out_dir = csv_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    input_root = Path(cfg.input).expanduser()
    groups = _groups(files, input_root, cfg.get("group_by"), cfg.get("group_column", "specimen"))
    log.info(
        "field mode: %s model%s, combine=%s; estimating the scale of %d field(s)",
        kind,
        f" trained at nucleus diameter {model_d:g} px" if model_d else "",
        fp.combine,
        len(files),
    )
    scales = _scales(files, groups, cfg)
    names = fp.names
    colours = class_colours(names)
    overlays = bool(cfg.get("overlays", False))
    results: list[FieldResult] = []
    cells_f = open(out_dir / "cells.csv", "w", newline="") if cfg.get("per_cell_csv") else None  # noqa: SIM115
    cells_w = None
    try:
        with open(csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=field_columns(names))
            w.writeheader()
            for f in files:
                s = scales[f]
                res = FieldResult(str(f), group=groups[f])
                try:
                    if isinstance(s, str):
                        raise BadImageError(f, s)
                    image = load_image(f)
                    res, lab = fp.predict_field(image, s, str(f), want_overlay_labels=overlays)
                    res.group = groups[f]
                    if overlays and lab is not None:
                        title = f"{Path(f).name}: {';'.join(res.verdict)} ({res.n_used} {res.unit}, d={s.diameter_px:.0f}px)"
                        pic = draw_overlay(image, lab[0], lab[1], colours, title=title)
                        rel = Path(f).relative_to(input_root) if input_root.is_dir() else Path(Path(f).name)
                        res.overlay = str(save_png(out_dir / "overlays" / rel.with_suffix(".png"), pic))
                except BadImageError as e:
                    res.status, res.error = "error", e.reason
                results.append(res)
                w.writerow(_field_row(res, predictor))
                if cells_f is not None and res.cells:
                    if cells_w is None:
                        cells_w = csv.DictWriter(cells_f, fieldnames=list(res.cells[0]))
                        cells_w.writeheader()
                    cells_w.writerows(res.cells)
    finally:
        if cells_f is not None:
            cells_f.close()
    n_failed = sum(r.status != "ok" for r in results)
    if cfg.get("group_by"):
        rows = specimen_verdicts(
            results, predictor, fp.combine, cfg.get("top_k", 3), cfg.get("pattern_min_prob", 0.25)
        )
        write_specimens(rows, names, out_dir)
    log.info("%d/%d field(s) predicted → %s", len(results) - n_failed, len(results), csv_path)
    return PredictSummary(len(results), n_failed, csv_path, None)


def _field_row(r: FieldResult, predictor) -> dict[str, str]:
    names = predictor.class_names
    row = dict.fromkeys(field_columns(names), "")
    row.update(path=r.path, group=r.group, status=r.status, error=r.error)
    if r.scale is not None:
        row.update(
            nucleus_diameter_px=f"{r.scale.diameter_px:.2f}",
            scale_source=r.scale.source,
            scale_channel=r.scale.channel,
            scale_reliable=str(int(r.scale.reliable)),
        )
    if r.status != "ok":
        return row
    row.update(
        verdict=";".join(r.verdict),
        unit=r.unit,
        n_used=str(r.n_used),
        n_cells=str(r.n_cells),
        n_mitotic=str(r.n_mitotic),
        rescale_factor=f"{r.factor:.4f}" if r.unit == "tiles" else "",
        overlay=r.overlay,
    )
    if r.probs is not None:
        row.update({f"p_{c}": f"{float(x):.6f}" for c, x in zip(names, r.probs, strict=True)})
        if r.verdict and r.verdict[0] in names:
            row["confidence"] = ";".join(f"{float(r.probs[names.index(v)]):.6f}" for v in r.verdict)
            lv = [predictor.hierarchy(v) for v in r.verdict]
            row["level1"], row["level2"] = ";".join(x[0] for x in lv), ";".join(x[1] for x in lv)
    return row


def write_specimens(rows: Sequence[dict[str, Any]], names: Sequence[str], out_dir: Path) -> Path:
    """``specimens.csv`` and the report (``specimens.md``, ``specimens.html``, ``thumbnails/``)."""
    import cv2

    from ..data.images import load_image

    out_dir = Path(out_dir)
    with open(out_dir / "specimens.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "specimen",
                "screening",
                "patterns",
                "top1",
                "n_fields",
                "n_fields_used",
                *[f"p_{c}" for c in names],
            ]
        )
        for r in rows:
            p = r["probs"]
            w.writerow(
                [
                    r["specimen"],
                    r["screening"],
                    r["patterns"],
                    r["verdict"],
                    r["n_fields"],
                    r["n_fields_used"],
                    *([f"{float(x):.6f}" for x in p] if p is not None else [""] * len(names)),
                ]
            )
    thumbs = out_dir / "thumbnails"
    md = ["# Specimen report", "", "| specimen | screening | patterns | fields used |", "|---|---|---|---|"]
    md += [
        f"| {r['specimen']} | {r['screening']} | {r['patterns']} | {r['n_fields_used']}/{r['n_fields']} |"
        for r in rows
    ]
    ht = [
        "<!doctype html><meta charset='utf-8'><title>Specimen report</title>",
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:3px}table{border-collapse:collapse}"
        "img{max-width:260px}</style><h1>Specimen report</h1>",
    ]
    for k, r in enumerate(rows):
        md += [
            "",
            f"## {r['specimen']}",
            "",
            f"**Screening:** {r['screening']} · **patterns:** {r['patterns'] or '—'} · "
            f"fields used: {r['n_fields_used']}/{r['n_fields']}",
            "",
        ]
        ht.append(
            f"<h2>{html.escape(r['specimen'])}</h2><p><b>Screening:</b> {html.escape(r['screening'])} · "
            f"<b>patterns:</b> {html.escape(r['patterns'] or '—')} · fields used {r['n_fields_used']}/{r['n_fields']}</p>"
        )
        if r["probs"] is not None:
            order = np.argsort(-r["probs"], kind="stable")[:5]
            md += [
                "| class | probability |",
                "|---|---|",
                *[f"| {names[i]} | {r['probs'][i]:.3f} |" for i in order],
                "",
            ]
            ht.append(
                "<table><tr><th>class</th><th>probability</th></tr>"
                + "".join(
                    f"<tr><td>{html.escape(names[i])}</td><td>{r['probs'][i]:.3f}</td></tr>" for i in order
                )
                + "</table>"
            )
        md += ["| field | verdict | used | thumbnail | overlay |", "|---|---|---|---|---|"]
        ht.append(
            "<table><tr><th>field</th><th>verdict</th><th>used</th><th>thumbnail</th><th>overlay</th></tr>"
        )
        for j, f in enumerate(r["fields"]):
            tn = ""
            try:
                img = load_image(f.path)
                h, w_ = img.shape[:2]
                sc = 160 / max(h, w_)
                t = cv2.resize(img, (max(1, int(w_ * sc)), max(1, int(h * sc))), interpolation=cv2.INTER_AREA)
                thumbs.mkdir(parents=True, exist_ok=True)
                tp = thumbs / f"{k:03d}_{j:03d}.png"
                cv2.imwrite(str(tp), cv2.cvtColor(t, cv2.COLOR_RGB2BGR))
                tn = tp.relative_to(out_dir).as_posix()
            except Exception:  # noqa: BLE001 - a thumbnail is optional: an unreadable field is already in its row
                pass
            ov = Path(f.overlay).relative_to(out_dir).as_posix() if f.overlay else ""
            verdict = ";".join(f.verdict) if f.status == "ok" else f"error: {f.error}"
            used = f"{f.n_used} {f.unit}"
            md.append(
                f"| {Path(f.path).name} | {verdict} | {used} | {'![](' + tn + ')' if tn else ''} | "
                f"{'![](' + ov + ')' if ov else ''} |"
            )
            ht.append(
                f"<tr><td>{html.escape(Path(f.path).name)}</td><td>{html.escape(verdict)}</td><td>{used}</td>"
                f"<td>{'<img src=' + chr(39) + tn + chr(39) + '>' if tn else ''}</td>"
                f"<td>{'<img src=' + chr(39) + ov + chr(39) + '>' if ov else ''}</td></tr>"
            )
        ht.append("</table>")
    (out_dir / "specimens.md").write_text("\n".join(md) + "\n")
    (out_dir / "specimens.html").write_text("\n".join(ht) + "\n")
    return out_dir / "specimens.csv"
