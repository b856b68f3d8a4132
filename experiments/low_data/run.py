"""Low-data study: Siamese ensemble vs softmax CNN vs SVM at K training images per class.

The paper's level-3 task: tell apart the AC codes *within* one level-2 group (speckled: AC-2/4/5/29,
nucleolar: AC-8/9/10, …) from only K labelled images per code. For every group, K and repeat, the same
K images per class are given to every method, and every method is scored on the same held-out images:

- ``siamese_ensemble``: two Siamese networks (dropout 0.2 and 0.5, Koch pair head, self-pairs), the K
  images as the support set (ana_lightning.models.siamese);
- ``softmax_cnn``: the foundation's softmax classifier, same backbone, steps, learning rate, augmentation;
- ``svm_texture``: RBF SVM on LBP + GLCM + intensity-histogram features (scikit-image), computed on the
  image at the CNNs' input size (``--texture-size`` to change it);
- ``svm_cnn``: RBF SVM on the pooled features of the trained softmax CNN (frozen).

Datasets: ``synthetic`` (the built-in field simulator; a fixed test set of ``--n-test`` fields per code),
``real`` (the ICAP reference images in ../shared/data/ana-pattern-quest, 3–5 per code, byte-identical
duplicates kept once; test = the images not drawn for training, so K ≤ 3 only; skipped when absent) and
``i3a`` (the real I3A 2014 Task-1 cells in ../shared/data/i3a2014-task1, the six contest classes as one
flat task, group ``i3a6``: cells are grouped by specimen by the contest reader — runs of consecutive IDs
cut at intensity steps — and whole specimens are held out; a fixed test set of ``--n-test-cells`` cells
per class is drawn from the held-out specimens, the K training cells per class from the others).

No pretrained weights are used (none can be downloaded here): every CNN starts from a random
initialisation, unlike the paper's ImageNet transfer learning. ``--weights <file>`` loads local weights.

    python experiments/low_data/run.py                   # the table of experiments/low_data/README.md
    python experiments/low_data/run.py --quick           # a minute-long smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHARED = Path(os.environ.get("ANA_SHARED") or REPO.parent / "shared")
REAL_ROOT = SHARED / "data" / "ana-pattern-quest" / "patterns"
I3A_ROOT = SHARED / "data" / "i3a2014-task1" / "training"
I3A_GROUP = "i3a6"  # the six I3A classes as one flat task (the "group" column of the results)
METHODS = ("siamese_ensemble", "softmax_cnn", "svm_texture", "svm_cnn")
DEFAULT_GROUPS = ("speckled", "nucleolar", "cytoplasmic speckled")

log = logging.getLogger("low_data")


@dataclass
class StudyConfig:
    """Everything that defines one run of the study (written next to the results)."""

    datasets: Sequence[str] = ("synthetic", "real")
    ks: Sequence[int] = (1, 3, 5, 10)
    groups: Sequence[str] = DEFAULT_GROUPS
    methods: Sequence[str] = METHODS
    repeats: int = 5
    n_test: int = 10  # synthetic: held-out fields per code
    backbone: str = "resnet10t"
    weights: str | None = None  # local pretrained weights for the backbone (none by default)
    image_size: int = 64
    texture_size: int | None = (
        None  # grey size of the SVM's texture features (None = image_size: what the CNNs see)
    )
    render_size: int = 128
    steps: int = 40  # optimisation steps per network: the least with ``epochs``, the number without
    # at least this many passes over the K × classes images (None or 0: a fixed ``steps``)
    epochs: float | None = 20.0
    batch_size: int = 16
    lr: float = 1e-3
    # the Siamese ensemble's own settings (round 29 chooses them on development specimens)
    siamese_loss: str = "bce"  # bce (Koch head) or contrastive
    siamese_scoring: str = "mean"  # mean similarity to a class's support images, or prototype
    siamese_lr: float | None = None  # None: lr
    seed: int = 0
    synthetic_root: str = str(REPO / "data" / "low_data_synthetic")
    real_root: str = str(REAL_ROOT)
    i3a_root: str = str(I3A_ROOT)
    n_test_cells: int = 100  # i3a: held-out cells per class, all from specimens never drawn for training
    test_groups: float = 0.3  # i3a: fraction of each class's specimens held out for testing
    # i3a: development run: the held-out test specimens are never read; the training pool's specimens are
    # split again (grouped, the same test_groups) into development test cells and the pool to draw K from
    dev: bool = False
    out: str = str(Path(__file__).resolve().parent / "results")
    threads: int | None = None

    def __post_init__(self):
        if self.epochs is not None and self.epochs < 0:
            raise ValueError(f"epochs must be >= 0 (0: a fixed number of steps), got {self.epochs}")
        from ana_lightning.models.siamese import LOSSES, SCORINGS

        if self.siamese_loss not in LOSSES:
            raise ValueError(f"siamese_loss must be one of {sorted(LOSSES)}, got {self.siamese_loss!r}")
        if self.siamese_scoring not in SCORINGS:
            raise ValueError(
                f"siamese_scoring must be one of {sorted(SCORINGS)}, got {self.siamese_scoring!r}"
            )
        for name in ("lr", "siamese_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.dev and set(self.datasets) != {"i3a"}:
            raise ValueError(
                f"dev splits the I3A training specimens: use it with datasets ['i3a'] only, got {list(self.datasets)}"
            )


# ============================================================================================ data
def _records(cfg: StudyConfig, dataset: str, codes: Sequence[str]):
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    tree = Taxonomy.load()
    if dataset == "synthetic":
        from ana_lightning.data.synthetic import generate_dataset

        n = max(cfg.ks) + cfg.n_test
        root = Path(cfg.synthetic_root) / f"n{n}_s{cfg.render_size}_seed{cfg.seed}"
        generate_dataset(
            root, codes=list(codes), n_per_class=n, size=cfg.render_size, seed=cfg.seed, progress=False
        )
        folder = root
    else:
        folder = Path(cfg.real_root)
    records, _ = read_single_label_folder(folder, tree)
    records = [r for r in records if r.label in set(codes)]
    seen, unique = set(), []
    for r in records:  # byte-identical copies would sit in train and test at once: keep one
        if r.sha256 not in seen:
            seen.add(r.sha256)
            unique.append(r)
    return unique


def _i3a_records(cfg: StudyConfig):
    """The I3A cells with specimen groups (contest reader, ``grouping=auto``), their masks, and how
    they were grouped."""
    from ana_lightning.data.contest import read_i3a2014
    from ana_lightning.taxonomy import Taxonomy

    data = read_i3a2014(cfg.i3a_root, Taxonomy.load(), need_masks=True, grouping="auto")
    return data.records, data.masks, data.grouping


def normalise_cell(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Per-cell gain normalisation for every method alike: zero outside the mask, the cell's 99th
    percentile (inside the mask) to 255. I3A cells are dim 8-bit grey and specimens differ in
    brightness by up to an order of magnitude; without this every method learns the specimen's
    brightness, not its pattern.

    >>> normalise_cell(np.full((4, 4, 3), 50, np.uint8), None).max()
    255
    """
    grey = image.max(axis=2).astype(np.float32) if image.ndim == 3 else image.astype(np.float32)
    inside = (
        (mask.max(axis=2) if mask is not None and mask.ndim == 3 else mask) > 0 if mask is not None else None
    )
    if inside is not None and inside.shape == grey.shape and inside.any():
        grey = grey * inside
        top = float(np.percentile(grey[inside], 99))
    else:
        top = float(np.percentile(grey, 99))
    out = np.clip(grey * (255.0 / max(top, 1.0)), 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def _normalised_copies(records, masks: dict[str, str], cache: Path):
    """The records with their images replaced by per-cell-normalised copies written into ``cache``
    (once)."""
    from dataclasses import replace

    from PIL import Image

    from ana_lightning.data.images import load_image

    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for r in records:
        dst = cache / (
            f"{r.sha256[:24]}.png" if r.sha256 else f"{Path(r.path).parent.name}_{Path(r.path).stem}.png"
        )
        if not dst.is_file():
            mask = load_image(masks[r.path]) if r.path in masks else None
            tmp = dst.with_suffix(".tmp.png")
            Image.fromarray(normalise_cell(load_image(r.path), mask)).save(tmp)
            tmp.replace(dst)
        out.append(replace(r, path=str(dst)))
    return out


def _i3a_split(cfg: StudyConfig, records) -> tuple[dict[str, list], list]:
    """``(training pool per class, fixed test cells)``: whole specimens go to one side or the other
    (grouped, stratified split of the reader's groups); the test cells, ``n_test_cells`` per class, are
    drawn once from the held-out specimens and are the same for every K and repeat.

    With ``cfg.dev`` the held-out specimens are set aside unread and the training pool is split the same
    way again: its held-out part gives the development test cells, the rest is the pool to draw K from
    (settings are chosen there, never on the test specimens)."""
    from ana_lightning.data.splits import split_records

    fractions = (1.0 - cfg.test_groups, 0.0, cfg.test_groups)
    parts = split_records(records, fractions, seed=cfg.seed)
    pool, held = parts["train"], parts["test"]
    if cfg.dev:
        parts = split_records(pool, fractions, seed=cfg.seed + 1)
        pool, held = parts["train"], parts["test"]
    assert not {r.group for r in pool} & {r.group for r in held}
    rng = np.random.default_rng([cfg.seed, 7])
    labels = list(dict.fromkeys(r.label for r in records))
    test = []
    for c in labels:
        cand = [r for r in held if r.label == c]
        if not cand:
            raise ValueError(f"no held-out specimen of {c}: lower test_groups or check the grouping")
        pick = rng.choice(len(cand), size=min(cfg.n_test_cells, len(cand)), replace=False)
        test += [cand[i] for i in sorted(pick)]
    return {c: [r for r in pool if r.label == c] for c in labels}, test


def _draws(cfg: StudyConfig, dataset: str, by_class: dict[str, list], k: int, rep: int):
    """``(train, test)`` record lists for one repeat, or None when some class has too few images."""
    rng = np.random.default_rng([cfg.seed, k, rep, 17])
    train, test = [], []
    for ci, recs in enumerate(by_class.values()):
        order = [recs[i] for i in np.random.default_rng([cfg.seed, 99, ci]).permutation(len(recs))]
        if dataset == "synthetic":
            held, pool = (
                order[: cfg.n_test],
                order[cfg.n_test :],
            )  # the test set is the same for every K and repeat
        else:
            held, pool = None, order
        if len(pool) < k + (0 if held else 1):
            return None
        pick = set(rng.choice(len(pool), size=k, replace=False).tolist())
        train += [pool[i] for i in sorted(pick)]
        test += held if held else [pool[i] for i in range(len(pool)) if i not in pick]
    return train, test


# ============================================================================================ methods
def _dataset(records, classes, image_size, mean, std, augment):
    import albumentations as A
    import torch

    from ana_lightning.data.datamodules import RecordDataset
    from ana_lightning.data.transforms import build_transform

    policy = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)] if augment else None
    targets = torch.tensor([classes.index(r.label) for r in records])
    return RecordDataset(records, targets, build_transform(image_size, policy, mean, std), cache=True)


