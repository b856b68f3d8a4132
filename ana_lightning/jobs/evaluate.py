"""The evaluation job (``ana-eval``, ``conf/eval.yaml``): a checkpoint (or an ensemble of checkpoints) on a
dataset folder or split, with the same report as training; a checkpoint of another dataset goes to
:mod:`ana_lightning.jobs.cross_dataset`, a cross-validation sweep to :mod:`ana_lightning.jobs.crossval`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..calibration import report_test_calibration
from ..data.splits import check_unseen, run_manifest, seen_in_training, training_split_manifest
from ..distributed import tester_for
from ..reports import write_metrics_json, write_test_report
from ..stats import run_intervals
from ..utils import load_checkpoint_model
from .common import (
    build_datamodule,
    build_trainer,
    finish_wandb,
    headline,
    log_report_images,
    scored_split,
    stage_of,
    test_loop_logged_as,
)

__all__ = ["evaluate", "check_unseen"]  # check_unseen: data.splits's, under its old import path

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Evaluate a checkpoint on a dataset folder or split and write the same report as training."""
    if cfg.get(
        "sweep_dir"
    ):  # ana-eval sweep_dir=<cross-validation sweep>: the summary again, from saved predictions
        from .crossval import evaluate_sweep

        return evaluate_sweep(cfg)
    ens = cfg.get("ensemble") or {}
    members = [str(m) for m in (ens.get("members") or [])]
    if not cfg.get("ckpt_path") and not members:
        raise ValueError("ana-eval needs ckpt_path=<file.ckpt> (or ensemble.members=[a.ckpt,b.ckpt])")
    if cfg.get("ckpt_path") and members:
        raise ValueError("give either ckpt_path or ensemble.members, not both")
    trust = bool(cfg.get("trust_checkpoint"))
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if members:  # separately trained checkpoints averaged into one model (multi-label or single-label)
        from ..models.multilabel import ensemble_from_checkpoints

        model = ensemble_from_checkpoints(
            members,
            combine=ens.get("combine", "probs"),
            decision_rule=ens.get("decision_rule"),
            threshold=ens.get("threshold", 0.5),
            trust_checkpoint=trust,
        )
    else:
        model = load_checkpoint_model(cfg.ckpt_path, trust_checkpoint=trust)
    ckpt_ref = members[0] if members else str(cfg.ckpt_path)  # whose run folder holds the split manifest
    # The training run's data settings (reader, target, masks, image size, …), with what was typed on top.
    from ..data.run_config import use_training_data

    trained, class_nodes = use_training_data(cfg, ckpt_ref, trust_checkpoint=trust)
    cross = cfg.get("cross_dataset", "auto")
    if cross == "auto":
        cross = bool(trained) and (trained.get("reader") or "folder") != (cfg.data.get("reader") or "folder")
    if cross:
        if members:
            raise ValueError("cross-dataset evaluation takes one checkpoint (ckpt_path), not an ensemble")
        from .cross_dataset import evaluate_cross_dataset

        return evaluate_cross_dataset(cfg, model, class_nodes, trained, run_dir)
    split = cfg.get("split", "auto")
    overrides: dict[str, Any] = {
        "classes": list(model.class_names),
        "image_size": int(model.hparams.image_size),
    }
    manifest = cfg.data.get("split_manifest")
    found = training_split_manifest(ckpt_ref, split, manifest)  # the run's own, beside the checkpoint
    if found is not None:
        overrides["split_manifest"] = str(found)
    dm = build_datamodule(cfg, **overrides)
    scored = scored_split(split, "split_manifest" in overrides or bool(manifest))
    dm.checks_splits = scored != "all"  # an empty split, or one without a class, is no news when all are read
    dm.prepare_data()
    try:
        dm.setup("test")
    except Exception as e:  # noqa: BLE001
        if "split_manifest" in overrides and split == "auto":
            log.warning(
                "the training run's split manifest does not fit this data (%s); evaluating all images",
                str(e).splitlines()[0],
            )
            overrides.pop("split_manifest")
            dm = build_datamodule(cfg, **overrides)
            dm.checks_splits = False
            dm.prepare_data()
            dm.setup("test")
            scored = "all"
        else:
            raise
    split = scored
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    if callable(
        getattr(model, "prepare_evaluation", None)
    ):  # e.g. tune an ensemble's thresholds on val, never on test
        val = dm.make_dataset(dm.splits["val"], train=False) if dm.splits.get("val") else None
        model.prepare_evaluation(split, val=val, batch_size=int(cfg.data.batch_size))
    records = (
        [r for s in ("train", "val", "test") for r in dm.splits[s]] if split == "all" else dm.splits[split]
    )
    check_unseen(members or [str(cfg.ckpt_path)], records, split, dm.near_duplicates)
    dataset = dm.make_dataset(records, train=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers
    )
    trainer = build_trainer(cfg, run_dir)
    stage = stage_of(split)
    with test_loop_logged_as(model, stage):  # split=val: val/mca wherever the figures go
        results = tester_for(trainer).test(model, dataloaders=loader)  # ddp_spawn: in this process
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if split == "test" and callable(getattr(dm, "split_flags", None)):
        metrics.update(dm.split_flags("test"))
    seen = seen_in_training(records, run_manifest(ckpt_ref))
    if seen is not None:
        metrics[f"{stage}/images_in_training_split"] = float(seen)
    if trainer.is_global_zero:
        metrics.update(
            report_test_calibration(model, dm, records, run_dir, stage=stage)
        )  # the stored temperature, if any
        metrics.update(
            run_intervals(model, records, metrics, stage=stage, together=getattr(dm, "together", ()))
        )  # bootstrap 95% CIs
        write_metrics_json(metrics, run_dir / "metrics.json")
        write_test_report(model, run_dir, records, metrics, stage=stage, class_nodes=dm.class_nodes())
        which = (
            ", ".join(str(Path(m).resolve()) for m in members)
            if members
            else str(Path(cfg.ckpt_path).resolve())
        )
        (run_dir / "evaluated.txt").write_text(
            f"checkpoint: {which}\nsplit: {split}\nimages: {len(records)}\n"
        )
        log_report_images(trainer, run_dir, stage)
    log.info(
        "evaluated %s (split=%s): %s",
        members or cfg.ckpt_path,
        split,
        headline(metrics, stage, records, run_dir / f"{stage}_report.md"),
    )
    finish_wandb()
    return metrics, {"model": model, "datamodule": dm, "run_dir": run_dir, "split": split, "trainer": trainer}
