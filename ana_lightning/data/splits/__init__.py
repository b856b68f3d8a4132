"""Train/val/test splits: the only package that decides who is in which split.

- :mod:`.grouping`: units that never separate (byte-identical files, a group, near-duplicate sets)
  and the stratified, grouped split (:func:`split_records`, :func:`split_keeping_official`);
- :mod:`.duplicates`: byte-identical and perceptual near-duplicate sets, and their CSV reports;
- :mod:`.checks`: one split against itself (:func:`check_no_leakage`, :func:`shared_with_train`);
- :mod:`.manifest`: ``split_manifest.csv`` — save, load, match against read records, and find the
  training run's manifest beside a checkpoint;
- :mod:`.leakage`: against other runs and extra sets (:func:`check_unseen`,
  :func:`seen_in_training`, :func:`read_stylized_set`);
- :mod:`.folds`: cross-validation folds (``data.folds=k data.fold=i``), ``folds_manifest.csv``.

Every name is importable from ``ana_lightning.data.splits`` as before the package was split.
"""

from __future__ import annotations

from .checks import (
    LeakageError,
    check_no_leakage,
    check_split_sizes,
    shared_with_train,
    warn_shared_with_train,
)
from .duplicates import (
    _DIHEDRAL,
    NearDuplicateSet,
    _dihedral,
    _dihedral_dct,
    _hash_cache,
    _hash_one,
    find_near_duplicates,
    near_duplicate_sets,
    write_duplicates,
    write_near_duplicates,
)
from .folds import (
    FOLDS_MANIFEST,
    FoldsManifestError,
    check_fold_settings,
    cv_split,
    fold_records,
    fold_split,
    load_folds_manifest,
    sweep_folds,
)
from .grouping import (
    SPLIT_ORDERS,
    SPLITS,
    check_split_order,
    duplicate_sets,
    split_keeping_official,
    split_records,
)
from .leakage import STYLIZED_MANIFEST, check_unseen, read_stylized_set, seen_in_training
from .manifest import (
    SPLIT_MANIFEST,
    load_manifest,
    match_manifest,
    run_manifest,
    save_manifest,
    training_hashes,
    training_split_manifest,
)

__all__ = [
    "SPLITS",
    "SPLIT_ORDERS",
    "check_split_order",
    "split_records",
    "duplicate_sets",
    "near_duplicate_sets",
    "find_near_duplicates",
    "NearDuplicateSet",
    "write_near_duplicates",
    "write_duplicates",
    "SPLIT_MANIFEST",
    "save_manifest",
    "load_manifest",
    "match_manifest",
    "run_manifest",
    "training_split_manifest",
    "training_hashes",
    "check_no_leakage",
    "LeakageError",
    "split_keeping_official",
    "shared_with_train",
    "warn_shared_with_train",
    "check_split_sizes",
    "check_unseen",
    "seen_in_training",
    "STYLIZED_MANIFEST",
    "read_stylized_set",
    "fold_records",
    "cv_split",
    "fold_split",
    "check_fold_settings",
    "FOLDS_MANIFEST",
    "FoldsManifestError",
    "sweep_folds",
    "load_folds_manifest",
]

# Kept importable for the tests of the hashing internals.
_ = (_DIHEDRAL, _dihedral, _dihedral_dct, _hash_cache, _hash_one)
