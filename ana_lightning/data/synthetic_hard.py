"""Thin re-export kept for old imports: the harder renderer lives in :mod:`ana_lightning.data.synthetic.hard`."""

from __future__ import annotations

from .synthetic.hard import DIFFICULTIES, render_field_hard

__all__ = ["DIFFICULTIES", "render_field_hard"]
