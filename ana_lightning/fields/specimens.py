"""Specimen verdicts: the fields of one specimen combined (:func:`specimen_verdicts`) and written as
``specimens.csv`` with a Markdown and an HTML report (:func:`write_specimens`)."""

from __future__ import annotations

import csv
import html
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .combine import INSUFFICIENT
from .predictor import FieldResult, Predictor

log = logging.getLogger(__name__)

__all__ = [
    "specimen_verdicts",
    "flat_patterns",
    "write_specimens",
    "screens_negatives",
    "NOT_SCREENED",
    "NO_NEGATIVE_CLASS",
]

#: ``specimens.csv``'s screening for a model without a negative class: it cannot say negative, so it does not
#: say positive either (before round 17 it wrote "positive" for every such specimen).
NOT_SCREENED = "not screened"
#: What the report, ana-predict, ana-app and the model card say about such a model.
NO_NEGATIVE_CLASS = (
    "this model has no negative class (AC-0): it names one of its patterns for every field or cell, negative "
    "specimens included (4 of the 5 ICAP negative reference fields got a pattern from the I3A cell model), so it "
    "does not screen for positivity; screen first (titer, or a model trained with AC-0)"
)


def negative_names(negative: str = "AC-0") -> set[str]:
    """The negative code and its nodes in the packaged ICAP tree (``negative`` at levels 1 and 2): what a
    flat model's class or a hierarchical model's routed path says for a negative specimen."""
    from ..taxonomy import Taxonomy

    tree = Taxonomy.load()
    if negative not in tree.codes:
        return {negative}
    return {negative, tree.level_of(negative, 1), tree.level_of(negative, 2)}


def screens_negatives(names: Sequence[str], negative: str = "AC-0") -> bool:
    """Whether a model with these output names (a hierarchical model's: its nodes and leaves) can say a
    specimen is negative."""
    return bool(negative_names(negative) & set(names))


def specimen_verdicts(
    results: Sequence[FieldResult],
    predictor: Predictor,
    combine: str = "mean_log",
    top_k: int = 3,
    pattern_min_prob: float = 0.25,
    negative: str = "AC-0",
) -> list[dict[str, Any]]:
    """One row per group of fields: combined probabilities, screening and the top-k patterns."""
    names = tuple(predictor.class_names)
    negs = negative_names(negative)
    screens = bool(negs & set(names))  # a model without the negative class cannot screen (NOT_SCREENED)
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
        probs = predictor.rule.combine(np.stack([r.probs for r in ok]), combine)
        # a hierarchical model's outputs are its levels side by side: the verdict is the routed path
        if predictor.task == "hierarchical":
            top, pats = _hierarchical_patterns(predictor, probs, top_k, pattern_min_prob, negs)
            screening = "negative" if top in negs else "positive"
        else:
            top, pats, screening = flat_patterns(
                probs, names, thr, top_k, pattern_min_prob, negs, predictor.task == "multi_label"
            )
        if not screens:  # its patterns are written, "not screened"
            screening = NOT_SCREENED
        row.update(
            screening=screening,
            patterns=";".join(pats) if screening != "negative" else "",
            verdict=top,
            probs=probs,
            fields=rs,
        )
        rows.append(row)
    return rows


def flat_patterns(
    probs: np.ndarray,
    names: Sequence[str],
    thresholds: Sequence[float] | None = None,
    top_k: int = 3,
    min_prob: float = 0.25,
    negs: set[str] | frozenset[str] = frozenset(),
    multi_label: bool = False,
) -> tuple[str, list[str], str]:
    """A flat model's specimen verdict from its combined probabilities: the leading class, the patterns
    listed (non-negative classes at or above their threshold, else ``min_prob``, most probable first, at
    most ``top_k``; the most probable pattern when none reaches it) and the screening (``negative`` when a
    negative class leads, unless a multi-label model also lists a pattern).

    >>> flat_patterns(np.array([0.5, 0.3, 0.2]), ["Speckled", "Centromere", "Golgi"])
    ('Speckled', ['Speckled', 'Centromere'], 'positive')
    """
    order = [int(i) for i in np.argsort(-probs, kind="stable")]
    cut = [thresholds[i] if thresholds is not None else min_prob for i in range(len(names))]
    pats = [names[i] for i in order if names[i] not in negs and probs[i] >= cut[i]][: max(1, int(top_k))]
    top = names[order[0]]
    screening = "negative" if (top in negs and not (multi_label and pats)) else "positive"
    if screening == "positive" and not pats:
        pats = [next(names[i] for i in order if names[i] not in negs)]
    return top, pats, screening


