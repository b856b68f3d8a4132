"""Use a trained model: one :class:`Predictor` behind ``ana-predict``, ``ana-export`` and ``ana-app``.

The package, by concern:

- :mod:`~ana_lightning.predict.rules`: :class:`ModelInfo` (what a model file says about itself) and the
  :class:`DecisionRule` registry (how a task's outputs become labels);
- :mod:`~ana_lightning.predict.loading`: opening checkpoints, hierarchy bundles and pipelines, and the
  PyTorch / TorchScript / ONNX backends;
- :mod:`~ana_lightning.predict.predictor`: :class:`Predictor`, streaming images through a model;
- :mod:`~ana_lightning.predict.io`: listing inputs, writing the prediction CSV/JSON.

The ``ana-predict`` job itself is :func:`ana_lightning.jobs.predict.run_predict`; ``run_predict`` is
still importable from here (a lazy re-export, so this package does not import the jobs).

>>> p = Predictor.load("outputs/train/runs/<run>/checkpoints/best-epoch007.ckpt")  # doctest: +SKIP
>>> next(p.predict_paths(["field.png"])).labels  # doctest: +SKIP
('AC-4',)
"""

from __future__ import annotations

from typing import Any

from .io import _output_paths, list_inputs, load_predictor, prediction_columns, write_predictions
from .loading import load_model, load_pipeline, pipeline_args, use_support
from .predictor import EXIT_SOME_FAILED, Prediction, Predictor, PredictSummary, _to_array, load_image
from .rules import (
    METADATA_KEY,
    DecisionRule,
    HierarchicalRule,
    ModelInfo,
    MultiLabelRule,
    SingleLabelRule,
    decision_rule,
    register_decision_rule,
)

__all__ = [
    "ModelInfo",
    "Prediction",
    "PredictSummary",
    "Predictor",
    "DecisionRule",
    "SingleLabelRule",
    "MultiLabelRule",
    "register_decision_rule",
    "decision_rule",
    "load_model",
    "list_inputs",
    "prediction_columns",
    "HierarchicalRule",
    "load_pipeline",
    "load_predictor",
    "pipeline_args",
    "use_support",
    "write_predictions",
    "run_predict",
    "METADATA_KEY",
    "EXIT_SOME_FAILED",
    "_output_paths",
    "_to_array",
    "load_image",
]


def __getattr__(name: str) -> Any:
    """``run_predict`` (the ``ana-predict`` job) now lives in :mod:`ana_lightning.jobs.predict`."""
    if name == "run_predict":
        from ..jobs.predict import run_predict

        return run_predict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
