"""Samplers: the exact per-batch mix (one process and 2 DDP ranks), class balance, and Lightning leaving them alone."""

import json
import logging
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ana_lightning.data.samplers import ClassBalancedSampler, MixedRatioSampler, single_per_batch

SINGLE = list(range(0, 17))
HOSP = list(range(17, 60))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny networks on a small shared CPU: one thread (OpenMP oversubscription costs 100x); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batches(sampler, batch_size):
    """What a DataLoader forms from the sampler (consecutive groups of batch_size)."""
    idx = list(sampler)
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]


@pytest.mark.parametrize("p,b", [(0.6, 8), (0.5, 5), (0.25, 7), (0.0, 6), (0.9, 32)])
def test_exact_ratio_in_every_batch_and_epoch_covers_hospital(p, b):
    s = MixedRatioSampler(SINGLE, HOSP, batch_size=b, mix_ratio=p)
    k = int(p * b + 0.5)
    assert s.n_single == k == single_per_batch(p, b)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = _batches(s, b)
        assert len(batches) == s.num_batches and len(s) == s.num_batches * b
        for batch in batches:
            assert len(batch) == b and sum(i < 17 for i in batch) == k
        hosp_seen = Counter(i for batch in batches for i in batch if i >= 17)
        assert set(hosp_seen) == set(HOSP)  # every hospital image once per epoch …
        assert sum(hosp_seen.values()) - len(HOSP) < b - k  # … plus a top-up of less than one batch


def test_single_label_images_cycle_evenly_across_epochs():
    s = MixedRatioSampler(SINGLE, HOSP, batch_size=8, mix_ratio=0.6)
    seen = Counter()
    for epoch in range(7):
        s.set_epoch(epoch)
        seen.update(i for i in s if i < 17)
    assert max(seen.values()) - min(seen.values()) <= 1 and set(seen) == set(SINGLE)


