"""Console entry points (thin Hydra wrappers around the job functions)."""

import sys as _sys
from pathlib import Path as _Path

if _sys.argv and _Path(_sys.argv[0]).name.startswith(
    "ana-"
):  # a console command: data.root=/data/Größe works
    from ..resolvers import quote_non_ascii_overrides as _quote

    _sys.argv[1:] = _quote(_sys.argv[1:])
