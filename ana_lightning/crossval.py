"""Cross-validation sweeps: where the folds manifest goes, and the summary of a finished sweep.

One cohesive thing (~430 lines): the sweep summary, from reading the fold jobs through pooling their
out-of-fold predictions to the tables and plots, all on the same rows. The jobs that run it
(``ana-eval sweep_dir=…``, the Hydra callback :class:`~ana_lightning.jobs.crossval.CVSummaryCallback`)
are in :mod:`ana_lightning.jobs.crossval`.

``ana-train -m data.folds=5 'data.fold=range(5)'`` runs one job per fold (see
:func:`~ana_lightning.data.splits.sweep_folds`). When the multirun ends, ``CVSummaryCallback``
(a Hydra callback configured in ``conf/hydra/default.yaml``) calls :func:`summarize_sweep`, which
writes into the sweep folder:

- ``cv_summary.json``: for every test metric ``M`` of the jobs' ``metrics.json``: ``M/mean``,
  ``M/sd``, ``M/ci95_low``, ``M/ci95_high``, ``M/n_folds``; and ``oof/<metric>`` computed on the
  pooled out-of-fold predictions (with a cluster-bootstrap interval);
- ``cv_summary.md``: the same as tables, one row per fold;
- ``oof_predictions.csv``: every job's ``test_predictions.csv`` with ``repeat`` and ``fold`` columns
  (every image exactly once per repeat; paths as in ``folds_manifest.csv``);
- ``oof_confusion_matrix.png``: the pooled confusion matrix (single-label models; multi-label:
  ``oof_per_class_f1.png``);
- ``oof_errors.png``: the wrong out-of-fold images of one repeat, most confident first, at most half a row
  per group (single-label models whose image files are readable from where the summary runs).

``ana-eval sweep_dir=<sweep folder>`` runs :func:`summarize_sweep` again from the saved files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .data.splits import FOLDS_MANIFEST, load_folds_manifest
from .stats import (
    MULTI_LABEL_KEYS,
    SINGLE_LABEL_KEYS,
    bootstrap_intervals,
    fold_summary,
    label_matrix,
    majority_vote,
    point_metrics,
)

try:  # Hydra is a dependency; the import only fails in stripped-down environments
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]

__all__ = [
    "default_folds_manifest",
    "summarize_sweep",
    "fold_jobs",
    "read_oof",
    "CVSummaryError",
    "sweep_manifest",
]

log = logging.getLogger(__name__)

SUMMARY_FILES = (
    "cv_summary.json",
    "cv_summary.md",
    "oof_predictions.csv",
    "oof_confusion_matrix.png",
    "oof_per_class_f1.png",
    "oof_errors.png",
)


class CVSummaryError(RuntimeError):
    """A sweep folder that cannot be summarised (no folds manifest, two jobs for one fold, …)."""


def default_folds_manifest(cfg: Any) -> str:
    """``<sweep folder>/folds_manifest.csv`` in a Hydra multirun, else ``<run folder>/folds_manifest.csv``."""
    from .distributed import sweep_dir

    sweep = sweep_dir()
    return str((sweep if sweep is not None else Path(cfg.paths.output_dir)) / FOLDS_MANIFEST)


# ------------------------------------------------------------------------------------------ reading
def fold_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The jobs of a cross-validation sweep: ``{"dir", "repeat", "fold", "folds", "repeats", "metrics"}``
    (``metrics`` is None when the job left no ``metrics.json``), sorted by repeat and fold."""
    sweep = Path(sweep_dir)
    jobs = []
    # A job's resolved config (config_resolved.yaml), else Hydra's record of it (.hydra/config.yaml),
    # which is enough for the fold keys: a job function that does not write the former still counts.
    job_dirs = sorted(
        {p.parent for p in sweep.glob("*/config_resolved.yaml")}
        | {p.parent.parent for p in sweep.glob("*/.hydra/config.yaml")}
    )
    for job_dir in job_dirs:
        cfg_path = job_dir / "config_resolved.yaml"
        if not cfg_path.is_file():
            cfg_path = job_dir / ".hydra" / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        data = cfg.get("data") or {}
        if data.get("folds") is None or data.get("fold") is None:
            continue
        metrics_path = job_dir / "metrics.json"
        jobs.append(
            {
                "dir": job_dir,
                "repeat": int(data.get("repeat") or 0),
                "fold": int(data["fold"]),
                "folds": int(data["folds"]),
                "repeats": int(data.get("repeats") or 1),
                "folds_manifest": data.get("folds_manifest"),
                "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
            }
        )
    seen: dict[tuple[int, int], Path] = {}
    for j in jobs:
        key = (j["repeat"], j["fold"])
        if key in seen:
            raise CVSummaryError(
                f"{sweep}: two jobs ({seen[key].name}, {j['dir'].name}) test fold {key[1]} of repeat {key[0]}; a summary needs "
                "one job per fold. Sweep other settings (learning rate, model) in separate multiruns and compare them "
                "with ana-compare."
            )
        seen[key] = j["dir"]
    return sorted(jobs, key=lambda j: (j["repeat"], j["fold"]))