def test_order_depends_on_epoch_and_seed_only():
    a, b = MixedRatioSampler(SINGLE, HOSP, 8, 0.5, seed=3), MixedRatioSampler(SINGLE, HOSP, 8, 0.5, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(MixedRatioSampler(SINGLE, HOSP, 8, 0.5, seed=4)) != list(a)


def test_two_ranks_disjoint_equal_and_exact():
    ranks = [
        MixedRatioSampler(SINGLE, HOSP, batch_size=6, mix_ratio=0.5, num_replicas=2, rank=r) for r in (0, 1)
    ]
    for r in ranks:
        r.set_epoch(2)
    per_rank = [_batches(r, 6) for r in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == ranks[0].num_batches == 8  # ceil(43 / (3 · 2))
    for batches in per_rank:
        assert all(sum(i < 17 for i in b) == 3 for b in batches)
    h0 = [i for b in per_rank[0] for i in b if i >= 17]
    h1 = [i for b in per_rank[1] for i in b if i >= 17]
    assert set(h0) | set(h1) == set(HOSP)
    assert len(h0) + len(h1) - len(HOSP) == 5  # the top-up: 48 slots for 43 images
    assert len(set(h0) & set(h1)) <= 5
    # Within one pass over the single-label set the ranks draw different images: in epoch 0 the first
    # 15 slots of the stream are rank 0's steps 0-2 and rank 1's steps 0-1.
    for r in ranks:
        r.set_epoch(0)
    s0 = [i for b in _batches(ranks[0], 6) for i in b if i < 17]
    s1 = [i for b in _batches(ranks[1], 6) for i in b if i < 17]
    assert len(set(s0[:9]) | set(s1[:6])) == 15


def test_impossible_ratios_are_clear_errors():
    with pytest.raises(ValueError, match=r"mix_ratio=1.0 with batch_size=8"):
        MixedRatioSampler(SINGLE, HOSP, 8, 1.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        MixedRatioSampler(SINGLE, HOSP, 8, 1.5)
    with pytest.raises(ValueError, match="single-label samples per batch, but there are none"):
        MixedRatioSampler([], HOSP, 8, 0.5)
    with pytest.raises(ValueError, match="rank 2"):
        MixedRatioSampler(SINGLE, HOSP, 8, 0.5, num_replicas=2, rank=2)


def test_class_balanced_sampler_multilabel_and_ddp():
    # class 0 on 90 images, class 1 on 10 (5 of them together with class 0), 5 images without labels
    t = torch.zeros(105, 2)
    t[:90, 0] = 1
    t[85:95, 1] = 1
    s = ClassBalancedSampler(t, num_samples=6000, seed=1)
    drawn = Counter(s)
    rare = sum(n for i, n in drawn.items() if 85 <= i < 95)
    assert 0.25 < rare / 6000 < 0.42  # ~1/3 (three "classes": 0, 1, none) instead of 10/105
    shards = [ClassBalancedSampler(t, num_samples=101, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == len(shards[0]) == 51
    whole = [None] * 102
    whole[0::2], whole[1::2] = a, b
    g = torch.Generator().manual_seed(1)
    assert whole == torch.multinomial(shards[0].weights, 102, replacement=True, generator=g).tolist()
    shards[0].set_epoch(1)
    assert list(shards[0]) != a


# ---------------------------------------------------------------------------- inside Lightning
class _Recorder(L.LightningModule):
    """Records the dataset indices of every training batch (per rank, into a JSON file)."""

    def __init__(self, out_dir: str, num_classes: int):
        super().__init__()
        self.out_dir = out_dir
        self.layer = nn.Linear(3, num_classes)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return F.binary_cross_entropy_with_logits(self.layer(batch["image"].mean((2, 3))), batch["target"])

    def on_train_epoch_end(self):
        loader = self.trainer.train_dataloader
        out = {
            "rank": self.global_rank,
            "world": self.trainer.world_size,
            "epoch": self.current_epoch,
            "sampler": type(loader.sampler).__name__,
            "batches": self.seen,
        }
        Path(self.out_dir, f"rank{self.global_rank}_epoch{self.current_epoch}.json").write_text(
            json.dumps(out)
        )
        self.seen = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture(scope="module")
def tiny_mixed(tmp_path_factory):
    from ana_lightning.data.hospital import MixedDataModule

    base = tmp_path_factory.mktemp("mixed_sampler")
    dm = MixedDataModule(
        cache_dir=str(base / "cache"),
        synthetic_codes=["AC-1", "AC-3", "AC-5"],
        n_per_class=8,
        n_hospital=70,
        n_patients=14,
        render_size=32,
        image_size=8,
        batch_size=6,
        mix_ratio=0.5,
        split_fractions=[0.8, 0.1, 0.1],
    )
    dm.setup()
    ds = dm.dataset("train")
    single = {i for i, r in enumerate(ds.records) if r.path not in dm._hospital_paths}
    return dm, single, len(ds) - len(single)


def _check_runs(out: Path, single: set[int], n_hosp: int, world: int, epochs: int) -> None:
    for epoch in range(epochs):
        runs = [json.loads((out / f"rank{r}_epoch{epoch}.json").read_text()) for r in range(world)]
        steps = {len(run["batches"]) for run in runs}
        assert len(steps) == 1, "every rank runs the same number of steps"
        for run in runs:
            assert (
                run["sampler"] == "MixedRatioSampler" and run["world"] == world
            )  # not replaced by Lightning
            assert all(len(b) == 6 and sum(i in single for i in b) == 3 for b in run["batches"])
        hosp = [[i for b in run["batches"] for i in b if i not in single] for run in runs]
        assert len(set().union(*map(set, hosp))) == n_hosp  # the epoch covers the hospital training set
        if world == 2:
            assert len(set(hosp[0]) & set(hosp[1])) < 3 * 2  # disjoint up to the top-up of the last step


def test_lightning_keeps_the_sampler_one_process(tiny_mixed, tmp_path):
    dm, single, n_hosp = tiny_mixed
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(_Recorder(str(tmp_path), dm.num_classes), datamodule=dm)
    _check_runs(tmp_path, single, n_hosp, world=1, epochs=2)


@pytest.mark.dist
def test_lightning_keeps_the_sampler_under_ddp_spawn(tiny_mixed, tmp_path):
    """2 CPU ranks (gloo), Lightning's default use_distributed_sampler=True: the ratio holds per rank."""
    dm, single, n_hosp = tiny_mixed
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        use_distributed_sampler=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(_Recorder(str(tmp_path), dm.num_classes), datamodule=dm)
    _check_runs(tmp_path, single, n_hosp, world=2, epochs=2)


# ---------------------------------------------------------------------------- group balance
def test_group_balance_weights():
    from ana_lightning.data.samplers import balance_weights

    # class 0: specimens a (60 samples) and b (20); class 1: specimen c (20) and 10 samples without a group
    t = torch.zeros(110, 2)
    t[:80, 0] = 1
    t[80:, 1] = 1
    groups = ["a"] * 60 + ["b"] * 20 + ["c"] * 20 + [None] * 10
    share = {}
    for equal in (True, False):
        w = balance_weights(t, groups, equal_classes=equal)
        p = w / w.sum()
        share[equal] = {"a": p[:60].sum(), "b": p[60:80].sum(), "c": p[80:100].sum(), "none": p[100:].sum()}
        assert torch.allclose(p[:60], p[0].expand(60)) and torch.allclose(p[60:80], p[60].expand(20))
    # classes equal: 1/2 each; class 0 split between its 2 specimens, class 1 between c and 10 one-sample groups
    assert share[True]["a"] == pytest.approx(0.25) and share[True]["b"] == pytest.approx(0.25)
    assert share[True]["c"] == pytest.approx(0.5 / 11) and share[True]["none"] == pytest.approx(0.5 * 10 / 11)
    # class shares as in the data (80 : 30), specimens equal within each class
    assert share[False]["a"] == pytest.approx(40 / 110) and share[False]["b"] == pytest.approx(40 / 110)
    # without groups: classes equal is the old class balance (1 / n_c), and otherwise every sample alike
    assert torch.allclose(balance_weights(t), torch.where(t[:, 0] > 0, 1 / 80, 1 / 30).double())
    assert torch.allclose(balance_weights(t, equal_classes=False), torch.ones(110, dtype=torch.float64))
    with pytest.raises(ValueError, match="group of each of the 110 samples, got 3"):
        balance_weights(t, ["a", "b", "c"])


def test_datamodule_sampler_draws_specimens_equally(tmp_path):
    """data.sampler=groups on I3A cells: a specimen of 40 cells is drawn as often as one of 10 of its class."""
    from contest_fixtures import i3a_contest_datamodule, write_specimens

    specs = [("homogeneous", 40, 40), ("homogeneous", 10, 90), ("speckled", 20, 60), ("speckled", 20, 120)]
    specs += [(c, 6, level) for c in ("homogeneous", "speckled") for level in (70, 100)]  # val, test
    root = write_specimens(tmp_path / "i3a", specs, specimen_column=True)
    first = i3a_contest_datamodule(root)
    first.setup()
    first.write_reports(tmp_path / "run")
    manifest = (tmp_path / "run" / "split_manifest.csv").read_text().splitlines()
    split_of = {"spec4": "val", "spec5": "test", "spec6": "val", "spec7": "test"}  # spec0-3 train
    rows = [manifest[0]]
    for line in manifest[1:]:
        fields = line.split(",")
        fields[2] = split_of.get(fields[4], "train")
        rows.append(",".join(fields))
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    dm = i3a_contest_datamodule(
        root, split_manifest=str(tmp_path / "split.csv"), sampler="groups", batch_size=8, seed=3
    )
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, ClassBalancedSampler)
    ds = loader.dataset
    groups = [r.group for r in ds.records]
    assert len(set(groups)) == 4
    draws = Counter()
    for epoch in range(40):
        loader.sampler.set_epoch(epoch)
        draws.update(groups[i] for i in loader.sampler)
    by_class: dict[str, list[int]] = {}
    for g, n in draws.items():
        by_class.setdefault(next(r.label for r in ds.records if r.group == g), []).append(n)
    for counts in by_class.values():  # within a class the specimens are drawn alike, whatever their size
        assert len(counts) == 2 and abs(counts[0] - counts[1]) < 0.15 * sum(counts), draws
    # "none" is null: the plain shuffled loader, not draws with replacement
    plain = i3a_contest_datamodule(
        root, split_manifest=str(tmp_path / "split.csv"), sampler="none", batch_size=8
    )
    assert isinstance(plain.train_dataloader().sampler, torch.utils.data.RandomSampler)
    with pytest.raises(ValueError, match="data.sampler='specimens' is not one of null.*balanced_groups"):
        i3a_contest_datamodule(root, sampler="specimens")


def test_class_balanced_draws_with_class_weights_warn_of_double_weighting(tmp_path, caplog):
    from contest_fixtures import i3a_contest_datamodule, write_specimens

    specs = [(c, 6, level) for c in ("homogeneous", "speckled") for level in (40, 70, 100, 130, 160)]
    root = write_specimens(tmp_path / "i3a", specs, specimen_column=True)
    for sampler, warned in (("groups", False), ("balanced_groups", True), ("balanced", True)):
        dm = i3a_contest_datamodule(root, sampler=sampler)
        dm.setup()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            kw = dm.model_kwargs()
        assert ("inverse-frequency class weights) with data.sampler=" in caplog.text) is warned, sampler
        assert kw["class_weights"] is not None


def test_mixed_data_refuses_another_sampler(tmp_path):
    from ana_lightning.data.hospital import MixedDataModule

    with pytest.raises(ValueError, match="draws its batches by data.mix_ratio; data.sampler=balanced"):
        MixedDataModule(sampler="balanced", cache_dir=str(tmp_path))
