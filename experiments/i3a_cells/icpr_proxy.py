"""An ICPR-2012-sized contest folder built from real I3A cells, to check `experiment=icpr2012_cells`.

The ICPR 2012 (MIVIA) cells are not on this machine, so its recipe has never seen a real cell. This
script writes real I3A cells in the ICPR 2012 contest layout (``training/`` + ``test/`` + ``cells.csv``,
8-bit RGB with the signal in green, ``NNNN_mask.png``), at the contest's size: per class
``--train-fields`` specimen groups as training "fields" and the class's other groups as test fields,
``--cells`` cells drawn from each (the contest: 721 training cells of 14 fields, 734 test cells of 14).
Each specimen group is one field in ``cells.csv``, so validation, carved from ``training/`` by field,
never splits a specimen, and no test specimen is seen in training.

The groups come from a grouped run's ``split_manifest.csv``; ``--splits`` says which of its splits
to draw from (default ``train,val``: a run's test specimens stay untouched). The six I3A classes keep
their place under ICPR 2012 names (the reader accepts only those): Homogeneous → homogeneous,
Speckled → fine_speckled, Nucleolar → nucleolar, Centromere → centromere, Golgi → cytoplasmatic and
NuMem → coarse_speckled (**a stand-in name**: ICPR 2012 has no nuclear-envelope class; the task is still
six-way). Images are written under ``out`` (never into the repository)::

    python experiments/i3a_cells/icpr_proxy.py build outputs/<run>/split_manifest.csv outputs/icpr_proxy/d0 --root <I3A training folder> --seed 0
    ana-train experiment=icpr2012_cells data.root=outputs/icpr_proxy/d0 hydra.run.dir=outputs/icpr_proxy/runs/R0-d0
    python experiments/i3a_cells/icpr_proxy.py table outputs/icpr_proxy/runs   # test/mca per draw and arm, paired
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

#: I3A contest class → the ICPR 2012 name it is written under (NuMem: a stand-in, see the docstring).
ICPR_NAME = {
    "Homogeneous": "homogeneous",
    "Speckled": "fine_speckled",
    "Nucleolar": "nucleolar",
    "Centromere": "centromere",
    "Golgi": "cytoplasmatic",
    "NuMem": "coarse_speckled",
}
#: the manifest's labels (ICAP nodes of the I3A classes) → the I3A class
I3A_OF_NODE = {
    "AC-1": "Homogeneous",
    "speckled": "Speckled",
    "nucleolar": "Nucleolar",
    "AC-3": "Centromere",
    "AC-22": "Golgi",
    "nuclear envelope": "NuMem",
}


def mask_path(path: Path) -> Path:
    """The I3A mask beside a cell (``00001.png`` → ``00001_Mask.png``)."""
    p = path.with_name(f"{path.stem}_Mask{path.suffix}")
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no mask {p.name} beside it")
    return p


def draw(manifest: pd.DataFrame, splits: list[str], train_fields: int, cells: int, seed: int) -> pd.DataFrame:
    """Rows ``path, i3a_class, set, field`` of the proxy: per class ``train_fields`` groups to training,
    the rest to test, ``cells`` cells drawn from each group (all when it has fewer)."""
    if "group" not in manifest.columns:
        raise ValueError("the manifest has no group column: it was not written by a grouped split")
    unknown = sorted(set(manifest["label"]) - set(I3A_OF_NODE))
    if unknown:
        raise ValueError(f"labels {unknown} are not the I3A contest classes' nodes {sorted(I3A_OF_NODE)}")
    rng = np.random.default_rng(seed)
    pool = manifest[manifest["split"].isin(splits)]
    out = []
    field = 0
    for label in sorted(I3A_OF_NODE, key=lambda n: list(ICPR_NAME).index(I3A_OF_NODE[n])):
        groups = sorted(pool.loc[pool["label"] == label, "group"].unique())
        if len(groups) < train_fields + 1:
            raise ValueError(
                f"class {I3A_OF_NODE[label]}: {len(groups)} group(s) in splits {splits}, "
                f"need {train_fields} for training and at least 1 for test"
            )
        order = rng.permutation(len(groups))
        for rank, gi in enumerate(order):
            g = groups[gi]
            rows = pool[pool["group"] == g]
            take = rows.iloc[np.sort(rng.choice(len(rows), min(cells, len(rows)), replace=False))]
            field += 1
            for p in take["path"]:
                out.append(
                    {
                        "path": p,
                        "i3a_class": I3A_OF_NODE[label],
                        "set": "training" if rank < train_fields else "test",
                        "field": field,
                        "group": g,
                    }
                )
    return pd.DataFrame(out)


def write(rows: pd.DataFrame, out: Path, root: Path) -> None:
    """Write ``rows`` (from :func:`draw`; paths relative to ``root`` or absolute) in the ICPR 2012
    contest layout under ``out``."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new folder")
    cells = ["ICPR2012Contest_Cell_ID;Set;Image;Intensity;Original_cell_ID;Cell_class;Cell_width;Cell_height"]
    next_id = 1
    for folder, gt_name, info_name in (
        ("training", "gt_training.csv", "training.csv"),
        ("test", "gt_test.csv", "test.csv"),
    ):
        d = out / folder
        d.mkdir(parents=True)
        gt, info = ["ID;pattern"], ["ID;intensity;width;height"]
        for n, r in enumerate(rows[rows["set"] == folder].itertuples()):
            cid = f"{next_id:04d}"
            src = root / r.path
            grey = np.asarray(Image.open(src).convert("L"))
            rgb = np.zeros((*grey.shape, 3), np.uint8)
            rgb[..., 1] = grey  # the signal in green, as the contest's FITC cells
            Image.fromarray(rgb, mode="RGB").save(d / f"{cid}.png")
            m = np.asarray(Image.open(mask_path(src)).convert("L"))
            Image.fromarray(((m > 0) * 255).astype(np.uint8), mode="L").save(d / f"{cid}_mask.png")
            h, w = grey.shape
            name = ICPR_NAME[r.i3a_class]
            gt.append(f"{cid};{name}")
            info.append(f"{cid};positive;{w};{h}")
            cells.append(f"{cid};{folder};{r.field};positive;{n + 1};{name};{w};{h}")
            next_id += 1
        (d / gt_name).write_text("\n".join(gt) + "\n")
        (d / info_name).write_text("\n".join(info) + "\n")
    (out / "cells.csv").write_text("\n".join(cells) + "\n")
    rows.to_csv(out / "proxy_sources.csv", index=False)