def train_steps(cfg: StudyConfig, n_train: int) -> int:
    """Optimisation steps of one network on ``n_train`` images: ``cfg.steps``, or with ``cfg.epochs``
    enough full batches for that many passes over the images, whichever is more. A fixed number of steps
    starves the networks at large K (30 steps of 16 at K = 50 show each of 300 cells ~1.6 times)."""
    if not cfg.epochs:
        return cfg.steps
    batch = min(cfg.batch_size, n_train)
    return max(cfg.steps, math.ceil(cfg.epochs * n_train / batch))


def _fit(model, dataset, cfg: StudyConfig) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=min(cfg.batch_size, len(dataset)), shuffle=True, drop_last=True)
    trainer = L.Trainer(
        max_steps=train_steps(cfg, len(dataset)),
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_dataloaders=loader)


def _predict(model, dataset) -> np.ndarray:
    import torch
    from torch.utils.data import DataLoader

    model.eval()
    with torch.no_grad():
        return torch.cat(
            [model.predict_proba(b["image"]).argmax(1) for b in DataLoader(dataset, batch_size=64)]
        ).numpy()


def _backbone(cfg: StudyConfig) -> dict:
    return {"name": cfg.backbone, "pretrained": False, "weights": cfg.weights, "drop_rate": 0.0}


