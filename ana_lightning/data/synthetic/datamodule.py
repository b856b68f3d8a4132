"""Synthetic cells as a datamodule (``data=synthetic_cells``): rendered once into a cache folder, then
read back through the I3A contest reader. Kept out of the package's ``__init__`` so that the simulator
itself needs only numpy and OpenCV."""

from __future__ import annotations

import logging
from pathlib import Path

from ..hierarchy import HEp2HierarchyDataModule
from .cells import CLASS_SETS, COLORS
from .writers import generate_cell_dataset

__all__ = ["SyntheticCellDataModule", "rendered_cells_folder", "render_cells_once"]

log = logging.getLogger(__name__)


class SyntheticCellDataModule(HEp2HierarchyDataModule):
    """Synthetic cells in the I3A layout (``data=synthetic_cells``), rendered once into ``cache_dir``
    and read back with the ``i3a2014`` contest reader, so training sees exactly what a real I3A
    folder gives; with ``root=<a real I3A folder>`` the same settings read that folder instead
    (``ana-eval ... data.root=<real I3A folder>``).

    Args (beyond :class:`~.hierarchy.HEp2HierarchyDataModule`; ``level: 2`` gives the six I3A classes
    as ICAP level-2 groups):
        root: null = render; or a contest cell folder to read instead.
        cache_dir: where rendered sets live (the folder name encodes every rendering argument).
        class_set, n_per_class, cells_per_field, intermediate_fraction, color, render_seed: see
            :func:`generate_cell_dataset`.
    """

    def __init__(
        self,
        root: str | None = None,
        cache_dir: str = "data/synthetic_cells",
        class_set: str = "i3a",
        n_per_class: int = 300,
        cells_per_field: int = 8,
        intermediate_fraction: float = 0.5,
        color: str = "grey",
        render_seed: int = 0,
        reader: str = "i3a2014",
        **kwargs,
    ):
        settings = dict(
            cache_dir=cache_dir,
            class_set=class_set,
            n_per_class=n_per_class,
            cells_per_field=cells_per_field,
            intermediate_fraction=intermediate_fraction,
            color=color,
            render_seed=render_seed,
        )
        rendered = rendered_cells_folder(**settings, what="data")  # checks the settings either way
        self.render = None if root else settings
        root = root or str(rendered)
        super().__init__(root=root, reader=reader, **kwargs)

    def prepare_data(self) -> None:
        if self.render is not None:
            render_cells_once(**self.render)


def rendered_cells_folder(
    cache_dir: str | Path,
    class_set: str = "i3a",
    n_per_class: int = 300,
    cells_per_field: int = 8,
    intermediate_fraction: float = 0.5,
    color: str = "grey",
    render_seed: int = 0,
    what: str = "synthetic cells",
) -> Path:
    """Where a set of synthetic cells with these settings lives in ``cache_dir`` (the name encodes
    every rendering argument and the renderer's version, so a cached set is never reused wrongly).
    The settings are checked here; ``what`` names them in the error (e.g. ``data.synthetic_train``)."""
    if class_set not in CLASS_SETS:
        raise ValueError(f"{what}.class_set must be one of {CLASS_SETS}, got {class_set!r}")
    if color not in COLORS:
        raise ValueError(f"{what}.color must be one of {COLORS}, got {color!r}")
    for key, value in (("n_per_class", n_per_class), ("cells_per_field", cells_per_field)):
        if int(value) < 1:
            raise ValueError(f"{what}.{key} must be >= 1, got {value!r}")
    name = (
        f"cells{_STYLE_VERSION}_{class_set}_n{n_per_class}_f{cells_per_field}"
        f"_i{intermediate_fraction:g}_{color}_seed{render_seed}"
    )
    return Path(cache_dir).expanduser() / name


def render_cells_once(cache_dir: str | Path, **settings) -> Path:
    """The folder of :func:`rendered_cells_folder` (same arguments), rendered with
    :func:`generate_cell_dataset` unless a complete set is already there; ``.complete`` marks a
    finished set (an interrupted one is resumed)."""
    folder = rendered_cells_folder(cache_dir, **settings)
    if not (folder / ".complete").exists():
        log.info("rendering synthetic cells into %s (once; cached for later runs)", folder)
        names = {"class_set": "classes", "render_seed": "seed"}  # generate_cell_dataset's names
        render = {names.get(k, k): v for k, v in settings.items()}
        generate_cell_dataset(folder, progress=False, **render)
        (folder / ".complete").write_text("ok\n")
    return folder


#: Bumped when the renderer's output changes, so cached sets are not reused across versions.
_STYLE_VERSION = 2
