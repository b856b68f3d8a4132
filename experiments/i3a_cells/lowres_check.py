"""The recipe on its run's cells recorded at a lower magnification: MCA and recall per class (round 6).

    python experiments/i3a_cells/lowres_check.py outputs/<run> [--split val] [--factors 1,0.7,0.45,0.3]

Each cell image is shrunk by the factor (area averaging, as a camera with larger pixels would record it)
and enlarged back to its size, so the mask and the network's input size stay the same and only the detail
is lost. 0.45 is the ICAP reference fields' scale against the I3A cells (nuclei ~29 px vs ~65 px). The
question it answers: does a class that fails on another lab's cells fail because of their resolution?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation as A  # noqa: E402


def lowres(factor: float):
    """An image → the same image shrunk by ``factor`` and enlarged back (same size, less detail)."""
    if not 0 < factor <= 1:
        raise ValueError(f"lowres: the factor must be in (0, 1], got {factor!r}")

    def shift(im: np.ndarray) -> np.ndarray:
        h, w = im.shape[:2]
        small = cv2.resize(
            im, (max(2, round(w * factor)), max(2, round(h * factor))), interpolation=cv2.INTER_AREA
        )
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    return shift


def check(run: Path, root: Path, split: str, factors: list[float]) -> list[dict]:
    y, names, pred = A.shifted_predictions(
        A.best_checkpoint(run), run, root, {f: lowres(f) for f in factors}, split
    )
    rows = []
    for f, p in pred.items():
        recall = {n: float(np.mean(p[y == k] == k)) for k, n in enumerate(names) if (y == k).any()}
        rows.append({"factor": f, "mca": A.mca(y, p, len(names)), **recall})
    classes = [n for n in names if n in rows[0]]
    print(f"| factor | MCA ({split}) | " + " | ".join(classes) + " |")
    print("|---|---|" + "---|" * len(classes))
    for r in rows:
        print(f"| ×{r['factor']:g} | {r['mca']:.3f} | " + " | ".join(f"{r[n]:.2f}" for n in classes) + " |")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="an experiment=i3a_cells run folder")
    ap.add_argument("--root", type=Path, default=A.DEFAULT_ROOT, help="the I3A training folder")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--factors", default="1,0.7,0.45,0.3")
    a = ap.parse_args(argv)
    check(a.run, a.root.resolve(), a.split, [float(f) for f in a.factors.split(",")])


if __name__ == "__main__":
    main()