def run_cell(cfg: StudyConfig, classes: list[str], train, test, seed: int) -> dict[str, dict[str, float]]:
    """Every method on one draw: ``{method: {"acc", "mca", "seconds"}}``."""
    import lightning as L
    import torch

    from ana_lightning.baselines import FrozenCNNFeatures, TextureFeatures, _scores, fit_predict_svm
    from ana_lightning.models.classifier import SoftmaxClassifier
    from ana_lightning.models.siamese import SiameseClassifier

    y_test = np.array([classes.index(r.label) for r in test])
    y_train = np.array([classes.index(r.label) for r in train])
    out: dict[str, dict[str, float]] = {}

    def adamw(lr: float):
        return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)

    softmax = None

    def timed(name, fn):
        t = time.perf_counter()
        pred = fn()
        out[name] = {**_scores(y_test, pred), "seconds": time.perf_counter() - t}

    if "siamese_ensemble" in cfg.methods:

        def siamese():
            L.seed_everything(seed, workers=False, verbose=False)
            m = SiameseClassifier(
                _backbone(cfg),
                classes,
                dropout_rates=[0.2, 0.5],
                loss=cfg.siamese_loss,
                scoring=cfg.siamese_scoring,
                image_size=cfg.image_size,
                optimizer=adamw(cfg.siamese_lr or cfg.lr),
            )
            mean, std = m.hparams.mean, m.hparams.std
            _fit(m, _dataset(train, classes, cfg.image_size, mean, std, augment=True), cfg)
            test_ds = _dataset(test, classes, cfg.image_size, mean, std, augment=False)
            m.set_support_dataset(_dataset(train, classes, cfg.image_size, mean, std, augment=False))
            return _predict(m, test_ds)

        timed("siamese_ensemble", siamese)
    if "softmax_cnn" in cfg.methods or "svm_cnn" in cfg.methods:

        def cnn():
            nonlocal softmax
            L.seed_everything(seed, workers=False, verbose=False)
            softmax = SoftmaxClassifier(
                _backbone(cfg), classes, optimizer=adamw(cfg.lr), image_size=cfg.image_size
            )
            mean, std = softmax.hparams.mean, softmax.hparams.std
            _fit(softmax, _dataset(train, classes, cfg.image_size, mean, std, augment=True), cfg)
            return _predict(softmax, _dataset(test, classes, cfg.image_size, mean, std, augment=False))

        timed("softmax_cnn", cnn)
        if "softmax_cnn" not in cfg.methods:
            out.pop("softmax_cnn")
    if "svm_texture" in cfg.methods:
        feats = TextureFeatures(size=cfg.texture_size or cfg.image_size)
        timed(
            "svm_texture",
            lambda: fit_predict_svm(
                feats.transform([r.path for r in train]), y_train, feats.transform([r.path for r in test])
            ),
        )
    if "svm_cnn" in cfg.methods and softmax is not None:
        hp = softmax.hparams
        frozen = FrozenCNNFeatures(softmax.net, cfg.image_size, hp.mean, hp.std)
        timed(
            "svm_cnn",
            lambda: fit_predict_svm(frozen([r.path for r in train]), y_train, frozen([r.path for r in test])),
        )
    return out


