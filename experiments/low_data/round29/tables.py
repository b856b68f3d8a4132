"""Round 29's tables (preregistration.txt, preregistration_seeds.txt).

- ``dev``: each candidate's mean development MCA over its (K, repeat) cells, per method; the highest is
  chosen, an exact tie keeps round 28's setting.
- ``seeds``: the tuned headline on three held-out specimen sets. For each seed (its own grouped split, test
  cells, K draws and network seeds) and K: the Siamese ensemble minus each other method (mean over the
  repeats, paired 95 % t-interval), and the paper's claim by round 28's rule: "reproduced" if the Siamese
  ensemble has the highest mean and its interval against the runner-up lies above zero, "not reproduced" if
  another method's mean is higher with the interval below zero, otherwise "a tie".

    python experiments/low_data/round29/tables.py dev [--out-md experiments/low_data/round29/dev_table.md]
    python experiments/low_data/round29/tables.py seeds [--out-md experiments/low_data/round29/seeds_table.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # run from a checkout without installing
_spec = importlib.util.spec_from_file_location("low_data_compare", HERE.parent / "compare.py")
_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_compare)
read_rows = _compare.read_rows  # results.csv of one run, checked, rows without a draw left out
RUNS = ("tuned", "tuned_seed1", "tuned_seed2")
REF = "siamese_ensemble"
ROUND28 = {"siamese_ensemble": "siamese_bce_mean_lr1e-3", "softmax_cnn": "softmax_lr1e-3"}


def dev_table(dev: Path) -> str:
    runs: dict[str, dict[str, list[dict]]] = {}
    for f in sorted(dev.glob("*/results.csv")):
        for r in read_rows(f.parent).values():
            runs.setdefault(r["method"], {}).setdefault(f.parent.name, []).append(r)
    if not runs:
        raise FileNotFoundError(f"no */results.csv under {dev}")
    lines = [
        "| method | candidate | dev MCA, K = 10 (3 repeats) | K = 50 | mean of the 6 cells | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for method, cands in runs.items():
        means = {c: float(np.mean([r["mca"] for r in rows])) for c, rows in cands.items()}
        best = max(means.values())
        tied = [c for c, m in means.items() if m == best]
        chosen = ROUND28[method] if ROUND28.get(method) in tied else tied[0]
        for c, rows in sorted(cands.items(), key=lambda kv: -means[kv[0]]):
            per_k = {
                k: [r["mca"] for r in rows if int(r["k"]) == k] for k in sorted({int(r["k"]) for r in rows})
            }
            ks = " | ".join(f"{np.mean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})" for v in per_k.values())
            mark = "**chosen**" if c == chosen else ("round 28" if c == ROUND28.get(method) else "")
            lines.append(f"| {method} | {c} | {ks} | {means[c]:.3f} | {mark} |")
    return "\n".join(lines)


def verdict(by_method: dict[str, dict[int, float]]) -> tuple[str, dict[str, float], dict[str, dict]]:
    """The claim at one K from ``{method: {repeat: MCA}}``, each method's mean over the repeats all
    methods share, and the reference's paired comparison with every other method."""
    from ana_lightning.stats import paired_comparison

    reps = sorted(set.intersection(*(set(v) for v in by_method.values())))
    means = {m: float(np.mean([v[r] for r in reps])) for m, v in by_method.items()}
    pairs = {
        m: paired_comparison([by_method[REF][r] for r in reps], [by_method[m][r] for r in reps])
        for m in by_method
        if m != REF
    }
    runner_up = max(pairs, key=lambda m: means[m])
    if means[REF] > means[runner_up] and pairs[runner_up]["ci95_low"] > 0:
        return "reproduced", means, pairs
    if any(means[m] > means[REF] and pairs[m]["ci95_high"] < 0 for m in pairs):
        return "not reproduced", means, pairs
    return "a tie", means, pairs


def _diff(c: dict) -> str:
    return f"{c['mean_diff']:+.3f} [{c['ci95_low']:+.3f}, {c['ci95_high']:+.3f}]"


def seeds_table(root: Path = HERE, runs=RUNS) -> str:
    lines = [
        "| seed | K / class | Siamese | SVM on CNN | softmax CNN | texture SVM | Siamese − SVM on CNN | Siamese − softmax CNN | Siamese − texture SVM | claim |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in runs:
        folder = root / name
        cfg = json.loads((folder / "config.json").read_text())
        rows = read_rows(folder)
        n_test = {r["n_test"] for r in rows.values()}
        assert len(n_test) == 1, f"{folder}: test sets of different sizes {n_test}"
        cells: dict[int, dict[str, dict[int, float]]] = {}  # {K: {method: {repeat: MCA}}}
        for (_, _, k, rep, method), r in rows.items():
            cells.setdefault(k, {}).setdefault(method, {})[rep] = r["mca"]
        for k, by_method in sorted(cells.items()):
            claim, mean, pairs = verdict(by_method)
            lines.append(
                f"| {cfg['seed']} | {k} | {mean[REF]:.3f} | {mean['svm_cnn']:.3f} | "
                f"{mean['softmax_cnn']:.3f} | {mean['svm_texture']:.3f} | {_diff(pairs['svm_cnn'])} | {_diff(pairs['softmax_cnn'])} | {_diff(pairs['svm_texture'])} | {claim} |"
            )
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", choices=["dev", "seeds"])
    p.add_argument("--root", default=str(HERE), help="the round's folder (dev reads <root>/dev)")
    p.add_argument("--out-md", default=None)
    a = p.parse_args(argv)
    root = Path(a.root)
    text = dev_table(root / "dev") if a.table == "dev" else seeds_table(root)
    print(text)
    if a.out_md:
        Path(a.out_md).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
