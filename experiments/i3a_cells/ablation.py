"""Ablation and robustness table of the cell recipe (``experiment=i3a_cells``) on real I3A cells.

    python experiments/i3a_cells/ablation.py --root ../shared/data/i3a2014-task1/training \
        --rows full,no_cell_norm,no_acquisition_jitter --epochs 4
    python experiments/i3a_cells/ablation.py --root ... --from-run outputs/<run> --name full   # a finished run
    python experiments/i3a_cells/ablation.py --table                                           # table only

Each row trains the recipe with one ingredient changed (``ana-train experiment=i3a_cells`` plus the
row's overrides, the same grouped split: ``data.seed`` is fixed), tests the best-``val/mca``
checkpoint once on the specimen-grouped test split, and then evaluates the same checkpoint on the
same test cells *shifted the way another lab's images would be*: brightness ×0.3 and ×4 (in 8-bit
units: dim cells lose grey levels, bright ones saturate), gamma 0.5 and 2, Gaussian blur σ = 1.5 px,
and the grey cell stored as RGB with the signal in green only. ``tta`` rows reuse a trained row's
checkpoint with dihedral test-time augmentation switched on (no training).

Results are appended to ``results/results.csv`` (one line per row and shift, so an interrupted run
keeps its finished rows) and ``results/table.md`` is rewritten from it. The README beside this file
quotes the table with the protocol (epochs, machine load).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "i3a2014-task1" / "training"

ROWS: dict[str, list[str]] = {
    "full": [],
    "no_cell_norm": ["model.backbone.cell_input.normalize=false"],
    "no_background": ["model.backbone.cell_input.background=false"],
    "no_framing": ["data.crop_fraction=null", "augmentation.batch.tight=0"],  # the recipe before round 9
    "no_acquisition_jitter": [
        "augmentation.batch.gain=null",
        "augmentation.batch.gamma=0",
        "augmentation.batch.blur=0",
        "augmentation.batch.noise=0",
        "augmentation.batch.offset=0",
    ],
    "soft_jitter": ["augmentation.batch.blur=0", "augmentation.batch.gamma=0.2"],
    "dihedral_only": ["augmentation.batch.rotate=false", "augmentation.batch.scale=0"],
    "mask_apply": ["data.mask=apply"],
    "mask_none": ["data.mask=none"],
    "no_class_weights": ["class_weighted_loss=false"],
    "cellnet": ["model=cellnet"],
    "plain": [
        "model.backbone.cell_input.normalize=false",
        "augmentation.batch.gain=null",
        "augmentation.batch.gamma=0",
        "augmentation.batch.blur=0",
        "augmentation.batch.noise=0",
        "augmentation.batch.offset=0",
        "augmentation.batch.rotate=false",
        "augmentation.batch.scale=0",
    ],
    "haze": ["augmentation.batch.haze=0.8"],
    "plateau": ["augmentation.batch.plateau=0.6"],
}
WHAT = {
    "full": "the recipe (experiment=i3a_cells)",
    "no_cell_norm": "− per-cell intensity normalisation",
    "no_background": "− background subtraction (cell scaled by its 99th percentile only)",
    "no_framing": "− one framing (cells as cut, no tight-crop augmentation: the recipe before round 9)",
    "no_acquisition_jitter": "− gain/gamma/blur/noise/offset jitter",
    "dihedral_only": "− any-angle rotation and zoom (flips + 90° only)",
    "mask_apply": "mask applied (zero outside) instead of a mask channel",
    "mask_none": "no mask",
    "no_class_weights": "− class-weighted loss",
    "cellnet": "the compact CellNet (0.66 M params) instead of resnet10t",
    "plain": "plain: no normalisation, no jitter, flips + 90° only",
    "previous_recipe": "the previous default (resnet10t, no background subtraction)",
    "soft_jitter": "− blur jitter, gamma jitter exp(±0.2) instead of exp(±0.4)",
    "haze": "+ haze jitter (a blurred copy blended in, weight ≤ 0.8)",
    "plateau": "+ plateau jitter (a diffuse level over the mask, ≤ 0.6 of the cell's peak)",
}


def _shift(name: str):
    """An 8-bit RGB image → the same image as another lab might record it."""

    def scale(k):
        return lambda im: np.clip(np.round(im.astype(np.float32) * k), 0, 255).astype(np.uint8)

    def gamma(g):
        return lambda im: np.clip(np.round(255 * (im.astype(np.float32) / 255) ** g), 0, 255).astype(np.uint8)

    def blur(s):
        return lambda im: cv2.GaussianBlur(im, (0, 0), s)

    def green(im):
        out = np.zeros_like(im)
        out[..., 1] = im.max(axis=2)
        return out

    return {
        "none": lambda im: im,
        "bright_x0.3": scale(0.3),
        "bright_x4": scale(4.0),
        "gamma_0.5": gamma(0.5),
        "gamma_2": gamma(2.0),
        "blur_1.5": blur(1.5),
        "rgb_green": green,
    }[name]


SHIFTS = ["none", "bright_x0.3", "bright_x4", "gamma_0.5", "gamma_2", "blur_1.5", "rgb_green"]


def split_cells(run_dir: Path, root: Path, split: str = "test") -> tuple[list[str], list[str], list[str]]:
    """``split`` paths of a run (its split manifest), their contest class names (its classes.csv) and
    their specimen groups (the manifest's ``group`` column)."""
    from ana_lightning.data.hierarchy import read_contest_classes

    node_to_class = read_contest_classes(run_dir)
    if not node_to_class:
        sys.exit(f"{run_dir}: no classes.csv (not a contest-level run such as experiment=i3a_cells)")
    paths, labels, groups = [], [], []
    for r in csv.DictReader(open(run_dir / "split_manifest.csv")):
        if r["split"] == split:
            p = Path(r["path"])
            paths.append(str(p if p.is_absolute() else root / p))
            labels.append(node_to_class[r["label"]])
            groups.append(r.get("group") or "")
    if not paths:
        hint = (
            " (experiment=i3a_cells has no validation split since round 17: train the run with "
            "'data.split_fractions=[0.6,0.2,0.2]', the research split, or use --split test)"
            if split == "val"
            else ""
        )
        sys.exit(f"{run_dir}: its split_manifest.csv has no {split} cells{hint}")
    return paths, labels, groups


def _test_cells(run_dir: Path, root: Path, split: str = "test") -> tuple[list[str], list[str]]:
    """``split`` paths of a run and their contest class names (:func:`split_cells` without the groups)."""
    return split_cells(run_dir, root, split)[:2]


def mask_of(path: str) -> str:
    """The mask beside a contest cell: ``<ID>_Mask.png`` (I3A) or ``<ID>_mask.png`` (ICPR 2012)."""
    p = Path(path)
    for suffix in ("_Mask", "_mask"):
        m = p.with_name(p.stem + suffix + p.suffix)
        if m.is_file():
            return str(m)
    raise FileNotFoundError(f"{path}: no {p.stem}_Mask{p.suffix} or {p.stem}_mask{p.suffix} beside it")


def run_data(run_dir: Path) -> dict:
    """The ``data`` settings a run used (its ``config_resolved.yaml``)."""
    with open(Path(run_dir) / "config_resolved.yaml") as f:
        return __import__("yaml").safe_load(f)["data"]


def read_cells(paths: list[str], run_dir: Path | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each cell image with its mask (the contest layouts, :func:`mask_of`; masks at their own range). With
    ``run_dir``, files with more than 8 bits are read at that run's ``data.bit_depth``, as its training read them."""
    from ana_lightning.data.images import check_bit_depth, load_image, set_bit_depth

    if run_dir is not None:
        set_bit_depth(check_bit_depth(run_data(run_dir).get("bit_depth"), "data.bit_depth"))
    return [(load_image(p), load_image(mask_of(p), camera=False)) for p in paths]


def model_input(model, run_dir: Path, raw, shift=lambda im: im) -> torch.Tensor:
    """The batch ``model`` sees for ``raw`` cells (:func:`read_cells`), each changed by ``shift`` first
    (``shift(image, mask)`` when the function has ``with_mask = True``, else ``shift(image)``),
    prepared with the run's ``data.mask`` and ``data.crop_fraction`` (the cell re-cut around its mask)
    and the model's image size and normalisation."""
    from ana_lightning.data.contest import apply_mask
    from ana_lightning.data.masks import recrop
    from ana_lightning.data.transforms import build_transform

    data = run_data(run_dir)
    mask_mode, frac = data["mask"], data.get("crop_fraction")
    tf = build_transform(int(model.hparams.image_size), None, model.hparams.mean, model.hparams.std)

    def one(im, m):
        im = shift(im, m) if getattr(shift, "with_mask", False) else shift(im)
        if frac:
            im, m = recrop(im, m, float(frac))
        return tf(apply_mask(im, m, mask_mode))

    return torch.stack([one(im, m) for im, m in raw])


def batched(model, x: torch.Tensor, size: int = 256) -> torch.Tensor:
    """``model``'s outputs (logits) for ``x``, in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + size]) for i in range(0, len(x), size)])


def mca(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y`` (the contests' MCA)."""
    return float(np.mean([np.mean(pred[y == k] == k) for k in range(n_classes) if np.any(y == k)]))


def shifted_predictions(
    ckpt: str, run_dir: Path, root: Path, shifts: dict, split: str = "test", tta: bool = False
) -> tuple[np.ndarray, list[str], dict]:
    """A checkpoint's predicted classes on its run's ``split`` cells under each shift (``{name: image → image}``):
    ``(true class indices, class names, {name: predicted indices})``."""
    from ana_lightning.utils import load_checkpoint_model

    model = load_checkpoint_model(ckpt)
    net = model.net
    if hasattr(net, "tta"):
        net.tta = bool(tta)
    elif tta:
        raise ValueError(f"{ckpt}: the network has no CellInput, so no TTA switch")
    paths, labels = _test_cells(run_dir, root, split)
    names = list(model.class_names)
    y = np.array([names.index(c) for c in labels])
    raw = read_cells(paths, run_dir)
    return (
        y,
        names,
        {
            s: batched(model, model_input(model, run_dir, raw, f)).argmax(-1).numpy()
            for s, f in shifts.items()
        },
    )


def evaluate_shifts(
    ckpt: str, run_dir: Path, root: Path, tta: bool = False, shifts=SHIFTS, split: str = "test"
) -> dict[str, float]:
    """MCA of a checkpoint on its run's ``split`` cells (test, or val to choose a recipe) under each shift."""
    y, names, pred = shifted_predictions(ckpt, run_dir, root, {s: _shift(s) for s in shifts}, split, tta)
    return {s: mca(y, p, len(names)) for s, p in pred.items()}


def train_row(
    name: str, overrides: list[str], epochs: int | None, out: Path, root: Path, extra: list[str]
) -> Path:
    from ana_lightning.pipeline import train
    from ana_lightning.utils import compose_config

    run = out / "runs" / name
    ov = [
        "experiment=i3a_cells",
        "data.split_fractions=[0.6,0.2,0.2]",  # the research split: validation specimens (the default has none)
        f"data.root={root}",
        f"paths.output_dir={run}",
        "callbacks.rich_progress_bar=null",
        *overrides,
        *extra,
    ]
    if epochs:
        ov.append(f"trainer.max_epochs={epochs}")
    t0, c0 = time.time(), time.process_time()
    metrics, _ = train(compose_config("train", ov))
    (run / "timing.json").write_text(
        json.dumps(
            {
                "wall_s": time.time() - t0,
                "cpu_s": time.process_time() - c0,
                "load": os.getloadavg(),
                "overrides": ov,
            },
            indent=1,
        )
    )
    return run


def best_checkpoint(run: Path) -> str:
    """The checkpoint a run tested (``best_checkpoint.txt``), or its one ``best-epoch*.ckpt`` (``final-epoch*.ckpt``
    without a validation split) when it was trained with ``test=false``: the project's run-folder lookup."""
    from ana_lightning.models.hierarchical import resolve_checkpoint

    try:
        return str(resolve_checkpoint(run))
    except FileNotFoundError as e:
        sys.exit(f"{run}: cannot tell which checkpoint to score: {e}")


def _suffix(split: str) -> str:
    return "" if split == "test" else f"_{split}"


def append(out: Path, row: dict, split: str = "test") -> None:
    f = out / f"results{_suffix(split)}.csv"
    new = not f.exists()
    with open(f, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def write_table(out: Path, split: str = "test") -> str:
    f = out / f"results{_suffix(split)}.csv"
    if not f.exists():
        return "(no results yet)"
    rows = list(csv.DictReader(open(f)))
    lines = [
        f"| row | what | epochs | grouped {split} MCA | "
        + " | ".join(s for s in SHIFTS[1:])
        + " | worst shift | train wall / CPU min (load) |",
        "|---|---|---|---|" + "---|" * (len(SHIFTS) - 1) + "---|---|",
    ]
    for r in rows:
        vals = [float(r[s]) if r[s] != "" else None for s in SHIFTS]
        shifted = [v for v in vals[1:] if v is not None]
        lines.append(
            f"| {r['row']} | {r['what']} | {r['epochs']} | "
            + ("–" if vals[0] is None else f"**{vals[0]:.3f}**")
            + " | "
            + " | ".join("–" if v is None else f"{v:.3f}" for v in vals[1:])
            + f" | {f'{min(shifted):.3f}' if shifted else '–'} | {r['timing']} |"
        )
    text = "\n".join(lines) + "\n"
    (out / f"table{_suffix(split)}.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument(
        "--rows", default="full,no_cell_norm,no_acquisition_jitter,dihedral_only,mask_apply,plain"
    )
    ap.add_argument(
        "--epochs", type=int, default=None, help="shorter runs for the ablation rows (default: the recipe's)"
    )
    ap.add_argument("--tta-of", default="full", help="row whose checkpoint also gets a TTA row ('' = none)")
    ap.add_argument(
        "--tta-shifts", default="none", help="shifts evaluated with TTA (8× the cost of a plain evaluation)"
    )
    ap.add_argument(
        "--from-run", type=Path, default=None, help="add a finished run folder as row --name (no training)"
    )
    ap.add_argument("--name", default="full")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--table", action="store_true", help="only rewrite table.md from results.csv")
    ap.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="cells scored (val: to choose between recipes without touching the test cells; "
        "written to results_val.csv / table_val.md)",
    )
    ap.add_argument(
        "overrides", nargs="*", help="extra ana-train overrides for every row (e.g. torch_threads=1)"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(write_table(args.out, args.split))
        return
    if not args.root.is_dir():
        sys.exit(f"{args.root} does not exist: pass --root <I3A training folder>")
    todo = [(args.name, args.from_run)] if args.from_run else [(r, None) for r in args.rows.split(",") if r]
    for name, run in todo:
        if run is None:
            if name not in ROWS:
                sys.exit(f"unknown row {name!r} (known: {', '.join(ROWS)})")
            run = train_row(name, ROWS[name], args.epochs, args.out, args.root.resolve(), args.overrides)
        ckpt = best_checkpoint(run)
        timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").exists() else {}
        cfg = __import__("yaml").safe_load(open(run / "config_resolved.yaml"))
        tim = (
            f"{timing['wall_s'] / 60:.1f} / {timing['cpu_s'] / 60:.1f} ({timing['load'][0]:.1f})"
            if timing
            else "see README"
        )
        variants = [(name, False)] + ([(f"{name}+tta", True)] if name == args.tta_of else [])
        for label, tta in variants:
            shifts = [s for s in args.tta_shifts.split(",") if s] if tta else SHIFTS
            res = {s: "" for s in SHIFTS} | evaluate_shifts(
                ckpt, run, args.root.resolve(), tta=tta, shifts=shifts, split=args.split
            )
            what = WHAT.get(name, name) + (" + dihedral TTA (8 views)" if tta else "")
            append(
                args.out,
                {
                    "row": label,
                    "what": what,
                    "epochs": cfg["trainer"]["max_epochs"],
                    **res,
                    "timing": tim,
                    "run": str(run),
                },
                args.split,
            )
            print(label, {k: round(v, 3) for k, v in res.items() if v != ""}, flush=True)
    print(write_table(args.out, args.split))


if __name__ == "__main__":
    main()
