"""The SVM baseline job (``ana-train experiment=svm_baseline``): fit on the training split (+ val) of any
datamodule, test on the test split, and write the same files as the CNN runs (``metrics.json`` with
``test/acc``, ``test/mca``, ``test/macro_f1`` and their intervals, ``test_predictions.csv``, the
confusion matrix). The feature set is ``svm.features``, built by :func:`~ana_lightning.baselines.feature_set`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ..baselines import _scores, feature_set, fit_predict_svm
from ..metrics import confusion_matrix
from ..reports import plot_confusion_matrix, write_metrics_json, write_predictions
from ..stats import run_intervals

__all__ = ["svm_job"]

log = logging.getLogger(__name__)


def svm_job(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the SVM baseline on the training split (+ val) of ``cfg.data`` and test it.

    ``cfg.svm``: ``features`` (a ``_target_`` config, ``conf/svm/features/*.yaml``; or the older
    ``texture`` / ``cnn`` strings with ``checkpoint``, ``backbone``, ``size``), ``C``, ``kernel``.
    """
    from .common import build_datamodule

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dm = build_datamodule(cfg, cache_images=False)
    dm.prepare_data()
    dm.setup("fit")
    dm.write_reports(run_dir)
    svm_cfg = cfg.svm
    features = feature_set(svm_cfg, int(cfg.data.image_size), bool(cfg.get("trust_checkpoint")))
    name = getattr(features, "name", type(features).__name__)
    fit_records = dm.splits["train"] + dm.splits["val"]  # no model selection here: val is training data
    test_records = dm.splits["test"]
    y_fit = dm.make_targets(fit_records).numpy()
    y_test = dm.make_targets(test_records).numpy()
    x_fit = features.extract([r.path for r in fit_records])
    x_test = features.extract([r.path for r in test_records])
    pred = fit_predict_svm(x_fit, y_fit, x_test, C=float(svm_cfg.C), kernel=str(svm_cfg.kernel))
    metrics = {f"test/{k}": v for k, v in _scores(y_test, pred).items()}
    # Per-image predictions (one-hot "probabilities") and bootstrap intervals, as for every other model:
    # a cross-validation sweep pools them (oof_predictions.csv).
    onehot = torch.nn.functional.one_hot(torch.as_tensor(pred, dtype=torch.long), dm.num_classes).float()
    target = torch.as_tensor(y_test, dtype=torch.long)
    fake = SimpleNamespace(
        test_predictions={"index": torch.arange(len(pred)), "prob": onehot, "target": target}
    )
    metrics.update(run_intervals(fake, test_records, metrics))
    write_predictions(
        [r.path for r in test_records], onehot, target, dm.class_names, run_dir / "test_predictions.csv"
    )
    write_metrics_json(metrics, run_dir / "metrics.json")
    cm = confusion_matrix(y_test.tolist(), np.asarray(pred).tolist(), labels=list(range(dm.num_classes)))
    plot_confusion_matrix(
        cm,
        dm.class_names,
        run_dir / "test_confusion_matrix.png",
        title=f"SVM ({name}): MCA {metrics['test/mca']:.3f}",
    )
    log.info("SVM on %s features: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics, {"datamodule": dm, "run_dir": run_dir, "prediction": pred}
