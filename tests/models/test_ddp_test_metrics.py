"""Under DDP the DistributedSampler pads the ranks with repeated test images; the logged test metrics
(not only the report's predictions) must count every test image exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ana_lightning.models.classifier import SoftmaxClassifier

from conftest import TINY_BACKBONE


class _FakeTrainer:
    def __init__(self, rank: int):
        self.world_size, self.global_rank, self.local_rank, self.node_rank = 2, rank, rank, 0


def _rank_module(rank: int, buffers: dict[int, tuple[torch.Tensor, ...]]) -> SoftmaxClassifier:
    m = SoftmaxClassifier(
        {"name": TINY_BACKBONE, "pretrained": False}, ["AC-1", "AC-2", "AC-3"], image_size=32
    )
    m._trainer = _FakeTrainer(rank)
    idx, prob, tgt = buffers[rank]
    # What test_step did on this rank: per-batch metric updates, the padded duplicate included.
    m.test_metrics.update(prob, tgt)
    m.test_details.update(prob, tgt)
    m.collect("test", index=idx, prob=prob, target=tgt)
    calls = iter(range(3))
    m.all_gather = lambda t: torch.stack([buffers[0][(i := next(calls))], buffers[1][i]])  # noqa: ARG005
    return m


def test_padding_duplicates_do_not_count_twice():
    rng = np.random.default_rng(0)
    n = 7  # 2 ranks: 4 + 4 with image 0 repeated on rank 1 (DistributedSampler padding)
    target = torch.from_numpy(rng.integers(0, 3, n))
    prob = torch.softmax(torch.from_numpy(rng.normal(size=(n, 3))).float() * 3, -1)
    order = [[0, 2, 4, 6], [1, 3, 5, 0]]
    prob[0] = (
        torch.tensor([0.0, 0.0, 1.0]) if int(target[0]) != 2 else torch.tensor([1.0, 0.0, 0.0])
    )  # image 0: wrong
    buffers = {r: (torch.tensor(o), prob[o], target[o]) for r, o in enumerate(order)}
    ranks = [_rank_module(r, buffers) for r in (0, 1)]
    for m in ranks:
        m.on_test_epoch_end()
    # What the cross-rank sync of the metrics computes: the states summed over the ranks.
    for (_, a), (_, b) in zip(ranks[0].test_metrics.items(), ranks[1].test_metrics.items(), strict=True):
        a.merge_state(b)
    got = {k.removeprefix("test/"): float(v) for k, v in ranks[0].test_metrics.compute().items()}
    y, p = target.numpy(), prob.argmax(-1).numpy()
    labels = np.unique(y)
    assert got["acc"] == pytest.approx(skm.accuracy_score(y, p))
    assert got["mca"] == pytest.approx(skm.recall_score(y, p, labels=labels, average="macro"))
    # the padded set (image 0 twice) would give another accuracy: the duplicate really is dropped
    y8, p8 = y[[*order[0], *order[1]]], p[[*order[0], *order[1]]]
    assert got["acc"] != pytest.approx(skm.accuracy_score(y8, p8))
    assert len(ranks[0].test_predictions["index"]) == n


def test_multihead_padding_duplicates_do_not_count_twice():
    """The multi-head model gathers every rank's routed predictions and counts each image once."""
    from ana_lightning.models.hierarchical import MultiHeadClassifier

    leaves = ["AC-1", "AC-4", "AC-5"]
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 7)
    guess = np.where(rng.random(7) < 0.6, truth, (truth + 1) % 3)
    guess[0] = (truth[0] + 1) % 3  # image 0 (the padded duplicate) is wrong
    ref = MultiHeadClassifier({"name": TINY_BACKBONE, "pretrained": False}, leaves, image_size=32)
    names = ref.level_names

    def levels(leaf: int) -> list[int]:
        return [names[lv].index(ref.tree.level_of(leaves[leaf], lv + 1)) for lv in range(2)] + [leaf]

    target = torch.tensor([levels(int(t)) for t in truth])
    pred = torch.tensor([levels(int(g)) for g in guess])
    order = [[0, 2, 4, 6], [1, 3, 5, 0]]
    buffers = {r: (torch.tensor(o), target[o], pred[o], torch.full((4,), 0.9)) for r, o in enumerate(order)}

    def module(rank: int) -> MultiHeadClassifier:
        m = MultiHeadClassifier({"name": TINY_BACKBONE, "pretrained": False}, leaves, image_size=32)
        m._trainer = _FakeTrainer(rank)
        idx, t, p, score = buffers[rank]
        m._update_level_metrics("test", p, t)  # what the steps logged: padded duplicate included
        m.collect("test", index=idx, target=t, pred=p, score=score)
        calls = iter(range(4))
        m.all_gather = lambda x: torch.stack([buffers[0][(i := next(calls))], buffers[1][i]])  # noqa: ARG005
        m.finish_test = lambda: None  # logs test/mca (computed and cached before the states are merged here)
        return m

    ranks = [module(0), module(1)]
    for m in ranks:
        m.on_test_epoch_end()
    for lv in (1, 2, 3):
        for (_, a), (_, b) in zip(
            ranks[0].metrics[f"test_{lv}"].items(), ranks[1].metrics[f"test_{lv}"].items(), strict=True
        ):
            a.merge_state(b)
    got = {k: float(v) for k, v in ranks[0].metrics["test_3"].compute().items()}
    assert got["test/level3_acc"] == pytest.approx(skm.accuracy_score(truth, guess))
    assert got["test/level3_mca"] == pytest.approx(
        skm.recall_score(truth, guess, labels=np.unique(truth), average="macro")
    )
    assert got["test/level3_acc"] != pytest.approx(
        skm.accuracy_score(truth[[*order[0], *order[1]]], guess[[*order[0], *order[1]]])
    )
    assert ranks[0].test_predictions["index"].tolist() == list(range(7))  # every image once, from both ranks