def _hierarchical_patterns(
    predictor: Predictor, probs: np.ndarray, top_k: int, min_prob: float, negs: set[str]
) -> tuple[str, list[str]]:
    """A hierarchical model's specimen verdict (the routed leaf, or level-2 node) and its patterns: the
    verdict first, then the next most probable paths of the tree reaching ``min_prob``."""
    top = predictor.decide(probs)[0]
    paths = [n for n, p in predictor.rule.top_k(probs, max(1, int(top_k)) + 1) if p >= min_prob]
    pats = ([top] if top not in negs else []) + [n for n in paths if n != top and n not in negs]
    return top, pats[: max(1, int(top_k))]


def write_specimens(
    rows: Sequence[dict[str, Any]],
    names: Sequence[str],
    out_dir: Path,
    unit: str = "field",
    max_listed: int | None = None,
) -> Path:
    """``specimens.csv`` and the report (``specimens.md``, ``specimens.html``, ``thumbnails/``).

    ``unit``: what a specimen's images are, ``field`` or ``cell`` (cut cells: the columns are then
    ``n_cells``/``n_cells_used``); ``max_listed``: at most this many images listed per specimen
    (with thumbnails) in the report, the rest counted."""
    u = f"{unit}s"
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
                f"n_{u}",
                f"n_{u}_used",
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
    md = ["# Specimen report", "", f"| specimen | screening | patterns | {u} used |", "|---|---|---|---|"]
    md += [
        f"| {r['specimen']} | {r['screening']} | {r['patterns']} | {r['n_fields_used']}/{r['n_fields']} |"
        for r in rows
    ]
    screens = screens_negatives(names)
    if not screens:
        md += ["", f"**Screening: {NOT_SCREENED}** — {NO_NEGATIVE_CLASS}."]
        log.warning("specimens.csv: screening is %r for every specimen: %s", NOT_SCREENED, NO_NEGATIVE_CLASS)
    ht = [
        "<!doctype html><meta charset='utf-8'><title>Specimen report</title>",
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:3px}table{border-collapse:collapse}"
        "img{max-width:260px}</style><h1>Specimen report</h1>",
    ]
    if not screens:
        ht.append(f"<p><b>Screening: {NOT_SCREENED}</b> — {html.escape(NO_NEGATIVE_CLASS)}.</p>")
    for k, r in enumerate(rows):
        md += [
            "",
            f"## {r['specimen']}",
            "",
            f"**Screening:** {r['screening']} · **patterns:** {r['patterns'] or '—'} · "
            f"{u} used: {r['n_fields_used']}/{r['n_fields']}",
            "",
        ]
        ht.append(
            f"<h2>{html.escape(r['specimen'])}</h2><p><b>Screening:</b> {html.escape(r['screening'])} · "
            f"<b>patterns:</b> {html.escape(r['patterns'] or '—')} · {u} used {r['n_fields_used']}/{r['n_fields']}</p>"
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
        md += [f"| {unit} | verdict | used | thumbnail | overlay |", "|---|---|---|---|---|"]
        ht.append(
            f"<table><tr><th>{unit}</th><th>verdict</th><th>used</th><th>thumbnail</th><th>overlay</th></tr>"
        )
        listed = r["fields"] if max_listed is None else r["fields"][:max_listed]
        for j, f in enumerate(listed):
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
        if len(listed) < len(r["fields"]):
            more = f"… and {len(r['fields']) - len(listed)} more {u} (predictions.csv)"
            md += ["", more]
            ht.append(f"<p>{html.escape(more)}</p>")
    (out_dir / "specimens.md").write_text("\n".join(md) + "\n")
    (out_dir / "specimens.html").write_text("\n".join(ht) + "\n")
    return out_dir / "specimens.csv"
