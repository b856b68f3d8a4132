"""Render one image under every augmentation policy into a PNG grid, to check the policies by eye.

    python experiments/augmentation_grid.py [--image path.jpg] [--out augmentation_grid.png] [--size 160] [--n 6]

Without --image it uses the first real AC-4 field of ../shared/data/ana-pattern-quest when present,
otherwise a synthetic AC-4 field. Rows: none, basic, strong, fluorescence; first column: the original.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ana_lightning.data.augment import POLICIES, load_policy, policy_grid  # noqa: E402
from ana_lightning.data.images import load_image  # noqa: E402
from ana_lightning.data.transforms import build_transform  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ana-pattern-quest" / "patterns" / "ac-4"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=None)
    ap.add_argument("--out", default="augmentation_grid.png")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--n", type=int, default=6, help="augmented samples per policy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dapi-drop", type=float, default=0.0, help="fluorescence policy's dapi_drop")
    args = ap.parse_args()
    real = sorted(REAL.glob("*.jp*g")) if REAL.is_dir() else []
    if args.image or real:
        img = load_image(args.image or real[0])
    else:
        from ana_lightning.data.synthetic import render_field

        img = render_field("AC-4", np.random.default_rng(0), size=args.size)
    img = build_transform(args.size).resize(img)
    policies = {
        name: load_policy(name, **({"dapi_drop": args.dapi_drop} if name == "fluorescence" else {}))
        for name in POLICIES
    }
    Image.fromarray(policy_grid(img, policies, n_samples=args.n, seed=args.seed)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
