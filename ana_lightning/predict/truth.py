"""``ana-predict truth=…``: score a model's answers against labels the user already knows.

A lab handed a model (a checkpoint or the ``model.onnx`` of ``ana-export``) checks it on its own labelled
images before relying on it: fields or cut cells whose class it knows from their folder (``ac-3/…``), from
a contest's label CSV beside the cells (``truth=i3a2014`` / ``truth=icpr2012``), or from a CSV of its own
(``truth=<file.csv>``, columns ``path`` and ``truth_column``). The images are predicted exactly as without
``truth`` (fields, cut cells, specimens), then each decision is scored through the ICAP tree as
``ana-eval``'s cross-dataset evaluation scores one (:mod:`ana_lightning.cross_dataset`): a known label
and a model class are one scored class when they meet on a tree node at level ``truth_min_level`` or
finer, so folders named ``ac-4`` and ``ac-5`` are both right when a contest model says ``Speckled``.

Written beside ``predictions.csv``: ``truth_report.md`` (metrics with a bootstrap interval, recall per
scored class, what the model said for the rest), ``truth_metrics.json`` (``truth/…`` keys; with
``group_by`` also ``specimen/…``) and ``truth_predictions.csv``. A row without a verdict (unreadable,
``insufficient cells``) is counted, not scored, and ``truth/mca_all`` counts it as wrong.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cross_dataset import cross_dataset_report_lines, score_cross_dataset
from ..taxonomy import LabelError, Taxonomy

__all__ = ["SOURCES", "model_class_nodes", "read_truth", "score_truth", "truth_names"]

log = logging.getLogger(__name__)

#: ``truth=`` values other than a CSV file.
SOURCES = ("folder", "i3a2014", "icpr2012")


def model_class_nodes(predictor: Any, ckpt_path: str | None) -> dict[str, str]:
    """Each model class's ICAP tree label: what an exported file carries (``class_nodes``), else what
    the checkpoint's datamodule stored, else the class name itself when it is a tree label."""
    nodes = dict((getattr(predictor.info, "extra", {}) or {}).get("class_nodes") or {})
    if not nodes and ckpt_path and Path(str(ckpt_path)).suffix.lower() == ".ckpt":
        from ..data.run_config import training_data_config

        try:
            nodes = training_data_config(ckpt_path)[1]
        except Exception as e:  # noqa: BLE001 - a checkpoint the predictor could load; keep the names
            log.debug("no class nodes from %s: %s", ckpt_path, e)
    tree = Taxonomy.load()
    out = {}
    for c in predictor.class_names:
        label = nodes.get(c, c)
        try:
            out[c] = tree.parse_label(label)
        except LabelError:
            continue
    if not out:
        raise ValueError(
            f"truth=: the model's classes {list(predictor.class_names)} name no ICAP tree label and the model "
            "does not say which node each is (a file exported before round 11 lacks it: export it again)"
        )
    return out


def _parse(label: str, tree: Taxonomy, nodes: Mapping[str, str]) -> str:
    """A known label as a tree label: a model class name (any case), an AC code or tree node, or a
    contest class name (I3A 2014, ICPR 2012)."""
    by_name = {c.lower(): n for c, n in nodes.items()}
    if label.strip().lower() in by_name:
        return by_name[label.strip().lower()]
    try:
        return tree.parse_label(label.strip())
    except LabelError:
        pass
    from ..data.contest_labels import map_contest_label

    for contest in ("i3a2014", "icpr2012"):
        try:
            return map_contest_label(tree, contest, label)
        except LabelError:
            continue
    raise LabelError(
        f"{label!r} is neither one of the model's classes ({', '.join(nodes)}), an AC code or ICAP tree node, "
        "nor a contest class name"
    )


