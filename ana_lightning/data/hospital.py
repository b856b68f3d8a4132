"""Multi-label data: hospital folders, CSV label lists, and single-label + hospital mixtures.

A *hospital folder* is an export where the folder names carry the labels::

    <hospital_root>/patient012/AC-1 + AC-4/img_001.png
    <hospital_root>/AC-4 1:160/slide3/img_002.png        (strict=false: the titer is ignored)
    <hospital_root>/ac-29_ac-3/img_003.png

Grammar (parsed by the taxonomy, the only place that reads class names): AC codes separated by
spaces, commas, ``+``, ``&``, ``_`` or ``;``. An image's label comes from the *nearest* ancestor
folder (below the root) whose name holds at least one AC code of the tree; the other folders (a
patient, a slide, a date) are allowed and may serve as the split group. A token of a label folder
that is not an AC code (a titer ``1:160``, a word, a bare number) is an error listing every
offending folder, or with ``strict=False`` is ignored with a logged warning. A bare number is never
read as a class: ``patient12`` is a group, not AC-12.

A CSV (``path,labels[,group]``) is the alternative input; ``labels`` follows the same grammar.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..taxonomy import Taxonomy
from .datamodules import RecordDataModule
from .images import BadFile, is_ignored, is_image_path
from .records import DatasetError, ImageRecord, read_single_label_folder, resolve_bad_files, scan_images
from .samplers import ClassBalancedSampler, MixedRatioSampler, resolve_replicas
from .splits import SPLITS, check_no_leakage, load_manifest, split_records

__all__ = [
    "read_hospital_folder",
    "read_labels_csv",
    "MultiLabelTargets",
    "HospitalDataModule",
    "MixedDataModule",
]

log = logging.getLogger(__name__)

_STRICT_HINT = (
    "Rename these folders so that they hold AC codes only (e.g. 'AC-1 + AC-4'), or set data.strict=false "
    "to ignore the tokens that are not AC codes (a titer such as 1:160, a word)."
)


_LOOKS_LIKE_CODE = re.compile(r"(?i)ac[-_ ]?\d+")


def _parse_group_level(group_level: str | int | None) -> str | int | None:
    if group_level is None or (isinstance(group_level, str) and group_level.lower() in ("none", "null", "")):
        return None
    if isinstance(group_level, str) and group_level.lower() == "auto":
        return "auto"
    try:
        level = int(group_level)
    except (TypeError, ValueError):
        raise ValueError(f"group_level must be 'auto', 'none' or a folder depth (0 = first level), got {group_level!r}") from None
    if level < 0:
        raise ValueError(f"group_level must be >= 0, got {level}")
    return level


def _warn_ignored(ignored: dict[str, tuple[str, ...]]) -> None:
    if not ignored:
        return
    items = sorted(ignored.items())
    shown = "; ".join(f"{name!r}: {', '.join(map(repr, toks))}" for name, toks in items[:10])
    more = f" (and {len(items) - 10} more)" if len(items) > 10 else ""
    log.warning("strict=false: ignoring tokens that are not AC codes in %d label(s): %s%s", len(items), shown, more)


def read_hospital_folder(
    root: str | Path,
    taxonomy: Taxonomy,
    strict: bool = True,
    group_level: str | int | None = "auto",
    on_bad_file: str = "error",
    check_images: bool = True,
    progress: Callable | None = None,
) -> tuple[list[ImageRecord], list[BadFile]]:
    """Read a hospital folder into multi-label records (see the module docstring for the grammar).

    Args:
        root: the export folder; files directly in it that are not images (a README, a CSV) are ignored.
        taxonomy: the class tree the codes must belong to.
        strict: a label folder with a token that is not an AC code is an error (``False``: ignore it).
        group_level: which folder is the split group: ``"auto"`` (the outermost folder below the
            root that names no AC code, e.g. ``patient012``), a depth (0 = the folders directly below
            the root), or ``None``. The group is that folder's *name*, so ``AC-1/patient12`` and
            ``AC-4/patient12`` are one group.
        on_bad_file: ``error`` lists every unusable file (not an image, truncated, no label folder);
            ``skip`` leaves them out and returns them.

    >>> # read_hospital_folder("exports/", Taxonomy.load())  → ([ImageRecord(path, ('AC-1', 'AC-4'), 'patient012', sha)], [])
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"hospital folder {root} does not exist (set data.hospital_root=<folder of labelled sub-folders>)")
    level = _parse_group_level(group_level)
    bad: list[BadFile] = []
    label_problems: dict[str, BadFile] = {}
    ignored: dict[str, tuple[str, ...]] = {}
    resolved: dict[tuple[str, ...], tuple[tuple[str, ...], str | None] | None] = {}
    unlabelled: dict[tuple[str, ...], list[Path]] = {}

    def resolve(parts: tuple[str, ...]) -> tuple[tuple[str, ...], str | None] | None:
        """(codes, group) of a folder (its path parts below root), or None when nothing names a code."""
        if parts in resolved:
            return resolved[parts]
        label_at, codes = None, ()
        for i in range(len(parts) - 1, -1, -1):
            found, other = taxonomy.split_codes(parts[i])
            if found:
                label_at, codes = i, found
                if other:
                    folder = str(root.joinpath(*parts[: i + 1]))
                    if strict:
                        label_problems[folder] = BadFile(
                            folder, f"folder name {parts[i]!r}: {', '.join(map(repr, other))} is not an AC code"
                        )
                    else:
                        ignored[parts[i]] = other
                break
        if label_at is None:
            resolved[parts] = None
            return None
        group = None
        if level == "auto":
            group = next((p for p in parts if not taxonomy.split_codes(p)[0]), None)
        elif isinstance(level, int) and level < len(parts) and level != label_at:
            group = parts[level]
        resolved[parts] = (codes, group)
        return resolved[parts]

    candidates: list[tuple[Path, tuple[str, ...], str | None]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        here = Path(dirpath)
        parts = here.relative_to(root).parts
        for name in sorted(filenames):
            p = here / name
            if is_ignored(p):
                continue
            if not is_image_path(p):
                if parts:  # notes and CSVs next to the label folders are fine; inside them they are not
                    bad.append(BadFile(str(p), f"not an image file (extension {p.suffix or 'none'!r})"))
                continue
            if not parts:
                bad.append(BadFile(str(p), "image directly in the dataset folder: no label folder above it"))
                continue
            res = resolve(parts)
            if res is None:
                unlabelled.setdefault(parts, []).append(p)
                continue
            candidates.append((p, res[0], res[1]))
    for parts, files in unlabelled.items():  # one line per folder, not per image
        outside = [t for part in parts for t in taxonomy.split_codes(part)[1] if _LOOKS_LIKE_CODE.fullmatch(t)]
        folder = str(root.joinpath(*parts))
        if outside:
            bad.append(BadFile(folder, f"{', '.join(dict.fromkeys(outside))} is not a code of the ICAP tree "
                                       f"({taxonomy.codes[0]} … {taxonomy.codes[-1]}): {len(files)} image(s) here have no label"))
        else:
            bad.append(BadFile(folder, f"no folder between {root} and its {len(files)} image(s) names an AC code of the tree"))
    if label_problems:
        raise DatasetError(root, list(label_problems.values()) + bad, _STRICT_HINT)
    return _finish(root, candidates, bad, ignored, check_images, progress, on_bad_file,
                   "no usable images (expected <root>/[<patient>/]<AC codes>/<images>)")


def _scan(
    candidates: Sequence[tuple[Path, tuple[str, ...], str | None]], bad: list[BadFile], check_images: bool, progress
) -> list[ImageRecord]:
    if not check_images:
        return [ImageRecord(str(p), codes, group) for p, codes, group in candidates]
    good, bad_images = scan_images([p for p, _, _ in candidates], progress=progress)
    bad += bad_images
    return [
        ImageRecord(str(p), codes, group, good[str(p)][0], good[str(p)][1]) for p, codes, group in candidates if str(p) in good
    ]


def read_labels_csv(
    csv_path: str | Path,
    taxonomy: Taxonomy,
    root: str | Path | None = None,
    strict: bool = True,
    on_bad_file: str = "error",
    check_images: bool = True,
    progress: Callable | None = None,
) -> tuple[list[ImageRecord], list[BadFile]]:
    """Read a ``path,labels[,group]`` CSV into multi-label records.

    ``labels`` follows the folder grammar (``AC-1;AC-4``, ``AC-1 + AC-4``; a ``label`` column is
    accepted too). Relative paths are resolved against ``root`` (default: the CSV's folder).
    Label problems (every offending line listed) follow ``strict``; missing or unreadable files
    follow ``on_bad_file``.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV {csv_path} does not exist")
    base = Path(root).expanduser() if root else csv_path.parent
    bad: list[BadFile] = []
    problems: list[BadFile] = []
    ignored: dict[str, tuple[str, ...]] = {}
    candidates: list[tuple[Path, tuple[str, ...], str | None]] = []
    seen: dict[str, int] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        label_col = "labels" if "labels" in cols else "label" if "label" in cols else None
        if "path" not in cols or label_col is None:
            raise ValueError(f"labels CSV {csv_path} needs the columns path,labels[,group]; it has {sorted(cols)}")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}, line {line}"
            raw = (row.get("path") or "").strip()
            if not raw:
                problems.append(BadFile(where, "empty path"))
                continue
            p = Path(raw).expanduser()
            p = p if p.is_absolute() else base / p
            if str(p) in seen:
                problems.append(BadFile(where, f"{raw} is listed twice (first on line {seen[str(p)]})"))
                continue
            seen[str(p)] = line
            codes, other = taxonomy.split_codes(row.get(label_col) or "")
            if other and strict:
                problems.append(BadFile(where, f"labels {row.get(label_col)!r}: {', '.join(map(repr, other))} is not an AC code"))
                continue
            if other:
                ignored[row.get(label_col) or ""] = other
            if not codes:
                problems.append(BadFile(where, f"labels {row.get(label_col)!r} name no AC code of the tree"))
                continue
            if not p.is_file():
                bad.append(BadFile(str(p), f"listed on line {line} of {csv_path.name} but missing"))
                continue
            candidates.append((p, codes, (row.get("group") or "").strip() or None))
    if problems:
        raise DatasetError(csv_path, problems + bad, _STRICT_HINT if any("not an AC code" in b.reason for b in problems) else "")
    return _finish(csv_path, candidates, bad, ignored, check_images, progress, on_bad_file, "no usable images")


def _finish(
    where, candidates, bad: list[BadFile], ignored, check_images: bool, progress, on_bad_file: str, empty_reason: str
) -> tuple[list[ImageRecord], list[BadFile]]:
    """Shared tail of the folder and CSV readers: warn about ignored tokens, decode + hash the
    candidates, apply the bad-file policy, refuse an empty result, sort by path."""
    _warn_ignored(ignored)
    records = _scan(candidates, bad, check_images, progress)
    resolve_bad_files(where, bad, on_bad_file)
    if not records:
        raise DatasetError(where, bad or [BadFile(str(where), empty_reason)])
    records.sort(key=lambda r: r.path)
    return records, bad


def _read_hospital(
    hospital_root: Path | None, labels_csv: str | None, tree: Taxonomy, strict: bool, group_level, on_bad_file: str
) -> tuple[list[ImageRecord], list[BadFile]]:
    if labels_csv:
        return read_labels_csv(labels_csv, tree, root=hospital_root, strict=strict, on_bad_file=on_bad_file)
    assert hospital_root is not None
    return read_hospital_folder(hospital_root, tree, strict=strict, group_level=group_level, on_bad_file=on_bad_file)


class MultiLabelTargets:
    """Multi-label behaviour for a :class:`RecordDataModule`: multi-hot float targets, BCE
    ``pos_weight`` from the training split, and split manifests matched by content hash (so the
    manifest of a mixed run also selects the hospital test images when evaluating ``data=hospital``).
    """

    def make_targets(self, records: Sequence[ImageRecord]) -> torch.Tensor:
        """``(N, K)`` multi-hot float targets (a single-label record is one-hot)."""
        assert self.taxonomy is not None, "call setup() first"
        index = {c: i for i, c in enumerate(self.taxonomy.codes)}
        t = torch.zeros(len(records), len(index), dtype=torch.float32)
        for i, r in enumerate(records):
            for c in r.codes:
                t[i, index[c]] = 1.0
        return t

    def pos_weight(self) -> list[float]:
        """BCE ``pos_weight`` per class, ``negatives / positives`` in the training split only (1 when absent)."""
        train = self.splits["train"]
        n = len(train)
        pos = {c: 0 for c in self.class_names}
        for r in train:
            for c in r.codes:
                pos[c] += 1
        return [float((n - pos[c]) / pos[c]) if pos[c] else 1.0 for c in self.class_names]

    def model_kwargs(self, loss_weights: bool = True) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "image_size": self.hparams.image_size,
            "pos_weight": self.pos_weight() if loss_weights else None,
        }

    def _splits_from_manifest(self, records: list[ImageRecord], manifest: str) -> dict[str, list[ImageRecord]]:
        planned = load_manifest(manifest, root=self.root, taxonomy=self.tree)
        by_path = {str(Path(r.path).resolve()): r for r in records}
        by_sha: dict[str, list[ImageRecord]] = defaultdict(list)
        for r in records:
            if r.sha256:
                by_sha[r.sha256].append(r)
        labels_of_sha: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        for recs in planned.values():
            for p in recs:
                labels_of_sha[p.sha256].add(p.codes)
        out: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
        problems: list[BadFile] = []
        used: set[str] = set()
        for s, recs in planned.items():
            for p in recs:
                r = by_path.get(str(Path(p.path).resolve()))
                if r is not None and p.sha256 and r.sha256 and p.sha256 != r.sha256:
                    problems.append(BadFile(p.path, f"content changed since {manifest} was written (sha256 differs)"))
                    continue
                # Rows of other sources (the single-label half of a mixed run) match nothing here.
                for cand in [r] if r is not None else by_sha.get(p.sha256, []) if p.sha256 else []:
                    if cand.path in used:
                        continue
                    if cand.codes not in (labels_of_sha.get(cand.sha256) or {p.codes}):
                        problems.append(BadFile(cand.path, f"label {cand.codes} differs from {p.codes} in {manifest}"))
                        continue
                    out[s].append(cand)
                    used.add(cand.path)
        if problems:
            raise DatasetError(self.root, problems, "The split manifest does not match the data.")
        if not used:
            raise DatasetError(self.root, [BadFile(manifest, "none of this dataset's images is in the manifest")],
                               "The split manifest does not match the data.")
        extra = [r.path for r in records if r.path not in used]
        if extra:
            log.warning("%d image(s) are not in %s and are left out, e.g. %s", len(extra), manifest, extra[0])
        check_no_leakage(out)
        return out


def _loader_kwargs(dm: RecordDataModule) -> dict[str, Any]:
    nw = dm.hparams.num_workers
    return {"num_workers": nw, "pin_memory": dm.hparams.pin_memory, "persistent_workers": dm.hparams.persistent_workers and nw > 0}


def _replicas(dm: RecordDataModule) -> tuple[int, int]:
    trainer = getattr(dm, "trainer", None)
    if trainer is not None:
        return int(trainer.world_size), int(trainer.global_rank)
    return resolve_replicas()


class HospitalDataModule(MultiLabelTargets, RecordDataModule):
    """Multi-label hospital folder (``data=hospital data.hospital_root=<folder>``) or a labels CSV.

    Args (beyond :class:`RecordDataModule`):
        hospital_root: the export folder (see :func:`read_hospital_folder`); ``root`` is an alias.
        labels_csv: a ``path,labels[,group]`` CSV instead of folder names (paths relative to
            ``hospital_root`` when given, else to the CSV's folder).
        strict: tokens in label names that are not AC codes are an error (``false``: ignored, logged).
        group_level: the split group: ``auto``, ``none`` or a folder depth (see :func:`read_hospital_folder`).
        sampler: ``null`` (shuffle) or ``balanced`` (:class:`ClassBalancedSampler`, DDP-aware).
    """

    def __init__(
        self,
        hospital_root: str | None = None,
        labels_csv: str | None = None,
        strict: bool = True,
        group_level: str | int | None = "auto",
        sampler: str | None = None,
        root: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if root and hospital_root and Path(root).expanduser() != Path(hospital_root).expanduser():
            raise ValueError(f"data.root={root} and data.hospital_root={hospital_root} differ: give one of them")
        hospital_root = hospital_root or root
        if not hospital_root and not labels_csv:
            raise ValueError(
                "data.hospital_root is not set: give the folder of labelled sub-folders (data.hospital_root=/path/to/export) "
                "or a CSV (data.labels_csv=<file with path,labels,group>)"
            )
        if sampler not in (None, "none", "balanced"):
            raise ValueError(f"data.sampler must be null or 'balanced', got {sampler!r}")
        self._root = Path(hospital_root).expanduser() if hospital_root else None
        self.labels_csv = labels_csv
        self.strict = bool(strict)
        self.group_level = _parse_group_level(group_level)
        self.sampler = None if sampler in (None, "none") else sampler

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else Path(self.labels_csv).expanduser().parent

    def read_records(self) -> tuple[list[ImageRecord], list[BadFile]]:
        return _read_hospital(self._root, self.labels_csv, self.tree, self.strict, self.group_level, self.hparams.on_bad_file)

    def train_dataloader(self) -> DataLoader:
        if self.sampler != "balanced":
            return super().train_dataloader()
        ds = self.dataset("train")
        world, rank = _replicas(self)
        sampler = ClassBalancedSampler(ds.targets, num_replicas=world, rank=rank, seed=self.hparams.seed)
        return DataLoader(ds, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=False, **_loader_kwargs(self))


class MixedDataModule(MultiLabelTargets, RecordDataModule):
    """Single-label images (one-hot) mixed with hospital images (``data=mixed``).

    Every training batch holds exactly ``round(mix_ratio · batch_size)`` single-label images; an
    epoch is every hospital training image once, single-label images cycling (see
    :class:`~ana_lightning.data.samplers.MixedRatioSampler`; DDP-aware, and Lightning leaves it in
    place). Validation and test use both sources. Each source is split on its own (70/15/15 by
    default), so every split holds both; byte-identical images across the sources share a split.

    With ``single_root`` / ``hospital_root`` left null, that source is rendered by the synthetic
    HEp-2 simulator into ``cache_dir`` (once): ``n_per_class`` single-label fields per code and
    ``n_hospital`` mixed fields showing 1 to ``max_patterns`` patterns, from ``n_patients`` patients.

    Args (beyond :class:`RecordDataModule` and :class:`HospitalDataModule`'s ``labels_csv``,
    ``strict``, ``group_level``):
        single_root: a ``<AC code>/<images>`` folder, or null for the synthetic one.
        hospital_root: a hospital folder, or null for the synthetic one.
        mix_ratio: the single-label fraction of every training batch.
        synthetic_codes: the codes rendered when a source is synthetic (null: ``classes``, else all).
    """

    def __init__(
        self,
        single_root: str | None = None,
        hospital_root: str | None = None,
        labels_csv: str | None = None,
        mix_ratio: float = 0.6,
        strict: bool = True,
        group_level: str | int | None = "auto",
        cache_dir: str = "data/synthetic",
        synthetic_codes: Sequence[str] | None = None,
        n_per_class: int = 40,
        n_hospital: int = 240,
        n_patients: int = 60,
        max_patterns: int = 3,
        render_size: int = 128,
        render_seed: int = 0,
        root: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if root:
            raise ValueError(
                f"data=mixed reads data.single_root and data.hospital_root; data.root={root} is not used "
                "(for one folder use data=single_label or data=hospital)"
            )
        # Fails early, with the values named, if the ratio leaves no hospital image in a batch.
        MixedRatioSampler(range(1), range(1, 2), self.hparams.batch_size, mix_ratio, num_replicas=1, rank=0)
        self.mix_ratio = float(mix_ratio)
        self.labels_csv = labels_csv
        self.strict = bool(strict)
        self.group_level = _parse_group_level(group_level)
        codes = synthetic_codes or self.requested_classes
        self.synthetic_codes = list(self.tree.subset(codes).codes) if codes else list(self.tree.codes)
        suffix = "_" + "-".join(self.synthetic_codes) if codes else ""
        cache = Path(cache_dir).expanduser()
        # Same folder name as data=synthetic, so the two share their renders.
        self.render_single = single_root is None
        self.render_hospital = hospital_root is None and not labels_csv
        self.single_root = Path(single_root).expanduser() if single_root else cache / f"v1_n{n_per_class}_s{render_size}_seed{render_seed}{suffix}"
        if hospital_root:
            self.hospital_root: Path | None = Path(hospital_root).expanduser()
        elif labels_csv:
            self.hospital_root = None
        else:
            self.hospital_root = cache / f"hospital_v1_n{n_hospital}_p{n_patients}_k{max_patterns}_s{render_size}_seed{render_seed}{suffix}"
        self.render = dict(n_per_class=n_per_class, n_hospital=n_hospital, n_patients=n_patients, max_patterns=max_patterns,
                           size=render_size, seed=render_seed)
        self._hospital_paths: set[str] = set()

    @property
    def root(self) -> Path:
        hosp = self.hospital_root if self.hospital_root is not None else Path(self.labels_csv).expanduser().parent
        return Path(os.path.commonpath([str(self.single_root.resolve()), str(hosp.resolve())]))

    # ------------------------------------------------------------------ synthetic sources
    def prepare_data(self) -> None:
        from .synthetic import generate_dataset, generate_hospital_dataset

        if self.render_single and not (self.single_root / ".complete").exists():
            log.info("rendering synthetic single-label fields into %s (once)", self.single_root)
            generate_dataset(self.single_root, codes=self.synthetic_codes, n_per_class=self.render["n_per_class"],
                             size=self.render["size"], seed=self.render["seed"])
            (self.single_root / ".complete").write_text("ok\n")
        if self.render_hospital and not (self.hospital_root / ".complete").exists():
            log.info("rendering synthetic hospital fields (1-%d patterns each) into %s (once)", self.render["max_patterns"],
                     self.hospital_root)
            generate_hospital_dataset(self.hospital_root, n_images=self.render["n_hospital"], codes=self.synthetic_codes,
                                      max_patterns=self.render["max_patterns"], n_patients=self.render["n_patients"],
                                      size=self.render["size"], seed=self.render["seed"])
            (self.hospital_root / ".complete").write_text("ok\n")

    def setup(self, stage: str | None = None) -> None:
        if (self.render_single and not (self.single_root / ".complete").exists()) or (
            self.render_hospital and not (self.hospital_root / ".complete").exists()
        ):
            self.prepare_data()
        super().setup(stage)

    # ------------------------------------------------------------------ records and splits
    def read_records(self) -> tuple[list[ImageRecord], list[BadFile]]:
        single, bad_s = read_single_label_folder(self.single_root, self.tree, on_bad_file=self.hparams.on_bad_file)
        hosp, bad_h = _read_hospital(self.hospital_root, self.labels_csv, self.tree, self.strict, self.group_level,
                                     self.hparams.on_bad_file)
        self._hospital_paths = {r.path for r in hosp}
        log.info("mixed data: %d single-label images (%s), %d hospital images (%s)", len(single), self.single_root,
                 len(hosp), self.hospital_root or self.labels_csv)
        return single + hosp, bad_s + bad_h

    def split(self, records: Sequence[ImageRecord]) -> dict[str, list[ImageRecord]]:
        if self.hparams.get("folds"):  # cross-validation: one set of folds over both sources
            return super().split(records)
        single = [r for r in records if r.path not in self._hospital_paths]
        hosp = [r for r in records if r.path in self._hospital_paths]
        fr, seed = self.hparams.split_fractions, self.hparams.seed
        out = split_records(hosp, fr, seed=seed, together=self.together)
        split_of_sha = {r.sha256: s for s in SPLITS for r in out[s] if r.sha256}
        split_of_path = {r.path: s for s in SPLITS for r in out[s]}
        for paths in self.together:  # a near-duplicate of a hospital image follows it
            s = next((split_of_path[p] for p in paths if p in split_of_path), None)
            for p in paths if s else ():
                split_of_path.setdefault(p, s)

        def hosp_split(r: ImageRecord) -> str | None:
            return split_of_sha.get(r.sha256) if r.sha256 in split_of_sha else split_of_path.get(r.path)

        forced = [r for r in single if hosp_split(r)]  # also in the hospital set: keep them together
        rest = (split_records([r for r in single if not hosp_split(r)], fr, seed=seed, together=self.together)
                if len(forced) < len(single) else {})
        for s in SPLITS:
            out[s] = sorted(out[s] + rest.get(s, []) + [r for r in forced if hosp_split(r) == s], key=lambda r: r.path)
        check_no_leakage(out)
        return out

    # ------------------------------------------------------------------ loaders
    def train_sampler(self) -> MixedRatioSampler:
        """The sampler of the training loader (exact ratio per batch, sharded per rank)."""
        ds = self.dataset("train")
        # Anything that is not a hospital image (incl. data.extra_train images) is single-label.
        single = [i for i, r in enumerate(ds.records) if r.path not in self._hospital_paths]
        hosp = [i for i, r in enumerate(ds.records) if r.path in self._hospital_paths]
        if not hosp:
            raise DatasetError(self.root, [BadFile(str(self.hospital_root or self.labels_csv), "no hospital image in the training split")])
        world, rank = _replicas(self)
        return MixedRatioSampler(single, hosp, self.hparams.batch_size, self.mix_ratio, num_replicas=world, rank=rank,
                                 seed=self.hparams.seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("train"), batch_size=self.hparams.batch_size, sampler=self.train_sampler(),
                          drop_last=False, **_loader_kwargs(self))
