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
six-way). ``cells.csv``'s ``Intensity`` is ``positive`` for every cell and ``Original_cell_ID`` runs per set, not
per field; nothing reads either. Images are written under ``out`` (never into the repository)::

    python experiments/i3a_cells/icpr_proxy.py build outputs/<run>/split_manifest.csv outputs/icpr_proxy/d0 --root <I3A training folder> --seed 0
    ana-train experiment=icpr2012_cells data.root=outputs/icpr_proxy/d0 hydra.run.dir=outputs/icpr_proxy/runs/R0-d0
    python experiments/i3a_cells/icpr_proxy.py table outputs/icpr_proxy/runs   # test/mca per draw and arm, paired
    python experiments/i3a_cells/icpr_proxy.py table outputs/icpr_proxy/runs --per-class   # mean recall per class
    python experiments/i3a_cells/icpr_proxy.py table outputs/icpr_proxy/runs --shifts      # under another lab's shifts
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ana_lightning.data.contest import read_i3a2014
from ana_lightning.data.contest_labels import contest_class_of
from ana_lightning.stats import paired_comparison
from ana_lightning.taxonomy import Taxonomy

#: I3A contest class → the ICPR 2012 name it is written under (NuMem: a stand-in, see the docstring).
ICPR_NAME = {
    "Homogeneous": "homogeneous",
    "Speckled": "fine_speckled",
    "Nucleolar": "nucleolar",
    "Centromere": "centromere",
    "Golgi": "cytoplasmatic",
    "NuMem": "coarse_speckled",
}


@functools.cache
def i3a_of_node() -> dict[str, str]:
    """The manifest's labels (the I3A contest classes' ICAP nodes, from the tree's contest table) → I3A class."""
    return contest_class_of(Taxonomy.load(), "i3a2014")


def i3a_masks(root: Path) -> dict[str, str]:
    """Each I3A cell's mask (``str(root / cell) → mask path``), paired by the project's own I3A reader."""
    contest_log = logging.getLogger("ana_lightning.data.contest")
    level = contest_log.level
    contest_log.setLevel(logging.ERROR)  # grouping="none" warns about leaks; no split is made here
    try:
        data = read_i3a2014(root, Taxonomy.load(), check_images=False, grouping="none")
    finally:
        contest_log.setLevel(level)
    return data.masks