def sweep_manifest(sweep_dir: str | Path) -> Path | None:
    """The folds manifest of a sweep: ``<sweep>/folds_manifest.csv``, or the one its fold jobs were
    given (``data.folds_manifest=<file>``, e.g. another sweep's, to reuse its folds); None when the
    folder holds no cross-validation job."""
    sweep = Path(sweep_dir)
    if (sweep / FOLDS_MANIFEST).is_file():
        return sweep / FOLDS_MANIFEST
    given = {j["folds_manifest"] for j in fold_jobs(sweep) if j["folds_manifest"]}
    if len(given) > 1:
        raise CVSummaryError(f"the fold jobs in {sweep} used different folds manifests: {sorted(given)}")
    return Path(given.pop()) if given and Path(next(iter(given))).is_file() else None


def _test_rows(job_dir: Path, files: dict[str, str] | None = None) -> list[dict[str, str]] | None:
    """The job's ``test_predictions.csv`` with each path replaced by its manifest-relative path (from
    the job's ``split_manifest.csv``, whose test rows are in the same order). ``files``, when given, gets
    each manifest-relative path's file as the job read it."""
    pred_path, split_path = job_dir / "test_predictions.csv", job_dir / "split_manifest.csv"
    if not pred_path.is_file() or not split_path.is_file():
        return None
    with open(split_path, newline="") as f:
        test_paths = [r["path"] for r in csv.DictReader(f) if r["split"] == "test"]
    with open(pred_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != len(test_paths):
        raise CVSummaryError(
            f"{pred_path} has {len(rows)} rows, the test split of {split_path} {len(test_paths)} images"
        )
    out = []
    for row, rel in zip(rows, test_paths, strict=True):  # both in the test split's order
        p = Path(row["path"]).as_posix()
        if p != rel and not p.endswith("/" + rel):
            raise CVSummaryError(
                f"{pred_path}: {row['path']} is not {rel}, the same row of the test split in {split_path}"
            )
        out.append({**row, "path": rel})
        if files is not None:
            files[rel] = row["path"]
    return out


def read_oof(path: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    """The rows and the class list (from the ``p_<class>`` columns) of an ``oof_predictions.csv``."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        classes = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
        return list(reader), classes


def _labels(rows: list[dict[str, str]], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return label_matrix([r["true"] for r in rows], classes), label_matrix([r["pred"] for r in rows], classes)


# ------------------------------------------------------------------------------------------ summary
def _sweep_rows(sweep: Path) -> list[dict[str, str]]:
    manifest_path = sweep_manifest(sweep) if sweep.is_dir() else None
    if manifest_path is None:
        raise CVSummaryError(
            f"{sweep} has no {FOLDS_MANIFEST}: not a cross-validation sweep (ana-train -m data.folds=k 'data.fold=range(k)')"
        )
    return load_folds_manifest(manifest_path)


def _combined_sweeps(sweeps: Sequence[Path]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """The folds manifest rows and fold jobs of several sweeps of one cross-validation, e.g. repeats run at
    different times (``data.repeats=3 data.repeat=2`` in a sweep of its own): every sweep holds the same images,
    each (repeat, fold) is tested once over all of them, and a repeat's folds are the same in every sweep that
    tests it. Only the repeats some job tests are kept."""
    rows_of = {sweep: _sweep_rows(sweep) for sweep in sweeps}
    images = {sweep: {(r["path"], r["sha256"]) for r in rows} for sweep, rows in rows_of.items()}
    first = sweeps[0]
    for sweep in sweeps[1:]:
        if images[sweep] != images[first]:
            differ = sorted(images[sweep] ^ images[first])
            raise CVSummaryError(
                f"{sweep} and {first} hold other images ({len(differ)} differ, e.g. {differ[0][0]}): one summary "
                "needs the folds of one dataset"
            )
    if len({len({r["fold"] for r in rows}) for rows in rows_of.values()}) > 1:
        raise CVSummaryError(
            f"the sweeps {', '.join(map(str, sweeps))} were made with different numbers of folds"
        )
    jobs, by_key, rows = [], {}, []
    for sweep in sweeps:
        for j in fold_jobs(sweep):
            key = (j["repeat"], j["fold"])
            if key in by_key:
                raise CVSummaryError(
                    f"fold {key[1]} of repeat {key[0]} is tested in {by_key[key]} and in {j['dir']}: one summary "
                    "needs one job per fold"
                )
            by_key[key] = j["dir"]
            jobs.append({**j, "label": f"{sweep.name}/{j['dir'].name}"})
    for rep in sorted({j["repeat"] for j in jobs}):
        assignments = {
            sweep: sorted((r["path"], r["fold"]) for r in rows_of[sweep] if r["repeat"] == str(rep))
            for sweep in {j["dir"].parent for j in jobs if j["repeat"] == rep}
        }
        if len({tuple(a) for a in assignments.values()}) > 1:
            raise CVSummaryError(
                f"repeat {rep} has other folds in {' and '.join(str(s) for s in assignments)}: its jobs must share folds"
            )
        source = next(iter(assignments))
        rows += [r for r in rows_of[source] if r["repeat"] == str(rep)]
    if not jobs:
        raise CVSummaryError(f"no fold jobs in {', '.join(map(str, sweeps))}")
    return rows, sorted(jobs, key=lambda j: (j["repeat"], j["fold"]))


def summarize_sweep(
    sweep_dir: str | Path | Sequence[str | Path], out_dir: str | Path | None = None, n_boot: int = 1000
) -> dict[str, Any]:
    """Write the cross-validation summary of a finished sweep (see the module docstring) into
    ``out_dir`` (default: the sweep folder); returns the ``cv_summary.json`` content. ``sweep_dir`` may list
    several sweeps of one cross-validation (repeats run in sweeps of their own): one summary over all their
    fold jobs, written into ``out_dir``, which is then required."""
    many = not isinstance(sweep_dir, str | Path)
    sweeps = [Path(d) for d in sweep_dir] if many else [Path(sweep_dir)]
    if many and len(sweeps) == 1:
        many = False
    sweep = sweeps[0]
    if many:
        if out_dir is None:
            raise CVSummaryError("a summary of several sweeps needs a folder of its own (out_dir)")
        manifest, jobs = _combined_sweeps(sweeps)
    else:
        manifest, jobs = _sweep_rows(sweep), fold_jobs(sweep)
    out_dir = Path(out_dir) if out_dir is not None else sweep
    out_dir.mkdir(parents=True, exist_ok=True)
    folds = len({r["fold"] for r in manifest})
    repeat_ids = sorted({int(r["repeat"]) for r in manifest})
    repeats = len(repeat_ids)
    expected = {(r, f) for r in repeat_ids for f in range(folds)}
    done = {(j["repeat"], j["fold"]) for j in jobs if j["metrics"] is not None}
    missing = sorted(expected - done)

    per_fold: dict[str, list[float | None]] = defaultdict(list)
    keys = sorted(
        {
            k
            for j in jobs
            if j["metrics"]
            for k, v in j["metrics"].items()
            if k.startswith("test/")
            and "_ci95_" not in k
            and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
        }
    )
    for j in jobs:
        if j["metrics"] is None:
            continue
        for k in keys:
            v = j["metrics"].get(k)
            per_fold[k].append(None if v is None else float(v))
    summary: dict[str, Any] = fold_summary(per_fold, folds, repeats)

    # Pooled out-of-fold predictions: every image once per repeat.
    oof: list[dict[str, str]] = []
    header: list[str] = []
    no_predictions = []
    files: dict[str, str] = {}
    for j in jobs:
        rows = _test_rows(j["dir"], files)
        if rows is None:
            no_predictions.append(j.get("label", j["dir"].name))
            continue
        for r in rows:
            r = {"repeat": str(j["repeat"]), "fold": str(j["fold"]), **r}
            header += [c for c in r if c not in header]
            oof.append(r)
    coverage: list[str] = []
    if oof:
        with open(out_dir / "oof_predictions.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header, restval="")
            w.writeheader()
            w.writerows(oof)
        fold_of = {(r["repeat"], r["path"]): r["fold"] for r in manifest}
        group_of = {r["path"]: r["group"] or r["sha256"] or r["path"] for r in manifest}
        seen: dict[tuple[str, str], int] = defaultdict(int)
        for r in oof:
            seen[(r["repeat"], r["path"])] += 1
            if fold_of.get((r["repeat"], r["path"])) != r["fold"]:
                raise CVSummaryError(
                    f"{r['path']} was tested in fold {r['fold']} of repeat {r['repeat']}, but "
                    f"{FOLDS_MANIFEST} puts it in fold {fold_of.get((r['repeat'], r['path']))}"
                )
        twice = [k for k, n in seen.items() if n > 1]
        if twice:
            raise CVSummaryError(
                f"{len(twice)} image(s) were tested more than once in one repeat, e.g. {twice[0]}"
            )
        for rep in repeat_ids:
            absent = [p for (rr, p) in fold_of if rr == str(rep) and (rr, p) not in seen]
            if absent:
                coverage.append(
                    f"repeat {rep}: {len(absent)} of the {len(absent) + sum(1 for k in seen if k[0] == str(rep))} "
                    f"images have no out-of-fold prediction (e.g. {absent[0]})"
                )
        classes = [c[2:] for c in header if c.startswith("p_")]
        summary.update(_oof_metrics(oof, classes, repeat_ids, group_of, n_boot))
        if not summary.get("oof/multilabel"):
            named = {r["path"]: r["group"] for r in manifest if r["group"]}
            summary.update(_group_majority(oof, repeat_ids, named))
            _plot_pooled_confusion(oof, classes, out_dir / "oof_confusion_matrix.png", summary)
            _plot_oof_errors(oof, classes, files, named, out_dir / "oof_errors.png")
        else:  # multi-label: no confusion matrix; the pooled per-class F1 instead
            _plot_pooled_f1(oof, classes, out_dir / "oof_per_class_f1.png", summary)
    summary.update(
        {
            "folds": folds,
            "repeats": repeats,
            "n_jobs": len(jobs),
            "n_images": len({r["path"] for r in manifest}),
        }
    )
    summary["missing_folds"] = [f"repeat {r} fold {f}" for r, f in missing]
    if many:
        summary["sweeps"] = [str(d) for d in sweeps]
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    (out_dir / "cv_summary.json").write_text(json.dumps(clean, indent=2) + "\n")
    title = " + ".join(d.name for d in sweeps)
    (out_dir / "cv_summary.md").write_text(
        _markdown(title, clean, jobs, keys, missing, coverage, no_predictions, out_dir)
    )
    log.info("cross-validation summary of %d fold job(s) written to %s", len(jobs), out_dir / "cv_summary.md")
    log.info("%s", cv_headline(clean))
    return clean


def cv_headline(s: Mapping[str, Any]) -> str:
    """One line a user reads at the end of a sweep: the headline metric per fold (mean ± SD, its 95 % interval,
    over how many folds and repeats), the pooled out-of-fold figure with its grouped interval, and the groups a
    majority vote reads right. E.g. ``cross-validation, 5 folds x 2 repeat(s): test/mca 0.802 ± 0.059 [0.723, 0.880]
    over 10 fold jobs; pooled oof/mca 0.807 [0.735, 0.860]; 27 of 31 groups read as their class by majority``."""
    metric = next(
        (m for m in ("test/mca", "test/exact_match", "test/acc", "test/micro_f1") if f"{m}/mean" in s), None
    )
    parts = [f"cross-validation, {s.get('folds')} folds x {s.get('repeats')} repeat(s)"]
    if metric is None:
        return parts[0] + ": no fold has test metrics yet"
    parts[0] += (
        f": {metric} {_fmt(s[f'{metric}/mean'])} ± {_fmt(s.get(f'{metric}/sd'))} "
        f"[{_fmt(s.get(f'{metric}/ci95_low'))}, {_fmt(s.get(f'{metric}/ci95_high'))}] per fold over "
        f"{s.get(f'{metric}/n_folds')} fold job(s)"
    )
    pooled = f"oof/{metric.removeprefix('test/')}"
    if s.get(pooled) is not None:
        lo, hi = s.get(f"{pooled}_ci95_low"), s.get(f"{pooled}_ci95_high")
        parts.append(
            f"pooled {pooled} {_fmt(s[pooled])}" + (f" [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None else "")
        )
    if s.get("oof/n_groups"):
        parts.append(
            f"{s.get('oof/groups_right')} of {s['oof/n_groups']} groups read as their class by majority"
        )
    if s.get("missing_folds"):
        parts.append(f"INCOMPLETE: {len(s['missing_folds'])} fold job(s) without metrics")
    return "; ".join(parts)


def _oof_metrics(
    oof: list[dict[str, str]],
    classes: list[str],
    repeats: Sequence[int],
    group_of: dict[str, str],
    n_boot: int,
) -> dict[str, Any]:
    """Metrics of the pooled out-of-fold predictions, per repeat (``oof/repeat<i>/<m>``) and their
    mean over repeats (``oof/<m>``), with a cluster-bootstrap interval for the headline metrics of the first
    repeat that has predictions (``oof/repeat_of_interval``: repeat 0 unless only later repeats ran)."""
    true, pred = _labels(oof, classes)
    # Multi-label models write n_errors (reports_multilabel); otherwise any image with not exactly one label.
    multi = "n_errors" in oof[0] or bool((true.sum(1) != 1).any() or (pred.sum(1) != 1).any())
    out: dict[str, Any] = {"oof/multilabel": multi}
    per_rep: dict[str, list[float]] = defaultdict(list)
    reps = np.array([int(r["repeat"]) for r in oof])
    first = int(reps.min())
    out["oof/repeat_of_interval"] = first
    for rep in repeats:
        sel = reps == rep
        if not sel.any():
            continue
        m = point_metrics(true[sel], pred[sel], MULTI_LABEL_KEYS if multi else SINGLE_LABEL_KEYS)
        for k, v in m.items():
            per_rep[k].append(v)
            if len(repeats) > 1:
                out[f"oof/repeat{rep}/{k}"] = v
        if rep == first:
            clusters = [group_of.get(r["path"], r["path"]) for r, s in zip(oof, sel, strict=True) if s]
            keys = [k for k in ("mca", "acc", "exact_match", "micro_f1") if k in m]
            for k, (lo, hi) in bootstrap_intervals(
                true[sel], pred[sel], keys, clusters=clusters, n_boot=n_boot
            ).items():
                out[f"oof/{k}_ci95_low"], out[f"oof/{k}_ci95_high"] = lo, hi
    for k, v in per_rep.items():
        out[f"oof/{k}"] = float(np.mean(v))
    out["oof/n_images"] = int((reps == first).sum())
    return out


def _group_majority(
    oof: list[dict[str, str]], repeats: Sequence[int], group_of: dict[str, str]
) -> dict[str, Any]:
    """The specimen verdict a lab reads off a well: the share of named single-class groups whose most
    frequent out-of-fold prediction is their class, strictly (a tie is no verdict), as
    ``oof/group_majority_acc`` (mean over repeats), with ``oof/n_groups`` and ``oof/groups_right`` of the
    first repeat that has predictions. Empty when the folds manifest names no groups (each image its own:
    that would be accuracy)."""
    shares, out = [], {}
    for rep in repeats:
        votes: dict[str, Counter] = defaultdict(Counter)
        truth: dict[str, set[str]] = defaultdict(set)
        for r in oof:
            g = group_of.get(r["path"])
            if g and r["repeat"] == str(rep):
                votes[g][r["pred"]] += 1
                truth[g].add(r["true"])
        single = [g for g in votes if len(truth[g]) == 1]
        if not single:
            continue
        right = sum(majority_vote(votes[g]) in truth[g] for g in single)
        shares.append(right / len(single))
        if "oof/n_groups" not in out:
            out.update({"oof/n_groups": len(single), "oof/groups_right": right})
    if shares:
        out["oof/group_majority_acc"] = float(np.mean(shares))
    return out


def _plot_pooled_confusion(
    oof: list[dict[str, str]], classes: list[str], path: Path, summary: dict[str, Any]
) -> None:
    from .reports import plot_confusion_matrix

    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    for r in oof:
        cm[index[r["true"]], index[r["pred"]]] += 1
    mca = summary.get("oof/mca", math.nan)
    plot_confusion_matrix(cm, classes, path, title=f"out-of-fold, all repeats: MCA {mca:.3f}")


def _plot_oof_errors(
    oof: list[dict[str, str]], classes: list[str], files: dict[str, str], groups: dict[str, str], path: Path
) -> Path | None:
    """``oof_errors.png``: the wrong images of the first repeat with predictions (each image once), as a
    test report shows them (:func:`~ana_lightning.reports.gallery.plot_error_gallery`). Not drawn when the
    files cannot be read from here (a summary recomputed elsewhere): a stale one is removed then."""
    from .reports.gallery import plot_error_gallery

    first = min(r["repeat"] for r in oof)
    rows = [r for r in oof if r["repeat"] == first and r["true"] in classes]
    readable = [r for r in rows if Path(files.get(r["path"], r["path"])).is_file()]
    if not rows or len(readable) < len(rows):
        path.unlink(missing_ok=True)
        return None
    index = {c: i for i, c in enumerate(classes)}
    prob = np.array([[float(r[f"p_{c}"] or 0.0) for c in classes] for r in rows])
    made = plot_error_gallery(
        [files.get(r["path"], r["path"]) for r in rows],
        [index[r["true"]] for r in rows],
        prob,
        classes,
        [groups.get(r["path"]) for r in rows],
        path,
    )
    if made is None:
        path.unlink(missing_ok=True)
    return made


def _plot_pooled_f1(
    oof: list[dict[str, str]], classes: list[str], path: Path, summary: dict[str, Any]
) -> None:
    from .reports_multilabel import plot_per_class_f1

    true, pred = _labels(oof, classes)
    tp, fp, fn = (true & pred).sum(0), (~true & pred).sum(0), (true & ~pred).sum(0)
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    title = f"out-of-fold, all repeats: micro F1 {summary.get('oof/micro_f1', math.nan):.3f}"
    plot_per_class_f1(f1, true.sum(0), classes, path, title=title)


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}f}"


def _markdown(
    title: str,
    s: dict[str, Any],
    jobs: list[dict[str, Any]],
    keys: list[str],
    missing: list,
    coverage: list[str],
    no_predictions: list[str],
    out_dir: Path,
) -> str:
    k, r = s["folds"], s["repeats"]
    ci = (
        "t-interval over the folds"
        if r == 1
        else "corrected resampled t-interval (Nadeau & Bengio 2003), as folds of different repeats share images"
    )
    md = [
        f"# Cross-validation summary: {title}",
        "",
        f"{k}-fold{f' × {r} repeats' if r > 1 else ''} cross-validation, {s['n_images']} images, grouped and stratified "
        f"folds (`{FOLDS_MANIFEST}`). Each job tests on its fold; "
        + (
            "validation is carved from the other folds."
            if any(str(m).startswith("val/") for j in jobs for m in (j.get("metrics") or {}))
            else "the other folds train, with no validation split (the fixed schedule's last epoch)."
        ),
        "",
        f"Mean ± SD over folds; 95% CI: {ci}.",
        "",
    ]
    if missing:
        md += [f"**Incomplete:** no metrics for {', '.join(f'repeat {a} fold {b}' for a, b in missing)}.", ""]
    md += ["| metric | mean | SD | 95% CI | folds |", "|---|---|---|---|---|"]
    for m in keys:
        md.append(
            f"| `{m}` | {_fmt(s.get(f'{m}/mean'))} | {_fmt(s.get(f'{m}/sd'))} | "
            f"[{_fmt(s.get(f'{m}/ci95_low'))}, {_fmt(s.get(f'{m}/ci95_high'))}] | {s.get(f'{m}/n_folds')} |"
        )
    head = [
        m for m in ("test/mca", "test/acc", "test/exact_match", "test/micro_f1", "test/macro_f1") if m in keys
    ][:4]
    md += [
        "",
        "## Per fold",
        "",
        "| repeat | fold | job | " + " | ".join(f"`{m}`" for m in head) + " |",
        "|---|---|---|" + "---|" * len(head),
    ]
    for j in jobs:
        vals = [_fmt((j["metrics"] or {}).get(m)) for m in head]
        md.append(
            f"| {j['repeat']} | {j['fold']} | {j.get('label', j['dir'].name)} | " + " | ".join(vals) + " |"
        )
    oof_keys = [
        m for m in ("mca", "acc", "macro_f1", "exact_match", "micro_f1", "hamming_loss") if f"oof/{m}" in s
    ]
    first = s.get("oof/repeat_of_interval", 0)
    if oof_keys:
        md += [
            "",
            "## Pooled out-of-fold predictions",
            "",
            f"`oof_predictions.csv`: every image once per repeat ({s.get('oof/n_images')} images in repeat {first}). "
            f"Metrics on the pooled predictions (mean over repeats); interval: cluster bootstrap (by group) on repeat "
            f"{first}.",
            "",
            "| metric | value | 95% CI |",
            "|---|---|---|",
        ]
        for m in oof_keys:
            lo, hi = s.get(f"oof/{m}_ci95_low"), s.get(f"oof/{m}_ci95_high")
            md.append(
                f"| `oof/{m}` | {_fmt(s[f'oof/{m}'])} | {f'[{_fmt(lo)}, {_fmt(hi)}]' if lo is not None else ''} |"
            )
        if s.get("oof/group_majority_acc") is not None:
            md += [
                "",
                "**By group** (when groups are specimens, the verdict a lab reads off a well): "
                f"{s.get('oof/groups_right')} of {s.get('oof/n_groups')} groups are read as their class by "
                f"the majority of their images (repeat {first}); `oof/group_majority_acc` "
                f"{_fmt(s['oof/group_majority_acc'])}.",
            ]
        if not s.get("oof/multilabel"):
            md += ["", "![pooled confusion matrix](oof_confusion_matrix.png)"]
            if (out_dir / "oof_errors.png").is_file():
                md += [
                    "",
                    "The wrong images (one repeat), most confident first, at most half a row per group:",
                    "",
                    "![wrong out-of-fold images](oof_errors.png)",
                ]
        else:
            md += ["", "![pooled per-class F1](oof_per_class_f1.png)"]
    for line in coverage:
        md += ["", f"**Coverage:** {line}."]
    if no_predictions:
        md += [
            "",
            f"Jobs without `test_predictions.csv` (not in the pooled predictions): {', '.join(no_predictions)}.",
        ]
    return "\n".join(md) + "\n"


def __getattr__(name: str) -> Any:
    """The sweep evaluation and the Hydra callback moved to :mod:`ana_lightning.jobs.crossval` (this old import path still works)."""
    if name in ("evaluate_sweep", "CVSummaryCallback", "_log_wandb"):
        import importlib

        return getattr(importlib.import_module("ana_lightning.jobs.crossval"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
