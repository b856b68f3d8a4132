"""The test report of a run folder, written from what the model computed during its test loop.

:func:`write_test_report` is what ``ana-train`` and ``ana-eval`` call after testing: it reads the
model's :attr:`~ana_lightning.models.base.ANAModule.test_predictions` (per image: ``index`` into the
tested records, probabilities, targets, decisions) and ``test_details_result`` (per-class metrics
computed once by torchmetrics / :mod:`ana_lightning.metrics`) and writes the files of the model's
task. Nothing is recomputed with another library; models never write files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..taxonomy import LabelError, Taxonomy
from .hierarchy import write_hierarchy_report
from .multilabel import write_multilabel_report
from .tables import (
    plot_confusion_matrix,
    write_classification_report,
    write_group_report,
    write_predictions,
)

__all__ = ["write_test_report", "decision_note"]


def _display_names(class_names: Sequence[str], class_nodes: Mapping[str, str] | None = None) -> list[str]:
    """Each class as the ICAP label it stands for (``class_nodes``: the datamodule's class → tree label, e.g.
    Golgi → AC-22): ``AC-22 Polar/Golgi-like``, ``ICAP node *speckled* (AC-2, …)``; a class that is no tree
    label as it is."""
    tree, nodes, out = Taxonomy.load(), class_nodes or {}, []
    for c in class_names:
        try:
            out.append(tree.describe(tree.parse_label(nodes.get(c, c))))
        except LabelError:
            out.append(c)
    return out


def decision_note(model: Any) -> str:
    """How a multi-label model decided, in words, for its report."""
    from ..models.multilabel import REFERENCE_REPO_THRESHOLD

    hp = model.hparams
    note = {
        "global": f"global threshold {float(hp.threshold):g}",
        "per_class": "per-class thresholds tuned on the validation split (maximum F1 per class)",
        "reference_repo": f"the reference repository's rule: threshold {REFERENCE_REPO_THRESHOLD} with top-1 fallback",
    }[hp.decision_rule]
    if getattr(model, "assembled_from", None):
        note += f"; ensemble of {len(model.assembled_from)} checkpoints ({model.net.combine} averaged)"
    return note


def write_test_report(
    model: Any,
    out_dir: str | Path,
    records: Sequence[Any],
    metrics: Mapping[str, Any],
    stage: str = "test",
    class_nodes: Mapping[str, str] | None = None,
) -> None:
    """The report files of the model's last test run over ``records`` (the tested dataset, in loader order;
    ``class_nodes``: each class's ICAP tree label, the datamodule's :meth:`class_nodes`, named in the report):

    - single-label (softmax, Siamese): ``{stage}_confusion_matrix.png``, ``{stage}_per_class.csv``,
      ``{stage}_report.md`` and ``{stage}_predictions.csv``; with grouped records (specimen, slide,
      patient) also ``{stage}_per_group.csv`` and a per-group table in the report;
    - multi-label: :func:`~ana_lightning.reports.multilabel.write_multilabel_report`;
    - hierarchical (multi-head): :func:`~ana_lightning.reports.hierarchy.write_hierarchy_report`.
    """
    out_dir = Path(out_dir)
    task = getattr(model, "task", "single_label")
    pred = getattr(model, "test_predictions", None) or {}
    details = getattr(model, "test_details_result", None)
    if task == "multi_label":
        if details and pred:
            write_multilabel_report(
                out_dir,
                details,
                model.class_names,
                metrics,
                [records[int(i)].path for i in pred["index"]],
                pred["prob"],
                pred["pred"],
                pred["target"],
                model.thresholds.cpu(),
                decision_note(model),
                stage=stage,
            )
        return
    if task == "hierarchical":
        if pred:
            _write_multihead_report(model, out_dir, records, metrics, pred, stage)
        return
    names = list(model.class_names)
    if details:
        mca = metrics.get(f"{stage}/mca", float("nan"))
        plot_confusion_matrix(
            details["confmat"],
            names,
            out_dir / f"{stage}_confusion_matrix.png",
            title=f"{stage}: MCA {mca:.3f}",
        )
        write_classification_report(
            details,
            names,
            out_dir,
            summary=metrics,
            display_names=_display_names(names, class_nodes),
            stage=stage,
        )
    if pred:
        tested = [records[int(i)] for i in pred["index"]]
        write_predictions(
            [r.path for r in tested],
            pred["prob"],
            pred["target"],
            names,
            out_dir / f"{stage}_predictions.csv",
        )
        if details and pred.get("target") is not None:
            write_group_report(
                [getattr(r, "group", None) for r in tested],
                pred["target"],
                pred["prob"].argmax(-1),
                names,
                out_dir,
                stage=stage,
            )
        if pred.get("target") is not None:
            _error_gallery(tested, pred, names, out_dir, stage, bool(details))


def _error_gallery(
    tested: Sequence[Any],
    pred: Mapping[str, torch.Tensor],
    names: Sequence[str],
    out_dir: Path,
    stage: str,
    md: bool,
) -> None:
    """``{stage}_errors.png`` (the wrong images, most confident first) and its place in the report."""
    from .gallery import plot_error_gallery

    gallery = plot_error_gallery(
        [r.path for r in tested],
        [int(t) for t in pred["target"].tolist()],
        pred["prob"].detach().cpu().float().numpy(),
        names,
        [getattr(r, "group", None) for r in tested],
        out_dir / f"{stage}_errors.png",
    )
    report = out_dir / f"{stage}_report.md"
    if gallery is not None and md and report.is_file():
        with open(report, "a") as f:
            f.write(
                "\n## Wrong images\n\nThe most confident errors of each true class (at most half a row from one "
                "group), each tile contrast-stretched on its own:\n\n"
                f"![wrong images, most confident first]({gallery.name})\n"
            )


def _write_multihead_report(
    model: Any,
    out_dir: Path,
    records: Sequence[Any],
    metrics: Mapping[str, Any],
    pred: Mapping[str, torch.Tensor],
    stage: str,
) -> None:
    from ..models.routing import PathPrediction

    names = model.level_names
    truth = [
        tuple(names[lv][v] if v >= 0 else None for lv, v in enumerate(t)) for t in pred["target"].tolist()
    ]
    rows = pred["pred"].tolist()
    picked = [[names[lv][v] if v >= 0 else None for v in (r[lv] for r in rows)] for lv in range(3)]
    path_pred = PathPrediction(picked[0], picked[1], picked[2], pred["score"])
    write_hierarchy_report(
        out_dir,
        [records[int(i)].path for i in pred["index"]],
        truth,
        path_pred,
        model.tree,
        stage=stage,
        summary=metrics,
    )
