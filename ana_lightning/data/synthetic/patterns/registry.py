"""The pattern registry: one named renderer per AC code, registered with :func:`renders`.

A renderer takes a :class:`~..geometry.Field` and returns the FITC signal it paints (float32 ``H×W``,
~0..1). Codes are checked against the ICAP tree of :mod:`ana_lightning.taxonomy`, the one place that
knows codes, names and levels; this module only records which function draws which code and the few
facts the field composer needs about it (how many mitoses it wants, whether it needs a telophase,
whether its crops are mitotic cells).

>>> from ana_lightning.data.synthetic.patterns import PATTERNS
>>> PATTERNS["AC-4"].render.__name__, PATTERNS["AC-25"].mitotic_only
('fine_speckled', True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ....taxonomy import LabelError, Taxonomy

if TYPE_CHECKING:
    from ..geometry import Field

__all__ = ["Pattern", "PATTERNS", "renders", "canonical_code", "is_negative"]

Renderer = Callable[["Field"], np.ndarray]


@dataclass(frozen=True)
class Pattern:
    """A registered renderer and what the composer needs to know about its code.

    Args:
        code: the AC code (canonical spelling, e.g. ``AC-4``).
        render: ``Field -> signal``.
        mitoses: ``(min, max)`` mitoses per field when the pattern's mitotic staining is the point
            (``None``: the field's natural ~3.5 %).
        telophase: the field must show at least one ana- or telophase.
        mitotic_only: the pattern is seen in dividing cells only (single-cell crops are mitotic cells).
    """

    code: str
    render: Renderer
    mitoses: tuple[int, int] | None = None
    telophase: bool = False
    mitotic_only: bool = False


#: code -> :class:`Pattern`, filled by the ``@renders`` decorators of the pattern modules.
PATTERNS: dict[str, Pattern] = {}


def renders(
    code: str, *, mitoses: tuple[int, int] | None = None, telophase: bool = False, mitotic_only: bool = False
) -> Callable[[Renderer], Renderer]:
    """Register the decorated function as the renderer of ``code`` (a code of the ICAP tree).

    >>> @renders("AC-99")  # doctest: +ELLIPSIS
    ... def nothing(f): ...
    Traceback (most recent call last):
    ...
    ana_lightning.taxonomy.LabelError: 'AC-99' is AC-99, which is not in the class tree (AC-0…AC-31)
    """
    canon = Taxonomy.load().parse_code(code)

    def register(fn: Renderer) -> Renderer:
        if canon in PATTERNS:
            raise ValueError(
                f"{canon} already has a renderer ({PATTERNS[canon].render.__name__}); not {fn.__name__}"
            )
        PATTERNS[canon] = Pattern(canon, fn, mitoses, telophase, mitotic_only)
        return fn

    return register


def canonical_code(code: str) -> str:
    """``code`` in its canonical spelling (``ac_3`` -> ``AC-3``) if the simulator renders it; else a
    :class:`~ana_lightning.taxonomy.LabelError` (a ``ValueError``) naming it."""
    try:
        canon = Taxonomy.load().parse_code(code)
    except LabelError as e:
        raise LabelError(f"unknown ICAP code {code!r}: {e}") from None
    if canon not in PATTERNS:
        raise LabelError(f"unknown ICAP code {code!r}: {canon} is in the class tree but has no renderer")
    return canon


def is_negative(code: str) -> bool:
    """Whether ``code`` (canonical) is the tree's negative class (level 1 ``negative``: AC-0)."""
    return Taxonomy.load().level1[code] == "negative"
