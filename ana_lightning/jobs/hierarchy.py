"""Jobs of the hierarchical (paper) pipeline, named by the config key ``job``.

- :func:`train_level3` (``experiment=paper_level3``): one Siamese ensemble per level-2 group with two or
  more leaves, each trained by :func:`ana_lightning.jobs.train.train` into ``<run>/<group>/``; the run
  folder gets ``level3_models.yaml`` (group → best checkpoint), ``metrics.json`` and ``level3_report.md``.
- :func:`evaluate_hierarchy` (``ana-eval --config-name eval_hierarchy``): routes every image through
  level 1 → 2 → 3 and writes per-level accuracy, MCA, confusion matrices and each image's full path.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ..data.hierarchy import LEVELS, label_path
from ..metrics import MCA_DEFINITION
from ..reports import NO_LEAF, write_hierarchy_report, write_metrics_json  # noqa: F401 - NO_LEAF, the report: re-exported
from ..utils import CheckpointError
from .common import stage_of

__all__ = ["train_level3", "evaluate_hierarchy", "write_hierarchy_report", "group_slug", "NO_LEAF"]

log = logging.getLogger(__name__)


def group_slug(node: str) -> str:
    """A folder name for a tree node: ``'discrete nuclear dots'`` → ``'discrete_nuclear_dots'``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", node).strip("_")


# ================================================================================================ jobs
def _first_checkpoint(pipe_cfg: DictConfig) -> Path | None:
    from ..models.hierarchical import resolve_checkpoint

    for key in ("level1", "multihead", "level2"):
        if pipe_cfg.get(key):
            return resolve_checkpoint(pipe_cfg[key])
    return None


def _all_checkpoints(pipe_cfg: DictConfig) -> list[Path]:
    """Every checkpoint of the pipeline (:func:`~ana_lightning.models.hierarchy_pipeline.pipeline_checkpoints`)."""
    from ..models.hierarchy_pipeline import pipeline_checkpoints

    return pipeline_checkpoints(pipe_cfg)


_DATA_SOURCE_KEYS = (
    "root",
    "reader",
    "csv",
    "mask",
    "group_column",
    "cache_dir",
    "n_per_class",
    "render_size",
    "render_seed",
    "dapi",
    "tree",
    "split_fractions",
    "seed",
    "bit_depth",
    "channels",
)


def _training_data(ckpt: Path, data_cfg: DictConfig) -> dict[str, Any]:
    """Where a checkpoint's training run read its data (its ``config_resolved.yaml``), as datamodule overrides."""
    saved = ckpt.resolve().parent.parent / "config_resolved.yaml"
    if not saved.is_file():
        return {}
    trained = OmegaConf.load(saved).get("data") or {}
    out = {k: trained[k] for k in _DATA_SOURCE_KEYS if k in trained and k in data_cfg}
    if out:
        log.info(
            "data.root not given: evaluating on the data of %s (%s)",
            saved.parent,
            out.get("root") or f"synthetic, {out.get('n_per_class')} per class",
        )
    return out


def _training_bit_depth(cfg: DictConfig) -> dict[str, Any]:
    """``{"bit_depth": d}`` when ``data.bit_depth`` was not typed and the pipeline's models were trained at ``d``
    (``data.bit_depth``, how files with more than 8 bits are read): another folder of the same camera is read as
    their training files were, as ``ana-eval`` and ``ana-predict`` do. Models of different depths need it typed."""
    from ..data.run_config import command_line_data_overrides
    from ..fields.mode import agreed_bit_depth

    _, typed = command_line_data_overrides()
    if "bit_depth" in typed or "bit_depth" not in cfg.data or cfg.data.get("bit_depth") is not None:
        return {}
    depth = agreed_bit_depth(
        _all_checkpoints(cfg.pipeline),
        "data.bit_depth=<the camera's> (or data.bit_depth=null: each file's own range)",
    )
    if depth is None:
        return {}
    log.info(
        "files with more than 8 bits are read at the models' data.bit_depth=%d (data.bit_depth=null: their own range)",
        depth,
    )
    return {"bit_depth": depth}


