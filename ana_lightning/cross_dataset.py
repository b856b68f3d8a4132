"""Cross-dataset evaluation through the ICAP tree: a model of one contest scored on another's cells.

Two datasets rarely name the same classes: the I3A contest has one ``Speckled`` class, ICPR 2012 has
``fine_speckled`` and ``coarse_speckled``; I3A has ``Golgi`` and ``NuMem``, ICPR 2012 ``cytoplasmatic``.
Every class on both sides maps to an ICAP tree label (an AC code, or a level-2 / level-1 node). A model
class and a data class are *shared* when they fall on the same tree node at the finer of the two
levels they both reach, and that level is at least ``min_level`` (2 = the pattern group: I3A
``Speckled`` and ICPR ``fine_speckled``/``coarse_speckled`` meet at ``speckled``; I3A ``Golgi`` and
ICPR ``cytoplasmatic`` only at level 1, ``cytoplasmic``, so they are not shared at ``min_level=2``).
Classes linked that way are joined into one scored class. Only images of scored classes are scored: a
prediction is right when it is one of the scored class's model classes, wrong otherwise (including a
model class the data does not have). The report lists the scored classes, the data classes left out
and how the model predicted them, and the model classes without a counterpart.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.hierarchy import LEVELS, resolve_label
from .taxonomy import Taxonomy

__all__ = [
    "SharedClass",
    "shared_classes",
    "score_cross_dataset",
    "write_cross_dataset_report",
    "cross_dataset_report_lines",
]

log = logging.getLogger(__name__)


@dataclass
class SharedClass:
    """A class both sides have: its tree node, and the model's and the data's classes that fall on it."""

    node: str
    level: int
    model_classes: list[str] = field(default_factory=list)
    data_labels: list[str] = field(default_factory=list)


def _finest(tree: Taxonomy, label: str) -> int:
    return max(lv for lv in LEVELS if resolve_label(tree, label, lv) is not None)


def shared_classes(
    model_nodes: Mapping[str, str], data_labels: Sequence[str], tree: Taxonomy, min_level: int = 2
) -> list[SharedClass]:
    """The scored classes (module docstring), in the order of the model's classes.

    >>> tree = Taxonomy.load()
    >>> [(s.node, s.model_classes, s.data_labels) for s in shared_classes(
    ...     {"Homogeneous": "AC-1", "Speckled": "speckled", "Golgi": "AC-22"}, ["AC-1", "AC-4", "AC-5", "cytoplasmic"], tree)]
    [('AC-1', ['Homogeneous'], ['AC-1']), ('speckled', ['Speckled'], ['AC-4', 'AC-5'])]
    """
    data_labels = list(dict.fromkeys(data_labels))
    edges: list[tuple[str, str, int]] = []
    for c, cn in model_nodes.items():
        for d in data_labels:
            lv = min(_finest(tree, cn), _finest(tree, d))
            if lv >= min_level and resolve_label(tree, cn, lv) == resolve_label(tree, d, lv):
                edges.append((c, d, lv))
    # connected components of the model-class / data-label graph
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for c, d, _ in edges:
        parent[find(("m", c))] = find(("d", d))
    comps: dict[tuple[str, str], SharedClass] = {}
    for c, d, lv in edges:
        root = find(("d", d))
        sc = comps.setdefault(root, SharedClass(node="", level=lv))
        sc.level = min(sc.level, lv)
        if c not in sc.model_classes:
            sc.model_classes.append(c)
        if d not in sc.data_labels:
            sc.data_labels.append(d)
    out = []
    for sc in comps.values():
        sc.node = resolve_label(tree, sc.data_labels[0], sc.level) or sc.data_labels[0]
        sc.model_classes.sort(key=list(model_nodes).index)
        sc.data_labels.sort(key=data_labels.index)
        out.append(sc)
    first = list(model_nodes)
    return sorted(out, key=lambda s: first.index(s.model_classes[0]))


def score_cross_dataset(
    probs: np.ndarray,
    model_classes: Sequence[str],
    model_nodes: Mapping[str, str],
    truth: Sequence[str],
    tree: Taxonomy,
    min_level: int = 2,
    data_labels: Sequence[str] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics over the images of shared classes (``test/acc``, ``test/mca``; ``*_shared_outputs``: the
    argmax taken over the shared classes' outputs only) and the details the report needs.

    ``data_labels``: the labels the shared classes are found from (default: ``truth``), e.g. every
    label of a folder when only some of its images are scored. A model class without a tree label in
    ``model_nodes`` has no counterpart: predicting it is wrong. No image at all gives NaN metrics."""
    model_classes = list(model_classes)
    labels = list(truth) if data_labels is None else list(data_labels)
    on_tree = {c: model_nodes[c] for c in model_classes if c in model_nodes}
    shared = shared_classes(on_tree, labels, tree, min_level)
    if not shared:
        raise ValueError(
            f"the model's classes {dict(model_nodes)} and the data's labels {sorted(set(labels))} share no "
            f"tree node at level {min_level} or finer: nothing can be scored"
        )
    of_label = {d: i for i, s in enumerate(shared) for d in s.data_labels}
    probs = np.asarray(probs, dtype=float).reshape(len(truth), len(model_classes))
    pred = [model_classes[i] for i in probs.argmax(1)]
    keep = [i for i, t in enumerate(truth) if t in of_label]
    cols = [model_classes.index(c) for s in shared for c in s.model_classes]
    restricted = np.full(np.asarray(probs).shape, -np.inf)
    restricted[:, cols] = np.asarray(probs)[:, cols]
    pred_shared = [model_classes[i] for i in restricted.argmax(1)]
    metrics: dict[str, float] = {}
    recalls: dict[str, list[float]] = {"all": [], "shared": []}
    per_class = []
    for k, s in enumerate(shared):
        idx = [i for i in keep if of_label[truth[i]] == k]
        r_all = float(np.mean([pred[i] in s.model_classes for i in idx])) if idx else float("nan")
        r_sh = float(np.mean([pred_shared[i] in s.model_classes for i in idx])) if idx else float("nan")
        if idx:
            recalls["all"].append(r_all)
            recalls["shared"].append(r_sh)
        per_class.append(
            {
                "node": s.node,
                "level": s.level,
                "model_classes": s.model_classes,
                "data_labels": s.data_labels,
                "images": len(idx),
                "recall": r_all,
                "recall_shared_outputs": r_sh,
                "predicted": Counter(pred[i] for i in idx),
            }
        )
    correct = [pred[i] in shared[of_label[truth[i]]].model_classes for i in keep]
    correct_sh = [pred_shared[i] in shared[of_label[truth[i]]].model_classes for i in keep]
    mean = lambda v: float(np.mean(v)) if len(v) else float("nan")  # noqa: E731
    metrics["test/acc"] = mean(correct)
    metrics["test/mca"] = mean(recalls["all"])
    metrics["test/acc_shared_outputs"] = mean(correct_sh)
    metrics["test/mca_shared_outputs"] = mean(recalls["shared"])
    metrics["test/scored_images"] = float(len(keep))
    metrics["test/scored_classes"] = float(len(recalls["all"]))
    unscored = {
        d: Counter(pred[i] for i, t in enumerate(truth) if t == d)
        for d in dict.fromkeys(truth)
        if d not in of_label
    }
    unmatched = [c for c in model_classes if not any(c in s.model_classes for s in shared)]
    details = {
        "shared": shared,
        "per_class": per_class,
        "unscored": unscored,
        "unmatched_model_classes": unmatched,
        "pred": pred,
        "pred_shared": pred_shared,
        "scored": [t in of_label for t in truth],
    }
    return metrics, details


