"""Thin re-export kept for old imports and configs (``_target_:
ana_lightning.data.synthetic_cells.SyntheticCellDataModule``): single-cell crops live in
:mod:`ana_lightning.data.synthetic.cells`, their writer in :mod:`~ana_lightning.data.synthetic.writers`,
the datamodule in :mod:`~ana_lightning.data.synthetic.datamodule`; ``main`` is ``ana-synth --cells``
(:mod:`ana_lightning.cli.synth`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .synthetic.cells import (
    CLASS_SETS,
    COLORS,
    I3A_CLASSES,
    INTENSITIES,
    REAL_BRIGHTNESS,
    CellStyle,
    class_table,
    render_cells,
)
from .synthetic.datamodule import SyntheticCellDataModule
from .synthetic.writers import generate_cell_dataset

__all__ = [
    "I3A_CLASSES",
    "CLASS_SETS",
    "INTENSITIES",
    "COLORS",
    "REAL_BRIGHTNESS",
    "CellStyle",
    "class_table",
    "render_cells",
    "generate_cell_dataset",
    "SyntheticCellDataModule",
    "main",
]


def main(argv: Sequence[str] | None = None) -> None:
    """``ana-synth --cells``: the old flags (``--output``, ``--classes``, …) are still accepted."""
    from ..cli.synth import main as synth_main

    args = list(argv) if argv is not None else None
    synth_main(args if args is None or "--cells" in args else ["--cells", *args])