# ============================================================================================ study
def _row(dataset: str, group: str, k: int, rep: int, method: str, **result) -> dict:
    """One result row; ``result`` (acc, mca, n_train, n_test, seconds) is None where no draw was made."""
    empty = dict.fromkeys(("acc", "mca", "n_train", "n_test", "steps", "seconds"))
    return dict(dataset=dataset, group=group, k=k, repeat=rep, method=method, **(empty | result))


def _skipped_rows(cfg: StudyConfig, dataset: str, group: str, k: int, rep: int) -> list[dict]:
    """Empty result rows (one per method) for a draw that could not be made (too few cells)."""
    return [_row(dataset, group, k, rep, m) for m in cfg.methods]


def _run_rows(
    cfg: StudyConfig, dataset: str, group: str, classes, train, test, k: int, rep: int, label: str
) -> list[dict]:
    """Every method on one draw (:func:`run_cell`), a progress line, and one result row per method."""
    t0 = time.perf_counter()
    res = run_cell(cfg, classes, train, test, seed=cfg.seed * 1000 + rep)
    print(
        f"{label} K={k} rep {rep}: "
        + ", ".join(f"{m} {r['mca']:.3f}" for m, r in res.items())
        + f" ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    sizes = dict(n_train=len(train), n_test=len(test))
    steps = train_steps(cfg, len(train))  # every network's (svm_cnn: its softmax CNN's); none for svm_texture
    return [
        _row(
            dataset,
            group,
            k,
            rep,
            m,
            acc=r["acc"],
            mca=r["mca"],
            seconds=r["seconds"],
            steps=None if m == "svm_texture" else steps,
            **sizes,
        )
        for m, r in res.items()
    ]


def run_study(cfg: StudyConfig) -> list[dict]:
    """All datasets × groups × K × repeats; one row per (dataset, group, K, repeat, method)."""
    import torch

    from ana_lightning.taxonomy import Taxonomy

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # on a machine with SLURM installed every Trainer warns that srun is not used: ~400 lines per table
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available")
    tree = Taxonomy.load()
    for g in cfg.groups:
        if len(tree.children(g)) < 2:
            raise ValueError(f"group {g!r} has a single AC code: nothing to classify at level 3")
    codes = [c for g in cfg.groups for c in tree.children(g)]
    rows: list[dict] = []
    for dataset in cfg.datasets:
        if dataset == "real" and not Path(cfg.real_root).is_dir():
            log.warning("real images absent (%s): skipped", cfg.real_root)
            continue
        if dataset == "i3a":
            if not Path(cfg.i3a_root).is_dir():
                log.warning("I3A cells absent (%s): skipped", cfg.i3a_root)
                continue
            records, masks, grouping = _i3a_records(cfg)
            pool, test = _i3a_split(cfg, records)
            # derived copies of the real cells stay outside the repository (never committed, never published)
            cache = (
                Path(os.environ.get("ANA_CACHE_DIR") or tempfile.gettempdir()) / "ana-lightning-low-data-i3a"
            )
            test = _normalised_copies(test, masks, cache)
            pool = {c: _normalised_copies(v, masks, cache) for c, v in pool.items()}
            classes = list(pool)
            print(
                "[i3a] "
                + (
                    "DEVELOPMENT split of the training specimens (the test specimens unread): "
                    if cfg.dev
                    else ""
                )
                + f"{len(records)} cells; groups: {grouping}; training pool "
                f"{sum(map(len, pool.values()))} cells of {len({r.group for v in pool.values() for r in v})} specimens, "
                f"test {len(test)} cells of {len({r.group for r in test})} other specimens",
                flush=True,
            )
            for k in cfg.ks:
                for rep in range(cfg.repeats):
                    rng = np.random.default_rng([cfg.seed, k, rep, 23])
                    if any(len(v) < k for v in pool.values()):
                        rows += _skipped_rows(cfg, dataset, I3A_GROUP, k, rep)
                        continue
                    train = [
                        v[i] for v in pool.values() for i in sorted(rng.choice(len(v), size=k, replace=False))
                    ]
                    rows += _run_rows(cfg, dataset, I3A_GROUP, classes, train, test, k, rep, "[i3a]")
            continue
        records = _records(cfg, dataset, codes)
        for g in cfg.groups:
            classes = list(tree.children(g))
            by_class = {c: [r for r in records if r.label == c] for c in classes}
            for k in cfg.ks:
                for rep in range(cfg.repeats):
                    draw = _draws(cfg, dataset, by_class, k, rep)
                    if draw is None:
                        rows += _skipped_rows(cfg, dataset, g, k, rep)
                        continue
                    train, test = draw
                    rows += _run_rows(cfg, dataset, g, classes, train, test, k, rep, f"[{dataset}] {g}")
    return rows


def summarize(rows: list[dict], methods: Sequence[str]) -> list[dict]:
    """Mean MCA per (dataset, K, method) over groups and repeats, with the sample standard deviation
    (ddof=1) over repeats of the group-averaged MCA; ``None`` where no group had enough images."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for k in sorted({r["k"] for r in rows if r["dataset"] == dataset}):
            line = {"dataset": dataset, "k": k}
            for m in methods:
                sel = [
                    r
                    for r in rows
                    if r["dataset"] == dataset and r["k"] == k and r["method"] == m and r["mca"] is not None
                ]
                if not sel:
                    line[m] = None
                    continue
                reps = sorted({r["repeat"] for r in sel})
                per_rep = [np.mean([r["mca"] for r in sel if r["repeat"] == rep]) for rep in reps]
                # sample sd (ddof=1) over the repeats; NaN (shown n/a) with a single repeat
                sd = float(np.std(per_rep, ddof=1)) if len(per_rep) > 1 else float("nan")
                line[m] = (float(np.mean(per_rep)), sd, len({r["group"] for r in sel}))
            out.append(line)
    return out


def markdown_table(summary: list[dict], methods: Sequence[str]) -> str:
    head = "| dataset | K / class | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 2)]
    for s in summary:
        cells = []
        best = max((s[m][0] for m in methods if s[m]), default=None)
        for m in methods:
            if s[m] is None:
                cells.append("n/a")
            else:
                mean, std, _ = s[m]
                txt = f"{mean:.3f} ± {std:.3f}" if np.isfinite(std) else f"{mean:.3f} ± n/a"
                cells.append(f"**{txt}**" if best is not None and mean == best else txt)
        lines.append(f"| {s['dataset']} | {s['k']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(rows: list[dict], methods: Sequence[str], reference: str = "siamese_ensemble") -> str:
    """``reference`` against every other method, per (dataset, K): the MCA differences over the cells
    both were scored on (same group and repeat: the same training and test images), with their mean,
    95% t-interval and paired t-test p-value (:func:`ana_lightning.stats.paired_comparison`)."""
    from ana_lightning.stats import paired_comparison

    if reference not in methods:
        reference = methods[0]
    lines = [
        f"| dataset | K / class | {reference} vs | cells | mean difference | 95% CI | p (paired t) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for k in sorted({r["k"] for r in rows if r["dataset"] == dataset}):
            cell = {
                (r["group"], r["repeat"], r["method"]): r["mca"]
                for r in rows
                if r["dataset"] == dataset and r["k"] == k and r["mca"] is not None
            }
            for m in methods:
                if m == reference:
                    continue
                keys = sorted(
                    {(g, rep) for g, rep, mm in cell if mm == reference}
                    & {(g, rep) for g, rep, mm in cell if mm == m}
                )
                if not keys:
                    continue
                c = paired_comparison([cell[(*x, reference)] for x in keys], [cell[(*x, m)] for x in keys])
                ci = "n/a" if len(keys) < 2 else f"[{c['ci95_low']:+.3f}, {c['ci95_high']:+.3f}]"
                p_val = "n/a" if len(keys) < 2 else f"{c['p_ttest']:.3g}"
                lines.append(
                    f"| {dataset} | {k} | {m} | {len(keys)} | {c['mean_diff']:+.3f} | {ci} | {p_val} |"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    from ana_lightning.models.siamese import LOSSES, SCORINGS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = StudyConfig()
    p.add_argument("--datasets", nargs="+", default=list(d.datasets), choices=["synthetic", "real", "i3a"])
    p.add_argument("--k", nargs="+", type=int, default=list(d.ks), dest="ks")
    p.add_argument("--groups", nargs="+", default=list(d.groups))
    p.add_argument("--methods", nargs="+", default=list(d.methods), choices=list(METHODS))
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--n-test", type=int, default=d.n_test)
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--weights", default=None)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument(
        "--texture-size", type=int, default=None, help="texture features' image size (default: --image-size)"
    )
    p.add_argument("--render-size", type=int, default=d.render_size)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument(
        "--epochs",
        type=float,
        default=d.epochs,
        help="train each network for at least this many passes over its K x classes images "
        "(more steps than --steps where K is large; default %(default)s); 0: --steps whatever K is "
        "(the study's budget before round 28)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--siamese-loss", default=d.siamese_loss, choices=list(LOSSES))
    p.add_argument("--siamese-scoring", default=d.siamese_scoring, choices=list(SCORINGS))
    p.add_argument("--siamese-lr", type=float, default=None, help="the Siamese ensemble's lr (default: --lr)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--synthetic-root", default=d.synthetic_root)
    p.add_argument("--real-root", default=d.real_root)
    p.add_argument("--i3a-root", default=d.i3a_root)
    p.add_argument(
        "--n-test-cells", type=int, default=d.n_test_cells, help="i3a: held-out test cells per class"
    )
    p.add_argument(
        "--test-groups", type=float, default=d.test_groups, help="i3a: fraction of specimens held out"
    )
    p.add_argument(
        "--dev",
        action="store_true",
        help="i3a: choose settings on development specimens of the training pool; the test specimens are not read",
    )
    p.add_argument("--out", default=d.out)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--quick", action="store_true", help="tiny settings: one group, K=1,3, one repeat, 10 steps"
    )
    a = p.parse_args(argv)
    if a.epochs < 0:
        p.error(f"--epochs must be >= 0 (0: a fixed --steps), got {a.epochs}")
    if a.dev and set(a.datasets) != {"i3a"}:
        p.error(f"--dev splits the I3A training specimens: use it with --datasets i3a only, got {a.datasets}")
    if a.quick:
        a.groups, a.ks, a.repeats, a.steps, a.epochs, a.n_test = a.groups[:1], [1, 3], 1, 10, 0, 4
    cfg = StudyConfig(
        datasets=a.datasets,
        ks=a.ks,
        groups=a.groups,
        methods=a.methods,
        repeats=a.repeats,
        n_test=a.n_test,
        backbone=a.backbone,
        weights=a.weights,
        image_size=a.image_size,
        texture_size=a.texture_size,
        render_size=a.render_size,
        steps=a.steps,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        siamese_loss=a.siamese_loss,
        siamese_scoring=a.siamese_scoring,
        siamese_lr=a.siamese_lr,
        seed=a.seed,
        synthetic_root=a.synthetic_root,
        real_root=a.real_root,
        i3a_root=a.i3a_root,
        n_test_cells=a.n_test_cells,
        test_groups=a.test_groups,
        dev=a.dev,
        out=a.out,
        threads=a.threads,
    )
    t0 = time.perf_counter()
    rows = run_study(cfg)
    summary = summarize(rows, cfg.methods)
    table = markdown_table(summary, cfg.methods)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["dataset"])
        w.writeheader()
        w.writerows(rows)
    (out / "table.md").write_text(table + "\n")
    paired = paired_differences(rows, cfg.methods)  # "A beats B" with its evidence
    (out / "paired.md").write_text(paired + "\n")
    (out / "config.json").write_text(
        json.dumps({**asdict(cfg), "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n"
    )
    print(
        "\nMean class accuracy (MCA) on held-out images, mean ± std over repeats (each repeat averaged over groups):\n"
    )
    print(table)
    print("\nPaired differences of MCA (same training and test images per group and repeat):\n")
    print(paired)
    print(f"\n{len(rows)} rows in {out / 'results.csv'}; {time.perf_counter() - t0:.0f} s")
    return {"rows": rows, "summary": summary, "table": table, "paired": paired}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
