"""Field and specimen verdicts: ``ana-predict`` on whole fields of any size and magnification.

Each field is brought to the scale the model was trained at (:mod:`~ana_lightning.fields.scale`):

- a **field model** (trained on fields with ``data.nucleus_diameter_px``) reads square tiles of its
  input size cut from the rescaled field; the tile probabilities are combined;
- a **cell model** (trained on contest-style cell crops) reads one crop per segmented interphase
  cell (:mod:`~ana_lightning.fields.segment`, :mod:`~ana_lightning.fields.crops`); mitotic cells and
  cells cut by the border are segmented and drawn but not used; the cell probabilities are combined,
  and a field with fewer than ``min_cells`` usable cells is ``insufficient cells``.

``group_by=folder`` (or a CSV of ``path,<group_column>``) combines the fields of one specimen the same
way into ``specimens.csv``: positive/negative screening and up to ``top_k`` patterns whose probability
passes the model's threshold (``pattern_min_prob`` for single-label models), with a Markdown and an
HTML report beside it.

This module keeps the names it always had (``ana_lightning.fields.verdicts.<name>`` imports keep
working); the code is split by concern:

- :mod:`~ana_lightning.fields.mode`: :func:`training_scale`, :func:`field_mode`, ``FIELD_KEYS``;
- :mod:`~ana_lightning.fields.predictor`: :class:`FieldPredictor`, :class:`FieldResult`;
- :mod:`~ana_lightning.fields.specimens`: :func:`specimen_verdicts`, :func:`write_specimens`;
- :mod:`~ana_lightning.fields.job`: :func:`run_field_predict`, :func:`field_columns`.
"""

from __future__ import annotations

from .job import field_columns, run_field_predict
from .mode import FIELD_KEYS, field_mode, training_scale
from .predictor import FieldPredictor, FieldResult
from .specimens import specimen_verdicts, write_specimens

__all__ = [
    "training_scale",
    "field_mode",
    "FieldPredictor",
    "FieldResult",
    "run_field_predict",
    "specimen_verdicts",
    "write_specimens",
    "field_columns",
    "FIELD_KEYS",
]
