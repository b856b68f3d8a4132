"""Does a run's temperature carry across specimens? Checked on its validation cells only.

    python experiments/i3a_cells/calibration_check.py outputs/<run> [outputs/<run2> ...]

For each run: its best checkpoint's uncalibrated logits on its validation cells, the temperature fitted on
all of them, and :func:`ana_lightning.calibration.carries_across_groups` — fitted on half of the
validation specimens, scored on the other half and the other way round — the held-out NLL against the
uncalibrated one. That is the check ``ana-train`` now makes before it keeps a single-label model's
temperature; the table also shows the run's test ECE with and without the temperature it was given
(``metrics.json``), when it has them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ablation import DEFAULT_ROOT  # noqa: E402
from groups import run_probabilities  # noqa: E402


def check(run: Path, root: Path) -> dict[str, float | bool | None]:
    from ana_lightning.calibration import carries_across_groups, fit_temperature

    _, labels, prob, names, groups = run_probabilities(run, root, "val")
    z = torch.tensor(np.log(np.clip(prob, 1e-12, 1.0)))  # log-softmax: the logits up to a per-row shift
    y = torch.tensor([names.index(c) for c in labels])
    held = carries_across_groups(z, y, groups)
    out: dict[str, float | bool | None] = {"temperature": float(fit_temperature(z, y))}
    if held:
        out |= {"heldout": held["fitted"], "heldout_uncal": held["uncalibrated"]}
        out["carries"] = held["fitted"] < held["uncalibrated"]
    metrics = run / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        out |= {"test_ece": m.get("test/ece"), "test_ece_uncal": m.get("test/ece_uncalibrated")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = ap.parse_args()
    print("| run | T (all val) | held-out NLL with T / without | carries | test ECE with T / without |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        r = check(run, args.root.resolve())
        f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        print(
            f"| {run} | {r['temperature']:.2f} | {f(r.get('heldout'))} / {f(r.get('heldout_uncal'))} | "
            f"{ {True: 'yes', False: 'no', None: '–'}[r.get('carries')] } | "
            f"{f(r.get('test_ece'))} / {f(r.get('test_ece_uncal'))} |"
        )


if __name__ == "__main__":
    main()
