"""``ana-predict truth=…``: score a model's answers against labels the user already knows.

A lab handed a model (a checkpoint or the ``model.onnx`` of ``ana-export``) checks it on its own labelled
images before relying on it: fields or cut cells whose class it knows from their folder (``ac-3/…``), from
a contest's label CSV beside the cells (``truth=i3a2014`` / ``truth=icpr2012``), or from a CSV of its own
(``truth=<file.csv>``, columns ``path`` and ``truth_column``). The images are predicted exactly as without
``truth`` (fields, cut cells, specimens), then each decision is scored through the ICAP tree as
``ana-eval``'s cross-dataset evaluation scores one (:mod:`ana_lightning.cross_dataset`): a known label
and a model class are one scored class when they meet on a tree node at level ``truth_min_level`` or
finer, so folders named ``ac-4`` and ``ac-5`` are both right when a contest model says ``Speckled``.

The labels are read, and checked to share a tree node with the model's classes, before anything is
predicted. Written beside ``predictions.csv``: ``truth_report.md`` (metrics with a bootstrap interval,
recall per scored class, what the model said for every other label), ``truth_confusion.png``/``.csv``
(known label against verdict, with a "no verdict" column), ``truth_metrics.json`` (``truth/…``
keys; with ``group_by``, when specimens were written, also ``specimen/…``) and ``truth_predictions.csv``.
An image without a verdict (unreadable, ``insufficient cells``) is counted, not scored:
``truth/no_verdict`` counts those of scored classes and ``truth/mca_all`` counts them as wrong.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cross_dataset import cross_dataset_report_lines, score_cross_dataset, shared_classes
from ..data.images import first_few
from ..taxonomy import LabelError, Taxonomy, natural_key

__all__ = ["SOURCES", "check_shared", "model_class_nodes", "read_truth", "score_truth", "truth_names"]

log = logging.getLogger(__name__)

#: ``truth=`` values other than a CSV file.
SOURCES = ("folder", "i3a2014", "icpr2012")


def _tree_label(tree: Taxonomy, label: str) -> str | None:
    """An AC code, a tree node or an ICAP pattern name as the tree spells it (case, spaces, ``_``, ``-`` and
    ``/`` do not matter; a node before a pattern name of the same spelling), or None."""
    from ..data.contest_labels import _norm

    if tree.is_code(label):
        return tree.parse_code(label)
    named = {_norm(name): code for code, name in tree.names.items()}
    named |= {_norm(n): n for lv in (1, 2) for n in tree.nodes(lv)}
    return named.get(_norm(label))


def model_class_nodes(predictor: Any, ckpt_path: str | None) -> dict[str, str]:
    """Each model class's ICAP tree label: what an exported file carries (``class_nodes``), else what
    the checkpoint's datamodule stored, else the class name itself when it is a tree label. A class
    with none is left out: predicting it is then wrong (:func:`check_shared` names it)."""
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
        label = _tree_label(tree, str(nodes.get(c, c)))
        if label is not None:
            out[c] = label
    if not out:
        raise ValueError(
            f"truth=: the model's classes {list(predictor.class_names)} name no ICAP tree label and the model "
            "does not say which node each is (a file exported before round 11 lacks it: export it again)"
        )
    return out


def check_shared(
    truth_of: Mapping[str, str], classes: Sequence[str], nodes: Mapping[str, str], min_level: int
) -> None:
    """Before predicting: the known labels must meet at least one model class on the tree; model classes
    without a tree label are named (predicting them counts as wrong)."""
    tree = Taxonomy.load()
    labels = sorted(set(truth_of.values()))
    if not shared_classes(dict(nodes), labels, tree, min_level):
        raise ValueError(
            f"truth=: the known labels ({', '.join(labels)}) and the model's classes "
            f"({', '.join(f'{c} → {n}' for c, n in nodes.items())}) share no ICAP tree node at level {min_level} "
            "or finer: nothing could be scored (truth_min_level=1 compares the level-1 nodes)"
        )
    lacking = [c for c in classes if c not in nodes]
    if lacking:
        log.warning(
            "truth=: model class(es) %s have no ICAP tree label: an image read as one of them counts as wrong",
            ", ".join(lacking),
        )


def _parse(label: str, tree: Taxonomy, nodes: Mapping[str, str]) -> str:
    """A known label as a tree label: a model class name, an AC code, a tree node or an ICAP pattern name
    (``Smooth nuclear envelope``; case, spaces, ``_``, ``-`` and ``/`` ignored), or a contest class name
    (I3A 2014, ICPR 2012).

    >>> tree = Taxonomy.load()
    >>> [_parse(x, tree, {"NuMem": "nuclear envelope"}) for x in ("numem", "ac_11", "Nuclear_envelope", "centromere")]
    ['nuclear envelope', 'AC-11', 'nuclear envelope', 'centromere']
    """
    from ..data.contest_labels import _norm, map_contest_label

    by_name = {_norm(c): n for c, n in nodes.items()}
    found = by_name.get(_norm(label)) or _tree_label(tree, label)
    if found is not None:
        return found
    for contest in ("i3a2014", "icpr2012"):
        try:
            return map_contest_label(tree, contest, label)
        except LabelError:
            continue
    raise LabelError(label)


def _parser(tree: Taxonomy, nodes: Mapping[str, str]):
    """:func:`_parse`, once per distinct spelling (a folder of 10,000 cells has a handful of labels)."""
    done: dict[str, str | LabelError] = {}

    def parse(label: str) -> str:
        if label not in done:
            try:
                done[label] = _parse(label, tree, nodes)
            except LabelError as e:
                done[label] = e
        if isinstance(done[label], LabelError):
            raise done[label]
        return done[label]

    return parse


def _folder_labels(files: Sequence[Path], input_root: Path, parse) -> tuple[dict[Path, str], dict[Path, str]]:
    """Each image's nearest folder (up to ``input`` itself) whose name is a label: ``ac-3/specimen12/f.png``
    is AC-3. ``(raw labels, where)``; an image under no such folder gets its parent's name, to be refused."""

    def is_label(name: str) -> bool:
        try:
            parse(name)
        except LabelError:
            return False
        return True

    nearest = label_folders(input_root, is_label)
    raw, where = {}, {}
    for f in files:
        folder = nearest(f.parent) or f.parent  # none: its own name, to be refused by name
        raw[f], where[f] = folder.name, f"folder {folder}"
    return raw, where


