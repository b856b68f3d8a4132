"""``ana-synth``: render a synthetic HEp-2 dataset from the composed Hydra config (``conf/synth.yaml``):
single-label fields (``generator=fields``, the default), the multi-label hospital layout
(``generator=hospital``) or single-cell crops in the contest layout (``generator=cells``).

The flags of the old argparse command are still accepted: they are translated to overrides
(``--output X --n-per-class 5`` → ``generator.root=X generator.n_per_class=5``) with a note on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from ..resolvers import register_resolvers
from .errors import override_hints, user_errors

register_resolvers()

# old flag (argparse dest) -> generator argument, per layout
_FIELDS = {
    "output": "root",
    "n_per_class": "n_per_class",
    "size": "size",
    "seed": "seed",
    "dapi": "dapi",
    "codes": "codes",
    "fmt": "fmt",
    "difficulty": "difficulty",
    "no_progress": "progress",
}
_HOSPITAL = {
    "output": "root",
    "n_images": "n_images",
    "n_patients": "n_patients",
    "max_patterns": "max_patterns",
    "size": "size",
    "seed": "seed",
    "dapi": "dapi",
    "codes": "codes",
    "no_progress": "progress",
}
_CELLS = {
    "output": "root",
    "classes": "classes",
    "codes": "codes",
    "n_per_class": "n_per_class",
    "cells_per_field": "cells_per_field",
    "intermediate_fraction": "intermediate_fraction",
    "color": "color",
    "seed": "seed",
    "no_progress": "progress",
}


def _legacy_parser(cells: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ana-synth", add_help=False, allow_abbrev=False, argument_default=argparse.SUPPRESS
    )
    p.add_argument("--output", "-o")
    p.add_argument("--codes")
    p.add_argument("--n-per-class", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cells", action="store_true")
    if cells:
        p.add_argument("--classes", choices=("i3a", "level2", "codes"))
        p.add_argument("--cells-per-field", type=int)
        p.add_argument("--intermediate-fraction", type=float)
        p.add_argument("--color", choices=("grey", "green"))
    else:
        p.add_argument("--size", type=int)
        p.add_argument("--dapi", action="store_true")
        p.add_argument("--format", dest="fmt", choices=("png", "jpg"))
        p.add_argument("--difficulty", choices=("easy", "hard"))
        p.add_argument("--hospital", action="store_true")
        p.add_argument("--n-images", type=int)
        p.add_argument("--n-patients", type=int)
        p.add_argument("--max-patterns", type=int)
    return p


def _legacy_flags(cells: bool) -> set[str]:
    return {s for a in _legacy_parser(cells)._actions for s in a.option_strings}


def _quote(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def translate_legacy(args: Sequence[str]) -> list[str]:
    """Hydra overrides for a command line that uses the old ``ana-synth`` flags (unchanged if none).

    >>> translate_legacy(["--output", "out", "--n-per-class", "5", "--hospital", "generator.size=64"])
    ['generator=hospital', "generator.root='out'", 'generator.size=64']
    """
    args = list(args)
    cells = "--cells" in args
    flags = _legacy_flags(cells) | _legacy_flags(not cells)
    if not any(a.split("=", 1)[0] in flags for a in args if a.startswith("-")):
        return args
    ns, rest = _legacy_parser(cells).parse_known_args(args)
    given = vars(ns)
    layout = (
        "cells" if given.pop("cells", False) else "hospital" if given.pop("hospital", False) else "fields"
    )
    table = {"cells": _CELLS, "hospital": _HOSPITAL, "fields": _FIELDS}[layout]
    out = [] if layout == "fields" else [f"generator={layout}"]
    ignored = []
    for dest, value in given.items():
        if dest not in table:
            ignored.append("--" + dest.replace("_", "-"))
            continue
        if dest == "no_progress":
            value = not value
        out.append(f"generator.{table[dest]}={_quote(value)}")
    out += rest
    note = f"ana-synth: the old flags are deprecated; this runs: ana-synth {' '.join(out)}"
    if ignored:
        note += f" (ignored, as before: {', '.join(ignored)} — not used by the {layout} layout)"
    print(note, file=sys.stderr)
    return out


@override_hints("synth")
@hydra.main(version_base="1.3", config_path="pkg://ana_lightning.conf", config_name="synth")
@user_errors
def _main(cfg: DictConfig) -> None:
    from hydra.utils import get_method

    get_method(cfg.get("job") or "ana_lightning.jobs.synth.synth")(cfg)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; ``argv`` (default: ``sys.argv[1:]``) may use Hydra overrides or the old flags."""
    args = translate_legacy(sys.argv[1:] if argv is None else argv)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "ana-synth", *args]
    try:
        _main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
