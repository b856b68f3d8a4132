"""Siamese few-shot model: pairs, support-set caching, training on a two-class synthetic set,
checkpoints with their support set, ensembles, and episodic evaluation."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from ana_lightning.data.datamodules import RecordDataset, SingleLabelDataModule
from ana_lightning.data.records import DatasetError
from ana_lightning.data.transforms import build_transform
from ana_lightning.episodes import evaluate_episodes, mean_ci95, run_episodes, sample_episode
from ana_lightning.models.siamese import SiameseClassifier, class_scores, sample_pairs
from ana_lightning.utils import load_checkpoint_model

from conftest import TINY_BACKBONE, write_class_images


def _model(classes, **kw):
    kw.setdefault("image_size", 32)
    return SiameseClassifier(
        backbone={"name": TINY_BACKBONE},
        class_names=classes,
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        **kw,
    )


def _dataset(model, root):
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    recs, _ = read_single_label_folder(root, Taxonomy.load())
    tf = build_transform(model.hparams.image_size, None, model.hparams.mean, model.hparams.std)
    return RecordDataset(recs, torch.tensor([model.class_names.index(r.label) for r in recs]), tf)


def test_pairs_are_balanced_and_correct():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    i, j, same = sample_pairs(labels, generator=torch.Generator().manual_seed(0))
    assert (i < j).all()
    pos = same.bool()
    assert int(pos.sum()) == 3 + 1 + 3 and int((~pos).sum()) == int(
        pos.sum()
    )  # every positive, as many negatives
    assert torch.equal(labels[i] == labels[j], pos)
    assert len({(a, b) for a, b in zip(i.tolist(), j.tolist(), strict=True)}) == len(i)  # no pair twice
    # hard negatives: the most similar different-class pairs
    sim = torch.zeros(8, 8)
    sim[0, 3] = sim[3, 0] = 5.0
    sim[4, 7] = sim[7, 4] = 4.0
    i, j, same = sample_pairs(labels, sim, hard_negatives=True)
    negs = {(a, b) for a, b, s in zip(i.tolist(), j.tolist(), same.tolist(), strict=True) if not s}
    assert {(0, 3), (4, 7)} <= negs
    # one image per class: no positive pair, still some negatives
    i, j, same = sample_pairs(torch.tensor([0, 1, 2, 3]))
    assert len(i) == 2 and not same.any()


def test_class_scores_average_per_class():
    sim = torch.tensor([[0.9, 0.7, 0.2, 0.0]])
    s = class_scores(sim, torch.tensor([0, 0, 1, 1]), 3)
    assert torch.allclose(s, torch.tensor([[0.8, 0.1, 0.0]]))  # class 2 has no support: 0


def test_support_embeddings_are_computed_once_per_support_set(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 4, "AC-2": 4}, size=32)
    model = _model(["AC-1", "AC-2"]).eval()
    seen = []
    model.net.members[0].encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    support = _dataset(model, root)
    model.set_support_dataset(support, key="folder-a")
    assert sum(seen) == 8 and model.support_computations == 1
    queries = torch.randn(5, 3, 32, 32)
    for _ in range(3):
        p = model.predict_proba(queries)
        assert p.shape == (5, 2) and torch.allclose(p.sum(1), torch.ones(5))
    assert sum(seen) == 8 + 3 * 5  # the queries only: the support set is not embedded again
    model.set_support_dataset(support, key="folder-a")  # same set, same weights: cached
    assert model.support_computations == 1 and sum(seen) == 8 + 15
    model.set_support_dataset(support, key="folder-b")
    assert model.support_computations == 2


def test_support_folder_must_match_the_classes(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 2, "AC-5": 2}, size=32)
    model = _model(["AC-1", "AC-2"])
    with pytest.raises(DatasetError, match=r"support images of \['AC-5'\]"):
        model.set_support_folder(root)


@pytest.fixture(scope="module")
def two_class_synthetic(tmp_path_factory):
    """Synthetic HEp-2 fields of two clearly different patterns: homogeneous (AC-1) and centromere (AC-3)."""
    from ana_lightning.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth2") / "d"
    generate_dataset(root, codes=["AC-1", "AC-3"], n_per_class=14, size=64, seed=3, progress=False)
    (root / "manifest.csv").unlink()
    return root


@pytest.fixture(scope="module")
def trained_siamese(two_class_synthetic, tmp_path_factory):
    dm = SingleLabelDataModule(
        root=str(two_class_synthetic), image_size=32, batch_size=4, split_fractions=(0.6, 0.1, 0.3)
    )
    dm.setup()
    model = _model(dm.class_names, dropout_rates=[0.1, 0.3], image_size=32)
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    model.set_support_source(
        dm.make_dataset(dm.splits["train"], train=False), batch_size=4
    )  # what ana-train does
    out = tmp_path_factory.mktemp("siamese_run")
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out, monitor="val/loss", save_top_k=1)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ckpt],
        default_root_dir=str(out),
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    return dm, model, result, Path(ckpt.best_model_path)


def test_trained_briefly_it_separates_two_classes(trained_siamese):
    dm, model, result, _ = trained_siamese
    assert len(dm.splits["test"]) >= 8
    assert result["test/acc"] >= 0.75, result  # chance is 0.5
    # the support set is the training split, embedded by the current weights
    assert len(model.net.members[0].support_labels) == len(dm.splits["train"])


def test_checkpoint_alone_predicts_with_its_support_set(trained_siamese):
    dm, model, _, best = trained_siamese
    loaded = load_checkpoint_model(best)
    assert isinstance(loaded, SiameseClassifier) and loaded.class_names == ["AC-1", "AC-3"]
    n = len(dm.splits["train"])
    assert all(len(m.support_labels) == n for m in loaded.net.members)
    assert torch.load(best, weights_only=False)["ana_lightning"]["support_size"] == n
    x = torch.stack([dm.dataset("test")[i]["image"] for i in range(4)])
    p = loaded.predict_proba(x)
    assert p.shape == (4, 2) and torch.allclose(p.sum(1), torch.ones(4))
    # ensemble = mean of the members' scores
    with torch.no_grad():
        members = torch.stack([m(x) for m in loaded.net.members]).mean(0)
        assert torch.allclose(loaded(x), members)


def test_contrastive_and_prototype_variants_run(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 6, "AC-2": 6}, size=32)
    dm = SingleLabelDataModule(root=str(root), image_size=32, batch_size=6)
    dm.setup()
    model = _model(dm.class_names, loss="contrastive", scoring="prototype", hard_negatives=True)
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    model.set_support_source(dm.make_dataset(dm.splits["train"], train=False))
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=dm)
    m = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert np.isfinite(m["test/loss"])
    # the logged MCA is the MCA of the model's own test predictions (scikit-learn, present classes)
    from sklearn.metrics import recall_score

    pred = model.test_predictions["prob"].argmax(1).numpy()
    y = model.test_predictions["target"].numpy()
    assert m["test/mca"] == pytest.approx(
        recall_score(y, pred, labels=np.unique(y), average="macro"), abs=1e-6
    )


# ------------------------------------------------------------------------------------------- episodes
def test_episode_support_and_query_never_overlap():
    labels = np.repeat(np.arange(8), [3, 4, 5, 6, 7, 8, 9, 10])
    rng = np.random.default_rng(0)
    for _ in range(300):
        ep = sample_episode(labels, n_way=5, k_shot=2, n_query=3, rng=rng)
        assert not set(ep.support) & set(ep.query)
        assert len(set(ep.classes)) == 5 and 0 not in ep.classes  # class 0 has 3 < 2 + 3 images
        assert len(ep.support) == 10 and len(ep.query) == 15
        assert all(labels[s] == ep.classes[y] for s, y in zip(ep.support, ep.support_labels, strict=True))
        assert all(labels[q] == ep.classes[y] for q, y in zip(ep.query, ep.query_labels, strict=True))
    with pytest.raises(ValueError, match="need 8 classes with at least 7 images"):
        sample_episode(labels, n_way=8, k_shot=2, n_query=5, rng=rng)


def test_episode_queries_come_from_other_specimens_than_the_support():
    """With groups, a class's queries never share a specimen with its support images: a 1-shot episode whose
    query is a cell of the support cell's own specimen measures recognising that specimen."""
    labels = np.repeat(np.arange(4), 12)
    groups = [
        f"s{c}-{i // 4}" for c in range(4) for i in range(12)
    ]  # three specimens of four cells per class
    groups[47] = None  # an image without a group stands alone
    rng = np.random.default_rng(0)
    for _ in range(300):
        ep = sample_episode(labels, n_way=3, k_shot=2, n_query=3, rng=rng, groups=groups)
        for pos in range(3):
            support = {groups[i] for i, y in zip(ep.support, ep.support_labels, strict=True) if y == pos}
            query = {groups[i] for i, y in zip(ep.query, ep.query_labels, strict=True) if y == pos}
            assert not (support & query) - {None}
        assert len(ep.support) == 6 and len(ep.query) == 9
    one_specimen = [f"s{c}" if c == 0 else g for c, g in zip(labels, groups, strict=True)]
    with pytest.raises(
        ValueError, match="need 4 classes with at least 2 support and 3 query images in other groups"
    ):
        sample_episode(labels, n_way=4, k_shot=2, n_query=3, rng=rng, groups=one_specimen)
    # without groups, the draws are those of before
    a = sample_episode(labels, 3, 2, 3, np.random.default_rng(5))
    b = sample_episode(labels, 3, 2, 3, np.random.default_rng(5), groups=None)
    assert a.support.tolist() == b.support.tolist() and a.query.tolist() == b.query.tolist()