def cross_dataset_report_lines(
    metrics: Mapping[str, float],
    details: Mapping[str, Any],
    model_nodes: Mapping[str, str],
    data_names: Mapping[str, str],
    source: Mapping[str, str],
    min_level: int,
    title: str = "Cross-dataset evaluation through the ICAP tree",
) -> list[str]:
    """The markdown of :func:`write_cross_dataset_report`: metrics, scored classes, the rest.
    ``source``: ``trained`` and ``evaluated`` (what the model was trained on, what it was scored on), or
    ``line``, the sentence said instead."""
    dn = lambda d: f"{data_names.get(d, d)} ({d})" if data_names.get(d, d) != d else d  # noqa: E731
    said = source.get("line") or (
        f"Model trained on {source.get('trained', '?')}; evaluated on {source.get('evaluated', '?')}."
    )
    lines = [
        f"# {title}",
        "",
        said,
        "",
        f"A model class and a data class are scored together when they fall on the same tree node at level "
        f"{min_level} or finer (the finer of the levels both reach). Only images of scored classes are scored; "
        "a prediction of a model class the data does not have counts as wrong.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [
        f"| `{k}` | {v:.4f} |"
        if not k.endswith(("images", "classes", "no_verdict", "mixed"))
        else f"| `{k}` | {int(v)} |"
        for k, v in metrics.items()
    ]
    lines += [
        "",
        "## Scored classes",
        "",
        "| tree node (level) | model class(es) | data class(es) | images | recall | "
        "recall, shared outputs only | predicted as |",
        "|---|---|---|---|---|---|---|",
    ]
    for pc in details["per_class"]:
        pred = ", ".join(f"{c} {n}" for c, n in pc["predicted"].most_common())
        lines.append(
            f"| {pc['node']} ({pc['level']}) | {', '.join(pc['model_classes'])} | "
            f"{', '.join(dn(d) for d in pc['data_labels'])} | {pc['images']} | {pc['recall']:.4f} | "
            f"{pc['recall_shared_outputs']:.4f} | {pred} |"
        )
    lines += ["", "## Data classes not scored (no model class on their tree node)", ""]
    if details["unscored"]:
        lines += ["| data class | images | predicted as |", "|---|---|---|"]
        for d, cnt in details["unscored"].items():
            lines.append(
                f"| {dn(d)} | {sum(cnt.values())} | {', '.join(f'{c} {n}' for c, n in cnt.most_common())} |"
            )
    else:
        lines.append("None: every image was scored.")
    lines += ["", "## Model classes without a counterpart in the data", ""]
    lines.append(
        ", ".join(f"{c} ({model_nodes.get(c, 'no tree label')})" for c in details["unmatched_model_classes"])
        or "None."
    )
    lines += [
        "",
        "Model classes and their tree labels: " + ", ".join(f"{c} → {n}" for c, n in model_nodes.items()),
        "",
    ]
    return lines


