"""Contact sheet: synthetic HEp-2 fields next to real ICAP reference images, class by class.

Each class block shows ``--n-synth`` synthetic renders (left, green caption) and up to ``--n-real``
real images (right, white caption) read from ``<real-root>/patterns/ac-N/*.jpg`` (default
``../shared/data/ana-pattern-quest`` next to the repository). When that folder is absent the real
column is simply left out. The real images are only read, never copied anywhere but the output
sheet, so write the sheet outside the repository (or do not commit it).

    python experiments/contact_sheet.py /tmp/contact_sheet.png
    python experiments/contact_sheet.py sheet.png --codes AC-2,AC-4,AC-5 --n-synth 4 --tile 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ana_lightning.data.synthetic import CODES, LEVEL2, render_field  # noqa: E402

DEFAULT_REAL = REPO.parent / "shared" / "data" / "ana-pattern-quest"
CAPTION = 18  # px of caption strip above each class block
GAP = 6


def _square(img: np.ndarray, tile: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(img[y : y + s, x : x + s], (tile, tile), interpolation=cv2.INTER_AREA)


def real_images(real_root: Path | None, code: str, n: int) -> list[np.ndarray]:
    """Up to ``n`` real RGB images of ``code`` (sorted by file name); [] if none are available."""
    if real_root is None or n <= 0:
        return []
    folder = real_root / "patterns" / code.lower()
    out = []
    for p in sorted(folder.glob("*.jpg"))[:n]:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is not None:
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return out


def build_sheet(
    codes,
    n_synth: int = 3,
    n_real: int = 2,
    tile: int = 160,
    per_row: int = 2,
    seed: int = 0,
    real_root: Path | None = DEFAULT_REAL,
    dapi: bool = False,
) -> np.ndarray:
    """Return the contact sheet as an RGB uint8 array."""
    if real_root is not None and not (Path(real_root) / "patterns").is_dir():
        real_root = None
    n_real = n_real if real_root is not None else 0
    block_w = (n_synth + n_real) * tile + (GAP if n_real else 0)
    block_h = CAPTION + tile
    rows = (len(codes) + per_row - 1) // per_row
    sheet = np.full((rows * (block_h + GAP) + GAP, per_row * (block_w + GAP) + GAP, 3), 24, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for k, code in enumerate(codes):
        r, c = divmod(k, per_row)
        y0 = GAP + r * (block_h + GAP)
        x0 = GAP + c * (block_w + GAP)
        ci = CODES.index(code)
        for i in range(n_synth):
            rng = np.random.default_rng(np.random.SeedSequence([seed, ci, i]))
            img = render_field(code, rng, size=256, dapi=dapi)
            sheet[y0 + CAPTION : y0 + CAPTION + tile, x0 + i * tile : x0 + (i + 1) * tile] = _square(
                img, tile
            )
        reals = real_images(real_root, code, n_real)
        xr = x0 + n_synth * tile + GAP
        for j, img in enumerate(reals):
            sheet[y0 + CAPTION : y0 + CAPTION + tile, xr + j * tile : xr + (j + 1) * tile] = _square(
                img, tile
            )
        cv2.putText(
            sheet,
            f"{code}  {LEVEL2[code]}  synthetic",
            (x0 + 2, y0 + 13),
            font,
            0.42,
            (120, 255, 120),
            1,
            cv2.LINE_AA,
        )
        if n_real:
            label = "real" if reals else "real: none found"
            cv2.putText(sheet, label, (xr + 2, y0 + 13), font, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
    return sheet


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "output", nargs="?", default="contact_sheet.png", help="PNG to write (default contact_sheet.png)"
    )
    p.add_argument("--codes", default=None, help="comma-separated codes (default: all 32)")
    p.add_argument("--n-synth", type=int, default=3)
    p.add_argument("--n-real", type=int, default=2)
    p.add_argument("--tile", type=int, default=160)
    p.add_argument("--per-row", type=int, default=2, help="class blocks per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dapi", action="store_true")
    p.add_argument(
        "--real-root",
        default=str(DEFAULT_REAL),
        help="folder holding patterns/ac-N/*.jpg; 'none' to leave the real column out",
    )
    a = p.parse_args(argv)
    codes = [c.strip().upper() for c in a.codes.split(",")] if a.codes else list(CODES)
    bad = [c for c in codes if c not in CODES]
    if bad:
        p.error(f"unknown codes: {bad}")
    real_root = None if a.real_root.lower() == "none" else Path(a.real_root)
    if real_root is not None and not (real_root / "patterns").is_dir():
        print(f"no real images at {real_root}: showing synthetic images only")
        real_root = None
    sheet = build_sheet(codes, a.n_synth, a.n_real, a.tile, a.per_row, a.seed, real_root, a.dapi)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"could not write {out}")
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]}, {len(codes)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
