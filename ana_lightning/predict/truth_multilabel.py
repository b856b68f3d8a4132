"""``ana-predict truth=…`` for a multi-label model: score its answers against label sets a lab already knows.

A hospital handed a multi-label model (the sigmoid ensemble of ``experiment=multilabel_ensemble``, as a
checkpoint or the ``model.onnx`` of ``ana-export``) checks it on its own labelled images before relying
on it. The known labels are sets of AC codes, in the grammar of a hospital folder
(:mod:`ana_lightning.data.hospital_records`): each image's nearest folder whose name holds AC codes
(``truth=folder``: ``patient012/AC-1 + AC-4/img.png`` is {AC-1, AC-4}; as for single-label models the
search goes up to and including ``input=`` itself, so ``input=export/AC-5`` labels every image below it
AC-5, which the hospital reader would refuse), or a CSV of its own
(``truth=<file.csv>``, columns ``path`` and ``truth_column``, e.g. ``AC-1;AC-4``). A label folder or
value with a token that is not an AC code of the tree (a titer, a word) is an error naming it, unless
``truth_strict=false`` ignores such tokens with a warning.

The images are predicted exactly as without ``truth``; each image's decision is the label set written in
``predictions.csv`` (every class at or above the model's own threshold), scored against the known set
over the model's classes: exact match, Hamming loss, micro/weighted F1, MCA, off-by-N, at-least-N-correct
and per-class values (:func:`ana_lightning.metrics_multilabel.multilabel_details`), with percentile
bootstrap intervals (whole specimens drawn together with ``group_by``). Known codes the model has no class
for cannot be scored: an image labelled only with such codes is listed, with what the model said, and
not scored; an image with some is scored on the others and counted in ``truth/partly_outside``. An image
without a verdict (unreadable) is counted in ``truth/no_verdict``, not scored.

Written beside ``predictions.csv``: ``truth_report.md`` (with ``truth_per_class_f1.png``,
``truth_off_by_n.png``, ``truth_pr_curves.png``, ``truth_error_cooccurrence.png``),
``truth_per_class.csv``, ``truth_predictions.csv`` and ``truth_metrics.json`` (``truth/…`` keys; with
``group_by``, when ``specimens.csv`` was written, also ``specimen/…``: a specimen's known set is the one
its images share, its verdict the ``patterns`` of ``specimens.csv``).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import first_few
from ..taxonomy import LabelError, Taxonomy
from .truth import written_rows

__all__ = ["read_truth_sets", "score_truth_multilabel"]

log = logging.getLogger(__name__)

_CONTESTS = ("i3a2014", "icpr2012")


def _codes(
    tree: Taxonomy, label: str, strict: bool, where: str, ignored: dict[str, set[str]], problems: list[str]
) -> tuple[str, ...]:
    """The AC codes of one label (hospital grammar). Other tokens: a problem (``strict``, raised by the
    caller with every other one) or noted in ``ignored``."""
    codes, other = tree.split_codes(label)
    if other:
        if strict:
            problems.append(
                f"{where}: {label!r}: {', '.join(map(repr, other))} is not an AC code of the tree"
            )
        ignored.setdefault(label, set()).update(other)
    return codes


def read_truth_sets(
    files: Sequence[Path],
    input_root: Path,
    truth: str,
    truth_column: str,
    class_names: Sequence[str],
    strict: bool = True,
) -> dict[str, tuple[str, ...]]:
    """``{str(image path) as predictions.csv writes it: its known AC codes}`` for every file, read and
    checked before anything is predicted. Raises naming the images, folders or rows without a readable
    label set, and when no known code is one of the model's classes."""
    source = str(truth)
    if source in _CONTESTS:
        raise ValueError(
            f"truth={source}: the contest's labels are one class per cell, and this model is multi-label "
            f"({', '.join(class_names)}); give truth=folder (folders named by AC codes, e.g. 'AC-1 + AC-4') "
            f"or truth=<file.csv> with columns path,{truth_column} (codes such as AC-1;AC-4)"
        )
    tree = Taxonomy.load()
    ignored: dict[str, set[str]] = {}
    problems: list[str] = []
    out: dict[str, tuple[str, ...]] = {}
    missing: list[Path] = []
    empty: list[str] = []
    if source == "folder":
        from .truth import label_folders

        nearest = label_folders(input_root, lambda name: bool(tree.split_codes(name)[0]))
        codes_of = functools.cache(  # once per folder: its problems are listed once
            lambda folder: _codes(tree, folder.name, strict, f"folder {folder}", ignored, problems)
        )
        for f in files:
            folder = nearest(f.parent)
            if folder is None:
                missing.append(f)
            else:
                out[str(f)] = codes_of(folder)
    else:
        table = Path(source).expanduser()
        if not table.is_file():
            raise FileNotFoundError(
                f"truth={truth}: a multi-label model is scored with truth=folder or a CSV file with columns "
                f"path,{truth_column}; {table} is not a file"
            )
        from .io import path_table

        rows = path_table(files, input_root, table, truth_column, "truth_column", "label sets")
        for f in files:
            if f not in rows:
                missing.append(f)
                continue
            value, line = rows[f]
            codes = _codes(tree, value, strict, f"{table}:{line}", ignored, problems) if value else ()
            if not codes:
                empty.append(
                    f"{table}:{line}: {value!r} names no AC code"
                    if value
                    else f"{table}:{line}: no label set"
                )
                continue
            out[str(f)] = codes
    if problems or empty:
        listed = problems + empty
        raise LabelError(
            f"truth={truth}: {len(listed)} label set(s) that cannot be read: "
            + first_few(listed, 10, "; ")
            + (
                " (rename them, or pass truth_strict=false to ignore such tokens, e.g. a titer 1:160)"
                if problems
                else ""
            )
        )
    if missing:
        shown = first_few(missing, 5)
        where = (
            "no folder up to input= names an AC code"
            if source == "folder"
            else f"no row of {source}; rows give paths relative to input=, or file names"
        )
        raise ValueError(
            f"truth={truth}: no known label set for {len(missing)} of {len(files)} image(s) ({where}): {shown}"
        )
    if ignored and not strict:
        log.warning(
            "truth=%s: tokens that are not AC codes ignored (truth_strict=false): %s",
            truth,
            "; ".join(f"{lab!r}: {', '.join(sorted(t))}" for lab, t in list(ignored.items())[:10]),
        )
    known = {c for codes in out.values() for c in codes}
    if not known & set(class_names):
        raise LabelError(
            f"truth={truth}: none of the known codes ({', '.join(sorted(known, key=tree.codes.index))}) is a class "
            f"of this model ({', '.join(class_names)}): nothing can be scored"
        )
    return out


