"""Cross-dataset evaluation (``ana-eval`` with a checkpoint of one dataset on data of another reader):
predict every image, score the classes both share through the ICAP tree
(:mod:`ana_lightning.cross_dataset`), write the report."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..cross_dataset import score_cross_dataset, write_cross_dataset_report
from ..reports import write_metrics_json
from ..taxonomy import Taxonomy
from .common import build_datamodule, renamed, stage_of

__all__ = ["evaluate_cross_dataset"]

log = logging.getLogger(__name__)


def evaluate_cross_dataset(
    cfg: DictConfig,
    model: Any,
    class_nodes: Mapping[str, str],
    trained: Mapping[str, Any] | None,
    run_dir: Path,
) -> tuple[dict[str, float], dict[str, Any]]:
    """``ana-eval`` on a dataset of another kind (another reader): predict every image, score the shared classes."""
    if not callable(getattr(model, "predict_proba", None)) or getattr(model, "task", "") == "multi_label":
        raise ValueError("cross-dataset evaluation takes a single-label model with predict_proba")
    model_classes = list(model.class_names)
    nodes = {c: class_nodes.get(c, c) for c in model_classes}
    tree = Taxonomy.load(cfg.data.get("tree"))
    for c, n in nodes.items():
        if not tree.is_code(n):
            try:
                tree.children(n)
            except Exception:  # noqa: BLE001
                raise ValueError(
                    f"model class {c!r} has no ICAP tree label (the checkpoint stores none): "
                    "cross-dataset evaluation needs one per class"
                ) from None
    overrides: dict[str, Any] = {"classes": None, "image_size": int(model.hparams.image_size)}
    if "level" in cfg.data and cfg.data.get("level") not in ("contest", "all"):
        overrides["level"] = "all"  # every image of the other dataset, whatever level its labels reach
    split = cfg.get("split", "auto")
    split = "all" if split == "auto" or not cfg.data.get("split_manifest") else split
    dm = build_datamodule(cfg, **overrides)
    dm.checks_splits = split != "all"  # every image scored as one set: how the folder would split is no news
    dm.prepare_data()
    dm.setup("test")
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    records = (
        [r for s in ("train", "val", "test") for r in dm.splits[s]] if split == "all" else dm.splits[split]
    )
    loader = torch.utils.data.DataLoader(
        dm.make_dataset(records, train=False),
        batch_size=int(cfg.data.batch_size),
        num_workers=int(cfg.data.get("num_workers") or 0),
    )
    model.eval()
    with torch.no_grad():
        probs = torch.cat([model.predict_proba(b["image"]) for b in loader]).cpu().numpy()
    truth = [r.codes[0] for r in records]
    min_level = int(cfg.get("cross_dataset_min_level", 2))
    metrics, details = score_cross_dataset(probs, model_classes, nodes, truth, tree, min_level)
    stage = stage_of(split)  # val/mca, val_predictions.csv when the manifest's validation split was read
    metrics = {renamed(k, stage): v for k, v in metrics.items()}
    data_names = dict(getattr(dm, "_contest_of", {}) or {})  # tree label -> the data's class name
    source = {
        "trained": _describe(trained),
        "evaluated": _describe(cfg.data) + f" ({split}, {len(records)} images)",
    }
    report = write_cross_dataset_report(
        run_dir,
        metrics,
        details,
        [r.path for r in records],
        truth,
        nodes,
        data_names,
        source,
        min_level,
        stage,
    )
    write_metrics_json(metrics, run_dir / "metrics.json")
    (run_dir / "evaluated.txt").write_text(
        f"checkpoint: {Path(cfg.ckpt_path).resolve()}\nsplit: {split}\n"
        f"images: {len(records)}\ncross_dataset: true\n"
    )
    scored = ", ".join(
        f"{s.node} ({'/'.join(s.model_classes)} ↔ {'/'.join(data_names.get(d, d) for d in s.data_labels)})"
        for s in details["shared"]
    )
    log.info(
        "cross-dataset: scored %d of %d images in %d shared classes: %s; acc %.4f, MCA %.4f (report: %s)",
        int(metrics[f"{stage}/scored_images"]),
        len(records),
        len(details["shared"]),
        scored,
        metrics[f"{stage}/acc"],
        metrics[f"{stage}/mca"],
        report,
    )
    print(
        f"cross-dataset evaluation ({split}): {int(metrics[f'{stage}/scored_images'])} of {len(records)} images "
        f"scored, classes: {scored}\n"
        f"  accuracy {metrics[f'{stage}/acc']:.4f}  MCA {metrics[f'{stage}/mca']:.4f}  "
        f"(argmax over shared outputs only: MCA {metrics[f'{stage}/mca_shared_outputs']:.4f})\n  report: {report}"
    )
    return metrics, {"model": model, "datamodule": dm, "run_dir": run_dir, "split": split, "details": details}


def _describe(data: Mapping[str, Any] | None) -> str:
    if not data:
        return "unknown data"
    reader = data.get("reader") or str(data.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{reader} data at {data.get('root') or data.get('cache_dir') or '?'} (level {data.get('level', '-')})"