def table(runs: Path, base: str = "R0") -> str:
    """A markdown table of ``test/mca`` per draw and arm from ``runs/<arm>-d<k>/metrics.json``, with each
    arm's paired difference from ``base`` (mean ± SD over draws, ddof=1, and the draws it is higher in)."""
    got: dict[str, dict[int, float]] = {}
    for f in sorted(runs.glob("*-d*/metrics.json")):
        arm, d = f.parent.name.rsplit("-d", 1)
        mca = json.loads(f.read_text()).get("test/mca")
        if mca is None:
            raise ValueError(f"{f}: no test/mca (did the run finish its test?)")
        got.setdefault(arm, {})[int(d)] = float(mca)
    if base not in got:
        raise ValueError(f"no runs of the base arm {base!r} under {runs} (found {sorted(got)})")
    draws = sorted(set.intersection(*(set(v) for v in got.values())))
    arms = [base] + sorted(a for a in got if a != base)
    lines = [
        "| draw | " + " | ".join(arms) + " | " + " | ".join(f"{a} − {base}" for a in arms[1:]) + " |",
        "|---" * (1 + 2 * len(arms) - 1) + "|",
    ]
    for d in draws:
        vals = [got[a][d] for a in arms]
        diffs = [got[a][d] - got[base][d] for a in arms[1:]]
        lines.append(f"| {d} | " + " | ".join(f"{v:.3f}" for v in vals + diffs) + " |")
    mean = [np.mean([got[a][d] for d in draws]) for a in arms]
    sd = [np.std([got[a][d] for d in draws], ddof=1) if len(draws) > 1 else float("nan") for a in arms]
    dif = [np.array([got[a][d] - got[base][d] for d in draws]) for a in arms[1:]]
    lines.append(
        "| mean ± SD | "
        + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, sd, strict=True))
        + " | "
        + " | ".join(
            f"{x.mean():+.3f} ± {x.std(ddof=1) if len(x) > 1 else float('nan'):.3f} (higher in {(x > 0).sum()} of {len(x)})"
            for x in dif
        )
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write one proxy contest folder")
    b.add_argument("manifest", type=Path, help="a grouped run's split_manifest.csv (paths, labels, groups)")
    b.add_argument("out", type=Path, help="the contest folder to write (new or empty)")
    b.add_argument(
        "--root",
        type=Path,
        required=True,
        help="the run's data.root (the manifest's paths are relative to it)",
    )
    b.add_argument(
        "--seed", type=int, default=0, help="which groups go to training and which cells are drawn"
    )
    b.add_argument("--splits", default="train,val", help="the manifest's splits to draw groups from")
    b.add_argument("--train-fields", type=int, default=2, help="training groups (fields) per class")
    b.add_argument("--cells", type=int, default=60, help="cells drawn from each group")
    t = sub.add_parser("table", help="test/mca per draw and arm of runs named <arm>-d<draw>")
    t.add_argument("runs", type=Path, help="folder of run folders <arm>-d<draw> (each with metrics.json)")
    t.add_argument("--base", default="R0", help="the arm the others are paired against")
    argv = sys.argv[1:]
    if argv and argv[0] not in ("build", "table", "-h", "--help"):
        argv = ["build", *argv]  # build is the default command
    args = ap.parse_args(argv)
    if args.command == "table":
        print(table(args.runs, args.base))
        return
    rows = draw(pd.read_csv(args.manifest), args.splits.split(","), args.train_fields, args.cells, args.seed)
    write(rows, args.out, args.root)
    summary = rows.groupby(["set", "i3a_class"]).agg(cells=("path", "size"), fields=("field", "nunique"))
    print(summary.to_string())
    print(f"{len(rows)} cells of {rows['field'].nunique()} specimen groups written to {args.out}")


if __name__ == "__main__":
    main()
