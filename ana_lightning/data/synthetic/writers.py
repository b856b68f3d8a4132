"""Dataset writers: the single-label folder layout (:func:`generate_dataset`), the multi-label hospital
export (:func:`generate_hospital_dataset`) and single-cell crops in the contest layout
(:func:`generate_cell_dataset`). All are deterministic per image (a ``SeedSequence`` of the seed, a
stream and the image index), resume (existing files are kept) and write atomically. None writes into a
folder that holds files it did not write (:func:`_claim`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...progress import progress_bar
from ..images import first_few
from .cells import CellStyle, class_table, render_cells
from .compose import render_field
from .files import atomic_write, check_fmt, encode, encode_png, image_rng, write_csv
from .hard import DIFFICULTIES, render_field_hard
from .patterns import CODES, canonical_code, is_negative

__all__ = ["generate_dataset", "generate_hospital_dataset", "generate_cell_dataset"]

#: How the hospital layout joins the codes of a label folder (``AC-1 + AC-4``, ``AC-1, AC-4``, ``AC-1_AC-4``).
_SEPARATORS = (" + ", ", ", "_")


#: Left in every folder a writer claims: later calls may resume (or add to) the synthetic set there.
MARKER = ".ana-synth"
_MANIFEST_HEADER = ("path", "label", "seed", "size", "dapi")
_HOSPITAL_HEADER = ("path", "labels", "group")
_CELLS_HEADER = ("Image ID", "Image class", "Intensity", "Specimen ID")


def _claim(root: Path, table: str, header: Sequence[str]) -> None:
    """Make ``root`` a folder of synthetic images, or refuse it: a folder holding files no writer of this
    module wrote (someone's real images, their own ``manifest.csv`` or ``gt_training.csv``) is never written
    into, since the synthetic images would mix with theirs and ``table`` would be replaced. Resuming a
    folder a writer started (its :data:`MARKER`, or its ``table`` with this writer's header, written before
    the marker existed) is fine, as is an empty or new folder."""
    root.mkdir(parents=True, exist_ok=True)
    if (root / MARKER).is_file():
        return
    entries = sorted(p.name for p in root.iterdir())
    if entries:
        try:
            with open(root / table, newline="", encoding="utf-8") as f:
                first = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            first = None
        if first != ",".join(header):
            shown = first_few(entries, 3)
            raise ValueError(
                f"{root} holds files that ana-synth did not write ({shown}): synthetic images written there would "
                f"mix with them and {table} would be replaced. Write into an empty or new folder (ana-synth: generator.root=<folder>)"
            )
    (root / MARKER).write_text(
        "a synthetic set written by ana-lightning (ana-synth); it may be resumed here\n"
    )


def _code_list(codes: str | Sequence[str] | None) -> list[str] | None:
    """``codes`` as a list: a comma-separated string (``"AC-1,AC-4"``, as typed on a command line) is split."""
    if codes is None or not isinstance(codes, str):
        return None if codes is None else list(codes)
    return [c.strip() for c in codes.split(",") if c.strip()]


def generate_dataset(
    root: str | Path,
    codes: str | Sequence[str] | None = None,
    n_per_class: int = 60,
    size: int = 256,
    seed: int = 0,
    dapi: bool = False,
    fmt: str = "png",
    progress: bool = True,
    difficulty: str = "easy",
) -> Path:
    """Write ``<root>/<code>/<code>_<i:05d>.png`` for each code plus ``<root>/manifest.csv``
    (``path,label,seed,size,dapi``; paths relative to root, posix).

    Deterministic: image ``i`` of code ``c`` uses ``SeedSequence([seed, CODES.index(c), i])``, so the
    same arguments give byte-identical files regardless of which codes are selected. Existing files
    are kept (resume); files are written atomically. ``difficulty='hard'`` renders with
    :func:`~.hard.render_field_hard` (magnification, dim fields, blur, noise). Returns ``root``.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    render = render_field_hard if difficulty == "hard" else render_field
    codes = _code_list(codes)
    root = Path(root)
    fmt = check_fmt(fmt)
    sel = CODES if codes is None else tuple(dict.fromkeys(canonical_code(c) for c in codes))
    _claim(root, "manifest.csv", _MANIFEST_HEADER)
    rows = []
    todo = []
    for c in sel:
        ci = CODES.index(c)
        for i in range(int(n_per_class)):
            rel = f"{c}/{c}_{i:05d}.{fmt}"
            rows.append((rel, c, int(seed), int(size), int(bool(dapi))))
            if not (root / rel).is_file():
                todo.append((rel, c, ci, i))
    with progress_bar(len(todo), f"synthetic -> {root}", progress) as advance:
        for rel, c, ci, i in todo:
            img = render(c, image_rng(seed, ci, i), size=size, dapi=dapi)
            atomic_write(root / rel, encode(img, fmt))
            advance()
    write_csv(root / "manifest.csv", _MANIFEST_HEADER, rows)
    return root


def generate_hospital_dataset(
    root: str | Path,
    n_images: int = 300,
    codes: str | Sequence[str] | None = None,
    max_patterns: int = 3,
    n_patients: int = 60,
    size: int = 256,
    seed: int = 0,
    dapi: bool = False,
    progress: bool = True,
) -> Path:
    """Multi-label "hospital export" layout:
    ``<root>/patient<k:03d>/<label folder>/<patient>_<j:05d>.png`` where the label folder names the
    1-3 codes shown, joined by ``' + '`` (sometimes ``', '`` or ``'_'``), e.g. ``AC-1 + AC-4``.
    Each patient has 1-3 label combinations. ``manifest.csv`` has ``path,labels,group`` with the
    labels joined by ``';'`` and the patient as group. Deterministic like :func:`generate_dataset`.
    """
    root = Path(root)
    codes = _code_list(codes)
    pool = [c for c in (CODES if codes is None else [canonical_code(c) for c in codes])]
    pool = list(dict.fromkeys(pool))
    positives = [c for c in pool if not is_negative(c)]
    negatives = [c for c in pool if is_negative(c)]
    if not pool:
        raise ValueError("no codes to draw from")
    max_patterns = max(1, min(int(max_patterns), 3))
    n_patients = max(1, int(n_patients))
    _claim(root, "manifest.csv", _HOSPITAL_HEADER)

    patients = []
    for k in range(n_patients):
        r = image_rng(seed, 1_000_003, k)
        sep = _SEPARATORS[int(r.choice(3, p=[0.6, 0.25, 0.15]))]
        combos = []
        for _ in range(int(r.integers(1, 4))):
            if negatives and (not positives or r.random() < 0.08):
                combo = [negatives[0]]
            else:
                kmax = min(max_patterns, len(positives))
                nk = int(r.choice(np.arange(1, kmax + 1), p=_combo_p(kmax)))
                combo = [str(x) for x in r.choice(positives, size=nk, replace=False)]
            combo = sorted(combo, key=CODES.index)
            if combo not in combos:
                combos.append(combo)
        patients.append((f"patient{k:03d}", sep, combos))

    rows = []
    todo = []
    for j in range(int(n_images)):
        pid, sep, combos = patients[j % n_patients]
        r = image_rng(seed, 2_000_003, j)
        combo = combos[int(r.integers(len(combos)))]
        rel = f"{pid}/{sep.join(combo)}/{pid}_{j:05d}.png"
        rows.append((rel, ";".join(combo), pid))
        if not (root / rel).is_file():
            todo.append((rel, combo, j))
    with progress_bar(len(todo), f"hospital -> {root}", progress) as advance:
        for rel, combo, j in todo:
            img = render_field(combo, image_rng(seed, 3_000_017, j), size=size, dapi=dapi)
            atomic_write(root / rel, encode(img, "png"))
            advance()
    write_csv(root / "manifest.csv", _HOSPITAL_HEADER, rows)
    return root


def _combo_p(kmax: int) -> np.ndarray:
    p = np.array([0.5, 0.32, 0.18][:kmax])
    return p / p.sum()


def generate_cell_dataset(
    root: str | Path,
    classes: str = "i3a",
    codes: str | Sequence[str] | None = None,
    n_per_class: int = 200,
    cells_per_field: int = 8,
    intermediate_fraction: float = 0.5,
    color: str = "grey",
    seed: int = 0,
    style: CellStyle | None = None,
    csv_name: str = "gt_training.csv",
    progress: bool = True,
) -> Path:
    """Write a contest cell folder: ``<root>/<id:05d>.png``, ``<id>_Mask.png`` and ``<root>/<csv_name>``
    with ``Image ID,Image class,Intensity,Specimen ID`` (one specimen per rendered field).

    ``classes``: ``i3a`` (the six I3A class names, readable by the ``i3a2014`` reader as is),
    ``level2`` (ICAP level-2 group names) or ``codes`` (AC codes); ``codes`` (a list or ``"AC-1,AC-4"``) restricts what is drawn.
    A class of several codes draws its specimens from them in turn. Deterministic: field ``k`` of a
    class uses ``SeedSequence([seed, 10000 + index of its code, k])``; existing files are kept.
    """
    root = Path(root)
    if not 0.0 <= intermediate_fraction <= 1.0:
        raise ValueError(f"intermediate_fraction must be in [0, 1], got {intermediate_fraction}")
    if n_per_class < 1 or cells_per_field < 1:
        raise ValueError("n_per_class and cells_per_field must be >= 1")
    table = class_table(classes, _code_list(codes))
    style = style or CellStyle()
    _claim(root, csv_name, _CELLS_HEADER)
    rows: list[tuple[str, str, str, str]] = []
    next_id = 1
    with progress_bar(len(table) * n_per_class, f"synthetic cells -> {root}", progress) as advance:
        for name, cls_codes in table.items():
            done, k = 0, 0
            while done < n_per_class:
                code = cls_codes[k % len(cls_codes)]
                rng = image_rng(seed, 10_000 + CODES.index(code), k)
                intensity = "intermediate" if rng.random() < intermediate_fraction else "positive"
                want = min(cells_per_field, n_per_class - done)
                cells = render_cells(code, rng, n_cells=want, intensity=intensity, color=color, style=style)
                specimen = f"{name.replace(' ', '_').replace('/', '-')}-{k:04d}"
                for img, mask in cells:
                    iid = f"{next_id:05d}"
                    if not (root / f"{iid}.png").is_file() or not (root / f"{iid}_Mask.png").is_file():
                        atomic_write(root / f"{iid}.png", encode_png(img))
                        atomic_write(root / f"{iid}_Mask.png", encode_png(mask))
                    rows.append((iid, name, intensity, specimen))
                    next_id += 1
                    done += 1
                    advance()
                k += 1
                if k > 50 * n_per_class:  # a renderer that never yields a croppable cell
                    raise RuntimeError(f"no croppable cells for {name!r} ({cls_codes}) after {k} fields")
    write_csv(root / csv_name, _CELLS_HEADER, rows)
    return root
