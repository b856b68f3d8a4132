"""ana-eval reuses the training run's data settings; cross-dataset evaluation through the ICAP tree."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from contest_fixtures import ICPR2012_CLASSES, write_i3a2014_cells, write_icpr2012_contest

from ana_lightning.cross_dataset import score_cross_dataset, shared_classes
from ana_lightning.taxonomy import Taxonomy

from conftest import TINY_BACKBONE, compose

I3A_NODES = {
    "Homogeneous": "AC-1",
    "Speckled": "speckled",
    "Nucleolar": "nucleolar",
    "Centromere": "AC-3",
    "NuMem": "nuclear envelope",
    "Golgi": "AC-22",
}
FAST = [
    "data.image_size=32",
    "trainer.max_epochs=1",
    "callbacks.rich_progress_bar=null",
    "+trainer.enable_model_summary=false",
]


def test_shared_classes_meet_on_the_tree():
    tree = Taxonomy.load()
    icpr = ["AC-1", "AC-4", "AC-5", "nucleolar", "AC-3", "cytoplasmic"]
    shared = shared_classes(I3A_NODES, icpr, tree)
    assert [(s.node, s.model_classes, s.data_labels) for s in shared] == [
        ("AC-1", ["Homogeneous"], ["AC-1"]),
        ("speckled", ["Speckled"], ["AC-4", "AC-5"]),
        ("nucleolar", ["Nucleolar"], ["nucleolar"]),
        ("AC-3", ["Centromere"], ["AC-3"]),
    ]
    # Golgi (AC-22) and ICPR's cytoplasmatic meet only at level 1: shared when min_level=1
    loose = shared_classes(I3A_NODES, icpr, tree, min_level=1)
    assert any(s.node == "cytoplasmic" and s.model_classes == ["Golgi"] for s in loose)
    # the other way round: a six-class ICPR model on I3A cells
    icpr_nodes = dict(zip(ICPR2012_CLASSES, icpr, strict=True))
    back = shared_classes(icpr_nodes, list(I3A_NODES.values()), tree)
    sp = next(s for s in back if s.node == "speckled")
    assert sp.model_classes == ["fine_speckled", "coarse_speckled"] and sp.data_labels == ["speckled"]


def test_scoring_counts_only_shared_classes():
    tree = Taxonomy.load()
    classes = list(I3A_NODES)
    truth = ["AC-1", "AC-1", "AC-4", "AC-5", "cytoplasmic"]
    # predictions: Homogeneous, NuMem (wrong: no such class in the data), Speckled, Speckled, Golgi (unscored)
    picks = ["Homogeneous", "NuMem", "Speckled", "Speckled", "Golgi"]
    probs = np.full((5, 6), 0.01)
    for i, c in enumerate(picks):
        probs[i, classes.index(c)] = 0.9
    probs[1, classes.index("Homogeneous")] = 0.5  # second choice: right among the shared outputs
    metrics, details = score_cross_dataset(probs, classes, I3A_NODES, truth, tree)
    assert metrics["test/scored_images"] == 4 and metrics["test/scored_classes"] == 2
    assert metrics["test/acc"] == pytest.approx(3 / 4)
    assert metrics["test/mca"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["test/mca_shared_outputs"] == pytest.approx(1.0)
    assert details["unscored"] == {"cytoplasmic": {"Golgi": 1}}
    # model classes with no counterpart among these images
    assert details["unmatched_model_classes"] == ["Nucleolar", "Centromere", "NuMem", "Golgi"]
    with pytest.raises(ValueError, match="share no tree node"):
        score_cross_dataset(probs[:1], classes, I3A_NODES, ["cytoplasmic"], tree)


@pytest.fixture(scope="module")
def icpr_model(tmp_path_factory):
    from ana_lightning.pipeline import train

    base = tmp_path_factory.mktemp("icpr_model")
    root = write_icpr2012_contest(base / "icpr", train_per_class=4, test_per_class=2)
    run = base / "runs" / "r1"
    train(
        compose(
            "train",
            ["experiment=icpr2012_cells", f"data.root={root}", f"model.backbone.name={TINY_BACKBONE}", *FAST],
            output_dir=run,
        )
    )
    return root, Path((run / "best_checkpoint.txt").read_text().strip())  # the kept (last) epoch


def test_eval_reuses_the_training_runs_data_settings(icpr_model, tmp_path):
    from ana_lightning.pipeline import evaluate

    _, ckpt = icpr_model
    other = write_icpr2012_contest(tmp_path / "other_icpr", train_per_class=2, test_per_class=2, seed=3)
    # no data=… and no reader/level/mask typed: all from the checkpoint (before: data=synthetic)
    cfg = compose(
        "eval", [f"ckpt_path={ckpt}", f"data.root={other}", "split=all"], output_dir=tmp_path / "ev"
    )
    metrics, objs = evaluate(cfg)
    dm = objs["datamodule"]
    assert type(dm).__name__ == "HEp2HierarchyDataModule"
    assert (dm.reader, dm.level, dm.mask, dm.hparams.image_size) == ("icpr2012", "contest", "channel", 32)
    assert dm.class_names == list(ICPR2012_CLASSES) and objs["split"] == "all"
    assert str(dm.root) == str(other) and dm.masks  # the new folder, its masks applied
    assert "test/mca" in metrics and metrics["test/images_in_training_split"] == 0.0
    assert "images: 24" in (tmp_path / "ev" / "evaluated.txt").read_text()


def test_eval_of_a_whole_folder_does_not_warn_about_classes_its_splits_lack(icpr_model, tmp_path, caplog):
    """split=all scores every image as one set: that the folder's own test split lacks a class is no news
    (it was a WARNING "the test split has no image of …" before), nor that its validation split is empty."""
    from ana_lightning.pipeline import evaluate

    _, ckpt = icpr_model
    other = write_icpr2012_contest(tmp_path / "other_icpr", train_per_class=2, test_per_class=2, seed=3)
    gone = []
    for table in ("gt_test.csv", "test.csv"):  # no centromere cell in the official test folder
        path = other / "test" / table
        lines = path.read_text().splitlines()
        if table == "gt_test.csv":
            gone = [ln.split(";")[0] for ln in lines[1:] if ln.split(";")[1] == "centromere"]
        path.write_text("\n".join(ln for ln in lines if ln.split(";")[0] not in gone) + "\n")
    for i in gone:
        for f in (other / "test").glob(f"{i}*.png"):
            f.unlink()
    assert gone
    with caplog.at_level(logging.WARNING):
        metrics, objs = evaluate(
            compose(
                "eval", [f"ckpt_path={ckpt}", f"data.root={other}", "split=all"], output_dir=tmp_path / "ev"
            )
        )
    assert objs["split"] == "all" and "test/mca" in metrics
    # training still says these: tests/models/test_cells.py, tests/data/test_splits.py
    assert "split has no image of" not in caplog.text and "split(s) are empty" not in caplog.text


def test_eval_on_the_training_data_says_so(icpr_model, tmp_path, caplog):
    from ana_lightning.pipeline import evaluate

    root, ckpt = icpr_model
    with caplog.at_level(logging.WARNING):
        metrics, objs = evaluate(
            compose("eval", [f"ckpt_path={ckpt}", "split=all"], output_dir=tmp_path / "all")
        )
    n_train = len(objs["datamodule"].splits["train"])
    assert str(objs["datamodule"].root) == str(root)  # no data key typed: the training run's folder
    assert metrics["test/images_in_training_split"] == n_train > 0
    assert f"{n_train} OF THE 36 EVALUATED IMAGES WERE IN THE MODEL'S TRAINING SPLIT" in caplog.text
    # split=auto: the run's own (official) test split, clean
    metrics, objs = evaluate(compose("eval", [f"ckpt_path={ckpt}"], output_dir=tmp_path / "auto"))
    assert objs["split"] == "test" and metrics["test/images_in_training_split"] == 0.0
    assert metrics["test/shared_groups_with_train"] == 0.0


def test_cross_dataset_eval_through_the_tree(tmp_path):
    from ana_lightning.pipeline import evaluate, train

    i3a = write_i3a2014_cells(tmp_path / "i3a", per_class=6)
    run = tmp_path / "runs" / "i3a"
    train(
        compose(
            "train",
            [
                "data=hierarchy",
                "data.reader=i3a2014",
                "data.level=contest",
                f"data.root={i3a}",
                "data.split_fractions=[0.34,0.33,0.33]",
                f"model.backbone.name={TINY_BACKBONE}",
                *FAST,
            ],
            output_dir=run,
        )
    )
    ckpt = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    icpr = write_icpr2012_contest(tmp_path / "icpr")
    out = tmp_path / "cross"
    cfg = compose(
        "eval",
        [f"ckpt_path={ckpt}", "data=hierarchy", "data.reader=icpr2012", f"data.root={icpr}"],
        output_dir=out,
    )
    metrics, objs = evaluate(cfg)
    assert (
        metrics["test/scored_classes"] == 4 and metrics["test/scored_images"] == 30
    )  # 36 cells, 6 cytoplasmatic
    assert 0.0 <= metrics["test/mca"] <= 1.0
    report = (out / "cross_dataset_report.md").read_text()
    assert "| speckled (2) | Speckled | fine_speckled (AC-4), coarse_speckled (AC-5) | 12 |" in report
    assert "| cytoplasmatic (cytoplasmic) | 6 |" in report  # not scored, with how it was predicted
    assert "NuMem (nuclear envelope), Golgi (AC-22)" in report
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/scored_images"] == 30
    rows = (out / "test_predictions.csv").read_text().splitlines()
    assert len(rows) == 37 and rows[0].startswith("path,true_label,true_class,scored")
    assert objs["datamodule"].reader == "icpr2012" and objs["datamodule"].mask == "apply"
    assert Path(objs["datamodule"].root) == icpr

    # The validation split of a manifest: val/* figures and val_predictions.csv, never test ones.
    from ana_lightning.data.splits.manifest import save_manifest

    manifest = save_manifest(objs["datamodule"].splits, tmp_path / "icpr_split.csv")
    n_val = len(objs["datamodule"].splits["val"])
    out_val = tmp_path / "cross_val"
    cfg = compose(
        "eval",
        [
            f"ckpt_path={ckpt}",
            "data=hierarchy",
            "data.reader=icpr2012",
            f"data.root={icpr}",
            f"data.split_manifest={manifest}",
            "split=val",
        ],
        output_dir=out_val,
    )
    metrics, objs = evaluate(cfg)
    assert objs["split"] == "val" and 0 < n_val < 36
    assert not any(k.startswith("test/") for k in metrics)
    assert 0 < metrics["val/scored_images"] <= n_val and 0.0 <= metrics["val/mca"] <= 1.0
    assert json.loads((out_val / "metrics.json").read_text())["val/mca"] == pytest.approx(metrics["val/mca"])
    assert not (out_val / "test_predictions.csv").exists()
    assert len((out_val / "val_predictions.csv").read_text().splitlines()) == n_val + 1
    assert "split: val" in (out_val / "evaluated.txt").read_text()
    assert "val/mca" in (out_val / "cross_dataset_report.md").read_text()

    # What a lab's prediction files and ana-app say of a contest class: the ICAP node it stands for, from
    # the checkpoint (and from its ONNX export's metadata, which carries the same class_nodes).
    import numpy as np

    from ana_lightning.predict import Predictor

    p = Predictor.load(ckpt)
    assert p.hierarchy("Homogeneous") == ("nuclear", "homogeneous", "AC-1")
    assert p.hierarchy("Speckled") == ("nuclear", "speckled", "")
    assert p.hierarchy("Golgi") == ("cytoplasmic", "polar/Golgi-like", "AC-22")
    probs = np.full(len(p.class_names), 1 / len(p.class_names))
    (l1, p1), (l2, p2), _ = p.path(probs, "Speckled")  # the nodes' probabilities: sums over their classes
    nuclear = sum(1 for c in p.class_names if p.hierarchy(c)[0] == "nuclear")
    assert (l1, l2) == ("nuclear", "speckled") and p1 == pytest.approx(nuclear / len(p.class_names))
    assert p2 == pytest.approx(1 / len(p.class_names)) and 0 < nuclear < len(p.class_names)
