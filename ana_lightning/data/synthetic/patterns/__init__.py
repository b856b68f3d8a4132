"""One named renderer per AC code, registered by code with ``@renders("AC-4")``.

Importing this package imports the three pattern modules (nuclear, cytoplasmic, mitotic), whose
decorators fill :data:`PATTERNS`. A new code is one decorated function in one of them (and the code in
the ICAP tree YAML of :mod:`ana_lightning.taxonomy`, if the tree lacks it).
"""

from __future__ import annotations

from ....taxonomy import Taxonomy
from . import cytoplasmic, mitotic, nuclear  # noqa: F401  (registers the renderers)
from .registry import PATTERNS, Pattern, canonical_code, is_negative, renders

__all__ = ["CODES", "PATTERNS", "Pattern", "canonical_code", "is_negative", "renders"]

#: The codes the simulator renders, in the tree's (natural) order: AC-0 … AC-31.
CODES: tuple[str, ...] = tuple(c for c in Taxonomy.load().codes if c in PATTERNS)
