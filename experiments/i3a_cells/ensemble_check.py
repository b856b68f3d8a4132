"""Do separately trained models of one recipe, averaged, read unseen specimens better than one model?

    python experiments/i3a_cells/ensemble_check.py outputs/<sweep A> outputs/<sweep B> --work outputs/ens_eval
    python experiments/i3a_cells/ensemble_check.py ... [--split val|test] [--time-cells 256] [--out-md table.md]

The sweeps are cross-validation sweeps of the same folds trained apart (another ``seed``, say; give the second
``data.folds_manifest=<sweep A>/folds_manifest.csv``). For each fold, each sweep's kept checkpoint alone and the
checkpoints together (``ana-eval ensemble.members=[…]``: probabilities averaged) read that fold's ``--split``
cells through ``ana-eval``, each into its own folder under ``--work`` (``m<i>_f<fold>``, ``ens_f<fold>``); an
evaluation already there is reused, so a stopped check resumes. Before any evaluation the fold jobs are checked
to hold the same cells in the same splits.

The table pairs them by fold: each member's MCA, the members' mean (the expected single model), the ensemble's,
the ensemble minus that mean with its 95 % t-interval over the folds and in how many folds it is higher, and the
ensemble minus the first member. ``--time-cells N`` also times, on N cells of the first fold, one model against
the ensemble (dihedral TTA as the checkpoints evaluate), in ms per cell on this machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report_out import emit  # noqa: E402


def paired_folds(sweeps: list[Path]) -> list[tuple[str, list[Path]]]:
    """``(fold name, [job folder of each sweep])`` for every fold of the first sweep, after checking that every
    sweep has that fold and that its jobs' split manifests put the same cells in the same splits."""
    from ana_lightning.crossval import fold_jobs

    by_sweep = []
    for sweep in sweeps:
        jobs = fold_jobs(sweep)
        if not jobs:
            sys.exit(f"{sweep}: no cross-validation fold jobs in it (a sweep of data.fold=...)")
        by_sweep.append({(j["repeat"], j["fold"]): j["dir"] for j in jobs})
    out = []
    for key in sorted(by_sweep[0]):
        repeat, fold = key
        name = f"f{fold}" if repeat == 0 else f"r{repeat}_f{fold}"
        dirs = []
        for sweep, jobs in zip(sweeps, by_sweep, strict=True):
            if key not in jobs:
                sys.exit(f"{sweep}: has no job for repeat {repeat}, fold {fold}, which {sweeps[0]} has")
            dirs.append(Path(jobs[key]))
        first = split_of(dirs[0])
        for d in dirs[1:]:
            if split_of(d) != first:
                sys.exit(
                    f"{d / 'split_manifest.csv'} and {dirs[0] / 'split_manifest.csv'} split the cells differently: "
                    "the sweeps are not of the same folds (train the second with data.folds_manifest=<first sweep>/"
                    "folds_manifest.csv)"
                )
        out.append((name, dirs))
    return out


def split_of(run: Path) -> dict[str, str]:
    """``{path: split}`` from a run's ``split_manifest.csv``."""
    path = run / "split_manifest.csv"
    if not path.is_file():
        sys.exit(f"{run}: no split_manifest.csv (not a finished training run)")
    with open(path, newline="") as f:
        return {r["path"]: r["split"] for r in csv.DictReader(f)}


def checkpoint(run: Path) -> str:
    """The checkpoint a run kept (``ablation.best_checkpoint``: tested, best or final epoch)."""
    from ablation import best_checkpoint

    return best_checkpoint(run)


