"""What a lab reads for each specimen of a grouped cross-validation: does the verdict flag the specimens the
model gets wrong?

    python experiments/i3a_cells/specimen_lists.py outputs/<cv sweep> --out-md report.md

Every cell of a specimen was tested by the fold model that never saw that specimen
(``oof_predictions.csv``; the groups come from ``folds_manifest.csv``). A specimen's cells are combined the
way ``ana-predict … group_by=…`` combines them into ``specimens.csv``
(:func:`ana_lightning.fields.combine.combine_probs`, ``--combine mean_log`` by default) and its patterns are
listed by the same rule (:func:`ana_lightning.fields.specimens.flat_patterns`: at most ``--top-k``, each at
least ``--min-prob``). The table gives each specimen's leading pattern, its probability and the patterns
listed; the summary counts the specimens that are right, those whose true pattern is listed, and those
listing more than one. A wrong specimen is *flagged* when its true pattern is listed or its leading
probability is below that of every right specimen. Nothing is fitted: with a few wrong specimens of ~30, a
threshold chosen here would not hold elsewhere.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def read_sweep(sweep: Path, repeat: int | None = None) -> tuple[list[dict], list[str], dict[str, str], int]:
    """A finished CV sweep's out-of-fold rows (every repeat), their classes, each image's specimen group
    (``folds_manifest.csv``) and the repeat to read (``None``: the first with predictions). A missing file, no
    rows, no groups or a repeat without predictions ends the script with a message naming it."""
    from ana_lightning.crossval import read_oof
    from ana_lightning.data.splits.folds import load_folds_manifest

    oof_path, manifest_path = sweep / "oof_predictions.csv", sweep / "folds_manifest.csv"
    for p in (oof_path, manifest_path):
        if not p.is_file():
            raise SystemExit(
                f"{p} is missing: a finished CV sweep writes it (or `ana-eval sweep_dir={sweep}`)"
            )
    oof, classes = read_oof(oof_path)
    if not oof or not classes:
        raise SystemExit(f"{oof_path} has no rows or no p_<class> columns")
    group_of = {r["path"]: r["group"] for r in load_folds_manifest(manifest_path) if r.get("group")}
    if not group_of:
        raise SystemExit(
            f"{manifest_path} names no groups: each image is its own, there is no specimen to read"
        )
    repeats = sorted({int(r["repeat"]) for r in oof})
    rep = repeats[0] if repeat is None else int(repeat)
    if rep not in repeats:
        raise SystemExit(f"{oof_path} has no predictions for repeat {rep} (it has {repeats})")
    return oof, classes, group_of, rep


def specimen_rows(
    sweep: Path, repeat: int | None = None, combine: str = "mean_log", top_k: int = 3, min_prob: float = 0.25
) -> tuple[list[dict], int]:
    """One row per named single-class specimen group of one repeat (``None``: the first with predictions)
    and that repeat."""
    from ana_lightning.fields.combine import combine_probs
    from ana_lightning.fields.specimens import flat_patterns

    oof, classes, group_of, rep = read_sweep(sweep, repeat)
    oof_path = sweep / "oof_predictions.csv"
    probs: dict[str, list[np.ndarray]] = defaultdict(list)
    truth: dict[str, set[str]] = defaultdict(set)
    for r in oof:
        g = group_of.get(r["path"])
        if g is None or int(r["repeat"]) != rep:
            continue
        probs[g].append(np.array([float(r[f"p_{c}"]) for c in classes]))
        truth[g].add(r["true"])
    rows = []
    for g in sorted(probs):
        if len(truth[g]) != 1:
            continue  # a group of several classes has no single verdict to score
        true = next(iter(truth[g]))
        if true not in classes:
            raise SystemExit(f"{oof_path}: specimen {g}'s class {true!r} is not one of the model's {classes}")
        cells, t = np.stack(probs[g]), classes.index(true)
        p = combine_probs(cells, combine)
        top, listed, _ = flat_patterns(p, classes, None, top_k, min_prob)
        rows.append(
            {
                "specimen": g,
                "true": true,
                "cells": len(cells),
                "cells_right": float(np.mean(cells.argmax(1) == t)),
                "leading": top,
                "p_leading": float(p.max()),
                "p_true": float(p[t]),
                "listed": listed,
                "right": top == true,
                "true_listed": true in listed,
            }
        )
    if not rows:
        raise SystemExit(f"{oof_path}: no single-class specimen group has predictions in repeat {rep}")
    lowest_right = min((r["p_leading"] for r in rows if r["right"]), default=1.0)
    for r in rows:
        r["flagged"] = (not r["right"]) and (r["true_listed"] or r["p_leading"] < lowest_right)
    return rows, rep


def summary(rows: list[dict]) -> dict[str, float | int]:
    right = [r for r in rows if r["right"]]
    wrong = [r for r in rows if not r["right"]]

    def spread(rs: list[dict]) -> tuple[float, float, float]:
        v = [r["p_leading"] for r in rs]
        return (min(v), float(np.median(v)), max(v)) if v else (float("nan"),) * 3

    return {
        "specimens": len(rows),
        "right": len(right),
        "true_listed": sum(r["true_listed"] for r in rows),
        "several_listed_right": sum(len(r["listed"]) > 1 for r in right),
        "several_listed_wrong": sum(len(r["listed"]) > 1 for r in wrong),
        "wrong_flagged": sum(r["flagged"] for r in wrong),
        "p_leading_right": spread(right),
        "p_leading_wrong": spread(wrong),
    }


def markdown(
    rows: list[dict], s: dict, sweep: Path, rep: int, combine: str, top_k: int, min_prob: float
) -> str:
    f3 = "{:.3f}".format
    lines = [
        f"# What a lab reads per specimen: {sweep.name} (repeat {rep})",
        "",
        f"Each specimen's out-of-fold cell probabilities combined by `{combine}`; patterns listed: at most {top_k}, "
        f"each ≥ {min_prob} (the `ana-predict … group_by=` defaults). A wrong specimen is flagged when its true "
        "pattern is listed or its leading probability is below every right specimen's.",
        "",
        f"- specimens right by the leading pattern: **{s['right']} of {s['specimens']}**",
        f"- true pattern among those listed: **{s['true_listed']} of {s['specimens']}**",
        f"- more than one pattern listed: {s['several_listed_right']} of the {s['right']} right, "
        f"{s['several_listed_wrong']} of the {s['specimens'] - s['right']} wrong",
        f"- wrong specimens flagged: **{s['wrong_flagged']} of {s['specimens'] - s['right']}**",
        "- leading probability (min / median / max): right "
        + " / ".join(map(f3, s["p_leading_right"]))
        + ", wrong "
        + " / ".join(map(f3, s["p_leading_wrong"])),
        "",
        "| specimen | true | cells | cells right | leading (p) | p of true | listed | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["right"], r["p_leading"])):
        verdict = (
            "right" if r["right"] else ("**wrong, flagged**" if r["flagged"] else "**wrong, not flagged**")
        )
        lines.append(
            f"| {r['specimen']} | {r['true']} | {r['cells']} | {r['cells_right']:.2f} | {r['leading']} "
            f"({r['p_leading']:.3f}) | {r['p_true']:.3f} | {'; '.join(r['listed'])} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from report_out import emit

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "sweep", type=Path, help="a finished CV sweep folder (oof_predictions.csv, folds_manifest.csv)"
    )
    ap.add_argument(
        "--repeat", type=int, default=None, help="the repeat to read (default: the first with predictions)"
    )
    ap.add_argument("--combine", default="mean_log", choices=("mean_log", "vote", "mean"))
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--min-prob", type=float, default=0.25)
    ap.add_argument("--out-md", type=Path, default=None, help="also write the table here")
    a = ap.parse_args(argv)
    rows, rep = specimen_rows(a.sweep, a.repeat, a.combine, a.top_k, a.min_prob)
    text = markdown(rows, summary(rows), a.sweep, rep, a.combine, a.top_k, a.min_prob)
    emit(text, a.out_md)


if __name__ == "__main__":
    main()
