"""LightningDataModules: thin layers over records → split → dataset → loader.

:class:`RecordDataModule` owns everything shared (split or reuse a manifest, class list, class
weights, loaders, run-folder reports); a concrete datamodule only says how records are read and
what the target is. This file is over 400 lines on purpose: it is that one base class (whose split,
manifest, fold and leakage decisions are calls into :mod:`.splits`) with the dataset it serves and
the two thinnest layouts on it; cutting the class in parts would scatter one object's methods.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..taxonomy import Taxonomy
from ..utils import plain_hparams
from .images import (
    BadFile,
    check_bit_depth,
    check_channels,
    decode_map,
    load_image,
    set_bit_depth,
    set_channels,
)
from .records import DatasetError, ImageRecord, parse_group_level
from .samplers import ClassBalancedSampler, resolve_replicas
from .splits import (
    SPLIT_MANIFEST,
    SPLITS,
    NearDuplicateSet,
    check_fold_settings,
    check_split_order,
    check_split_sizes,
    find_near_duplicates,
    fold_split,
    match_manifest,
    read_stylized_set,
    save_manifest,
    split_keeping_official,
    split_records,
    warn_shared_with_train,
    write_duplicates,
    write_near_duplicates,
)
from .splits.manifest import LabelParser
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

__all__ = ["RecordDataset", "RecordDataModule", "SingleLabelDataModule", "SyntheticDataModule"]

log = logging.getLogger(__name__)

# data.sampler: how training images are drawn (all but null draw with replacement, DDP-aware)
SAMPLERS = {
    None: "shuffle",
    "none": "shuffle",
    "balanced": "every class drawn equally often",
    "groups": "every group (specimen, patient, field) equally often within its class; class shares as in the data",
    "balanced_groups": "every class equally often, and every group equally often within its class",
}


def plain_dict(mapping: Any) -> dict[str, Any]:
    """A mapping of config values as plain Python (tuples → lists), loadable by ``torch.load(weights_only=True)``."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)

    return {str(k): plain(v) for k, v in dict(mapping).items()}


