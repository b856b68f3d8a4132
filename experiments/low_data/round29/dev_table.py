"""Round 29's development table and choice (preregistration.txt): per method, each candidate's mean
development MCA over its (K, repeat) cells; the highest is chosen, an exact tie keeps round 28's setting.

    python experiments/low_data/round29/dev_table.py [--out-md experiments/low_data/round29/dev_table.md]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROUND28 = {"siamese_ensemble": "siamese_bce_mean_lr1e-3", "softmax_cnn": "softmax_lr1e-3"}


def table(dev: Path) -> str:
    runs: dict[str, dict[str, list[dict]]] = {}
    for f in sorted(dev.glob("*/results.csv")):
        for r in csv.DictReader(open(f)):
            if r["mca"]:
                runs.setdefault(r["method"], {}).setdefault(f.parent.name, []).append(r)
    if not runs:
        raise FileNotFoundError(f"no */results.csv under {dev}")
    lines = [
        "| method | candidate | dev MCA, K = 10 (3 repeats) | K = 50 | mean of the 6 cells | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for method, cands in runs.items():
        means = {c: float(np.mean([float(r["mca"]) for r in rows])) for c, rows in cands.items()}
        best = max(means.values())
        tied = [c for c, m in means.items() if m == best]
        chosen = ROUND28[method] if ROUND28.get(method) in tied else tied[0]
        for c, rows in sorted(cands.items(), key=lambda kv: -means[kv[0]]):
            per_k = {
                k: [float(r["mca"]) for r in rows if int(r["k"]) == k]
                for k in sorted({int(r["k"]) for r in rows})
            }
            ks = " | ".join(f"{np.mean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})" for v in per_k.values())
            mark = "**chosen**" if c == chosen else ("round 28" if c == ROUND28.get(method) else "")
            lines.append(f"| {method} | {c} | {ks} | {means[c]:.3f} | {mark} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dev", default=str(HERE / "dev"))
    p.add_argument("--out-md", default=None)
    a = p.parse_args(argv)
    text = table(Path(a.dev))
    print(text)
    if a.out_md:
        Path(a.out_md).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