def test_episode_accuracy_and_confidence_interval():
    labels = np.repeat(np.arange(6), 10)
    oracle = run_episodes(
        labels, lambda s, sy, q, n: np.repeat(np.arange(n), 5), n_way=4, k_shot=1, n_query=5, episodes=50
    )
    assert oracle.accuracy == 1.0 and oracle.ci95 == 0.0 and oracle.episodes == 50
    rng = np.random.default_rng(0)
    guess = run_episodes(labels, lambda s, sy, q, n: rng.integers(0, n, len(q)), n_way=4, episodes=600)
    assert abs(guess.accuracy - 0.25) < 3 * guess.ci95 + 0.02
    mean, ci = mean_ci95([0.5, 0.7, 0.6, 0.8])
    assert mean == pytest.approx(0.65) and 0.1 < ci < 0.25


def test_episodic_evaluation_of_a_trained_siamese(trained_siamese):
    dm, model, _, _ = trained_siamese
    records = dm.splits["test"]  # images it never trained on (not the support set it memorised)
    res = evaluate_episodes(model, dm.make_dataset(records), n_way=2, k_shot=1, n_query=3, episodes=100)
    assert res.episodes == 100
    assert res.accuracy - res.ci95 > 0.5  # better than chance (0.5) beyond its 95% interval