class RecordDataset(Dataset):
    """Images of a list of records, as ``{"image", "target", "index"}`` dicts.

    With ``cache=True`` every image is decoded and resized once (:func:`~.images.decode_map`), kept as uint8.
    With ``cache="mmap"`` they go once into a memory-mapped file in ``cache_dir`` shared by loader
    workers and DDP ranks (:class:`~ana_lightning.data.cache.ImageCache`).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        targets: torch.Tensor,
        transform: Callable[[np.ndarray], Any],
        cache: bool | str = False,
        cache_dir: str | None = None,
    ):
        self.records = list(records)
        self.targets = targets
        self.transform = transform
        self._cache: list[np.ndarray] | None = None
        if cache == "mmap" and self.records:
            from .cache import ImageCache

            self._cache = ImageCache.build(
                [r.path for r in self.records],
                transform.image_size,
                transform.resize,
                digests=[r.sha256 for r in self.records],
                cache_dir=cache_dir,
                resize_name=getattr(transform, "resize_name", "area"),
            )
        elif cache and self.records:
            self._cache = list(decode_map(lambda r: transform.resize(load_image(r.path)), self.records))

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> np.ndarray:
        return self._cache[i] if self._cache is not None else load_image(self.records[i].path)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.transform(self.load(i)), "target": self.targets[i], "index": i}


class RecordDataModule(L.LightningDataModule):
    """Shared base: reading, splitting, targets, loaders and run-folder reports.

    Subclasses implement :meth:`read_records` and, if not single-label, :meth:`make_targets`.
    """

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        tree: str | None = None,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        split_manifest: str | None = None,
        on_bad_file: str = "error",
        cache_images: bool | str = True,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_augment: Sequence[Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        extra_train: str | None = None,
        image_cache_dir: str | None = None,
        batch_augment: Callable[..., torch.Tensor] | None = None,
        nucleus_diameter_px: float | None = None,
        near_duplicates: bool = True,
        folds: int | None = None,
        fold: int | None = None,
        repeats: int = 1,
        repeat: int = 0,
        folds_manifest: str | None = None,
        sampler: str | None = None,
        bit_depth: int | None = None,
        split_order: str = "random",
        channels: Any = None,
    ):
        super().__init__()
        check_fold_settings(folds, fold, repeats, repeat, split_manifest)
        check_split_order(split_order)
        # data.bit_depth: the camera's bit depth for files stored with more than 8 bits (12: 0-4095 is the full
        # range); every image this process (and its loader workers) reads from now on is read so
        set_bit_depth(check_bit_depth(bit_depth, "data.bit_depth"))
        # data.channels: which channel of a multi-channel TIFF is FITC, DAPI or neither (null: its channel names)
        set_channels(check_channels(channels, "data.channels"))
        if sampler not in SAMPLERS:
            raise ValueError(
                f"data.sampler={sampler!r} is not one of null (shuffle), "
                + ", ".join(f"{k} ({v})" for k, v in SAMPLERS.items() if k)
            )
        self.save_hyperparameters(logger=False, ignore=["train_augment", "batch_augment"])
        plain_hparams(self)
        # augmentation=gpu: flips / 90° rotations / intensity on the device, per training batch
        # (on_after_batch_transfer), so the loader only serves cached, normalised images.
        self.batch_augment = batch_augment
        self.sampler = None if sampler in (None, "none") else sampler  # data.sampler, "none" read as null
        self.tree = Taxonomy.load(tree)
        self.requested_classes = list(classes) if classes else None
        self.train_augment = train_augment
        self.mean = tuple(mean) if mean is not None else IMAGENET_MEAN
        self.std = tuple(std) if std is not None else IMAGENET_STD
        self.taxonomy: Taxonomy | None = None
        self.splits: dict[str, list[ImageRecord]] = {}
        self.bad_files: list[BadFile] = []
        self.datasets: dict[str, RecordDataset] = {}
        # data.extra_train (a stylized set, see ana-stylize): added to the training dataset only,
        # after the split is made; kept out of self.splits so the split manifest lists real images only.
        self.extra_train_records: list[ImageRecord] = []
        # A layout's own split (path -> "train" | "val" | "test", e.g. the ICPR 2012 contest folders):
        # set by read_records when the layout has one; kept as given by split().
        self.official_split: dict[str, str] = {}
        self.split_overlap: dict[str, int] = {}
        # Same picture, other bytes (re-encoded, flipped, rotated): kept in one split (data.near_duplicates).
        self.near_duplicates: list[NearDuplicateSet] = []
        # How read_records grouped the images (a specimen column, detected runs, sub-folders, …): grouping.txt.
        self.grouping = ""

    # -------------------------------------------------------------- to implement
    @property
    def root(self) -> Path:
        raise NotImplementedError

    def read_records(self) -> tuple[list[ImageRecord], list[BadFile]]:
        raise NotImplementedError

    def make_targets(self, records: Sequence[ImageRecord]) -> torch.Tensor:
        """Class indices of single-label records."""
        assert self.taxonomy is not None
        return torch.tensor([self.taxonomy.codes.index(r.label) for r in records], dtype=torch.long)

    # -------------------------------------------------------------- shared logic
    @property
    def class_names(self) -> list[str]:
        if self.taxonomy is None:
            raise RuntimeError("call datamodule.setup() first: the class list comes from the data")
        return list(self.taxonomy.codes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Use the backbone's normalisation (datasets built earlier are rebuilt)."""
        if (tuple(mean), tuple(std)) != (self.mean, self.std):
            self.mean, self.std = tuple(mean), tuple(std)
            self.datasets.clear()

    def setup(self, stage: str | None = None) -> None:
        # again here: a spawned DDP rank unpickles, not __init__s
        set_bit_depth(self.hparams.get("bit_depth"))
        set_channels(self.hparams.get("channels"))
        if self.splits:
            return
        records, self.bad_files = self.read_records()
        present = {c for r in records for c in r.codes}
        if self.requested_classes:
            self.taxonomy = self.tree.subset(self.requested_classes)
            outside = sorted(present - set(self.taxonomy.codes), key=self.tree.codes.index)
            if outside:
                raise DatasetError(
                    self.root,
                    [
                        BadFile(
                            str(self.root),
                            f"images of {', '.join(outside)}, not in data.classes={self.taxonomy.codes}",
                        )
                    ],
                )
        else:
            self.taxonomy = self.tree.subset(present)  # classes present, in natural order
        self.find_near_duplicates(records)
        if self.hparams.split_manifest:
            self.splits = self._splits_from_manifest(records, self.hparams.split_manifest)
        else:
            self.splits = self.split(records)
            self.check_split_sizes(records, self.splits)
        self.check_split_overlap()
        for s in SPLITS:
            log.info("%s: %d images", s, len(self.splits[s]))
        if self.hparams.get("extra_train"):
            # Refuses a set whose content/style images are in val/test or not in this data at all.
            self.extra_train_records = read_stylized_set(
                self.hparams.extra_train,
                self.splits,
                self.taxonomy,
                all_records=records,
                on_bad_file=self.hparams.on_bad_file,
            )
            log.info(
                "extra_train: %d stylized image(s) from %s added to the training split",
                len(self.extra_train_records),
                self.hparams.extra_train,
            )

    def split(self, records: Sequence[ImageRecord]) -> dict[str, list[ImageRecord]]:
        """Train/val/test split of freshly read records (:func:`split_records`). A datamodule that
        reads several sources may split each one on its own (still with :func:`split_records`).
        With ``folds`` set it is the cross-validation split of :meth:`fold_split`; a layout's official
        split (``official_split``) is kept as given: cross-validation then folds only the records the
        layout does not hold out as test, so its official test cells stay out of every fold."""
        if self.hparams.get("folds"):
            held = [r for r in records if self.official_split.get(r.path) == "test"]
            if held:
                log.warning(
                    "cross-validation over the layout's training records only (%d of %d): its official "
                    "test split (%d images) is left out of every fold and never seen; drop data.folds "
                    "to score it",
                    len(records) - len(held),
                    len(records),
                    len(held),
                )
                records = [r for r in records if self.official_split.get(r.path) != "test"]
            return self.fold_split(records)
        if self.official_split:  # the layout's own split: test kept as given, validation carved from train
            return split_keeping_official(
                records,
                self.official_split,
                self.hparams.split_fractions,
                seed=self.hparams.seed,
                together=self.together,
                order=self.split_order,
            )
        return split_records(
            records,
            self.hparams.split_fractions,
            seed=self.hparams.seed,
            together=self.together,
            order=self.split_order,
        )

    @property
    def split_order(self) -> str:
        """``data.split_order`` (``random``; ``size`` reproduces a split made before round 19). Checkpoints
        written before the key existed read as ``random``."""
        return self.hparams.get("split_order", "random")

    #: Check the splits' sizes and classes (an empty split, a split without a class). ``ana-eval split=all``
    #: sets it false: it scores every split as one set, so how the folder would split is not its business.
    checks_splits = True

    def check_split_sizes(self, records: Sequence[ImageRecord], splits: dict[str, list[ImageRecord]]) -> None:
        """An empty split is an error when one group holds most images, else a warning (:func:`~.splits.check_split_sizes`)."""
        if self.checks_splits:
            check_split_sizes(records, splits, self.hparams.split_fractions, self.root)

    @property
    def together(self) -> list[list[str]]:
        """Paths that must share a split besides byte-identical files and groups: the near-duplicates."""
        return [[r.path for r in d.records] for d in self.near_duplicates]

    def find_near_duplicates(self, records: Sequence[ImageRecord]) -> list[NearDuplicateSet]:
        """Perceptual near-duplicates of the records (:func:`~.splits.find_near_duplicates`), unless
        ``data.near_duplicates=false``; the same image under different labels is a loud warning."""
        enabled = self.hparams.get("near_duplicates", True)
        self.near_duplicates = (
            find_near_duplicates(records, self.hparams.get("image_cache_dir")) if enabled else []
        )
        return self.near_duplicates

    def check_split_overlap(self) -> dict[str, int]:
        """Count test images sharing a group (or identical bytes) with training, a WARNING when any
        (:func:`~.splits.warn_shared_with_train`); kept for :meth:`split_flags`."""
        given_by = "the layout's official split" if self.official_split else "the split manifest"
        self.split_overlap = warn_shared_with_train(self.splits, given_by)
        return self.split_overlap

    def split_flags(self, stage: str = "test") -> dict[str, float]:
        """``{stage}/shared_groups_with_train`` (and the image counts) for metrics.json: 0 = a clean split."""
        o = self.split_overlap or {"groups": 0, "images": 0, "identical": 0}
        return {
            f"{stage}/shared_groups_with_train": float(o["groups"]),
            f"{stage}/images_in_train_groups": float(o["images"]),
            f"{stage}/identical_to_train": float(o["identical"]),
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint (Lightning does it): the data settings of the run, so ``ana-eval``
        rebuilds the same reader, target, masks, image size and normalisation without a config."""
        config = {
            "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
            **plain_dict(self.hparams),
        }
        return {"ana_data": config, "class_nodes": self.class_nodes() if self.splits else {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the data settings come from the config (see :meth:`state_dict`)."""

    def class_nodes(self) -> dict[str, str]:
        """Each class name → its ICAP tree label (an AC code or a tree node); here the names are codes."""
        return {c: c for c in self.class_names}

    def fold_split(self, records: Sequence[ImageRecord]) -> dict[str, list[ImageRecord]]:
        """Cross-validation job ``(repeat, fold)`` of this config (:func:`~.splits.fold_split`)."""
        hp = self.hparams
        return fold_split(
            records,
            hp.folds,
            hp.fold,
            hp.split_fractions,
            seed=hp.seed,
            repeats=hp.get("repeats", 1),
            repeat=hp.get("repeat", 0),
            folds_manifest=hp.get("folds_manifest"),
            root=self.root,
            together=self.together,
            order=self.split_order,
        )

    def make_dataset(self, records: Sequence[ImageRecord], train: bool = False) -> RecordDataset:
        """A dataset over any records with this module's targets and transforms (augmented if ``train``)."""
        tf = build_transform(
            self.hparams.image_size, self.train_augment if train else None, self.mean, self.std
        )
        if self.hparams.get(
            "nucleus_diameter_px"
        ):  # fields brought to one scale (ana_lightning.fields.training)
            from ..fields.training import ScaledFieldTransform

            tf = ScaledFieldTransform(tf, self.hparams.nucleus_diameter_px)
        return RecordDataset(
            records,
            self.make_targets(records),
            tf,
            cache=self.hparams.cache_images,
            cache_dir=self.hparams.get("image_cache_dir"),
        )

    def dataset(self, split: str) -> RecordDataset:
        """The dataset of a split, built (and its images cached) on first use."""
        if not self.splits:
            self.setup()
        if split not in self.datasets:
            records = self.splits[split] + (self.extra_train_records if split == "train" else [])
            self.datasets[split] = self.make_dataset(records, train=split == "train")
        return self.datasets[split]

    def manifest_label_parser(self) -> LabelParser:
        """What reads the labels of a split manifest back (anything with ``parse_code``): the tree.
        Datamodules whose records may carry tree nodes as labels (contest data) return their own."""
        return self.tree

    def _splits_from_manifest(
        self, records: list[ImageRecord], manifest: str
    ) -> dict[str, list[ImageRecord]]:
        """The split ``data.split_manifest`` gives the records (:func:`~.splits.match_manifest`)."""
        return match_manifest(
            records, manifest, self.root, self.manifest_label_parser(), official=bool(self.official_split)
        )

    def class_weights(self) -> list[float]:
        """Inverse-frequency weights ``n / (K · n_c)`` from the training split only."""
        counts = Counter(c for r in self.splits["train"] for c in r.codes)
        n, k = sum(counts.values()), self.num_classes
        return [n / (k * counts[c]) if counts[c] else 0.0 for c in self.class_names]

    def warn_double_weighting(self, loss_weights: bool, loss: str) -> None:
        """A warning when a class-balanced sampler and a class-weighted ``loss`` both correct the class shares."""
        if loss_weights and self.sampler in ("balanced", "balanced_groups"):
            log.warning(
                "class_weighted_loss=true (%s) with data.sampler=%s weighs the classes twice (the draws are "
                "already class-balanced): set class_weighted_loss=false unless that is meant",
                loss,
                self.sampler,
            )

    def model_kwargs(self, loss_weights: bool = True) -> dict[str, Any]:
        """What a model built for this data needs to know: classes, input size, loss weights
        (from the training split only). Multi-label datamodules return ``pos_weight`` instead."""
        self.warn_double_weighting(loss_weights, "inverse-frequency class weights")
        return {
            "class_names": self.class_names,
            "image_size": self.hparams.image_size,
            "class_weights": self.class_weights() if loss_weights else None,
        }

    def write_reports(self, out_dir: str | Path) -> None:
        """Split manifest, bad-file list and duplicate report into the run folder."""
        out_dir = Path(out_dir)
        save_manifest(self.splits, out_dir / SPLIT_MANIFEST, root=self.root)
        if self.bad_files:
            with open(out_dir / "bad_files.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "reason"])
                w.writerows([b.path, b.reason] for b in self.bad_files)
            log.warning("%d bad file(s) skipped: see %s", len(self.bad_files), out_dir / "bad_files.csv")
        dups = write_duplicates(self.splits, out_dir / "duplicates.csv")
        if dups:
            log.warning("%d set(s) of byte-identical images kept in one split each: see duplicates.csv", dups)
        if self.near_duplicates:
            write_near_duplicates(self.near_duplicates, self.splits, out_dir / "near_duplicates.csv")
        if self.grouping:  # the manifest's group column holds the groups; this says where they came from
            reader = getattr(self, "reader", None)
            (out_dir / "grouping.txt").write_text(
                (f"reader: {reader}\n" if reader else "") + f"grouping: {self.grouping}\n"
            )

    # -------------------------------------------------------------- loaders
    def loader_kwargs(self) -> dict[str, Any]:
        """Worker settings of every loader (``num_workers``, ``pin_memory``, ``persistent_workers``)."""
        nw = self.hparams.num_workers
        return {
            "num_workers": nw,
            "pin_memory": self.hparams.pin_memory,
            "persistent_workers": self.hparams.persistent_workers and nw > 0,
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        bs = self.hparams.batch_size
        # A training batch of one image breaks batch norm: drop such a remainder (only that).
        return DataLoader(
            ds,
            batch_size=bs,
            shuffle=shuffle,
            drop_last=shuffle and len(ds) > bs and len(ds) % bs == 1,
            **self.loader_kwargs(),
        )

    def replicas(self) -> tuple[int, int]:
        """World size and rank for a sampler that shards itself: the trainer's, else torch.distributed's."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.world_size), int(trainer.global_rank)
        return resolve_replicas()

    def train_dataloader(self) -> DataLoader:
        kind = self.sampler
        if kind is None:
            return self._loader("train", shuffle=True)
        ds = self.dataset("train")
        world, rank = self.replicas()
        sampler = ClassBalancedSampler(
            ds.targets,
            num_replicas=world,
            rank=rank,
            seed=self.hparams.seed,
            groups=[r.group for r in ds.records] if kind in ("groups", "balanced_groups") else None,
            equal_classes=kind in ("balanced", "balanced_groups"),
        )
        bs, n = self.hparams.batch_size, len(sampler)
        # as for the shuffled loader: a last training batch of one image breaks batch norm
        return DataLoader(
            ds, batch_size=bs, sampler=sampler, drop_last=n > bs and n % bs == 1, **self.loader_kwargs()
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """GPU-side augmentation of training batches (``augmentation=gpu``), after the move to the device."""
        aug = self.batch_augment
        trainer = self.trainer
        if (
            aug is not None
            and trainer is not None
            and trainer.training
            and isinstance(batch, dict)
            and "image" in batch
        ):
            batch["image"] = aug(batch["image"], mean=self.mean, std=self.std)
        return batch


class SingleLabelDataModule(RecordDataModule):
    """A folder of ``<root>/<AC code>/<images>`` (``data=single_label``, ``data.root=<folder>``).

    Args (beyond :class:`RecordDataModule`):
        root: the dataset folder; class folders may be spelled ``AC-3``, ``ac-3``, ``AC3`` or ``ac_3``.
        group_level: the split group of an image inside a sub-folder of its class folder: ``auto`` (the first
            sub-folder's name, e.g. a patient, slide or field), a folder depth below ``root`` (0 = the class
            folder) or ``none`` (:func:`~.records.folder_group`); ``grouping.txt`` in the run folder says what it found.
    """

    # grouping.txt's line when group_level is none, where the folder reader's own line does not fit the data
    ungrouped_note: str | None = None

    def __init__(self, root: str, group_level: str | int | None = "auto", **kwargs):
        super().__init__(**kwargs)
        if not root:
            raise ValueError(
                "data.root is not set: give the folder of <AC code>/<images> (data.root=/path/to/images)"
            )
        self._root = Path(root).expanduser()
        self.group_level = parse_group_level(group_level)

    @property
    def root(self) -> Path:
        return self._root

    def read_records(self) -> tuple[list[ImageRecord], list[BadFile]]:
        from .readers import FolderReader

        data = FolderReader(self.group_level).read(self.root, self.tree, on_bad_file=self.hparams.on_bad_file)
        self.grouping = (self.group_level is None and self.ungrouped_note) or data.grouping
        log.info("split groups: %s", self.grouping)
        return data.records, data.bad


class SyntheticDataModule(SingleLabelDataModule):
    """The built-in synthetic HEp-2 dataset (``data=synthetic``): rendered once into ``cache_dir``.

    The folder name encodes every rendering parameter, so a changed parameter renders a new set
    and an unchanged one is reused (an interrupted render resumes where it stopped).
    ``difficulty``: ``easy`` (the first simulator) or ``hard`` (see :mod:`.synthetic_hard`).
    Split image by image (``group_level: none``): every rendered field is an independent draw.
    """

    ungrouped_note = (
        "none: every rendered field is an independent draw of the simulator, split image by image"
    )

    def __init__(
        self,
        cache_dir: str = "data/synthetic",
        n_per_class: int = 60,
        render_size: int = 256,
        render_seed: int = 0,
        dapi: bool = False,
        root: str | None = None,
        difficulty: str = "easy",
        group_level: str | int | None = "none",
        **kwargs,
    ):
        if root:
            raise ValueError(
                f"data=synthetic renders its own images into cache_dir; to train on the folder {root} use "
                "data=single_label data.root=<folder>"
            )
        codes = kwargs.get("classes")
        name = f"v1_n{n_per_class}_s{render_size}_seed{render_seed}{'_dapi' if dapi else ''}"
        if difficulty != "easy":  # the easy set keeps its folder name (caches stay valid)
            name += f"_{difficulty}"
        if codes:
            name += "_" + "-".join(Taxonomy.load(kwargs.get("tree")).subset(codes).codes)
        super().__init__(root=str(Path(cache_dir).expanduser() / name), group_level=group_level, **kwargs)
        self.render = dict(
            n_per_class=n_per_class,
            size=render_size,
            seed=render_seed,
            dapi=dapi,
            codes=codes,
            difficulty=difficulty,
        )

    def prepare_data(self) -> None:
        done = self.root / ".complete"
        if done.exists():
            return
        from .synthetic import generate_dataset

        codes = self.tree.subset(self.render["codes"]).codes if self.render["codes"] else self.tree.codes
        log.info("rendering the synthetic HEp-2 dataset into %s (once; cached for later runs)", self.root)
        generate_dataset(
            self.root,
            codes=list(codes),
            n_per_class=self.render["n_per_class"],
            size=self.render["size"],
            seed=self.render["seed"],
            dapi=self.render["dapi"],
            difficulty=self.render["difficulty"],
        )
        done.write_text("ok\n")

    def setup(self, stage: str | None = None) -> None:
        if not (self.root / ".complete").exists():
            self.prepare_data()
        super().setup(stage)
