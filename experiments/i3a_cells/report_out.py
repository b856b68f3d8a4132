"""The ending the table scripts share: print a Markdown table and, with ``--out``, write it to a file too.
Kept apart from ``ablation.py`` so that scripts which need no model (``cross_lab.py``) import no torch."""

from __future__ import annotations

from pathlib import Path


def emit(text: str, out: Path | None) -> None:
    """Print ``text``; also write it to ``out`` (its folder made) when given."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
