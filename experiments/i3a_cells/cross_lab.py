"""Models of one recipe against another on the same cells of another lab, paired by fold (round 8).

    for k in 0 1 2 3 4; do   # each fold model of a grouped CV on the same cells, e.g. the ICAP fields' cells
      ana-eval ckpt_path=$(cat outputs/cv_i3a/$k/best_checkpoint.txt) data.root=<cells> split=all \\
          hydra.run.dir=outputs/xlab/recipe$k
    done
    python experiments/i3a_cells/cross_lab.py --base recipe outputs/xlab [--out table.md]

Reads the ``ana-eval`` folders under the given folder, named ``<name><fold>`` (``recipe0`` … ``recipe4``) or
``<name>`` (a single model): their ``metrics.json`` (``test/mca`` and its bootstrap interval) and
``test_per_class.csv`` (recall per class). Prints one row per model (MCA, interval, recall per class) and,
for every name with the base's folds, the paired difference from the base over the folds (mean, 95 %
t-interval, folds higher) with :func:`ana_lightning.stats.paired_comparison`.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from pathlib import Path


def read_evals(folder: Path) -> dict[str, dict[int | None, dict]]:
    """``{name: {fold or None: {"mca", "low", "high", "recall": {class: recall}}}}``."""
    out: dict[str, dict[int | None, dict]] = defaultdict(dict)
    for d in sorted(p for p in folder.iterdir() if (p / "metrics.json").is_file()):
        m = json.loads((d / "metrics.json").read_text())
        if "test/mca" not in m:
            raise SystemExit(f"{d / 'metrics.json'}: no test/mca (not an ana-eval of a single-label model?)")
        recall = {}
        if (d / "test_per_class.csv").is_file():
            recall = {r["class"]: float(r["recall"]) for r in csv.DictReader(open(d / "test_per_class.csv"))}
        hit = re.fullmatch(r"(.*?)(\d+)", d.name)
        name, fold = (hit.group(1), int(hit.group(2))) if hit else (d.name, None)
        out[name][fold] = {
            "mca": float(m["test/mca"]),
            "low": m.get("test/mca_ci95_low"),
            "high": m.get("test/mca_ci95_high"),
            "recall": recall,
        }
    if not out:
        raise SystemExit(f"{folder}: no ana-eval folders (<name><fold>/metrics.json) in it")
    return dict(out)


def tables(evals: dict[str, dict[int | None, dict]], base: str) -> str:
    from ana_lightning.stats import paired_comparison

    if base not in evals:
        raise SystemExit(f"--base {base}: no such models (found {', '.join(sorted(evals))})")
    classes = list(next(iter(next(iter(evals.values())).values()))["recall"])
    lines = [
        "| model | fold | MCA | 95 % interval | " + " | ".join(f"{c} recall" for c in classes) + " |",
        "|---|---|---|---|" + "---|" * len(classes),
    ]
    for name, folds in evals.items():
        for fold, e in sorted(folds.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
            ci = f"[{e['low']:.3f}, {e['high']:.3f}]" if e["low"] is not None else ""
            rec = " | ".join(f"{e['recall'].get(c, float('nan')):.2f}" for c in classes)
            lines.append(f"| {name} | {'' if fold is None else fold} | {e['mca']:.3f} | {ci} | {rec} |")
    base_folds = sorted(k for k in evals[base] if k is not None)
    lines += [
        "",
        f"Paired by fold against `{base}` (folds {', '.join(map(str, base_folds))}):",
        "",
        "| model | mean MCA | base | difference | 95 % t-interval | folds higher | NuMem recall, mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, folds in evals.items():
        if name == base or sorted(k for k in folds if k is not None) != base_folds or len(base_folds) < 2:
            continue
        a = [folds[k]["mca"] for k in base_folds]
        b = [evals[base][k]["mca"] for k in base_folds]
        c = paired_comparison(a, b)
        higher = sum(x > y for x, y in zip(a, b, strict=True))
        numem = [folds[k]["recall"].get("NuMem", float("nan")) for k in base_folds]
        lines.append(
            f"| {name} | {c['mean_a']:.3f} | {c['mean_b']:.3f} | {c['mean_diff']:+.3f} | "
            f"[{c['ci95_low']:+.3f}, {c['ci95_high']:+.3f}] | {higher} of {len(a)} | {sum(numem) / len(numem):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from report_out import emit

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="the folder of ana-eval run folders (<name><fold>)")
    ap.add_argument("--base", default="recipe", help="the name the others are paired against")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)
    text = tables(read_evals(args.folder), args.base)
    emit(text, args.out)


if __name__ == "__main__":
    main()
