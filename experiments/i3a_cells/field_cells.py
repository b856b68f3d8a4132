"""Cells of other specimens for the I3A recipe's training split: cut from labelled fields (round 6).

    python experiments/i3a_cells/field_cells.py cut ../shared/data/ana-pattern-quest/patterns outputs/field_cells
    python experiments/i3a_cells/field_cells.py combine outputs/field_cells ../shared/data/i3a2014-task1/training \\
        outputs/<run>/split_manifest.csv outputs/combined
    ana-train experiment=i3a_cells data.root=outputs/combined data.split_manifest=outputs/combined/split_manifest.csv
    python experiments/i3a_cells/field_cells.py reframe outputs/field_cells outputs/field_cells_tight --fraction 1.0

``cut`` segments every field of a folder ``<root>/<ac-N>/<images>`` with the project's field segmentation
(:func:`~ana_lightning.fields.segment.segment_field`) and writes one crop per interphase cell that does not
touch the border (:func:`~ana_lightning.fields.crops.cell_crops`: the nucleus box + 10 %, as ``ana-predict``
cuts cells for a cell model) in the I3A layout: ``00001.png`` (8-bit grey: the green FITC channel, so a
blue DAPI counterstain stays out), ``00001_Mask.png`` and ``gt_training.csv`` (``Image ID``, ``Image class``,
``Specimen ID`` = the field). Each AC code becomes its contest class by ``CLASSES`` below; byte-identical
fields are cut once.

``combine`` makes a folder that holds the real cells (symbolic links) and the cut cells (IDs from 900001),
and a copy of a run's split manifest in which every cut cell is a **training** row: the real cells keep
their split, so the validation and test specimens are the run's own (a run of the research split,
``'data.split_fractions=[0.6,0.2,0.2]'``, has validation specimens; a default run since round 17 has none, and
the combined run then has none either). Groups of the cut cells are named ``fields:<field>``.

``reframe`` (round 9) writes a copy of an I3A-layout folder in which every cell and its mask are re-cut so
the mask's box spans ``--fraction`` of a square crop (:func:`ana_lightning.data.masks.recrop`; 1.0 = a
tight crop, as some datasets cut their cells), with the same label CSV: the same cells as another dataset
would frame them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

#: contest class → the ICAP codes whose fields give its cells (Speckled: the fine and coarse speckled
#: codes and AC-2, dense fine speckled, which the tree puts under speckled too)
CLASSES = {
    "Homogeneous": ("ac-1",),
    "Speckled": ("ac-2", "ac-4", "ac-5"),
    "Nucleolar": ("ac-8", "ac-9", "ac-10"),
    "Centromere": ("ac-3",),
    "NuMem": ("ac-11", "ac-12"),
    "Golgi": ("ac-22",),
}
COLUMNS = ["Image ID", "Image class", "Specimen ID"]


def cut(fields: Path, out: Path, skip: list[str], pattern: str = "*.*", min_side: int = 12) -> dict[str, int]:
    from ana_lightning.data.images import decode_image
    from ana_lightning.fields.crops import cell_crops
    from ana_lightning.fields.segment import segment_field

    if not fields.is_dir():
        raise SystemExit(f"cut: {fields} is not a folder of <ac-N>/<images>")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"cut: {out} is not empty; give a new folder")
    rows, seen, per_class = [], set(), {}
    for cls, codes in CLASSES.items():
        if cls in skip:
            continue
        for code in codes:
            found = sorted((fields / code).glob(pattern))
            if not found:
                print(f"{cls:12s} {code}: no field matches {fields / code / pattern}", flush=True)
            for f in found:
                raw = f.read_bytes()
                if raw in seen:
                    continue
                seen.add(raw)
                rgb = decode_image(raw, f)  # H×W×3 uint8; a broken file raises an error that names it
                seg = segment_field(rgb)
                green = np.repeat(rgb[..., 1:2], 3, axis=2)
                n = 0
                for c in cell_crops(green, seg, crop_from="nuclei", margin=0.1, grey=True, mask_mode="none"):
                    if c.mitotic or c.touches_border or min(c.image.shape[:2]) < min_side:
                        continue
                    i = f"{len(rows) + 1:05d}"
                    Image.fromarray(c.image[..., 0]).save(out / f"{i}.png")
                    Image.fromarray(c.mask.astype(np.uint8) * 255).save(out / f"{i}_Mask.png")
                    rows.append({"Image ID": i, "Image class": cls, "Specimen ID": f"{code}/{f.stem}"})
                    n += 1
                per_class[cls] = per_class.get(cls, 0) + n
                print(f"{cls:12s} {code}/{f.name}: {n} cells (nucleus {seg.diameter_px:.0f} px)", flush=True)
    with open(out / "gt_training.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} cells of {len({r['Specimen ID'] for r in rows})} fields in {out}: {per_class}")
    return per_class


def combine(cells: Path, real: Path, manifest: Path, out: Path) -> Path:
    import pandas as pd

    from ana_lightning.data.contest_labels import contest_classes
    from ana_lightning.taxonomy import Taxonomy

    node = contest_classes(Taxonomy.load(), "i3a2014")  # contest class → tree label, as the manifest names it
    csvs = sorted(real.glob("*.csv"))
    if len(csvs) != 1:
        raise SystemExit(f"combine: {real} should hold one label CSV, found {[p.name for p in csvs]}")
    m = pd.read_csv(manifest)
    group = dict(zip(m["path"], m["group"], strict=True))
    out.mkdir(parents=True, exist_ok=True)
    rows, extra = [], []

    def link(src: Path, name: str) -> None:
        dst = out / name
        if not dst.exists():
            dst.symlink_to(src.resolve())

    for r in csv.DictReader(open(csvs[0], newline="")):
        i = r["Image ID"]
        link(real / f"{i}.png", f"{i}.png")
        link(real / f"{i}_Mask.png", f"{i}_Mask.png")
        # the run's groups as the specimen column, so the combined folder groups the real cells the same way
        if f"{i}.png" not in group:
            raise SystemExit(
                f"combine: {manifest} has no row for {i}.png of {csvs[0]}: a manifest of a run on {real}?"
            )
        rows.append({"Image ID": i, "Image class": r["Image class"], "Specimen ID": group[f"{i}.png"]})
    for r in csv.DictReader(open(cells / "gt_training.csv", newline="")):
        i = f"9{int(r['Image ID']):05d}"
        link(cells / f"{r['Image ID']}.png", f"{i}.png")
        link(cells / f"{r['Image ID']}_Mask.png", f"{i}_Mask.png")
        g = f"fields:{r['Specimen ID']}"
        rows.append({"Image ID": i, "Image class": r["Image class"], "Specimen ID": g})
        sha = hashlib.sha256((cells / f"{r['Image ID']}.png").read_bytes()).hexdigest()
        extra.append(
            {"path": f"{i}.png", "label": node[r["Image class"]], "split": "train", "sha256": sha, "group": g}
        )
    pd.DataFrame(rows, columns=COLUMNS).to_csv(out / "gt_training.csv", index=False)
    pd.concat([m, pd.DataFrame(extra)]).to_csv(out / "split_manifest.csv", index=False)
    print(f"{out}: {len(m)} real cells (splits kept) + {len(extra)} cut cells in the training split")
    return out / "split_manifest.csv"


def reframe(cells: Path, out: Path, fraction: float) -> int:
    """Every ``<ID>.png`` + ``<ID>_Mask.png`` of ``cells`` re-cut to ``fraction`` into ``out`` (CSV files copied)."""
    import shutil

    from ana_lightning.data.images import load_image
    from ana_lightning.data.masks import check_crop_fraction, recrop

    fraction = check_crop_fraction(fraction)
    if fraction is None:
        raise SystemExit("reframe: --fraction is required")
    images = sorted(p for p in cells.glob("*.png") if not p.name.endswith("_Mask.png"))
    if not images:
        raise SystemExit(f"{cells}: no <ID>.png cell images (not an I3A-layout folder?)")
    out.mkdir(parents=True, exist_ok=True)
    for image in images:
        m = image.with_name(image.stem + "_Mask.png")
        if not m.is_file():
            raise SystemExit(f"{image}: no mask {m.name} beside it, so it cannot be re-cut")
        try:
            im, mk = recrop(load_image(image), load_image(m), fraction)
        except ValueError as e:
            raise SystemExit(f"{image} with mask {m}: {e}") from None
        Image.fromarray(im[..., 0] if im.ndim == 3 and (im == im[..., :1]).all() else im).save(
            out / image.name
        )
        Image.fromarray(mk if mk.ndim == 2 else mk.max(axis=2)).save(out / m.name)
    for f in cells.glob("*.csv"):
        shutil.copy(f, out / f.name)
    print(f"{len(images)} cells re-cut so the mask's box spans {fraction:g} of the crop: {out}")
    return len(images)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cut", help="cut cells from labelled fields into the I3A layout")
    c.add_argument("fields", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--skip", nargs="*", default=["Golgi"], help="contest classes left out (default: Golgi)")
    c.add_argument(
        "--pattern", default="*.*", help="field files in each <ac-N> folder (round 6 screened '*.jpg')"
    )
    b = sub.add_parser(
        "combine", help="real cells + cut cells, and a manifest with the cut cells in training"
    )
    b.add_argument("cells", type=Path)
    b.add_argument("real", type=Path)
    b.add_argument("manifest", type=Path)
    b.add_argument("out", type=Path)
    r = sub.add_parser(
        "reframe", help="a copy of an I3A-layout folder with every cell re-cut to another framing"
    )
    r.add_argument("cells", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument(
        "--fraction", type=float, required=True, help="the share of the crop side the mask's box spans"
    )
    a = ap.parse_args(argv)
    if a.cmd == "cut":
        cut(a.fields, a.out, a.skip, a.pattern)
    elif a.cmd == "reframe":
        reframe(a.cells, a.out, a.fraction)
    else:
        combine(a.cells, a.real, a.manifest, a.out)


if __name__ == "__main__":
    sys.exit(main())
