"""``{stage}_errors.png``: the test images a single-label model got wrong, most confident first, one row per
true class, so a reader sees *what* was misread (a speckled specimen whose cells look centromere-like, a
blurred field) instead of only how often. Each tile is shown as green fluorescence, contrast-stretched on
its own (dim 8-bit cells would be black otherwise), with the predicted class, its probability and the
image's group (specimen, slide, patient) under it."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["pick_errors", "plot_error_gallery"]


def pick_errors(
    target: Sequence[int],
    pred: Sequence[int],
    confidence: Sequence[float],
    groups: Sequence[str | None],
    per_class: int = 8,
) -> dict[int, list[int]]:
    """For each true class with errors: the indices of up to ``per_class`` wrong images, most confident
    first, with at most half of a row from one group while other groups have errors left (so one
    misread specimen does not fill the row when others were misread too)."""
    wrong: dict[int, list[int]] = defaultdict(list)
    for i, (t, p) in enumerate(zip(target, pred, strict=True)):
        if int(t) != int(p):
            wrong[int(t)].append(i)
    cap = max(1, per_class // 2)
    out: dict[int, list[int]] = {}
    for t in sorted(wrong):
        ranked = sorted(wrong[t], key=lambda i: -float(confidence[i]))
        taken: list[int] = []
        per_group: Counter = Counter()
        for i in ranked:  # first pass: the cap per group
            if len(taken) < per_class and per_group[groups[i]] < cap:
                taken.append(i)
                per_group[groups[i]] += 1
        for i in ranked:  # then fill the row from what is left, most confident first
            if len(taken) >= per_class:
                break
            if i not in taken:
                taken.append(i)
        out[t] = sorted(taken, key=lambda i: -float(confidence[i]))
    return out


def _display(path: str, size: int) -> np.ndarray:
    """The image as an RGB tile of green fluorescence: its brightest channel, stretched between its 1st and
    99.5th percentiles, resized to ``size`` px. A file that cannot be read gives a grey tile."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except (OSError, ValueError):
        return np.full((size, size, 3), 0.5, dtype=np.float32)
    a = a.astype(np.float32)
    if a.ndim == 3:
        a = a[..., :3].max(axis=2)
    lo, hi = np.percentile(a, [1.0, 99.5])
    a = np.clip((a - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    tile = np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR))
    rgb = np.zeros((size, size, 3), dtype=np.float32)
    rgb[..., 1] = tile / 255.0
    return rgb


def plot_error_gallery(
    paths: Sequence[str],
    target: Sequence[int],
    prob: np.ndarray,
    class_names: Sequence[str],
    groups: Sequence[str | None],
    path: str | Path,
    per_class: int = 8,
    tile: int = 96,
) -> Path | None:
    """Write the gallery of wrong images (see the module doc) to ``path``; None (nothing written) when
    every image was read right."""
    prob = np.asarray(prob, dtype=float)
    pred = prob.argmax(axis=1)
    conf = prob[np.arange(len(pred)), pred]
    picked = pick_errors(target, pred, conf, groups, per_class)
    if not picked:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    support = Counter(int(t) for t in target)
    n_wrong = Counter(int(t) for t, p in zip(target, pred, strict=True) if int(t) != int(p))
    rows, cols = len(picked), max(len(v) for v in picked.values())
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.45 * cols + 1.4, 1.75 * rows + 0.5), squeeze=False, facecolor="white"
    )
    for r, (t, idx) in enumerate(picked.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c >= len(idx):
                continue
            i = idx[c]
            ax.imshow(_display(paths[i], tile))
            group = f"\n{groups[i]}" if groups[i] else ""
            ax.set_xlabel(f"→ {class_names[pred[i]]} {conf[i]:.2f}{group}", fontsize=7)
        axes[r][0].set_ylabel(
            f"{class_names[t]}\n{n_wrong[t]} of {support[t]} wrong",
            fontsize=8,
            rotation=0,
            ha="right",
            va="center",
        )
    fig.suptitle(
        "Wrong images, most confident first (row: true class; under each: predicted class, probability, group)",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