def draw(
    manifest: pd.DataFrame, splits: list[str], train_fields: int, cells: int, seed: int, at_most: bool = False
) -> pd.DataFrame:
    """Rows ``path, i3a_class, set, field`` of the proxy: per class ``train_fields`` groups to training
    (with ``at_most``, fewer for a class that would otherwise keep no test group), the rest to test,
    ``cells`` cells drawn from each group (all when it has fewer)."""
    if "group" not in manifest.columns:
        raise ValueError("the manifest has no group column: it was not written by a grouped split")
    of_node = i3a_of_node()
    unknown = sorted(set(manifest["label"]) - set(of_node))
    if unknown:
        raise ValueError(f"labels {unknown} are not the I3A contest classes' nodes {sorted(of_node)}")
    rng = np.random.default_rng(seed)
    pool = manifest[manifest["split"].isin(splits)]
    out = []
    field = 0
    for label in sorted(of_node, key=lambda n: list(ICPR_NAME).index(of_node[n])):
        groups = sorted(pool.loc[pool["label"] == label, "group"].unique())
        n_train = min(train_fields, len(groups) - 1) if at_most else train_fields
        if len(groups) < n_train + 1 or n_train < 1:
            raise ValueError(
                f"class {of_node[label]}: {len(groups)} group(s) in splits {splits}, "
                f"need {'at least 1' if at_most else train_fields} for training and at least 1 for test"
            )
        order = rng.permutation(len(groups))
        for rank, gi in enumerate(order):
            g = groups[gi]
            rows = pool[(pool["group"] == g) & (pool["label"] == label)]
            if (pool["group"] == g).sum() != len(rows):
                raise ValueError(f"group {g!r} holds cells of several labels: not a specimen group")
            take = rows.iloc[np.sort(rng.choice(len(rows), min(cells, len(rows)), replace=False))]
            field += 1
            for p in take["path"]:
                out.append(
                    {
                        "path": p,
                        "i3a_class": of_node[label],
                        "set": "training" if rank < n_train else "test",
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
    masks = i3a_masks(root)
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
            Image.fromarray(rgb).save(d / f"{cid}.png")
            if str(src) not in masks:
                raise FileNotFoundError(f"{src}: not a cell with a mask in the I3A folder {root}")
            m = np.asarray(Image.open(masks[str(src)]).convert("L"))
            Image.fromarray(((m > 0) * 255).astype(np.uint8)).save(d / f"{cid}_mask.png")
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


def _arm_runs(runs: Path, marker: str) -> tuple[dict[str, dict[int, Path]], list[str]]:
    """Run folders ``<arm>-d<draw>`` under ``runs`` that hold ``marker`` (a file name):
    ``({arm: {draw: folder}}, notes on the folders left out for their name)``."""
    got: dict[str, dict[int, Path]] = {}
    notes = []
    for f in sorted(runs.glob(f"*/{marker}")):
        m = re.fullmatch(r"(.+)-d(\d+)", f.parent.name)
        if m:
            got.setdefault(m.group(1), {})[int(m.group(2))] = f.parent
        else:
            notes.append(f"{f.parent.name}: not named <arm>-d<draw>, left out")
    return got, notes


def _mean_sd(v: Sequence[float]) -> str:
    """``mean ± SD`` (ddof=1; nan for one value)."""
    x = np.asarray(v, float)
    return f"{x.mean():.3f} ± {x.std(ddof=1) if len(x) > 1 else float('nan'):.3f}"


def table(runs: Path, base: str = "R0") -> str:
    """A markdown table of ``test/mca`` per draw and arm from ``runs/<arm>-d<k>/metrics.json``, and each
    arm's paired difference from ``base`` over the draws every arm has (mean ± SD, ddof=1; t-interval and
    paired t-test p from :func:`ana_lightning.stats.paired_comparison`; the draws it is higher in). Folders
    not named ``<arm>-d<k>``, and draws some arm lacks, are left out and named in a note under the table."""
    folders, notes = _arm_runs(runs, "metrics.json")
    got: dict[str, dict[int, float]] = {}
    for arm, by_draw in folders.items():
        for d, run in by_draw.items():
            mca = json.loads((run / "metrics.json").read_text()).get("test/mca")
            if mca is None:
                raise ValueError(f"{run / 'metrics.json'}: no test/mca (did the run finish its test?)")
            got.setdefault(arm, {})[d] = float(mca)
    if base not in got:
        raise ValueError(f"no runs of the base arm {base!r} under {runs} (found {sorted(got)})")
    draws = sorted(set.intersection(*(set(v) for v in got.values())))
    for arm, vals in sorted(got.items()):
        if set(vals) - set(draws):
            notes.append(f"{arm}: draw(s) {sorted(set(vals) - set(draws))} left out (not run by every arm)")
    arms = [base] + sorted(a for a in got if a != base)
    lines = [
        "| draw | " + " | ".join(arms) + " | " + " | ".join(f"{a} − {base}" for a in arms[1:]) + " |",
        "|---" * (2 * len(arms)) + "|",
    ]
    for d in draws:
        vals = [got[a][d] for a in arms]
        diffs = [got[a][d] - got[base][d] for a in arms[1:]]
        lines.append(f"| {d} | " + " | ".join(f"{v:.3f}" for v in vals + diffs) + " |")
    cells = [_mean_sd([got[a][d] for d in draws]) for a in arms]
    for a in arms[1:]:
        c = paired_comparison([got[a][d] for d in draws], [got[base][d] for d in draws])
        higher = sum(got[a][d] > got[base][d] for d in draws)
        cells.append(
            f"{c['mean_diff']:+.3f} ± {c['sd_diff']:.3f} [{c['ci95_low']:+.3f}, {c['ci95_high']:+.3f}], "
            f"p = {c['p_ttest']:.3g}, higher in {higher} of {len(draws)}"
        )
    lines.append("| mean ± SD | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    return "\n".join(lines)


def per_class(runs: Path) -> str:
    """Mean test recall per class and arm over the draws, from each run's ``test_per_class.csv``."""
    folders, _ = _arm_runs(runs, "test_per_class.csv")
    frames = [
        pd.read_csv(run / "test_per_class.csv").assign(arm=arm)
        for arm, by_draw in folders.items()
        for run in by_draw.values()
    ]
    if not frames:
        raise ValueError(f"no <arm>-d<draw>/test_per_class.csv under {runs}")
    recall = pd.concat(frames).pivot_table(index="class", columns="arm", values="recall", aggfunc="mean")
    lines = ["| class | " + " | ".join(recall.columns) + " |", "|---" * (1 + len(recall.columns)) + "|"]
    lines += [f"| {c} | " + " | ".join(f"{v:.3f}" for v in r) + " |" for c, r in recall.iterrows()]
    return "\n".join(lines)


def shifts(runs: Path) -> str:
    """Each run's tested checkpoint on its own test cells shifted the way another lab's would be
    (``ablation.py``'s shifts: brightness ×0.3 and ×4, gamma 0.5 and 2, blur σ 1.5 px, grey as RGB green):
    test MCA per arm and shift, mean ± SD over the draws, and the worst shift."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ablation import SHIFTS, best_checkpoint, evaluate_shifts

    folders, _ = _arm_runs(runs, "split_manifest.csv")
    if not folders:
        raise ValueError(f"no <arm>-d<draw> run folders under {runs}")
    got: dict[str, list[dict[str, float]]] = {}
    for arm, by_draw in sorted(folders.items()):
        for _, run in sorted(by_draw.items()):
            root = Path(yaml.safe_load((run / "config_resolved.yaml").read_text())["data"]["root"])
            got.setdefault(arm, []).append(evaluate_shifts(best_checkpoint(run), run, root))
    lines = [
        "| arm (draws) | " + " | ".join(SHIFTS) + " | worst shift |",
        "|---" * (len(SHIFTS) + 2) + "|",
    ]
    for arm, rows in got.items():
        worst = min(SHIFTS[1:], key=lambda sh: np.mean([r[sh] for r in rows]))
        lines.append(
            f"| {arm} ({len(rows)}) | "
            + " | ".join(_mean_sd([r[sh] for r in rows]) for sh in SHIFTS)
            + f" | {worst} {np.mean([r[worst] for r in rows]):.3f} |"
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
    b.add_argument(
        "--at-most",
        action="store_true",
        help="--train-fields is a maximum: a class with fewer groups keeps one for test",
    )
    t = sub.add_parser("table", help="test/mca per draw and arm of runs named <arm>-d<draw>")
    t.add_argument("runs", type=Path, help="folder of run folders <arm>-d<draw> (each with metrics.json)")
    t.add_argument("--base", default="R0", help="the arm the others are paired against")
    t.add_argument("--per-class", action="store_true", help="mean test recall per class and arm instead")
    t.add_argument(
        "--shifts",
        action="store_true",
        help="test MCA under another lab's shifts instead (re-scores the runs)",
    )
    argv = sys.argv[1:]
    if argv and argv[0] not in ("build", "table", "-h", "--help"):
        argv = ["build", *argv]  # build is the default command
    args = ap.parse_args(argv)
    if args.command == "table":
        if args.shifts:
            print(shifts(args.runs))
        else:
            print(per_class(args.runs) if args.per_class else table(args.runs, args.base))
        return
    rows = draw(
        pd.read_csv(args.manifest),
        args.splits.split(","),
        args.train_fields,
        args.cells,
        args.seed,
        args.at_most,
    )
    write(rows, args.out, args.root)
    summary = rows.groupby(["set", "i3a_class"]).agg(cells=("path", "size"), fields=("field", "nunique"))
    print(summary.to_string())
    print(f"{len(rows)} cells of {rows['field'].nunique()} specimen groups written to {args.out}")


if __name__ == "__main__":
    main()
