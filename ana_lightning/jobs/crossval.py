"""Cross-validation jobs: ``ana-eval sweep_dir=<sweep>`` (the summary again, from saved predictions) and the
Hydra callback that writes the summary when a cross-validation multirun ends
(``conf/hydra/default.yaml``). The summary itself is :func:`ana_lightning.crossval.summarize_sweep`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..crossval import SUMMARY_FILES, CVSummaryError, fold_jobs, summarize_sweep, sweep_manifest

__all__ = ["evaluate_sweep", "CVSummaryCallback"]

log = logging.getLogger(__name__)


def evaluate_sweep(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``ana-eval sweep_dir=<sweep>``: the summary again, from the saved predictions, into the eval run
    folder; also into the sweep folder when it has none yet (a sweep stopped before its end, e.g. by a
    failed fold job), never overwriting the sweep's own files. ``sweep_dir=[a,b,c]``: one summary over the
    fold jobs of several sweeps of one cross-validation (repeats run in sweeps of their own), into the eval
    run folder only."""
    import shutil

    from omegaconf import ListConfig

    run_dir = Path(cfg.paths.output_dir)
    if isinstance(cfg.sweep_dir, ListConfig | list | tuple) and len(cfg.sweep_dir) > 1:
        sweeps = [Path(str(d)) for d in cfg.sweep_dir]
        summary = summarize_sweep(sweeps, out_dir=run_dir)
        print(f"cross-validation summary of {len(sweeps)} sweeps: {run_dir / 'cv_summary.md'}")
        return summary, {"run_dir": run_dir, "sweep_dir": sweeps}
    one = cfg.sweep_dir[0] if isinstance(cfg.sweep_dir, ListConfig | list | tuple) else cfg.sweep_dir
    sweep = Path(str(one))
    summary = summarize_sweep(sweep, out_dir=run_dir)
    if not (sweep / "cv_summary.json").exists():
        for name in SUMMARY_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, sweep / name)
        log.info("the sweep had no summary: written into %s too", sweep)
    print(f"cross-validation summary: {run_dir / 'cv_summary.md'}")
    return summary, {"run_dir": run_dir, "sweep_dir": sweep}


# ------------------------------------------------------------------------------------------ Hydra callback
class CVSummaryCallback(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): when a multirun whose jobs made a
    ``folds_manifest.csv`` ends, write the cross-validation summary into the sweep folder and, when
    the jobs logged to W&B, log it once as a run of the sweep's group."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        try:
            sweep = Path(str(config.hydra.sweep.dir))
        except Exception:  # noqa: BLE001 - a sweep folder that cannot be resolved: nothing to summarise
            return
        try:
            if sweep_manifest(sweep) is None:
                return  # not a cross-validation sweep
            summary = summarize_sweep(sweep)
        except CVSummaryError as e:
            log.error("no cross-validation summary: %s", e)
            return
        print(f"cross-validation summary: {sweep / 'cv_summary.md'}")
        try:
            _log_wandb(sweep, summary)
        except Exception as e:  # noqa: BLE001 - the summary files are written; W&B is a copy
            log.warning("the cross-validation summary was not logged to W&B: %s", e)


def _log_wandb(sweep: Path, summary: dict[str, Any]) -> None:
    """One W&B run (job_type ``cv_summary``) in the fold jobs' group (read from a job's resolved
    config, so it is the group they logged to), holding the summary and the pooled plot. Nothing
    when the jobs did not log to W&B."""
    jobs = fold_jobs(sweep)
    if not jobs:
        return
    resolved = jobs[0]["dir"] / "config_resolved.yaml"
    if not resolved.is_file():
        return  # W&B settings are known from a job's resolved config only
    job_cfg = yaml.safe_load(resolved.read_text()) or {}
    wb = (job_cfg.get("logger") or {}).get("wandb")
    if not wb:
        return
    try:
        import wandb
    except ImportError:
        return
    run = wandb.init(
        project=wb.get("project"),
        entity=wb.get("entity"),
        group=wb.get("group"),
        tags=wb.get("tags") or None,
        job_type="cv_summary",
        name=f"cv_summary-{sweep.name}",
        dir=str(sweep),
        mode="offline" if wb.get("offline") else None,
        reinit=True,
    )
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run.summary.update(scalars)
    run.log(scalars)
    for name in ("oof_confusion_matrix", "oof_errors"):
        png = sweep / f"{name}.png"
        if png.is_file():
            run.log({f"cv/{name}": wandb.Image(str(png))})
    run.finish()