def write_cross_dataset_report(
    out_dir: str | Path,
    metrics: Mapping[str, float],
    details: Mapping[str, Any],
    paths: Sequence[str],
    truth: Sequence[str],
    model_nodes: Mapping[str, str],
    data_names: Mapping[str, str],
    source: Mapping[str, str],
    min_level: int,
    stage: str = "test",
) -> Path:
    """``cross_dataset_report.md`` (what was scored, how the rest was predicted) and
    ``<stage>_predictions.csv`` (``test_predictions.csv``; ``val_predictions.csv`` for a validation split)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = cross_dataset_report_lines(metrics, details, model_nodes, data_names, source, min_level)
    report = out_dir / "cross_dataset_report.md"
    report.write_text("\n".join(lines))
    with open(out_dir / f"{stage}_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true_label", "true_class", "scored", "pred", "pred_shared_outputs"])
        for i, p in enumerate(paths):
            w.writerow(
                [
                    p,
                    truth[i],
                    data_names.get(truth[i], truth[i]),
                    int(details["scored"][i]),
                    details["pred"][i],
                    details["pred_shared"][i],
                ]
            )
    (out_dir / "cross_dataset_classes.json").write_text(
        json.dumps(
            [
                {
                    "node": s.node,
                    "level": s.level,
                    "model_classes": s.model_classes,
                    "data_labels": s.data_labels,
                }
                for s in details["shared"]
            ],
            indent=2,
        )
        + "\n"
    )
    return report


def __getattr__(name: str) -> Any:
    """``evaluate_cross_dataset`` (the cross-dataset ``ana-eval`` job) now lives in
    :mod:`ana_lightning.jobs.cross_dataset`."""
    if name == "evaluate_cross_dataset":
        from .jobs.cross_dataset import evaluate_cross_dataset

        return evaluate_cross_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
