"""Paired comparison of two cross-validation sweeps run on the same folds.

``ana-compare a=<sweep A> b=<sweep B>`` (or :func:`compare_sweeps`) pairs the two sweeps' jobs by
``(repeat, fold)``, and reports for each headline test metric the per-fold differences ``A - B``,
their mean with a 95% t-interval, a paired t-test and a Wilcoxon signed-rank test; for single-label
models, McNemar's exact test on the pooled out-of-fold predictions (the same images, each once per
repeat). The folds must be identical (``folds_manifest.csv``): otherwise the pairs would not be.

For numbers that do not come from sweeps (e.g. a study's own loop over seeds or folds),
:func:`ana_lightning.stats.paired_comparison` takes the two lists of per-fold values directly.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from .crossval import fold_jobs, read_oof, summarize_sweep, sweep_manifest
from .data.splits import FOLDS_MANIFEST, load_folds_manifest
from .stats import mcnemar, paired_comparison, sign_test

__all__ = ["compare_sweeps", "CompareError", "HEADLINE"]

log = logging.getLogger(__name__)

HEADLINE = ("test/mca", "test/acc", "test/macro_f1", "test/exact_match", "test/micro_f1")


class CompareError(ValueError):
    """Two sweeps that cannot be compared pairwise."""


def _manifest_rows(sweep: Path) -> list[dict[str, str]]:
    manifest = sweep_manifest(sweep) if sweep.is_dir() else None
    if manifest is None:
        raise CompareError(f"{sweep} has no {FOLDS_MANIFEST}: not a cross-validation sweep")
    return load_folds_manifest(manifest)


def _assignment(rows: list[dict[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(r["repeat"], r["path"]): (r["fold"], r["sha256"]) for r in rows}


def _oof(sweep: Path) -> tuple[list[dict[str, str]], list[str]]:
    path = sweep / "oof_predictions.csv"
    if not path.is_file():
        summarize_sweep(sweep)  # the sweep's own summary was never written (e.g. interrupted): write it now
    if not path.is_file():
        return [], []
    return read_oof(path)


def _groups(rows: list[dict[str, str]]) -> dict[tuple[str, str], str]:
    """Each ``(repeat, path)``'s group (specimen, patient, field) from the folds manifest's rows; an image
    with no group is its own."""
    return {(r["repeat"], r["path"]): r.get("group") or r["path"] for r in rows}


def _by_group(
    keys: list[tuple[str, str]],
    ca: dict[tuple[str, str], bool],
    cb: dict[tuple[str, str], bool],
    groups: dict[tuple[str, str], str],
) -> dict[str, Any]:
    """The pooled images counted by group: in how many groups A reads more images right than B, fewer, or
    as many, with a sign test over the groups that differ. McNemar counts images as independent; the images
    of one specimen are not, so its p is too small when a few groups decide. Empty when no group holds
    more than one image (then the images are the groups)."""
    right: dict[str, list[int]] = {}  # group -> [images A reads right, images B reads right]
    for k in keys:
        g = right.setdefault(groups.get(k, k[1]), [0, 0])
        g[0] += ca[k]
        g[1] += cb[k]
    if len(right) == len(keys):
        return {}
    a_better = sum(1 for x, y in right.values() if x > y)
    b_better = sum(1 for x, y in right.values() if y > x)
    return {
        "n_groups": len(right),
        "groups_a_better": a_better,
        "groups_b_better": b_better,
        "groups_tied": len(right) - a_better - b_better,
        "p_sign_groups": sign_test(a_better, b_better),
    }


def compare_sweeps(
    a: str | Path, b: str | Path, metrics: list[str] | None = None, out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Compare sweep ``a`` with sweep ``b`` (see the module docstring); writes ``compare.json`` and
    ``compare.md`` into ``out_dir`` when given, and returns the ``compare.json`` content."""
    a, b = Path(a), Path(b)
    rows_a = _manifest_rows(a)
    fa, fb = _assignment(rows_a), _assignment(_manifest_rows(b))
    if fa != fb:
        diff = sorted(set(fa.items()) ^ set(fb.items()))[:3]
        raise CompareError(
            f"{a} and {b} were run on different folds ({FOLDS_MANIFEST} differs, e.g. {diff}); run both with the same data, "
            f"data.folds, data.repeats and data.seed, or pass B data.folds_manifest={a / FOLDS_MANIFEST}"
        )
    ja = {(j["repeat"], j["fold"]): j for j in fold_jobs(a) if j["metrics"] is not None}
    jb = {(j["repeat"], j["fold"]): j for j in fold_jobs(b) if j["metrics"] is not None}
    pairs = sorted(set(ja) & set(jb))
    if len(pairs) < 2:
        raise CompareError(
            f"{a} and {b} share {len(pairs)} finished fold(s); a paired comparison needs at least 2"
        )
    unpaired = sorted(set(ja) ^ set(jb))
    folds = len({f for f, _ in fa.values()})
    repeats = len({r for r, _ in fa})
    factor = (
        1.0 / len(pairs) + 1.0 / (folds - 1) if repeats > 1 else None
    )  # Nadeau-Bengio for repeated k-fold
    if metrics is None:
        metrics = [m for m in HEADLINE if all(m in ja[p]["metrics"] and m in jb[p]["metrics"] for p in pairs)]
    out: dict[str, Any] = {
        "a": str(a),
        "b": str(b),
        "folds": folds,
        "repeats": repeats,
        "n_pairs": len(pairs),
        "unpaired_folds": [f"repeat {r} fold {f}" for r, f in unpaired],
        "metrics": {},
        "per_fold": [],
    }
    for m in metrics:
        va = [ja[p]["metrics"].get(m) for p in pairs]
        vb = [jb[p]["metrics"].get(m) for p in pairs]
        ok = [
            i
            for i in range(len(pairs))
            if va[i] is not None and vb[i] is not None and math.isfinite(va[i]) and math.isfinite(vb[i])
        ]
        if len(ok) < 2:
            log.warning(
                "%s: in %d of %d paired folds of both sweeps, fewer than 2: not compared (a metric the runs did "
                "not log, e.g. val/… of runs without a validation split, such as experiment=i3a_cells since "
                "round 17; test/… of runs with test=false)",
                m,
                len(ok),
                len(pairs),
            )
            continue
        out["metrics"][m] = paired_comparison(
            [va[i] for i in ok], [vb[i] for i in ok], variance_factor=factor
        )
    for p in pairs:
        row = {"repeat": p[0], "fold": p[1]}
        for m in out["metrics"]:
            x, y = ja[p]["metrics"].get(m), jb[p]["metrics"].get(m)
            row[f"{m}/a"], row[f"{m}/b"] = x, y
            row[f"{m}/diff"] = None if x is None or y is None else x - y
        out["per_fold"].append(row)

    oa, _ = _oof(a)
    ob, _ = _oof(b)
    if oa and ob:
        multi = any(";" in r["true"] or ";" in r["pred"] or not r["pred"] for r in oa + ob)
        if not multi:
            ca = {(r["repeat"], r["path"]): r["true"] == r["pred"] for r in oa}
            cb = {(r["repeat"], r["path"]): r["true"] == r["pred"] for r in ob}
            common = sorted(set(ca) & set(cb))
            groups = _groups(rows_a)  # the same folds in both sweeps, checked above
            out["mcnemar"] = []
            for rep in sorted({k[0] for k in common}, key=int):
                keys = [k for k in common if k[0] == rep]
                row = {"repeat": int(rep), **mcnemar([ca[k] for k in keys], [cb[k] for k in keys])}
                row.update(_by_group(keys, ca, cb, groups))
                out["mcnemar"].append(row)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare.json").write_text(json.dumps(_clean(out), indent=2) + "\n")
        (out_dir / "compare.md").write_text(markdown(out))
        with open(out_dir / "compare_per_fold.csv", "w", newline="") as f:
            if out["per_fold"]:
                w = csv.DictWriter(f, fieldnames=list(out["per_fold"][0]))
                w.writeheader()
                w.writerows(out["per_fold"])
    return out