def read_truth(
    files: Sequence[Path],
    input_root: Path,
    truth: str,
    truth_column: str,
    nodes: Mapping[str, str],
) -> dict[str, str]:
    """``{resolved path: tree label}`` for every file. Raises naming the files or rows that have no
    readable label, before anything is predicted."""
    tree = Taxonomy.load()
    source = str(truth)
    raw: dict[Path, str] = {}
    where: dict[Path, str] = {}
    if source == "folder":
        for f in files:
            raw[f], where[f] = f.parent.name, f"folder {f.parent}"
    elif source in ("i3a2014", "icpr2012"):
        from ..data.contest import _read_contest, read_icpr2012

        root = input_root if input_root.is_dir() else input_root.parent
        if source == "icpr2012":
            data = read_icpr2012(root, tree, on_bad_file="skip", check_images=False, need_masks=False)
        else:
            data = _read_contest(root, tree, source, None, None, "skip", False, False)
        known = {Path(r.path).resolve(): r.codes[0] for r in data.records}
        for f in files:
            if f.resolve() in known:
                raw[f], where[f] = known[f.resolve()], f"the {source} label CSV"
    else:
        table = Path(source).expanduser()
        if not table.is_file():
            raise FileNotFoundError(
                f"truth={truth}: expected one of {', '.join(SOURCES)} or a CSV file with columns path,{truth_column}"
            )
        with open(table, newline="", encoding="utf-8-sig") as fh:
            rd = csv.DictReader(fh)
            if not rd.fieldnames or "path" not in rd.fieldnames or truth_column not in rd.fieldnames:
                raise ValueError(
                    f"{table}: needs columns 'path' and '{truth_column}' (truth_column=…); has {rd.fieldnames}"
                )
            rows = {r["path"].strip(): (r[truth_column] or "").strip() for r in rd}
        for f in files:
            rel = f.relative_to(input_root).as_posix() if input_root.is_dir() else f.name
            for key in (rel, f.name, str(f)):
                if rows.get(key):
                    raw[f], where[f] = rows[key], f"{table}, row {key}"
                    break
    missing = [f for f in files if f not in raw]
    if missing:
        shown = ", ".join(str(f) for f in missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise ValueError(
            f"truth={truth}: no known label for {len(missing)} of {len(files)} image(s): {shown}"
            + ("" if source == "folder" else " (rows give paths relative to input=, or file names)")
        )
    out: dict[str, str] = {}
    bad: dict[str, list[str]] = {}
    for f, label in raw.items():
        try:
            out[str(f.resolve())] = _parse(label, tree, nodes)
        except LabelError:
            bad.setdefault(label, []).append(where[f])
    if bad:
        listed = "; ".join(
            f"{lab!r} ({places[0]}{', …' if len(places) > 1 else ''})" for lab, places in bad.items()
        )
        raise LabelError(
            f"truth={truth}: label(s) that are not one of the model's classes ({', '.join(nodes)}), an AC code or "
            f"ICAP tree node, nor a contest class name: {listed}"
        )
    return out


def truth_names(truth: str) -> dict[str, str]:
    """Tree label → the contest's class name for ``truth=i3a2014`` / ``icpr2012`` (the report shows both)."""
    if str(truth) not in ("i3a2014", "icpr2012"):
        return {}
    from ..data.contest_labels import contest_class_of

    return contest_class_of(Taxonomy.load(), str(truth))


def _rows(csv_path: Path, classes: Sequence[str], key: str, decision: str) -> list[dict[str, Any]]:
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        probs = [r.get(f"p_{c}", "") for c in classes]
        ok = r.get("status", "ok") == "ok" and r.get(decision, "") in classes and all(probs)
        out.append(
            {
                "key": r[key],
                "decision": r.get(decision, "") if ok else (r.get(decision) or r.get("error") or "error"),
                "probs": np.asarray([float(p) for p in probs]) if ok else None,
            }
        )
    return out


def _score(
    rows: Sequence[dict[str, Any]],
    truth: Sequence[str],
    classes: Sequence[str],
    nodes: Mapping[str, str],
    tree: Taxonomy,
    min_level: int,
    clusters: Sequence[str] | None,
    prefix: str,
) -> tuple[dict[str, float], dict[str, Any], list[int]]:
    """``score_cross_dataset`` on the rows with a verdict, with coverage and a bootstrap interval of MCA."""
    from ..stats import bootstrap_intervals, label_matrix

    decided = [i for i, r in enumerate(rows) if r["probs"] is not None]
    if not decided:
        raise ValueError(f"truth=: no {prefix} has a verdict, nothing can be scored")
    probs = np.stack([rows[i]["probs"] for i in decided])
    # the written decision, exactly: its column made the largest (a single-label verdict is the argmax)
    probs = probs + np.asarray([[c == rows[i]["decision"] for c in classes] for i in decided], float)
    t = [truth[i] for i in decided]
    metrics, details = score_cross_dataset(probs, list(classes), dict(nodes), t, tree, min_level)
    metrics = {k.replace("test/", f"{prefix}/"): v for k, v in metrics.items()}
    of = {d: s.node for s in details["shared"] for d in s.data_labels}
    node_of = {c: s.node for s in details["shared"] for c in s.model_classes}
    scored = [k for k, lab in enumerate(t) if lab in of]
    true_n = [of[t[k]] for k in scored]
    pred_n = [node_of.get(details["pred"][k], "other") for k in scored]
    names = list(dict.fromkeys(true_n + pred_n))
    cl = [clusters[decided[k]] for k in scored] if clusters is not None else None
    ci = bootstrap_intervals(
        label_matrix(true_n, names), label_matrix(pred_n, names), ["mca", "acc"], clusters=cl
    )
    metrics[f"{prefix}/mca_ci95_low"], metrics[f"{prefix}/mca_ci95_high"] = ci["mca"]
    # rows of scored classes without a verdict: counted, and wrong in mca_all
    no_verdict = [i for i, r in enumerate(rows) if r["probs"] is None and truth[i] in of]
    metrics[f"{prefix}/no_verdict"] = float(len(no_verdict))
    recalls = []
    for s in details["shared"]:
        n_right = sum(details["pred"][k] in s.model_classes for k in scored if of[t[k]] == s.node)
        n_all = sum(of[t[k]] == s.node for k in scored) + sum(of[truth[i]] == s.node for i in no_verdict)
        if n_all:
            recalls.append(n_right / n_all)
    metrics[f"{prefix}/mca_all"] = float(np.mean(recalls)) if recalls else math.nan
    details["no_verdict"] = Counter(rows[i]["decision"] for i in no_verdict)
    return metrics, details, decided


def score_truth(
    csv_path: Path,
    truth_of: Mapping[str, str],
    classes: Sequence[str],
    nodes: Mapping[str, str],
    min_level: int = 2,
    groups: Mapping[str, str] | None = None,
    source: str = "",
    data_names: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Score ``predictions.csv`` (and ``specimens.csv`` beside it when ``groups`` is given: ``{resolved
    path: specimen}``) against ``truth_of`` (:func:`read_truth`); write the report and metrics beside it."""
    tree = Taxonomy.load()
    out_dir = Path(csv_path).parent
    with open(csv_path, newline="") as fh:
        header = next(csv.reader(fh), [])
    decision = "verdict" if "verdict" in header else "pred"
    rows = _rows(Path(csv_path), classes, "path", decision)
    paths = [str(Path(r["key"]).resolve()) for r in rows]
    truth = [truth_of[p] for p in paths]
    unit = "field" if decision == "verdict" else "image"
    clusters = [groups[p] for p in paths] if groups else None
    metrics, details, _ = _score(rows, truth, classes, nodes, tree, min_level, clusters, "truth")
    metrics["truth/images"] = float(len(rows))
    sections = [(unit, "truth", metrics, details)]
    spec_file = out_dir / "specimens.csv"
    if groups and spec_file.is_file():
        labels: dict[str, set[str]] = {}
        for p, t in zip(paths, truth, strict=True):
            labels.setdefault(groups[p], set()).add(t)
        srows = _rows(spec_file, classes, "specimen", "top1")
        mixed = sorted(s["key"] for s in srows if len(labels.get(s["key"], ())) != 1)
        if mixed:
            log.warning(
                "truth=: %d specimen(s) hold images of several known labels and are not scored: %s",
                len(mixed),
                ", ".join(mixed[:10]),
            )
        srows = [s for s in srows if s["key"] not in mixed]
        if srows:
            struth = [next(iter(labels[s["key"]])) for s in srows]
            sm, sd, _ = _score(srows, struth, classes, nodes, tree, min_level, None, "specimen")
            sm["specimen/mixed"] = float(len(mixed))
            metrics.update(sm)
            sections.append(("specimen", "specimen", sm, sd))
    (out_dir / "truth_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    parts = []
    for name, prefix, m, d in sections:
        lines = cross_dataset_report_lines(
            {k: v for k, v in m.items() if k.startswith(f"{prefix}/")},
            d,
            nodes,
            dict(data_names or {}),
            {"trained": source or "the model", "evaluated": f"the known labels, one verdict per {name}"},
            min_level,
            title=f"{name.capitalize()} verdicts against the known labels",
        )
        if d["no_verdict"]:
            lines.append(
                f"{int(m[f'{prefix}/no_verdict'])} {name}(s) of scored classes had no verdict "
                f"({', '.join(f'{k} {n}' for k, n in d['no_verdict'].most_common())}): not in `acc`/`mca`, "
                "counted as wrong in `mca_all`.\n"
            )
        parts.append("\n".join(lines))
    parts.append(
        "Intervals (`mca_ci95_low`/`high`): percentile bootstrap, "
        + (
            f"whole specimens (`group_by`) drawn together for the {unit}s."
            if groups
            else f"{unit}s drawn one by one; cells or fields of one specimen are not independent, "
            "so give `group_by` for an interval over specimens."
        )
        + "\n"
    )
    (out_dir / "truth_report.md").write_text("\n".join(parts))
    with open(out_dir / "truth_predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true_label", "scored", "verdict", "right"])
        scored_labels = {lab for s in details["shared"] for lab in s.data_labels}
        of = {lab: s.model_classes for s in details["shared"] for lab in s.data_labels}
        for r, t in zip(rows, truth, strict=True):
            decided = r["probs"] is not None
            right = int(decided and r["decision"] in of.get(t, ())) if t in scored_labels else ""
            w.writerow([r["key"], t, int(t in scored_labels), r["decision"], right])
    return metrics
