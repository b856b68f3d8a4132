"""Procedural HEp-2 indirect-immunofluorescence field simulator (ICAP patterns AC-0 … AC-31).

Split by concern:

- :mod:`.textures`: deterministic noise texture banks (random crops of them texture every field);
- :mod:`.geometry`: :class:`~.geometry.Field`, the cells of one field (shapes, nuclei, nucleoli,
  mitoses), their label maps and the point/line helpers renderers paint with;
- :mod:`.patterns`: one named renderer per AC code, registered with ``@renders("AC-4")``
  (:mod:`~.patterns.nuclear`, :mod:`~.patterns.cytoplasmic`, :mod:`~.patterns.mitotic`);
- :mod:`.compose`: :func:`render_field`, the field composer (optics, lighting, noise, RGB, DAPI);
- :mod:`.hard`: :func:`~.hard.render_field_hard`, the harder acquisition (``difficulty=hard``);
- :mod:`.cells`: :func:`~.cells.render_cells`, single-cell crops like the contest cell sets;
- :mod:`.writers` (+ :mod:`.files`): the dataset layouts written to disk;
- :mod:`.datamodule`: the synthetic-cell datamodule (imported on demand: it needs torch/Lightning);
- :mod:`.job`: what ``ana-synth`` runs (``conf/synth.yaml``).

Codes, names and levels come from :mod:`ana_lightning.taxonomy`; this package keeps no code table.
``ana_lightning.data.synthetic_hard`` and ``ana_lightning.data.synthetic_cells`` are thin re-export
modules of :mod:`.hard` and :mod:`.cells` / :mod:`.writers` / :mod:`.datamodule`, kept for old imports.

>>> import numpy as np
>>> render_field(["AC-1", "AC-4"], np.random.default_rng(0), size=64).dtype
dtype('uint8')
"""

from __future__ import annotations

from collections.abc import Sequence

from ...taxonomy import Taxonomy
from .compose import render_field
from .hard import DIFFICULTIES, render_field_hard
from .patterns import CODES, PATTERNS, renders
from .writers import generate_cell_dataset, generate_dataset, generate_hospital_dataset

__all__ = [
    "CODES",
    "LEVEL2",
    "PATTERNS",
    "DIFFICULTIES",
    "renders",
    "render_field",
    "render_field_hard",
    "generate_dataset",
    "generate_hospital_dataset",
    "generate_cell_dataset",
    "main",
]

#: Level-2 (ICAP "competent level") group of each rendered code, read from the taxonomy's tree.
LEVEL2: dict[str, str] = {c: Taxonomy.load().level2[c] for c in CODES}


def main(argv: Sequence[str] | None = None) -> None:
    """``ana-synth`` (see :mod:`ana_lightning.cli.synth`); the old flags are still accepted."""
    from ...cli.synth import main as synth_main

    synth_main(argv)
