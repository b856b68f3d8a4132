"""``ana-app``: a local Gradio page to try a model on field images.

Upload an image → a bar chart of every pattern's probability, the predicted pattern(s) with their
ICAP hierarchy path (level 1 › level 2 › code) and, for multi-label models, a threshold slider.
Upload several fields of one specimen at once → each field's verdict and the specimen's, from the
fields' probabilities combined as ``ana-predict group_by=…`` combines them (:func:`analyse_many`).

Safety: the page listens on localhost unless told otherwise, never creates a public share link,
refuses uploads over ``max_file_size``, and reads the upload's *bytes* with the project's image
reader (decompression-bomb limit included): no file name or path typed by a user reaches the file
system. Uploaded files in Gradio's cache are deleted after an hour.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .data.images import IMAGE_EXTENSIONS, BadImageError, decode_image, exposure_problem
from .export import DISCLAIMER, INTENDED_USE
from .fields.combine import INSUFFICIENT
from .fields.specimens import NO_NEGATIVE_CLASS, screens_negatives
from .predict import Predictor

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["build_app", "analyse", "analyse_many", "parse_size", "MAX_FIELDS"]

log = logging.getLogger(__name__)

PREVIEW_PX = 512  # longest side of the preview shown on the page
MAX_FIELDS = 24  # default: fields of one specimen per upload (each is segmented and classified on the CPU)


def parse_size(size: str | int) -> int:
    """``"25mb"`` → bytes (kb, mb, gb are powers of 1024; a plain number is bytes).

    >>> parse_size("25mb")
    26214400
    """
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?b?)\s*", str(size).lower())
    if not m:
        raise ValueError(f"max_file_size={size!r}: expected a size such as 25mb, 500kb or 1gb")
    unit = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}[
        m.group(2)
    ]
    return int(float(m.group(1)) * unit)


def _preview(image: np.ndarray) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    scale = PREVIEW_PX / max(h, w)
    return (
        cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        if scale < 1
        else image
    )


def _default_threshold(predictor: Predictor) -> float:
    thr = predictor.info.thresholds
    return float(np.median(thr)) if thr else 0.5


def calibration_note(predictor: Predictor) -> str:
    """One line saying whether the probabilities shown are calibrated, and how."""
    t = predictor.temperature
    if isinstance(t, dict):  # a pipeline: one temperature (list) per member model
        fitted = {k: v for k, v in t.items() if v}
        if not fitted:
            return "Probabilities are **not calibrated** (no model of this pipeline stores a temperature)."
        part = ", ".join(f"{k} T = {_t_text(v)}" for k, v in fitted.items())
        missing = f"; not calibrated: {', '.join(k for k in t if not t[k])}" if len(fitted) < len(t) else ""
        return f"Probabilities **calibrated** on each model's validation split (temperature scaling: {part}{missing})."
    if not t:
        return (
            "Probabilities are **not calibrated** (the run had calibrate=false, or predates calibration): "
            "they may be over- or under-confident."
        )
    return f"Probabilities **calibrated** on the validation split (temperature scaling, T = {_t_text(t)})."


def _t_text(t) -> str:
    t = [float(v) for v in (t if isinstance(t, list | tuple) else [t])]
    if len(t) == 1:
        return f"{t[0]:.2f}"
    if len(t) <= 3:
        return " / ".join(f"{v:.2f}" for v in t) + " per level"
    return f"{min(t):.2f}–{max(t):.2f} per class"


def _result_markdown(predictor: Predictor, probs: np.ndarray, labels: tuple[str, ...]) -> str:
    if not labels:
        return (
            "### No pattern reaches the threshold\nNo class is predicted for this image (negative, or a pattern the "
            f"model does not know).\n\n{calibration_note(predictor)}"
        )
    lines = ["### Predicted pattern" + ("s" if len(labels) > 1 else "")]
    for c in labels:
        path = predictor.path(probs, c)
        trail = " › ".join(f"{n} (p = {q:.3f})" if q is not None else n for n, q in path if n)
        if predictor.task == "hierarchical":
            lines.append(f"- **{predictor.display_name(c)}** — {trail}")
        else:
            lines.append(
                f"- **{predictor.display_name(c)}** (p = {predictor.rule.confidence(probs, c):.3f}) — {trail}"
            )
    if predictor.task == "hierarchical":
        lines.append(
            "\nEach level's probability is that of the path down to it: P(level 1), P(level 1)·P(level 2 | level 1), "
            "P(level 1)·P(level 2 | level 1)·P(leaf | level 2)."
        )
    lines.append("\n" + calibration_note(predictor))
    if not screens_negatives(predictor.class_names):
        lines.append(f"\n**Not a screen for negatives:** {NO_NEGATIVE_CLASS}.")
    return "\n".join(lines)


def _chart(predictor: Predictor, probs: np.ndarray, labels: tuple[str, ...]):
    import pandas as pd

    bars = predictor.rule.chart(np.asarray(probs))
    return pd.DataFrame(
        {
            "pattern": [n for n, _ in bars],
            "probability": [p for _, p in bars],
            "decision": ["predicted" if n in labels else "not predicted" for n, _ in bars],
        }
    )


def field_predictor(cfg, predictor: Predictor):
    """A :class:`~ana_lightning.fields.verdicts.FieldPredictor` when ``predictor`` is a cell model (or a
    field model whose training scale is known, or ``fields=true``): the app then segments an uploaded
    field, classifies its cells (or tiles at the model's scale) and shows the overlay. ``None`` otherwise."""
    from .fields.verdicts import FieldPredictor, field_mode

    mode = field_mode(cfg, predictor)
    if mode is None:
        return None
    kind, model_d, mask, crop_fraction = mode
    return FieldPredictor(
        predictor,
        kind,
        model_d,
        combine=cfg.get("combine", "mean_log"),
        min_cells=cfg.get("min_cells", 5),
        cell_mask=mask,
        crop_fraction=crop_fraction,
    )


def _analyse_field(fp, image: np.ndarray, threshold: float | None):
    """A field through ``fp``: ``(overlay picture, probabilities or None, labels, note)``."""
    from .fields.overlay import class_colours, draw_overlay
    from .fields.scale import estimate_nucleus_diameter

    scale = estimate_nucleus_diameter(image)
    res, lab = fp.predict_field(image, scale, "upload", want_overlay_labels=True)
    verdict = res.verdict
    if res.probs is not None and verdict != (INSUFFICIENT,) and threshold is not None:
        verdict = fp.p.decide(res.probs, threshold)
    title = f"{';'.join(verdict)} ({res.n_used} {res.unit}, nucleus d={scale.diameter_px:.0f}px)"
    pic = (
        draw_overlay(image, lab[0], lab[1], class_colours(fp.names), title=title)
        if lab is not None
        else image
    )
    note = (
        f"Field read as **{res.n_used} {res.unit}** ({res.n_cells} cells segmented, {res.n_mitotic} mitotic, "
        f"nucleus diameter {scale.diameter_px:.0f} px{'' if scale.reliable else ', unreliable estimate'}); "
        "the picture shows every cell's contour coloured by its predicted class."
    )
    return pic, res.probs, verdict, note


class _Upload(NamedTuple):
    """One upload read by the model: what :func:`analyse` renders and :func:`analyse_many` tabulates."""

    picture: np.ndarray | None  # the preview (a field's cell overlay), None when the file could not be read
    probs: np.ndarray | None  # None: no verdict
    labels: tuple[str, ...]
    heading: str  # no verdict: why, as a heading ("Could not read this file", "insufficient cells", …)
    note: str  # no verdict: the reason; a field: how it was read (cells, nucleus size)


def _read_upload(
    predictor: Predictor, data: bytes, threshold: float | None, max_bytes: int | None, field
) -> _Upload:
    try:
        if max_bytes is not None and len(data) > max_bytes:
            raise BadImageError(
                "upload", f"{len(data) / 2**20:.1f} MiB is over the limit of {max_bytes / 2**20:.0f} MiB"
            )
        image = decode_image(data, "upload")
    except BadImageError as e:
        return _Upload(None, None, (), "Could not read this file", e.reason)
    exposure = exposure_problem(image)  # read anyway; the note says why the verdict may be off
    if field is not None:
        try:
            pic, probs, labels, note = _analyse_field(field, image, threshold)
        except ValueError as e:  # no nucleus-like object: a blank or saturated image
            return _Upload(_preview(image), None, (), "Could not read this field", _join(str(e), exposure))
        # too few usable cells: no verdict (and left out of a specimen)
        if probs is None or INSUFFICIENT in labels:
            return _Upload(_preview(pic), None, tuple(labels), "; ".join(labels), _join(note, exposure))
        return _Upload(_preview(pic), probs, tuple(labels), "", _join(note, exposure))
    pred = predictor.predict_image(image, "upload")
    labels = predictor.decide(pred.probabilities, threshold) if threshold is not None else pred.labels
    return _Upload(_preview(image), pred.probabilities, tuple(labels), "", _join("", exposure))


def _join(note: str, exposure: str) -> str:
    """A field's note with the exposure warning, if any, after it."""
    warning = f"**Warning: {exposure}.**" if exposure else ""
    return " ".join(x for x in (note, warning) if x)


def analyse(
    predictor: Predictor,
    data: bytes | None,
    threshold: float | None = None,
    max_bytes: int | None = None,
    field=None,
) -> tuple[np.ndarray | None, str, Any, np.ndarray | None]:
    """One upload → ``(preview, result Markdown, chart data, probabilities)``; a bad file gives a message.
    With ``field`` (see :func:`field_predictor`) the preview is the field's cell overlay."""
    if data is None:
        return None, "", None, None
    u = _read_upload(predictor, data, threshold, max_bytes, field)
    if u.probs is None:
        return u.picture, f"### {u.heading}\n{u.note}", None, None
    md = _result_markdown(predictor, u.probs, u.labels) + (f"\n\n{u.note}" if u.note else "")
    return u.picture, md, _chart(predictor, u.probs, u.labels), u.probs


def _many_markdown(predictor: Predictor, state: dict[str, Any], threshold: float | None) -> tuple[str, Any]:
    """The specimen's verdict and a table of its fields' (``state`` from :func:`analyse_many`)."""
    decide = (lambda p: predictor.decide(p, threshold)) if threshold is not None else predictor.decide
    rows = ["| field | verdict | p | read as |", "|---|---|---|---|"]
    for name, probs, note in state["fields"]:
        if probs is None:
            rows.append(f"| {name} | no verdict | – | {note} |")
            continue
        labels = decide(probs)
        shown = ", ".join(predictor.display_name(c) for c in labels) or "none reaches the threshold"
        conf = max((predictor.rule.confidence(probs, c) for c in labels), default=float(np.max(probs)))
        rows.append(f"| {name} | {shown} | {conf:.3f} | {note} |")
    n_used = sum(p is not None for _, p, _ in state["fields"])
    head = (
        f"## Specimen: {n_used} of {len(state['fields'])} fields combined ({state['combine']})\n"
        "The fields are read as the fields of one specimen: each field's probabilities, then the specimen's "
        "from them (as `ana-predict group_by=` does).\n\n"
    )
    if state["probs"] is None:
        return head + "### No field could be read\n\n" + "\n".join(rows), None
    probs = state["probs"]
    labels = decide(probs)
    return (
        head + _result_markdown(predictor, probs, labels) + "\n\n#### Each field\n" + "\n".join(rows),
        _chart(predictor, probs, labels),
    )


def analyse_many(
    predictor: Predictor,
    uploads: list[bytes] | None,
    threshold: float | None = None,
    max_bytes: int | None = None,
    field=None,
    combine: str | None = None,
    max_fields: int = MAX_FIELDS,
) -> tuple[list[tuple[np.ndarray, str]], str, Any, dict[str, Any] | None]:
    """Several uploads, the fields of one specimen → ``(gallery of (picture, caption), result Markdown,
    chart data, state)``. One upload reads as :func:`analyse`; a file that cannot be read is a row of the
    table, not an error. ``state`` holds each field's probabilities and the specimen's, so the threshold
    slider re-decides without running the model again."""
    uploads = [u for u in (uploads or []) if u is not None]
    if not uploads:
        return [], "", None, None
    if len(uploads) > max_fields:
        return (
            [],
            f"### Too many files\n{len(uploads)} files were uploaded; up to {max_fields} fields of one "
            "specimen are read at once (use `ana-predict input=<folder> group_by=folder` for more).",
            None,
            None,
        )
    combine = combine or getattr(field, "combine", None) or "mean_log"
    if len(uploads) == 1:
        pic, md, chart, probs = analyse(predictor, uploads[0], threshold, max_bytes, field)
        state = None if probs is None else {"probs": probs, "fields": None, "combine": combine}
        return ([(pic, "Field 1")] if pic is not None else []), md, chart, state
    gallery, fields = [], []
    for i, data in enumerate(uploads, start=1):
        name = f"Field {i}"
        u = _read_upload(predictor, data, None, max_bytes, field)
        pic, probs = u.picture, u.probs
        # the table's "read as": why there is no verdict, or how a field was read ("Field read as **N cells** (…)")
        note = u.note if probs is None else u.note.split(";")[0]
        fields.append((name, probs, note.replace("|", "/")))
        if pic is not None:
            verdict = (
                ", ".join(predictor.display_name(c) for c in predictor.decide(probs)) or "no pattern"
                if probs is not None
                else "no verdict"
            )
            gallery.append((pic, f"{name}: {verdict}"))
    used = [p for _, p, _ in fields if p is not None]
    combined = predictor.rule.combine(np.stack(used), combine) if used else None  # as ana-predict group_by=
    state = {"probs": combined, "fields": fields, "combine": combine}
    md, chart = _many_markdown(predictor, state, threshold)
    return gallery, md, chart, state


def build_app(
    predictor: Predictor,
    max_file_size: str | int = "25mb",
    field=None,
    combine: str = "mean_log",
    max_fields: int = MAX_FIELDS,
) -> gr.Blocks:
    """The Gradio Blocks page for ``predictor`` (not launched); ``field``: see :func:`field_predictor`;
    ``combine``: how several uploaded fields make the specimen's verdict, ``max_fields`` how many one upload
    may hold (:func:`analyse_many`)."""
    if int(max_fields) < 1:
        raise ValueError(f"max_fields={max_fields!r}: at least 1 field per upload")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("ana-app needs gradio: pip install 'ana-lightning[app]'") from None

    max_bytes = parse_size(max_file_size)
    multi = predictor.task == "multi_label"
    k = len(predictor.class_names)
    names = [
        n for n, _ in predictor.rule.chart(np.full(k, 1.0 / k))
    ]  # the bars (hierarchical: one per path of the tree)
    default_thr = _default_threshold(predictor)
    thr = predictor.info.thresholds
    per_class = bool(thr) and len(set(thr)) > 1

    # Uploads older than an hour are deleted from Gradio's cache (checked every 10 minutes).
    with gr.Blocks(
        title="ana-lightning: ANA pattern", analytics_enabled=False, delete_cache=(600, 3600)
    ) as demo:
        gr.Markdown(
            f"# ANA pattern of a HEp-2 field\n"
            f"Model: `{Path(predictor.source).name}` ({predictor.task}, {len(predictor.class_names)} outputs, "
            f"{predictor.backend_name}). Upload one immunofluorescence field image (up to {max_bytes / 2**20:.0f} MiB "
            f"each), or up to {max_fields} fields of one specimen at once for the specimen's verdict.\n\n"
            f"**Intended use:** {INTENDED_USE}\n\n{calibration_note(predictor)}\n\n> {DISCLAIMER}"
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Field image(s): one, or several fields of one specimen",
                    file_types=sorted(IMAGE_EXTENSIONS),
                    file_count="multiple",
                    type="binary",
                    elem_id="upload",
                )
                preview = gr.Gallery(
                    label="The images as read", interactive=False, elem_id="preview", height=320, columns=3
                )
                threshold = gr.Slider(
                    0.0,
                    1.0,
                    value=default_thr,
                    step=0.01,
                    visible=multi,
                    elem_id="threshold",
                    label="Decision threshold",
                    info=(
                        "The model's per-class thresholds apply until you move the slider; then one threshold for all."
                        if per_class
                        else f"The model's own threshold is {default_thr:.2f}."
                    ),
                )
            with gr.Column(scale=2):
                result = gr.Markdown(elem_id="prediction")
                chart = gr.BarPlot(
                    x="pattern",
                    y="probability",
                    color="decision",
                    sort=names,
                    y_lim=[0, 1],
                    color_map={"predicted": "#d62728", "not predicted": "#1f77b4"},
                    title=(
                        "Probability of every path of the tree"
                        if predictor.task == "hierarchical"
                        else "Probability of every pattern"
                    ),
                    x_label_angle=-60,
                    elem_id="probabilities",
                )
        upload_state = gr.State(None)
        moved = gr.State(False)

        def on_upload(data, thr_value, slider_moved):
            t = thr_value if (multi and slider_moved) else None
            return analyse_many(predictor, data, t, max_bytes, field, combine, int(max_fields))

        def on_threshold(state, thr_value):
            if state is None:
                return gr.skip(), gr.skip(), True
            if state["fields"] is not None:  # several fields: the specimen and each field re-decided
                md, chart = _many_markdown(predictor, state, thr_value)
                return md, chart, True
            probs = state["probs"]
            labels = predictor.decide(probs, thr_value)
            return _result_markdown(predictor, probs, labels), _chart(predictor, probs, labels), True

        upload.change(on_upload, [upload, threshold, moved], [preview, result, chart, upload_state])
        # Every move re-decides from the stored probabilities (no model run): cheap, so follow the drag.
        threshold.input(
            on_threshold,
            [upload_state, threshold],
            [result, chart, moved],
            trigger_mode="always_last",
            show_progress="hidden",
        )
    return demo


def warn_if_exposed(server_name: str, server_port: int) -> bool:
    """A loud WARNING when the page is served beyond this computer (it has no authentication)."""
    import ipaddress

    try:
        local = ipaddress.ip_address(server_name).is_loopback
    except ValueError:
        local = server_name == "localhost"
    if not local:
        log.warning(
            "WARNING: server_name=%s exposes the app on %s:%d to %s, with NO authentication: anyone who can "
            "reach this computer can upload images and run the model. Use server_name=127.0.0.1 unless you mean it.",
            server_name,
            "every network interface" if server_name in ("0.0.0.0", "::") else server_name,
            server_port,
            "every network this computer is on" if server_name in ("0.0.0.0", "::") else "that network",
        )
    return not local


def __getattr__(name: str) -> Any:
    """The ana-app job moved to :mod:`ana_lightning.jobs.app` (this old import path still works)."""
    if name in ("run_app",):
        import importlib

        return getattr(importlib.import_module("ana_lightning.jobs.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