def _clean(v: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _f(v: Any, d: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.{d}f}"


def _p(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.3g}"


def markdown(r: dict[str, Any]) -> str:
    """The comparison as Markdown: one row per metric, then per fold, then McNemar."""
    ci = "t-interval" if r["repeats"] == 1 else "corrected resampled t-interval (Nadeau & Bengio)"
    reps = f" × {r['repeats']} repeats" if r["repeats"] > 1 else ""
    md = [
        f"# A vs B: {Path(r['a']).name} vs {Path(r['b']).name}",
        "",
        f"A = `{r['a']}`",
        f"B = `{r['b']}`",
        "",
        f"{r['n_pairs']} paired folds ({r['folds']}-fold{reps}, the "
        f"same {FOLDS_MANIFEST}). Difference = A - B; 95% {ci}; paired t-test and Wilcoxon signed-rank p-values.",
        "",
    ]
    if r["unpaired_folds"]:
        md += [f"Left out (finished in only one sweep): {', '.join(r['unpaired_folds'])}.", ""]
    md += [
        "| metric | A mean | B mean | A - B | 95% CI | p (paired t) | p (Wilcoxon) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, s in r["metrics"].items():
        md.append(
            f"| `{m}` | {_f(s['mean_a'])} | {_f(s['mean_b'])} | {_f(s['mean_diff'], 4)} | "
            f"[{_f(s.get('ci95_low'), 4)}, {_f(s.get('ci95_high'), 4)}] | {_p(s.get('p_ttest'))} | {_p(s.get('p_wilcoxon'))} |"
        )
    if r["metrics"]:
        m = next(iter(r["metrics"]))
        md += ["", f"## Per fold (`{m}`)", "", "| repeat | fold | A | B | A - B |", "|---|---|---|---|---|"]
        md += [
            f"| {row['repeat']} | {row['fold']} | {_f(row[f'{m}/a'])} | {_f(row[f'{m}/b'])} | {_f(row[f'{m}/diff'], 4)} |"
            for row in r["per_fold"]
        ]
    if r.get("mcnemar"):
        md += [
            "",
            "## McNemar on the pooled out-of-fold predictions",
            "",
            "| repeat | images | only A right | only B right | p (exact) |",
            "|---|---|---|---|---|",
        ]
        md += [
            f"| {x['repeat']} | {x['n_images']} | {x['a_only_correct']} | {x['b_only_correct']} | {_p(x['p_mcnemar'])} |"
            for x in r["mcnemar"]
        ]
        grouped = [x for x in r["mcnemar"] if "n_groups" in x]
        if grouped:
            md += [
                "",
                "McNemar treats every image as independent. The images of one group (specimen, patient, field) are "
                "not, so its p is too small when a few groups decide. Counted by group (`group` in "
                f"{FOLDS_MANIFEST}), with a sign test over the groups where A and B differ:",
                "",
                "| repeat | groups | A reads more right | B reads more right | as many | p (sign test) |",
                "|---|---|---|---|---|---|",
            ]
            md += [
                f"| {x['repeat']} | {x['n_groups']} | {x['groups_a_better']} | {x['groups_b_better']} | "
                f"{x['groups_tied']} | {_p(x['p_sign_groups'])} |"
                for x in grouped
            ]
    return "\n".join(md) + "\n"


def __getattr__(name: str) -> Any:
    """The ana-compare job moved to :mod:`ana_lightning.jobs.compare` (this old import path still works)."""
    if name in ("compare_job",):
        import importlib

        return getattr(importlib.import_module("ana_lightning.jobs.compare"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # python -m ana_lightning.compare <sweep A> <sweep B>
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m ana_lightning.compare <sweep folder A> <sweep folder B>")
    print(markdown(compare_sweeps(sys.argv[1], sys.argv[2])))