def ana_eval(out: Path, split: str, model_args: list[str]) -> dict:
    """``ana-eval`` into ``out`` (reused when ``out/metrics.json`` is there from the same split):
    its MCA (``val/mca`` for ``split=val``, ``test/mca`` for test; evaluations written before ``ana-eval``
    named its keys by the split hold ``test/mca`` whatever they read), and the number of cells."""
    done, record = out / "metrics.json", out / "evaluated.txt"
    said = record.read_text() if record.is_file() else ""
    if not (done.is_file() and f"split: {split}" in said):
        exe = Path(sys.executable).with_name("ana-eval")
        cmd = [
            str(exe) if exe.is_file() else "ana-eval",
            *model_args,
            f"split={split}",
            f"hydra.run.dir={out}",
        ]
        print("running:", " ".join(cmd), flush=True)
        log = out.with_name(out.name + ".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0 or not done.is_file():
            sys.exit(f"ana-eval failed (exit {rc}); its output is in {log}")
        said = record.read_text() if record.is_file() else ""
    metrics = json.loads(done.read_text())
    cells = next((line.split(":", 1)[1] for line in said.splitlines() if line.startswith("images:")), "")
    key = f"{split}/mca" if f"{split}/mca" in metrics else "test/mca"
    return {"mca": float(metrics[key]), "cells": int(cells) if cells.strip() else None}


def evaluate(folds: list[tuple[str, list[Path]]], work: Path, split: str) -> list[dict]:
    rows = []
    for name, runs in folds:
        ckpts = [checkpoint(r) for r in runs]
        members = [ana_eval(work / f"m{i}_{name}", split, [f"ckpt_path={c}"]) for i, c in enumerate(ckpts)]
        ens = ana_eval(work / f"ens_{name}", split, [f"ensemble.members=[{','.join(ckpts)}]"])
        cells = {m["cells"] for m in members} | {ens["cells"]}
        if len(cells) != 1:
            sys.exit(
                f"fold {name}: the evaluations read different numbers of cells ({sorted(cells, key=str)})"
            )
        rows.append(
            {"fold": name, "cells": ens["cells"], "members": [m["mca"] for m in members], "ens": ens["mca"]}
        )
    return rows


def time_per_cell(runs: list[Path], split: str, n: int) -> tuple[float, float]:
    """ms per cell on ``n`` of the first fold's ``split`` cells: the first member alone, then the ensemble."""
    import torch
    from ablation import batched, model_input, read_cells, split_cells
    from tta_check import run_root

    from ana_lightning.models.multilabel import ensemble_from_checkpoints
    from ana_lightning.utils import load_checkpoint_model

    paths = split_cells(runs[0], run_root(runs[0]), split)[0][:n]
    ckpts = [checkpoint(r) for r in runs]
    raw = read_cells(paths, runs[0])
    timings = []
    for model in (load_checkpoint_model(ckpts[0]), ensemble_from_checkpoints(ckpts)):
        model.eval()
        x = model_input(model, runs[0], raw)
        batched(model, x[:8])  # warm-up
        t0 = time.perf_counter()
        with torch.no_grad():
            batched(model, x)
        timings.append(1000 * (time.perf_counter() - t0) / len(x))
    return timings[0], timings[1]


def table(rows: list[dict], sweeps: list[Path], split: str, timing: tuple[float, float] | None) -> str:
    from ana_lightning.stats import paired_comparison

    k = len(sweeps)
    names = " | ".join(f"model {i} ({s.name})" for i, s in enumerate(sweeps))
    lines = [
        f"{k} models averaged (ana-eval ensemble.members, probabilities) against each alone, on each fold's {split} cells",
        "",
        f"| fold | cells | {names} | members' mean | ensemble | ensemble − mean | ensemble − model 0 |",
        "|---|---|" + "---|" * k + "---|---|---|---|",
    ]
    for r in rows:
        mean = float(np.mean(r["members"]))
        lines.append(
            f"| {r['fold']} | {r['cells']} | "
            + " | ".join(f"{m:.3f}" for m in r["members"])
            + f" | {mean:.3f} | {r['ens']:.3f} | {r['ens'] - mean:+.3f} | {r['ens'] - r['members'][0]:+.3f} |"
        )
    ens = [r["ens"] for r in rows]

    def summary(base: list[float]) -> str:
        c = paired_comparison(ens, base)
        interval = f" [{c['ci95_low']:+.3f}, {c['ci95_high']:+.3f}]" if len(rows) > 1 else ""
        higher = sum(e > b for e, b in zip(ens, base, strict=True))
        return f"**{c['mean_diff']:+.3f}**{interval}; higher in {higher} of {len(rows)}"

    means = [float(np.mean(r["members"])) for r in rows]
    per_member = " | ".join(f"{np.mean([r['members'][i] for r in rows]):.3f}" for i in range(k))
    lines.append(
        f"| **mean** | | {per_member} | {np.mean(means):.3f} | {np.mean(ens):.3f} | {summary(means)} "
        f"| {summary([r['members'][0] for r in rows])} |"
    )
    spread = [max(r["members"]) - min(r["members"]) for r in rows]
    lines += [
        "",
        f"The members differ by {min(spread):.3f}–{max(spread):.3f} MCA within a fold (same cells, same folds).",
    ]
    if timing:
        lines.append(
            f"Inference on this machine: {timing[0]:.1f} ms per cell for one model, {timing[1]:.1f} ms for the "
            f"ensemble of {k} ({timing[1] / timing[0]:.2f}x)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "sweeps", type=Path, nargs="+", help="cross-validation sweeps of the same folds (two or more)"
    )
    ap.add_argument("--work", type=Path, required=True, help="where each ana-eval writes its folder (reused)")
    ap.add_argument("--split", default="val", choices=["val", "test"], help="choose on val; test once chosen")
    ap.add_argument(
        "--time-cells", type=int, default=0, help="also time one model against the ensemble on N cells"
    )
    ap.add_argument("--out-md", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    if len(args.sweeps) < 2:
        ap.error("give two or more sweeps: an ensemble needs two or more models")
    folds = paired_folds(args.sweeps)
    rows = evaluate(folds, args.work, args.split)
    timing = time_per_cell(folds[0][1], args.split, args.time_cells) if args.time_cells > 0 else None
    emit(table(rows, args.sweeps, args.split, timing), args.out_md)


if __name__ == "__main__":
    main()