def label_folders(input_root: Path, is_label: Callable[[str], bool]) -> Callable[[Path], Path | None]:
    """``truth=folder``'s rule: ``nearest(parent)`` is ``parent`` or its nearest ancestor, up to and
    including ``input=`` itself, whose name ``is_label``; None when there is none. Cached per folder (a
    folder of 10,000 cells has a handful)."""
    top = input_root.resolve() if input_root.is_dir() else input_root.resolve().parent

    @functools.cache
    def nearest(parent: Path) -> Path | None:
        folder = parent
        while not is_label(folder.name):
            if folder.resolve() == top or folder.parent == folder:
                return None
            folder = folder.parent
        return folder

    return nearest


def read_truth(
    files: Sequence[Path],
    input_root: Path,
    truth: str,
    truth_column: str,
    nodes: Mapping[str, str],
) -> dict[str, str]:
    """``{str(image path) as predictions.csv writes it: tree label}`` for every file. Raises naming the
    images or rows that have no readable label, before anything is predicted."""
    tree = Taxonomy.load()
    parse = _parser(tree, nodes)
    source = str(truth)
    unread: list[str] = []
    if source == "folder":
        raw, where = _folder_labels(files, input_root, parse)
    elif source in ("i3a2014", "icpr2012"):
        from ..data.contest import _read_contest, read_icpr2012
        from ..data.records import DatasetError

        root = input_root if input_root.is_dir() else input_root.parent
        try:
            if source == "icpr2012":
                data = read_icpr2012(root, tree, on_bad_file="skip", check_images=False, need_masks=False)
            else:
                data = _read_contest(root, tree, source, None, None, "skip", False, False)
        except DatasetError as e:
            raise ValueError(
                f"truth={source}: {e}\n(ana-predict reads the contest's one label CSV in input=; "
                f"otherwise give truth=<file.csv> with columns path,{truth_column})"
            ) from None
        known = {Path(r.path).resolve(): r.codes[0] for r in data.records}
        raw, where = {}, {}
        for f in files:
            if f.resolve() in known:
                raw[f], where[f] = known[f.resolve()], f"the {source} label CSV"
        unread = [f"{b.path}: {b.reason}" for b in data.bad if "no image file" not in b.reason]
    else:
        table = Path(source).expanduser()
        if not table.is_file():
            raise FileNotFoundError(
                f"truth={truth}: expected one of {', '.join(SOURCES)} or a CSV file with columns path,{truth_column}"
            )
        from .io import path_table

        rows = path_table(files, input_root, table, truth_column, "truth_column", "labels")
        raw = {f: value for f, (value, _) in rows.items() if value}
        where = {f: f"{table}:{line}" for f, (_, line) in rows.items()}
    missing = [f for f in files if f not in raw]
    if missing:
        shown = first_few(missing, 5)
        raise ValueError(
            f"truth={truth}: no known label for {len(missing)} of {len(files)} image(s): {shown}"
            + ("" if source in SOURCES else " (rows give paths relative to input=, or file names)")
            + (f"; label CSV rows not read: {'; '.join(unread[:3])}" if unread else "")
        )
    out: dict[str, str] = {}
    bad: dict[str, list[str]] = {}
    for f, label in raw.items():
        try:
            out[str(f)] = parse(label)
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


