"""Overlay pictures: a field with its cell contours coloured by predicted class, and a legend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = ["class_colours", "draw_overlay", "save_png"]

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
]
UNUSED = (160, 160, 160)  # contours of cells not used in the verdict (mitotic, on the border)


def class_colours(names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A fixed RGB colour per class name (in class order, cycling after 20)."""
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}


def draw_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    label_class: Mapping[int, str | None],
    colours: Mapping[str, tuple[int, int, int]],
    title: str = "",
    zoom: int | None = None,
    boxes: Sequence[tuple[tuple[int, int, int, int], str]] = (),
) -> np.ndarray:
    """RGB picture: ``image`` with the contour of every label coloured by ``label_class[label]`` (grey
    when ``None``: not used), optional coloured ``boxes`` (tiles), a title and a legend on the right."""
    from skimage.segmentation import find_boundaries

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.uint8)
    h, w = labels.shape
    z = zoom or max(1, int(round(600 / max(h, w))))
    base = cv2.resize(img, (w * z, h * z), interpolation=cv2.INTER_NEAREST) if z > 1 else img.copy()
    lab = (
        cv2.resize(labels.astype(np.int32), (w * z, h * z), interpolation=cv2.INTER_NEAREST)
        if z > 1
        else labels
    )
    edge = find_boundaries(lab, mode="inner")
    if z > 1:
        edge = cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool) & (lab > 0)
    lut = np.zeros((int(lab.max()) + 1, 3), np.uint8)
    for i in range(1, lut.shape[0]):
        c = label_class.get(i)
        lut[i] = colours.get(c, UNUSED) if c else UNUSED
    base[edge] = lut[lab[edge]]
    for (r0, c0, r1, c1), name in boxes:
        cv2.rectangle(
            base,
            (c0 * z, r0 * z),
            (c1 * z - 1, r1 * z - 1),
            tuple(int(v) for v in colours.get(name, UNUSED)),
            1,
        )
    used = [n for n in colours if n in set(label_class.values()) | {b[1] for b in boxes}]
    rows = [(n, colours[n]) for n in used] + [("not used", UNUSED)]
    panel_w = 220
    panel = np.zeros((max(base.shape[0], 24 * (len(rows) + 2)), panel_w, 3), np.uint8)
    y = 22
    if title:
        for line in _wrap(title, 30)[:3]:
            cv2.putText(panel, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            y += 18
        y += 6
    for n, c in rows:
        cv2.rectangle(panel, (6, y - 11), (22, y + 3), tuple(int(v) for v in c), -1)
        cv2.putText(panel, n[:26], (28, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        y += 22
    if panel.shape[0] > base.shape[0]:
        base = cv2.copyMakeBorder(base, 0, panel.shape[0] - base.shape[0], 0, 0, cv2.BORDER_CONSTANT, value=0)
    return np.hstack([base, panel[: base.shape[0]]])


def _wrap(text: str, n: int) -> list[str]:
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > n:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*out, line] if line else out


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