def _rows(
    written: Sequence[tuple[dict[str, str], list[str]]], classes: Sequence[str], key: str, decision: str
) -> list[dict[str, Any]]:
    """``{"key", "labels" (the written decision, a set), "probs" (None without a verdict), "said"}`` per
    row of a written CSV (:func:`~.truth.written_rows`)."""
    out = []
    for r, probs in written:
        said = r.get(decision) or ""
        labels = {x for x in said.split(";") if x}
        # a decision that is not a set of the model's classes ("insufficient cells") is no verdict
        ok = r.get("status", "ok") == "ok" and all(probs) and labels <= set(classes)
        out.append(
            {
                "key": r[key],
                "labels": labels,
                "probs": np.asarray([float(p) for p in probs]) if ok else None,
                "said": said if ok else (said or r.get("error") or r.get("status") or "error"),
            }
        )
    return out


def _score(
    rows: Sequence[dict[str, Any]],
    truth: Sequence[tuple[str, ...]],
    classes: Sequence[str],
    clusters: Sequence[str] | None,
    prefix: str,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The multi-label metrics of the rows that have a verdict and a known code among ``classes``."""
    import torch

    from ..metrics_multilabel import multilabel_details
    from ..stats import CI_KEYS, bootstrap_intervals

    index = {c: i for i, c in enumerate(classes)}
    scored, unscored, no_verdict, partly = [], Counter(), Counter(), 0
    for i, (r, t) in enumerate(zip(rows, truth, strict=True)):
        inside = [c for c in t if c in index]
        if not inside:
            unscored[(" + ".join(t), r["said"] or "(none)")] += 1
        elif r["probs"] is None:
            no_verdict[r["said"]] += 1
        else:
            scored.append(i)
            partly += len(inside) < len(t)
    if not scored:
        raise ValueError(f"{prefix}: no image with a verdict has a known code among the model's classes")
    k = len(classes)
    target = np.zeros((len(scored), k), dtype=np.int64)
    preds = np.zeros((len(scored), k), dtype=np.int64)
    probs = np.stack([rows[i]["probs"] for i in scored])
    for j, i in enumerate(scored):
        for c in truth[i]:
            if c in index:
                target[j, index[c]] = 1
        for c in rows[i]["labels"]:
            if c in index:
                preds[j, index[c]] = 1
    details = multilabel_details(torch.from_numpy(probs), torch.from_numpy(preds), torch.from_numpy(target))
    metrics = {f"{prefix}/{name}": float(v) for name, v in details["scalars"].items()}
    cl = [clusters[i] for i in scored] if clusters is not None else None
    keys = [key for key in CI_KEYS if key != "acc"]
    for key, (lo, hi) in bootstrap_intervals(target, preds, keys, clusters=cl).items():
        metrics[f"{prefix}/{key}_ci95_low"], metrics[f"{prefix}/{key}_ci95_high"] = lo, hi
    metrics[f"{prefix}/images"] = float(len(rows))
    metrics[f"{prefix}/scored_images"] = float(len(scored))
    metrics[f"{prefix}/no_verdict"] = float(sum(no_verdict.values()))
    metrics[f"{prefix}/unscored_images"] = float(sum(unscored.values()))
    metrics[f"{prefix}/partly_outside"] = float(partly)
    extra = {
        "scored": scored,
        "probs": probs,
        "preds": preds,
        "target": target,
        "unscored": unscored,
        "no_verdict": no_verdict,
    }
    return metrics, {**details, **extra}


def _specimen_truth(
    rows: Sequence[dict[str, Any]], truth: Sequence[tuple[str, ...]], groups: Mapping[str, str]
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Each specimen's known set (the one all its images share) and the specimens whose images differ."""
    sets: dict[str, set[tuple[str, ...]]] = {}
    for r, t in zip(rows, truth, strict=True):
        sets.setdefault(groups[r["key"]], set()).add(tuple(t))  # as read: in the tree's order
    mixed = sorted(g for g, s in sets.items() if len(s) != 1)
    return {g: next(iter(s)) for g, s in sets.items() if len(s) == 1}, mixed


def _specimen_rows(spec_file: Path, classes: Sequence[str], negative: str) -> list[dict[str, Any]]:
    """``specimens.csv`` as scoring rows: the verdict is its ``patterns`` (a screened-negative specimen
    says the negative class when the model has one, else nothing)."""
    written = written_rows(spec_file, classes)
    rows = _rows(written, classes, "specimen", "patterns")
    screening = {r["specimen"]: r.get("screening", "") for r, _ in written}
    for r in rows:
        if r["probs"] is None:  # no usable field: say why (specimens.csv has no status column)
            r["said"] = screening.get(r["key"]) or r["said"]
        elif screening.get(r["key"]) == "negative" and negative in classes:
            r["labels"] = {negative}
    return rows


def _lines(
    title: str, metrics: Mapping[str, float], details: Mapping[str, Any], prefix: str, unit: str
) -> list[str]:
    """Markdown: what was not scored, and why (outside the model's classes, no verdict)."""
    md = [
        "",
        f"{title}: {int(metrics[f'{prefix}/images'])} in all, {int(metrics[f'{prefix}/scored_images'])} scored, "
        f"{int(metrics[f'{prefix}/unscored_images'])} known only by codes the model has no class for, "
        f"{int(metrics[f'{prefix}/no_verdict'])} without a verdict.",
    ]
    if details["unscored"]:
        md += [
            "",
            f"## {title}: known labels the model has no class for (not scored)",
            "",
            f"| known label | the model said | {unit}s |",
            "|---|---|---|",
        ]
        md += [f"| {lab} | {said} | {n} |" for (lab, said), n in sorted(details["unscored"].items())]
    if details["no_verdict"]:
        md += [
            "",
            f"{int(metrics[f'{prefix}/no_verdict'])} {unit}(s) with a known code of the model had no verdict "
            f"({', '.join(f'{k}: {n}' for k, n in details['no_verdict'].most_common(5))}); not scored.",
        ]
    if metrics.get(f"{prefix}/partly_outside"):
        md += [
            "",
            f"{int(metrics[f'{prefix}/partly_outside'])} {unit}(s) also carry known codes the model has no class "
            "for; they are scored on the model's classes only.",
        ]
    return md


def score_truth_multilabel(
    csv_path: Path,
    truth_of: Mapping[str, tuple[str, ...]],
    classes: Sequence[str],
    thresholds: Sequence[float],
    groups: Mapping[str, str] | None = None,
    source: str = "",
    specimens: bool = False,
    negative: str = "AC-0",
) -> dict[str, float]:
    """Score a multi-label model's ``predictions.csv`` against ``truth_of`` (:func:`read_truth_sets`) and
    write the report and metrics beside it; returns the metrics (``truth/…``, ``specimen/…``)."""
    import torch

    from ..reports.multilabel import write_multilabel_report
    from ..reports.tables import write_metrics_json

    out_dir = Path(csv_path).parent
    written = written_rows(Path(csv_path), classes)
    decision = "verdict" if written and "verdict" in written[0][0] else "pred"  # field mode, or whole images
    unit = "field" if decision == "verdict" else "image"
    rows = _rows(written, classes, "path", decision)
    truth = [truth_of[r["key"]] for r in rows]
    clusters = [groups[r["key"]] for r in rows] if groups else None
    metrics, details = _score(rows, truth, classes, clusters, "truth")
    scored = details["scored"]
    note = (
        f"each class at or above the model's own threshold, as written in `{Path(csv_path).name}` "
        f"(model {source or '(unnamed)'}); known label sets from `truth=`"
    )
    report = write_multilabel_report(
        out_dir,
        details,
        list(classes),
        {k: v for k, v in metrics.items() if k.startswith("truth/")},
        [rows[i]["key"] for i in scored],
        torch.from_numpy(details["probs"]),
        torch.from_numpy(details["preds"]),
        torch.from_numpy(details["target"]),
        torch.as_tensor(np.asarray(thresholds, dtype=np.float64)),
        note,
        stage="truth",
    )
    md = _lines("Images", metrics, details, "truth", unit)
    md += [
        "",
        "Intervals (`_ci95_low`/`_high`): percentile bootstrap, "
        + (
            "whole specimens (`group_by`) drawn together."
            if groups
            else f"{unit}s drawn one by one; images of one specimen are not independent, so give `group_by` "
            "for an interval over specimens."
        ),
    ]
    spec_file = out_dir / "specimens.csv"
    if specimens and groups and spec_file.is_file():
        known, mixed = _specimen_truth(rows, truth, groups)
        if mixed:
            log.warning(
                "truth=: %d specimen(s) hold images of different known label sets and are not scored: %s",
                len(mixed),
                ", ".join(mixed[:10]),
            )
        srows = [s for s in _specimen_rows(spec_file, classes, negative) if s["key"] in known]
        try:
            sm, sd = _score(srows, [known[s["key"]] for s in srows], classes, None, "specimen")
        except ValueError as e:
            log.warning("truth=: specimens not scored (%s)", e)
        else:
            sm["specimen/mixed"] = float(len(mixed))
            metrics.update(sm)
            s = sd["scalars"]
            md += [
                "",
                "## Specimens (`group_by`)",
                "",
                f"{int(sm['specimen/scored_images'])} specimen(s) scored, each against the label set its images "
                f"share ({len(mixed)} with images of different sets left out). The verdict is the `patterns` of "
                "`specimens.csv`: the classes of the combined probabilities at the model's thresholds, at most "
                "`top_k`, and the most probable pattern when none reaches its threshold; a specimen screened "
                f"negative says {negative} when the model has that class, else nothing.",
                "",
                "| metric | value |",
                "|---|---|",
            ]
            md += [
                f"| specimen/{k} | {s[k]:.3f} |"
                for k in ("exact_match", "hamming_loss", "micro_f1", "weighted_f1", "mca")
            ]
            md += _lines("Specimens", sm, sd, "specimen", "specimen")
    report.write_text(report.read_text() + "\n".join(md) + "\n")
    write_metrics_json(metrics, out_dir / "truth_metrics.json")  # NaN (an undefined metric) as null
    return metrics