def written_rows(csv_path: Path, classes: Sequence[str]) -> list[tuple[dict[str, str], list[str]]]:
    """The rows of a written ``predictions.csv`` / ``specimens.csv``, each with its ``p_<class>`` values
    (``""`` where a row has none), in ``classes``' order."""
    with open(csv_path, newline="") as fh:
        return [(r, [r.get(f"p_{c}") or "" for c in classes]) for r in csv.DictReader(fh)]


def _rows(csv_path: Path, classes: Sequence[str], key: str, decision: str) -> list[dict[str, Any]]:
    out = []
    for r, probs in written_rows(csv_path, classes):
        ok = r.get("status", "ok") == "ok" and r.get(decision, "") in classes and all(probs)
        out.append(
            {
                "key": r[key],
                "decision": r.get(decision, "") if ok else (r.get(decision) or r.get("status") or "error"),
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
) -> tuple[dict[str, float], dict[str, Any]]:
    """``score_cross_dataset`` on the rows with a verdict (the scored classes found from every row's
    label), the rows without one counted, and a bootstrap interval of MCA."""
    from ..stats import bootstrap_intervals, label_matrix

    decided = [i for i, r in enumerate(rows) if r["probs"] is not None]
    probs = np.stack([rows[i]["probs"] for i in decided]) if decided else np.zeros((0, len(classes)))
    # the written decision, exactly: its column made the largest (a single-label verdict is the argmax)
    probs = probs + np.asarray([[c == rows[i]["decision"] for c in classes] for i in decided], float).reshape(
        probs.shape
    )
    t = [truth[i] for i in decided]
    metrics, details = score_cross_dataset(
        probs, list(classes), dict(nodes), t, tree, min_level, data_labels=truth
    )
    metrics = {k.replace("test/", f"{prefix}/"): v for k, v in metrics.items()}
    shared = details["shared"]
    of = {d: s for s in shared for d in s.data_labels}
    node_of = {c: s.node for s in shared for c in s.model_classes}
    scored = [k for k, lab in enumerate(t) if lab in of]
    true_n = [of[t[k]].node for k in scored]
    pred_n = [node_of.get(details["pred"][k], "other") for k in scored]
    names = list(dict.fromkeys(true_n + pred_n))
    cl = [clusters[decided[k]] for k in scored] if clusters is not None else None
    ci = bootstrap_intervals(label_matrix(true_n, names), label_matrix(pred_n, names), ["mca"], clusters=cl)
    metrics[f"{prefix}/mca_ci95_low"], metrics[f"{prefix}/mca_ci95_high"] = ci["mca"]
    # rows without a verdict: in the report under their label; wrong in mca_all when their class is scored
    no_verdict = [i for i, r in enumerate(rows) if r["probs"] is None]
    pcs = {pc["node"]: pc for pc in details["per_class"]}
    for i in no_verdict:
        reason = f"no verdict: {rows[i]['decision']}"
        if truth[i] in of:
            pcs[of[truth[i]].node]["predicted"][reason] += 1
            pcs[of[truth[i]].node]["images"] += 1
        else:
            details["unscored"].setdefault(truth[i], Counter())[reason] += 1
    metrics[f"{prefix}/no_verdict"] = float(sum(truth[i] in of for i in no_verdict))
    recalls = []
    for s in shared:
        n_right = sum(details["pred"][k] in s.model_classes for k in scored if of[t[k]] is s)
        n_all = sum(of[t[k]] is s for k in scored) + sum(of.get(truth[i]) is s for i in no_verdict)
        if n_all:
            recalls.append(n_right / n_all)
    metrics[f"{prefix}/mca_all"] = float(np.mean(recalls)) if recalls else math.nan
    details["no_verdict"] = Counter(rows[i]["decision"] for i in no_verdict if truth[i] in of)
    details["of"] = of
    return metrics, details


def _confusion_figure(
    path: Path,
    rows: Sequence[dict[str, Any]],
    truth: Sequence[str],
    classes: Sequence[str],
    details: Mapping[str, Any],
    data_names: Mapping[str, str],
    unit: str,
) -> Path:
    """``truth_confusion.png`` and ``.csv``: a row per scored class (its tree node) and then per other label,
    a column per model class and one for "no verdict"; counts (the figure shaded by the share of the row)."""
    from ..reports import plot_confusion_matrix

    of = details["of"]
    scored = [s.node for s in details["shared"]]
    others = sorted({t for t in truth if t not in of}, key=natural_key)
    row_of = {**{d: s.node for d, s in of.items()}, **{t: t for t in others}}
    names = scored + others
    cols = [*classes, "no verdict"]
    cm = np.zeros((len(names), len(cols)), dtype=int)
    for r, t in zip(rows, truth, strict=True):
        j = classes.index(r["decision"]) if r["probs"] is not None else len(classes)
        cm[names.index(row_of[t]), j] += 1
    shown = [f"{data_names[n]} ({n})" if data_names.get(n, n) != n else n for n in names]
    shown = [f"{n} (not scored)" if names[i] in others else n for i, n in enumerate(shown)]
    with open(path.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["known label", "scored", *cols])
        for i, n in enumerate(names):
            w.writerow([n, int(n not in others), *cm[i].tolist()])
    return plot_confusion_matrix(
        cm, shown, path, title=f"{len(rows)} {unit}s: known label vs verdict", col_names=cols
    )


def score_truth(
    csv_path: Path,
    truth_of: Mapping[str, str],
    classes: Sequence[str],
    nodes: Mapping[str, str],
    min_level: int = 2,
    groups: Mapping[str, str] | None = None,
    source: str = "",
    data_names: Mapping[str, str] | None = None,
    specimens: bool = False,
) -> dict[str, float]:
    """Score ``predictions.csv`` against ``truth_of`` (:func:`read_truth`) and write the report and
    metrics beside it. ``groups`` (``{image path: specimen}``, from ``group_by``) makes the interval a
    bootstrap over specimens; ``specimens``: this run wrote ``specimens.csv``, which is scored too."""
    tree = Taxonomy.load()
    out_dir = Path(csv_path).parent
    with open(csv_path, newline="") as fh:
        header = next(csv.reader(fh), [])
    decision = "verdict" if "verdict" in header else "pred"
    rows = _rows(Path(csv_path), classes, "path", decision)
    truth = [truth_of[r["key"]] for r in rows]
    unit = "field" if decision == "verdict" else "image"
    clusters = [groups[r["key"]] for r in rows] if groups else None
    metrics, details = _score(rows, truth, classes, nodes, tree, min_level, clusters, "truth")
    metrics["truth/images"] = float(len(rows))
    sections = [(unit, "truth", metrics, details)]
    spec_file = out_dir / "specimens.csv"
    if specimens and groups and spec_file.is_file():
        labels: dict[str, set[str]] = {}
        for r, t in zip(rows, truth, strict=True):
            labels.setdefault(groups[r["key"]], set()).add(t)
        srows = _rows(spec_file, classes, "specimen", "top1")
        mixed = sorted(s["key"] for s in srows if len(labels.get(s["key"], ())) != 1)
        if mixed:
            log.warning(
                "truth=: %d specimen(s) hold images of several known labels and are not scored: %s",
                len(mixed),
                ", ".join(mixed[:10]),
            )
        srows = [s for s in srows if s["key"] not in mixed]
        struth = [next(iter(labels[s["key"]])) for s in srows]
        try:
            sm, sd = _score(srows, struth, classes, nodes, tree, min_level, None, "specimen")
        except ValueError as e:  # no specimen of a scored class: the image figures stand alone
            log.warning("truth=: specimens not scored (%s)", e)
        else:
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
            {
                "line": f"Model {source or '(unnamed)'}, one verdict per {name}, scored against the known labels."
            },
            min_level,
            title=f"{name.capitalize()} verdicts against the known labels",
        )
        n_none = int(m[f"{prefix}/no_verdict"])
        if n_none:
            lines.append(
                f"{n_none} {name}(s) of scored classes had no verdict "
                f"({', '.join(f'{k} {n}' for k, n in d['no_verdict'].most_common())}): counted under 'images' and "
                "'predicted as', not in `acc`/`mca` or the recall column, and wrong in `mca_all`.\n"
            )
        parts.append("\n".join(lines))
    parts.append(
        "Intervals (`mca_ci95_low`/`high`): percentile bootstrap, "
        + (
            f"whole specimens (`group_by`) drawn together for the {unit}s; specimens one by one."
            if groups
            else f"{unit}s drawn one by one; cells or fields of one specimen are not independent, "
            "so give `group_by` for an interval over specimens."
        )
        + "\n"
    )
    figure = _confusion_figure(
        out_dir / "truth_confusion.png", rows, truth, classes, details, data_names or {}, unit
    )
    parts.insert(1, f"![known label against the verdict, one row per label]({figure.name})\n")
    (out_dir / "truth_report.md").write_text("\n".join(parts))
    of = details["of"]
    with open(out_dir / "truth_predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true_label", "scored", "verdict", "right"])
        for r, t in zip(rows, truth, strict=True):
            right = "" if t not in of or r["probs"] is None else int(r["decision"] in of[t].model_classes)
            w.writerow([r["key"], t, int(t in of), r["decision"], right])
    return metrics
