"""What ``ana-synth`` runs (``conf/synth.yaml``): instantiate ``cfg.generator`` (a partial of one of the
writers, its keys the writer's arguments), call it once and say what was written."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

__all__ = ["synth"]


def synth(cfg: DictConfig) -> Path:
    """Write the dataset described by ``cfg.generator``; returns its root folder.

    A bad value (an unknown code, a format, a class set) stops with ``ana-synth: error: <message>`` and
    exit status 2, as the old command did.
    """
    write = instantiate(cfg.generator, _convert_="all")
    try:
        root = Path(write())
    except ValueError as e:
        print(f"ana-synth: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    cells = str(cfg.generator.get("_target_", "")).endswith("generate_cell_dataset")
    table = root / (cfg.generator.get("csv_name") or "gt_training.csv") if cells else root / "manifest.csv"
    with open(table, newline="") as fh:
        n = sum(1 for _ in csv.DictReader(fh))
    what, kind = ("cells", "labels") if cells else ("images", "manifest")
    print(f"wrote {n} {what} to {root} ({kind}: {table})")
    return root
