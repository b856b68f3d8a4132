"""The episodic few-shot evaluation job (``ana-eval --config-name eval_episodes``): N-way K-shot episodes
over a dataset's classes, scored by :func:`ana_lightning.episodes.evaluate_episodes`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..episodes import evaluate_episodes, unique_images

__all__ = ["evaluate_episodes_job"]

log = logging.getLogger(__name__)


def evaluate_episodes_job(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """``ana-eval --config-name eval_episodes ckpt_path=<.ckpt>``: episodes over a dataset's classes
    (novel classes welcome: the model's own class list is not imposed on the data)."""
    from ..data.run_config import use_training_data
    from ..data.splits import run_manifest
    from ..reports import write_metrics_json
    from ..utils import load_checkpoint_model
    from .common import build_datamodule

    if not cfg.get("ckpt_path"):
        raise ValueError("episodic evaluation needs ckpt_path=<file.ckpt>")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trust = bool(cfg.get("trust_checkpoint"))
    model = load_checkpoint_model(cfg.ckpt_path, trust_checkpoint=trust)
    # The training run's data settings (reader, masks, framing, bit depth, …), with what was typed on top, as
    # ana-eval does: a folder of novel classes (data.root=…) keeps how the run read its images, not its classes.
    use_training_data(cfg, cfg.ckpt_path, trust_checkpoint=trust)
    split = cfg.get("split", "auto")
    overrides: dict[str, Any] = {"image_size": int(model.hparams.image_size)}
    manifest = run_manifest(cfg.ckpt_path)
    if (
        split in ("auto", "test", "val", "train")
        and not cfg.data.get("split_manifest")
        and manifest.is_file()
    ):
        overrides["split_manifest"] = str(manifest)
    dm = build_datamodule(cfg, **overrides)
    dm.checks_splits = split != "all"  # every image scored as one set: how the folder would split is no news
    dm.prepare_data()
    try:
        dm.setup("test")
    except Exception as e:  # noqa: BLE001 - another dataset than the checkpoint's: no manifest applies
        if "split_manifest" not in overrides:
            raise
        log.info("the training run's split manifest does not fit this data (%s)", str(e).splitlines()[0])
        overrides.pop("split_manifest")
        dm = build_datamodule(cfg, **overrides)
        dm.checks_splits = split != "all"
        dm.prepare_data()
        dm.setup("test")
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    has_split = "split_manifest" in overrides or bool(cfg.data.get("split_manifest"))
    if split == "auto":
        seen = set(model.class_names) & set(dm.class_names)
        if has_split:
            split = "test"  # the run's test split: images the checkpoint never trained on
        elif not seen:
            split = "all"  # a novel-class folder: the checkpoint has seen none of these classes
        else:
            raise ValueError(
                f"split=auto: {cfg.ckpt_path} was trained on {sorted(seen)}, which this data holds too, and no split "
                f"manifest of its training run fits it ({manifest}), so episodes could draw images it trained on. "
                "Pass data.split_manifest=<its run>/split_manifest.csv, a folder of novel classes, or split=all "
                "if you know these images are unseen."
            )
    elif split in ("test", "val", "train") and not has_split:
        raise FileNotFoundError(
            f"split={split} needs the training run's split manifest: none at {manifest}; "
            "pass data.split_manifest=<file> or split=all"
        )
    if split == "train":
        log.warning(
            "split=train: episodes from the images %s trained on measure memory, not few-shot accuracy",
            cfg.ckpt_path,
        )
    records = (
        [r for s in ("train", "val", "test") for r in dm.splits[s]] if split == "all" else dm.splits[split]
    )
    records, dropped = unique_images(records, dm.near_duplicates)
    if dropped:
        log.info("%d duplicate image(s) left out so that no picture is support and query at once", dropped)
    ep = cfg.episodes
    if ep.get("groups", "auto") not in ("auto", "none"):
        raise ValueError(f"episodes.groups must be auto or none, got {ep.get('groups')!r}")
    grouped = ep.get("groups", "auto") == "auto" and any(r.group for r in records)
    queries = (
        f"from other groups than the support ({len({r.group for r in records if r.group})} specimens, patients or "
        "fields)"
        if grouped
        else "any image but the support's"
    )
    log.info("episode queries: %s", queries)
    result = evaluate_episodes(
        model,
        dm.make_dataset(records, train=False),
        int(ep.n_way),
        int(ep.k_shot),
        int(ep.n_query),
        int(ep.episodes),
        int(ep.seed),
        int(cfg.data.batch_size),
        groups=[r.group for r in records] if grouped else None,
    )
    key = f"test/{result.n_way}way_{result.k_shot}shot"
    metrics = {f"{key}_acc": result.accuracy, f"{key}_ci95": result.ci95}
    write_metrics_json(metrics, run_dir / "metrics.json")
    (run_dir / "episodes.json").write_text(
        json.dumps(
            {
                **result.summary(),
                "checkpoint": str(cfg.ckpt_path),
                "split": split,
                "queries": queries,
                "images": len(records),
                "classes": dm.class_names,
            },
            indent=2,
        )
        + "\n"
    )
    print(
        f"{result.n_way}-way {result.k_shot}-shot ({result.n_query} queries/class, {result.episodes} episodes, "
        f"{len(records)} images of {dm.num_classes} classes; queries {queries}): accuracy {result.accuracy:.4f} "
        f"± {result.ci95:.4f} (95% CI)"
    )
    return metrics, {"result": result, "model": model, "datamodule": dm, "run_dir": run_dir}