def test_episodes_job_for_siamese_and_softmax_checkpoints(
    trained_siamese, two_class_synthetic, trained_checkpoint, tmp_path
):
    import json

    from ana_lightning.episodes import evaluate_episodes_job

    from conftest import compose

    dm, _, _, best = trained_siamese
    episodes = ["episodes.n_way=2", "episodes.n_query=3", "episodes.episodes=60"]
    data = ["data=single_label", f"data.root={two_class_synthetic}", f"ckpt_path='{best}'"]
    # No split manifest beside this checkpoint, and the data holds classes it trained on: refused,
    # rather than drawing episodes from its training images.
    with pytest.raises(ValueError, match="split=auto.*could draw images it trained on"):
        evaluate_episodes_job(compose("eval_episodes", data + episodes, output_dir=tmp_path / "refused"))
    dm.write_reports(tmp_path)  # its split manifest: episodes come from its test split
    cfg = compose(
        "eval_episodes",
        [*data, f"data.split_manifest={tmp_path / 'split_manifest.csv'}", *episodes],
        output_dir=tmp_path / "s",
    )
    metrics, objs = evaluate_episodes_job(cfg)
    assert set(metrics) == {"test/2way_1shot_acc", "test/2way_1shot_ci95"} and objs["result"].episodes == 60
    saved = json.loads((tmp_path / "s" / "episodes.json").read_text())
    assert saved["split"] == "test" and saved["images"] == len(dm.splits["test"])
    assert saved["accuracy"] == pytest.approx(metrics["test/2way_1shot_acc"])
    root, _, softmax_best = trained_checkpoint  # a softmax CNN: scored by nearest class mean of its features
    cfg = compose(
        "eval_episodes",
        [
            "data=single_label",
            f"data.root={root}",
            f"ckpt_path={softmax_best}",
            "episodes.n_way=3",
            "episodes.n_query=1",
            "episodes.episodes=30",
        ],
        output_dir=tmp_path / "c",
    )
    metrics, objs = evaluate_episodes_job(cfg)  # its run folder's manifest: its test split
    saved = json.loads((tmp_path / "c" / "episodes.json").read_text())
    assert saved["split"] == "test" and saved["queries"] == "any image but the support's"
    assert metrics["test/3way_1shot_acc"] - metrics["test/3way_1shot_ci95"] > 1 / 3  # beats chance
    # novel classes in patient folders: each class's queries come from other patients than its support
    novel = write_class_images(
        tmp_path / "novel", {f"{c}/p{c[-1]}{i}": 3 for c in ("AC-4", "AC-5") for i in range(3)}, size=24
    )
    cfg = compose(
        "eval_episodes",
        [f"data.root={novel}", f"ckpt_path={softmax_best}", "episodes.n_way=2", "episodes.n_query=2"]
        + ["episodes.episodes=20", "data.near_duplicates=false"],
        output_dir=tmp_path / "g",
    )
    evaluate_episodes_job(cfg)
    saved = json.loads((tmp_path / "g" / "episodes.json").read_text())
    assert saved["split"] == "all" and saved["queries"].startswith("from other groups than the support (6 ")


