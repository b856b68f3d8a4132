"""Multi-label datamodules: a hospital folder or CSV label list, and single-label + hospital mixtures.

How a hospital folder's names carry the labels (and the CSV alternative) is described, and read, in
:mod:`.hospital_records`; its readers stay importable from here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .datamodules import RecordDataModule
from .hospital_records import _read_hospital, read_hospital_folder, read_labels_csv
from .images import BadFile
from .records import DatasetError, ImageRecord, parse_group_level, read_single_label_folder
from .samplers import MixedRatioSampler
from .splits import SPLITS, check_no_leakage, match_manifest, split_records

__all__ = [
    "read_hospital_folder",
    "read_labels_csv",
    "MultiLabelTargets",
    "HospitalDataModule",
    "MixedDataModule",
]

log = logging.getLogger(__name__)


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
        self.warn_double_weighting(loss_weights, "BCE pos_weight")
        return {
            "class_names": self.class_names,
            "image_size": self.hparams.image_size,
            "pos_weight": self.pos_weight() if loss_weights else None,
        }

    def _splits_from_manifest(
        self, records: list[ImageRecord], manifest: str
    ) -> dict[str, list[ImageRecord]]:
        """Rows matched by path, else by content (:func:`~.splits.match_manifest` with ``by_content``)."""
        return match_manifest(records, manifest, self.root, self.tree, by_content=True)


class HospitalDataModule(MultiLabelTargets, RecordDataModule):
    """Multi-label hospital folder (``data=hospital data.hospital_root=<folder>``) or a labels CSV.

    Args (beyond :class:`RecordDataModule`):
        hospital_root: the export folder (see :func:`read_hospital_folder`); ``root`` is an alias.
        labels_csv: a ``path,labels[,group]`` CSV instead of folder names (paths relative to
            ``hospital_root`` when given, else to the CSV's folder).
        strict: tokens in label names that are not AC codes are an error (``false``: ignored, logged).
        group_level: the split group: ``auto``, ``none`` or a folder depth (see :func:`read_hospital_folder`).

    ``sampler`` (``balanced``: classes drawn equally often, DDP-aware) is :class:`RecordDataModule`'s.
    """

    def __init__(
        self,
        hospital_root: str | None = None,
        labels_csv: str | None = None,
        strict: bool = True,
        group_level: str | int | None = "auto",
        root: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if root and hospital_root and Path(root).expanduser() != Path(hospital_root).expanduser():
            raise ValueError(
                f"data.root={root} and data.hospital_root={hospital_root} differ: give one of them"
            )
        hospital_root = hospital_root or root
        if not hospital_root and not labels_csv:
            raise ValueError(
                "data.hospital_root is not set: give the folder of labelled sub-folders (data.hospital_root=/path/to/export) "
                "or a CSV (data.labels_csv=<file with path,labels,group>)"
            )
        self._root = Path(hospital_root).expanduser() if hospital_root else None
        self.labels_csv = labels_csv
        self.strict = bool(strict)
        self.group_level = parse_group_level(group_level)

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else Path(self.labels_csv).expanduser().parent

    def read_records(self) -> tuple[list[ImageRecord], list[BadFile]]:
        return _read_hospital(
            self._root, self.labels_csv, self.tree, self.strict, self.group_level, self.hparams.on_bad_file
        )


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
        if self.sampler is not None:
            raise ValueError(
                f"data=mixed draws its batches by data.mix_ratio; data.sampler={self.sampler} "
                "cannot be used with it (leave it null)"
            )
        # Fails early, with the values named, if the ratio leaves no hospital image in a batch.
        MixedRatioSampler(range(1), range(1, 2), self.hparams.batch_size, mix_ratio, num_replicas=1, rank=0)
        self.mix_ratio = float(mix_ratio)
        self.labels_csv = labels_csv
        self.strict = bool(strict)
        self.group_level = parse_group_level(group_level)
        codes = synthetic_codes or self.requested_classes
        self.synthetic_codes = list(self.tree.subset(codes).codes) if codes else list(self.tree.codes)
        suffix = "_" + "-".join(self.synthetic_codes) if codes else ""
        cache = Path(cache_dir).expanduser()
        # Same folder name as data=synthetic, so the two share their renders.
        self.render_single = single_root is None
        self.render_hospital = hospital_root is None and not labels_csv
        self.single_root = (
            Path(single_root).expanduser()
            if single_root
            else cache / f"v1_n{n_per_class}_s{render_size}_seed{render_seed}{suffix}"
        )
        if hospital_root:
            self.hospital_root: Path | None = Path(hospital_root).expanduser()
        elif labels_csv:
            self.hospital_root = None
        else:
            self.hospital_root = (
                cache
                / f"hospital_v1_n{n_hospital}_p{n_patients}_k{max_patterns}_s{render_size}_seed{render_seed}{suffix}"
            )
        self.render = dict(
            n_per_class=n_per_class,
            n_hospital=n_hospital,
            n_patients=n_patients,
            max_patterns=max_patterns,
            size=render_size,
            seed=render_seed,
        )
        self._hospital_paths: set[str] = set()

    @property
    def root(self) -> Path:
        hosp = (
            self.hospital_root
            if self.hospital_root is not None
            else Path(self.labels_csv).expanduser().parent
        )
        return Path(os.path.commonpath([str(self.single_root.resolve()), str(hosp.resolve())]))

    # ------------------------------------------------------------------ synthetic sources
    def prepare_data(self) -> None:
        from .synthetic import generate_dataset, generate_hospital_dataset

        if self.render_single and not (self.single_root / ".complete").exists():
            log.info("rendering synthetic single-label fields into %s (once)", self.single_root)
            generate_dataset(
                self.single_root,
                codes=self.synthetic_codes,
                n_per_class=self.render["n_per_class"],
                size=self.render["size"],
                seed=self.render["seed"],
            )
            (self.single_root / ".complete").write_text("ok\n")
        if self.render_hospital and not (self.hospital_root / ".complete").exists():
            log.info(
                "rendering synthetic hospital fields (1-%d patterns each) into %s (once)",
                self.render["max_patterns"],
                self.hospital_root,
            )
            generate_hospital_dataset(
                self.hospital_root,
                n_images=self.render["n_hospital"],
                codes=self.synthetic_codes,
                max_patterns=self.render["max_patterns"],
                n_patients=self.render["n_patients"],
                size=self.render["size"],
                seed=self.render["seed"],
            )
            (self.hospital_root / ".complete").write_text("ok\n")

    def setup(self, stage: str | None = None) -> None:
        if (self.render_single and not (self.single_root / ".complete").exists()) or (
            self.render_hospital and not (self.hospital_root / ".complete").exists()
        ):
            self.prepare_data()
        super().setup(stage)

    # ------------------------------------------------------------------ records and splits
    def read_records(self) -> tuple[list[ImageRecord], list[BadFile]]:
        single, bad_s = read_single_label_folder(
            self.single_root, self.tree, on_bad_file=self.hparams.on_bad_file, group_level=self.group_level
        )
        hosp, bad_h = _read_hospital(
            self.hospital_root,
            self.labels_csv,
            self.tree,
            self.strict,
            self.group_level,
            self.hparams.on_bad_file,
        )
        self._hospital_paths = {r.path for r in hosp}
        log.info(
            "mixed data: %d single-label images (%s), %d hospital images (%s)",
            len(single),
            self.single_root,
            len(hosp),
            self.hospital_root or self.labels_csv,
        )
        return single + hosp, bad_s + bad_h

    def split(self, records: Sequence[ImageRecord]) -> dict[str, list[ImageRecord]]:
        if self.hparams.get("folds"):  # cross-validation: one set of folds over both sources
            return super().split(records)
        single = [r for r in records if r.path not in self._hospital_paths]
        hosp = [r for r in records if r.path in self._hospital_paths]
        fr, seed = self.hparams.split_fractions, self.hparams.seed
        out = split_records(hosp, fr, seed=seed, together=self.together, order=self.split_order)
        split_of_sha = {r.sha256: s for s in SPLITS for r in out[s] if r.sha256}
        split_of_path = {r.path: s for s in SPLITS for r in out[s]}
        for paths in self.together:  # a near-duplicate of a hospital image follows it
            s = next((split_of_path[p] for p in paths if p in split_of_path), None)
            for p in paths if s else ():
                split_of_path.setdefault(p, s)

        def hosp_split(r: ImageRecord) -> str | None:
            return split_of_sha.get(r.sha256) if r.sha256 in split_of_sha else split_of_path.get(r.path)

        forced = [r for r in single if hosp_split(r)]  # also in the hospital set: keep them together
        rest = (
            split_records(
                [r for r in single if not hosp_split(r)],
                fr,
                seed=seed,
                together=self.together,
                order=self.split_order,
            )
            if len(forced) < len(single)
            else {}
        )
        for s in SPLITS:
            out[s] = sorted(
                out[s] + rest.get(s, []) + [r for r in forced if hosp_split(r) == s], key=lambda r: r.path
            )
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
            raise DatasetError(
                self.root,
                [
                    BadFile(
                        str(self.hospital_root or self.labels_csv), "no hospital image in the training split"
                    )
                ],
            )
        world, rank = self.replicas()
        return MixedRatioSampler(
            single,
            hosp,
            self.hparams.batch_size,
            self.mix_ratio,
            num_replicas=world,
            rank=rank,
            seed=self.hparams.seed,
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset("train"),
            batch_size=self.hparams.batch_size,
            sampler=self.train_sampler(),
            drop_last=False,
            **self.loader_kwargs(),
        )