def evaluate_hierarchy(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Route a dataset (or the training run's test split) through the pipeline of ``cfg.pipeline``."""
    from ..data.contest import masked_loader
    from ..data.images import load_image
    from ..data.splits import check_unseen, training_split_manifest
    from .common import build_datamodule, scored_split

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        pipe = instantiate(cfg.pipeline)
    except (
        InstantiationException
    ) as e:  # a refused or unreadable checkpoint: its own message, naming the file
        if isinstance(e.__cause__, CheckpointError):
            raise e.__cause__ from None
        raise
    split = cfg.get("split", "auto")
    overrides: dict[str, Any] = {"level": "all", "parent": None, "classes": None, "cache_images": False}
    first = _first_checkpoint(cfg.pipeline)
    if not cfg.data.get("root") and first is not None:
        overrides.update(_training_data(first, cfg.data))
    elif first is not None:  # another folder: at the camera bit depth the models trained at, as ana-eval
        overrides.update(_training_bit_depth(cfg))
    found = training_split_manifest(
        first, split, cfg.data.get("split_manifest")
    )  # the run's own, beside the checkpoint
    if found is not None:
        overrides["split_manifest"] = str(found)
    dm = build_datamodule(cfg, **overrides)
    scored = scored_split(split, "split_manifest" in overrides or bool(cfg.data.get("split_manifest")))
    dm.checks_splits = scored != "all"  # every image scored as one set: how the folder would split is no news
    try:
        dm.setup("test")
    except Exception as e:  # noqa: BLE001
        if "split_manifest" not in overrides or split != "auto":
            raise
        log.warning(
            "the training run's split manifest does not fit this data (%s); evaluating all images",
            str(e).splitlines()[0],
        )
        overrides.pop("split_manifest")
        dm = build_datamodule(cfg, **overrides)
        dm.checks_splits = False
        dm.setup("test")
        scored = "all"
    split = scored
    records = (
        [r for s in ("train", "val", "test") for r in dm.splits[s]] if split == "all" else dm.splits[split]
    )
    check_unseen(
        _all_checkpoints(cfg.pipeline), records, split, dm.near_duplicates
    )  # every level, not only the first
    truth = [label_path(pipe.tree, r.codes[0]) for r in records]
    loader = masked_loader(dm.masks, dm.mask, dm.crop_fraction) if dm.masks else load_image
    pred = pipe.predict_paths([r.path for r in records], batch_size=int(cfg.data.batch_size), loader=loader)
    stage = stage_of(split)  # val/* for split=val, as ana-eval names it
    metrics = write_hierarchy_report(run_dir, [r.path for r in records], truth, pred, pipe.tree, stage=stage)
    write_metrics_json(metrics, run_dir / "metrics.json")
    if cfg.get("bundle", True) and getattr(pipe, "sources", None):
        # One file for ana-predict / ana-export / ana-app ckpt_path=…; its model card reads this folder.
        bundle = pipe.write_bundle(run_dir / "pipeline.ckpt")
        saved = copy.deepcopy(cfg)
        with open_dict(saved):
            saved.data.update(
                {k: v for k, v in overrides.items() if k in saved.data and k != "split_manifest"}
            )
        OmegaConf.save(saved, run_dir / "config_resolved.yaml", resolve=True)
        log.info("pipeline bundle: %s (ana-predict ckpt_path=%s input=…)", bundle, bundle)
    (run_dir / "evaluated.txt").write_text(
        yaml.safe_dump({"pipeline": pipe.describe(), "split": split, "images": len(records)})
    )
    table = "\n".join(
        f"  level {lv}: accuracy {metrics[f'{stage}/level{lv}_acc']:.4f}  MCA {metrics[f'{stage}/level{lv}_mca']:.4f}"
        for lv in LEVELS
        if f"{stage}/level{lv}_acc" in metrics
    )
    print(
        f"hierarchical pipeline ({pipe.routing} routing) on {len(records)} images ({split}):\n{table}\n"
        f"report: {run_dir / f'{stage}_hierarchy_report.md'}"
    )
    return metrics, {
        "pipeline": pipe,
        "datamodule": dm,
        "run_dir": run_dir,
        "split": split,
        "prediction": pred,
    }


def train_level3(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train one level-3 model per level-2 group (``cfg.groups``, or every group with ≥ 2 leaves in
    the data) into ``<run>/<group>/``, each with the shared split of all the data."""
    from .common import build_datamodule
    from .train import train

    if cfg.get("ckpt_path"):
        raise ValueError(
            "ckpt_path is not supported by the per-group level-3 job: train a group again with "
            "ana-train experiment=paper_level3 groups='[<group>]'"
        )
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dm = build_datamodule(cfg, level=3, parent=None, cache_images=False)
    dm.prepare_data()
    dm.setup("fit")
    tree = dm.tree
    leaves_by_group = tree.leaves_by_group(dm.class_names)
    wanted = list(cfg.get("groups") or [g for g, cs in leaves_by_group.items() if len(cs) >= 2])
    for g in wanted:
        if len(leaves_by_group.get(g, [])) < 2:
            raise ValueError(
                f"groups: {g!r} has {len(leaves_by_group.get(g, []))} leaf class(es) in the data "
                f"(groups with two or more: {[h for h, cs in leaves_by_group.items() if len(cs) >= 2]})"
            )
    OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)
    index: dict[str, str] = {}
    metrics: dict[str, float] = {}
    rows = []
    for g in wanted:
        sub = run_dir / group_slug(g)
        gcfg = copy.deepcopy(cfg)
        with open_dict(gcfg):
            gcfg.paths.output_dir = str(sub)
            gcfg.data.level = 3
            gcfg.data.parent = g
        log.info("level 3, group %r (%s): training into %s", g, ", ".join(leaves_by_group[g]), sub)
        m, _ = train(gcfg)
        best = sub / "best_checkpoint.txt"
        if best.is_file():
            ckpt = Path(best.read_text().strip())
            index[g] = (
                str(ckpt.relative_to(run_dir.resolve()))
                if ckpt.is_relative_to(run_dir.resolve())
                else str(ckpt)
            )
        for key in ("test/acc", "test/mca"):
            if key in m:
                metrics[f"{key.split('/')[0]}/{group_slug(g)}/{key.split('/')[1]}"] = m[key]
        rows.append((g, leaves_by_group[g], m.get("test/acc", float("nan")), m.get("test/mca", float("nan"))))
    mcas = [r[3] for r in rows if not np.isnan(r[3])]
    if mcas:
        # not an MCA over all leaves (each group's MCA is over its own leaves): named as what it is
        metrics["test/mca_mean_over_groups"] = float(np.mean(mcas))
    (run_dir / "level3_models.yaml").write_text(yaml.safe_dump(index, sort_keys=False))
    write_metrics_json(metrics, run_dir / "metrics.json")
    md = [
        "# Level 3: one model per level-2 group",
        "",
        "| group | classes | test accuracy | test MCA |",
        "|---|---|---|---|",
    ]
    md += [f"| {g} | {', '.join(cs)} | {a:.4f} | {m:.4f} |" for g, cs, a, m in rows]
    md += [
        "",
        f"Mean of the groups' MCAs (`test/mca_mean_over_groups`; not the MCA over all leaves): "
        f"{metrics.get('test/mca_mean_over_groups', float('nan')):.4f}",
        "",
        f"{MCA_DEFINITION}.",
        "",
    ]
    (run_dir / "level3_report.md").write_text("\n".join(md))
    print("\n".join(md))
    return metrics, {"run_dir": run_dir, "groups": index, "cfg": cfg}