def test_episodes_job_reads_images_as_the_training_run_did(trained_checkpoint, tmp_path):
    """eval_episodes starts from the checkpoint's own data settings, as ana-eval does: a 12-bit camera's 16-bit
    TIFFs are read at the run's data.bit_depth (the episodes equal those of their 8-bit copies), unless
    data.bit_depth=null is typed."""
    from PIL import Image

    from ana_lightning.episodes import evaluate_episodes_job

    from conftest import compose

    root, _, ckpt = trained_checkpoint
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["datamodule_hyper_parameters"]["bit_depth"] = 12
    for value in state.values():
        if isinstance(value, dict) and isinstance(value.get("ana_data"), dict):
            value["ana_data"]["bit_depth"] = 12
    ck12 = tmp_path / "m12.ckpt"
    torch.save(state, ck12)
    for f in sorted(root.rglob("*.png")):
        grey = np.asarray(Image.open(f).convert("L"))
        for kind in ("png", "cam"):
            (tmp_path / kind / f.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(tmp_path / "png" / f.parent.name / f"{f.stem}.png")
        cam = np.round(grey.astype(np.float64) * 4095 / 255).astype(np.uint16)
        Image.fromarray(cam).save(tmp_path / "cam" / f.parent.name / f"{f.stem}.tif")

    def episodes(folder, *extra):
        cfg = compose(
            "eval_episodes",
            [
                f"ckpt_path={ck12}",
                f"data.root={tmp_path / folder}",
                "split=all",
                "episodes.n_way=3",
                "episodes.n_query=2",
                "episodes.episodes=20",
                *extra,
            ],
            output_dir=tmp_path / f"out_{folder}_{len(extra)}",
        )
        metrics, objs = evaluate_episodes_job(cfg)
        return metrics["test/3way_1shot_acc"], objs["datamodule"]

    acc_png, dm = episodes("png")
    assert (
        dm.hparams.bit_depth == 12 and dm.hparams.image_size == 32
    )  # the run's settings, not data: synthetic
    acc_cam, dm = episodes("cam")
    assert dm.hparams.bit_depth == 12 and acc_cam == pytest.approx(acc_png)
    _, dm = episodes("cam", "data.bit_depth=null")
    assert dm.hparams.bit_depth is None
