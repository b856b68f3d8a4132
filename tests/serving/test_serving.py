"""Every checkpoint kind a run writes through ana-predict, ana-export (parity) and the app's prediction function."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from ana_lightning.app import analyse, build_app, calibration_note
from ana_lightning.export import export_model
from ana_lightning.models.classifier import SoftmaxClassifier
from ana_lightning.models.hierarchical import HierarchicalPipeline, MultiHeadClassifier
from ana_lightning.models.multilabel import SigmoidEnsemble
from ana_lightning.models.siamese import SiameseClassifier
from ana_lightning.predict import ModelInfo, Predictor, decision_rule, load_predictor, run_predict
from ana_lightning.taxonomy import Taxonomy
from ana_lightning.utils import CheckpointError

from conftest import TINY_BACKBONE, compose, write_class_images

SIZE = 32
LEAVES = ["AC-1", "AC-2", "AC-3", "AC-4", "AC-5", "AC-8", "AC-9", "AC-15", "AC-16"]
LEVEL1 = ["nuclear", "cytoplasmic"]
LEVEL2 = ["homogeneous", "speckled", "centromere", "nucleolar", "fibrillar"]
BB = {"name": TINY_BACKBONE}


def _save(model: L.LightningModule, path: Path) -> Path:
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    """One checkpoint of every kind (random weights: serving does not depend on them) and some images."""
    base = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    images = sorted(write_class_images(base / "images", {"AC-1": 3, "AC-4": 3}, size=40).rglob("*.png"))
    support = write_class_images(base / "support", {"AC-2": 2, "AC-4": 2, "AC-5": 2}, size=SIZE, seed=1)
    z: dict = {"images": images, "support": support, "base": base}
    z["softmax"] = _save(
        SoftmaxClassifier(backbone=BB, class_names=LEAVES, image_size=SIZE), base / "softmax.ckpt"
    )
    sig = SigmoidEnsemble(
        class_names=LEAVES[:4], backbones=[BB, BB], image_size=SIZE, decision_rule="per_class"
    )
    sig.thresholds.copy_(torch.tensor([0.3, 0.5, 0.6, 0.7]))
    sig.set_temperature([1.5, 2.0, 0.8, 1.0])  # a calibrated model: every path must use it
    z["sigmoid"] = _save(sig, base / "sigmoid.ckpt")
    siam = SiameseClassifier(
        backbone=BB, class_names=["AC-2", "AC-4", "AC-5"], dropout_rates=[0.1, 0.3], image_size=SIZE
    )
    z["siamese_bare"] = _save(siam, base / "siamese_bare.ckpt")
    siam.set_support_folder(support)
    siam.set_temperature(1.7)
    z["siamese"] = _save(siam, base / "siamese.ckpt")
    mh = MultiHeadClassifier(backbone=BB, class_names=LEAVES, image_size=SIZE, routing="hard")
    mh.set_temperature([1.2, 1.4, 2.0])
    z["multihead"] = _save(mh, base / "multihead.ckpt")
    z["level1"] = _save(
        SoftmaxClassifier(backbone=BB, class_names=LEVEL1, image_size=SIZE), base / "level1.ckpt"
    )
    z["level2"] = _save(
        SoftmaxClassifier(backbone=BB, class_names=LEVEL2, image_size=SIZE), base / "level2.ckpt"
    )
    z["level3"] = {
        "speckled": str(z["siamese"]),
        "nucleolar": str(
            _save(
                SoftmaxClassifier(backbone=BB, class_names=["AC-8", "AC-9"], image_size=SIZE),
                base / "nucleolar.ckpt",
            )
        ),
    }  # fibrillar: no level-3 model, ends at level 2
    z["pipeline"] = {
        "level1": str(z["level1"]),
        "level2": str(z["level2"]),
        "level3": z["level3"],
        "routing": "product",
    }
    pipe = HierarchicalPipeline.from_checkpoints(**z["pipeline"])
    z["bundle"] = pipe.write_bundle(base / "pipeline.ckpt")
    return z


KINDS = ["softmax", "sigmoid", "siamese", "siamese_folder", "multihead", "bundle", "pipeline"]


def _pipeline_keys(zoo: dict) -> list[str]:
    """ana-predict overrides for the zoo's level-1/2/3 pipeline (level 3 for speckled and nucleolar), on the CPU."""
    return [
        f"pipeline.level1={zoo['level1']}",
        f"pipeline.level2={zoo['level2']}",
        f"+pipeline.level3.speckled={zoo['level3']['speckled']}",
        f"+pipeline.level3.nucleolar={zoo['level3']['nucleolar']}",
        "progress=false",
        "device=cpu",
    ]


def _predictor(zoo: dict, kind: str) -> Predictor:
    if kind == "pipeline":
        return Predictor.from_pipeline(zoo["pipeline"], device="cpu")
    if kind == "siamese_folder":
        return Predictor.load(zoo["siamese_bare"], device="cpu", support=zoo["support"])
    return Predictor.load(zoo[kind], device="cpu")


def _check_tree(predictor: Predictor, probs: np.ndarray, label: str) -> None:
    """The predicted path is a path of the tree, with non-increasing probabilities down it."""
    tree = Taxonomy.load()
    (l1, p1), (l2, p2), (l3, p3) = predictor.path(probs, label)
    if predictor.task == "multi_label":
        assert l3 == label
        return
    assert tree.parent(l2) == l1
    if l3:
        assert tree.level_of(l3, 2) == l2 and label == l3
    else:
        assert label == l2 and p3 is None
    assert 0 <= (p3 if p3 is not None else 0) <= p2 + 1e-6 <= p1 + 2e-6 <= 1 + 3e-6


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_predicts_files_and_uploads(zoo, kind):
    p = _predictor(zoo, kind)
    preds = list(p.predict_paths(zoo["images"], batch_size=4))
    assert [x.ok for x in preds] == [True] * len(zoo["images"])
    for pred in preds:
        assert pred.probabilities.shape == (len(p.class_names),) and np.isfinite(pred.probabilities).all()
        for label in pred.labels:
            _check_tree(p, pred.probabilities, label)
    # the app's prediction function on the bytes of an upload
    preview, md, chart, probs = analyse(p, zoo["images"][0].read_bytes())
    assert preview is not None and probs is not None and len(chart) > 0
    for label in preds[0].labels:
        assert label in md
    if p.task == "hierarchical":
        assert "›" in md and md.count("p = ") >= 1  # the tree path with a probability per level
    assert "alibrat" in md  # calibrated or not: said on the page


def test_siamese_support_set_inside_or_from_a_folder(zoo):
    stored = Predictor.load(zoo["siamese"], device="cpu")
    folder = Predictor.load(zoo["siamese_bare"], device="cpu", support=zoo["support"])
    x = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    assert stored.info.extra["support_size"] == 6
    # same weights and support images: the same scores (the stored model is calibrated, T = 1.7)
    t = 1.7
    raw = folder.predict_proba(x)
    expect = np.exp(np.log(np.clip(raw, 1e-12, None)) / t)
    np.testing.assert_allclose(stored.predict_proba(x), expect / expect.sum(1, keepdims=True), atol=1e-5)
    with pytest.raises(CheckpointError, match="no support set.*support="):
        Predictor.load(zoo["siamese_bare"], device="cpu")
    with pytest.raises(ValueError, match="only Siamese"):
        Predictor.load(zoo["softmax"], device="cpu", support=zoo["support"])


def test_hierarchical_leaf_is_never_outside_the_predicted_group(zoo):
    """Random outputs (including ones where the heads disagree) always give a path of the tree."""
    rng = np.random.default_rng(0)
    for kind in ("multihead", "bundle"):
        p = _predictor(zoo, kind)
        k = len(p.class_names)
        for routing in ("hard", "product"):
            p.rule.routing = routing
            for _ in range(300):
                probs = rng.dirichlet(np.full(k, 0.3))
                (label,) = p.decide(probs)
                _check_tree(p, probs, label)
    # the fibrillar group has no level-3 model in the pipeline: its paths end at level 2
    p = _predictor(zoo, "bundle")
    names = list(p.class_names)
    probs = np.full(len(names), 1e-3)
    probs[names.index("level1:cytoplasmic")] = probs[names.index("level2:fibrillar")] = 1.0
    assert p.decide(probs) == ("fibrillar",)
    assert p.path(probs, "fibrillar")[2] == ("", None)


def test_pipeline_bundle_equals_the_pipeline_of_checkpoints(zoo):
    a, b = _predictor(zoo, "pipeline"), _predictor(zoo, "bundle")
    assert a.class_names == b.class_names and a.info.extra["routing"] == b.info.extra["routing"] == "product"
    x = np.random.default_rng(1).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(a.predict_proba(x), b.predict_proba(x), atol=1e-6)


@pytest.mark.parametrize("method", ["mean_log", "mean", "vote"])
@pytest.mark.parametrize("kind", ["multihead", "pipeline"])
def test_a_hierarchical_model_combines_many_units_level_by_level(zoo, kind, method):
    """The cells of a field (or fields of a specimen) read by a hierarchical model: each level's
    probabilities are combined on their own, the leaves as the distribution(s) they are (one leaf head,
    or one level-3 model per group), so the field routes like a cell. Before, the whole vector was
    combined at once: mean_log mixed the levels' scales, and vote gave the levels no votes at all."""
    from ana_lightning.fields.combine import combine_probs

    p = _predictor(zoo, kind)
    rule = p.rule
    x = np.random.default_rng(0).standard_normal((12, 3, SIZE, SIZE)).astype(np.float32)
    units = p.predict_proba(x)
    got = rule.combine(units, method)
    a, b = len(rule.names1), len(rule.names1) + len(rule.names2)
    blocks = [(0, a), (a, b)]
    if kind == "multihead":  # one softmax over every leaf
        blocks.append((b, units.shape[1]))
    else:  # one level-3 model per group
        for cs in rule.groups.values():
            blocks.append((blocks[-1][1], blocks[-1][1] + len(cs)))
    for i, j in blocks:
        assert units[:, i:j].sum(axis=1) == pytest.approx(np.ones(len(units)), abs=1e-4)
        assert got[i:j].sum() == pytest.approx(1.0)
        np.testing.assert_allclose(got[i:j], combine_probs(units[:, i:j], method))
    from ana_lightning.fields.predictor import FieldPredictor

    field = FieldPredictor(p, "cell", None, combine=method, min_cells=1)
    for u in units[:4]:  # identical cells: the field reads as that cell (vote: before, the first node)
        assert p.decide(field._combine(np.repeat(u[None], 3, axis=0))) == p.decide(u)
    # a specimen of such fields: its verdict is the routed path of the combined outputs, not the largest output
    from ana_lightning.fields.predictor import FieldResult
    from ana_lightning.fields.specimens import specimen_verdicts

    fields = [FieldResult(path=str(i), verdict=p.decide(u), probs=u, group="s") for i, u in enumerate(units)]
    (row,) = specimen_verdicts(fields, p, combine=method)
    assert row["verdict"] == p.decide(got)[0] and row["patterns"].split(";")[0] == row["verdict"]
    assert not any(n.startswith("level") for n in row["patterns"].split(";")), row["patterns"]


@pytest.mark.parametrize("combine", ["vote", "mean_log"])
def test_a_pipeline_reads_fields_and_specimens_as_paths_of_the_tree(zoo, tmp_path, combine):
    """ana-predict with a level-1/2/3 pipeline on whole fields, grouped by specimen: each field's verdict and
    each specimen's are routed paths of the combined outputs (levels combined on their own), with the
    path's probability and its level-1 / level-2 nodes."""
    import cv2

    from ana_lightning.fields.simulate import sim_field

    folder = tmp_path / "fields"
    for s, seed in (("spec1", 0), ("spec2", 10)):
        (folder / s).mkdir(parents=True)
        for i in range(2):
            img, _ = sim_field("AC-1", 20, seed=seed + i, size=160)
            cv2.imwrite(str(folder / s / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    overrides = [
        f"input={folder}",
        *_pipeline_keys(zoo),
        "fields=true",
        "model_nucleus_diameter_px=13",
        "group_by=folder",
        f"combine={combine}",
    ]
    cfg = compose("predict", overrides, output_dir=tmp_path / "run")
    summary = run_predict(cfg)
    assert summary.n_images == 4 and summary.n_failed == 0
    p = load_predictor(cfg, "ana-predict")  # the pipeline as ana-predict built it (its routing: hard)
    tree = Taxonomy.load()
    with open(summary.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    a, b = len(p.rule.names1), len(p.rule.names1) + len(p.rule.names2)
    for r in rows:
        probs = np.array([float(r[f"p_{c}"]) for c in p.class_names])
        assert probs[:a].sum() == pytest.approx(1.0, abs=1e-4) and probs[a:b].sum() == pytest.approx(
            1.0, abs=1e-4
        )
        assert r["verdict"] == p.decide(probs)[0]
        assert (r["level1"], r["level2"]) == p.hierarchy(r["verdict"])[:2] and r["level1"] == tree.parent(
            r["level2"]
        )
        assert float(r["confidence"]) == pytest.approx(p.rule.confidence(probs, r["verdict"]), abs=1e-5)
    with open(summary.csv_path.parent / "specimens.csv", newline="") as f:
        specimens = {s["specimen"]: s for s in csv.DictReader(f)}
    assert set(specimens) == {"spec1", "spec2"}
    for s in specimens.values():
        probs = np.array([float(s[f"p_{c}"]) for c in p.class_names])
        assert s["top1"] == p.decide(probs)[0] == s["patterns"].split(";")[0]


def test_calibrated_models_serve_their_temperature(zoo):
    p = Predictor.load(zoo["sigmoid"], device="cpu")
    assert p.temperature == pytest.approx([1.5, 2.0, 0.8, 1.0])
    model = SigmoidEnsemble.load_from_checkpoint(zoo["sigmoid"], weights_only=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want = (model.eval()(x) / torch.tensor([1.5, 2.0, 0.8, 1.0])).sigmoid().numpy()
    np.testing.assert_allclose(p.predict_proba(x.numpy()), want, atol=1e-6)


@pytest.mark.parametrize(
    "kind", [k if k == "multihead" else pytest.param(k, marks=pytest.mark.slow) for k in KINDS]
)
def test_every_kind_exports_to_onnx_with_parity(zoo, kind, tmp_path):
    kw = {"pipeline": zoo["pipeline"]} if kind == "pipeline" else {}
    ckpt = None if kind == "pipeline" else zoo["siamese_bare" if kind == "siamese_folder" else kind]
    if kind == "siamese_folder":
        kw["support"] = zoo["support"]
    result = export_model(ckpt, format="onnx", output=tmp_path / "m.onnx", **kw)
    assert result.max_abs_diff <= 1e-4
    exported = Predictor.load(result.model_path, device="cpu")
    reference = _predictor(zoo, kind)
    assert exported.task == reference.task and exported.class_names == reference.class_names
    x = np.random.default_rng(2).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    got, want = exported.predict_proba(x), reference.predict_proba(x)
    assert np.abs(got - want).max() <= 1e-4
    for g, w in zip(got, want, strict=True):
        assert exported.decide(g) == reference.decide(w)
    md = analyse(exported, zoo["images"][0].read_bytes())[1]
    assert (
        exported.decide(exported.predict_image(np.zeros((40, 40, 3), np.uint8)).probabilities)[0] in md or md
    )
    card = result.card_path.read_text()
    assert "Intended use" in card and "alibrat" in card
    if kind == "pipeline":
        assert (tmp_path / "m_pipeline.ckpt").is_file()  # the bundle the file was exported from


@pytest.mark.slow
def test_torchscript_export_of_a_pipeline(zoo, tmp_path):
    result = export_model(zoo["bundle"], format="torchscript", output=tmp_path / "p.torchscript.pt")
    exported = Predictor.load(result.model_path, device="cpu")
    assert exported.task == "hierarchical" and result.max_abs_diff <= 1e-4
    pred = exported.predict_image(np.full((40, 40, 3), 90, np.uint8))
    _check_tree(exported, pred.probabilities, pred.labels[0])


def test_ana_predict_with_pipeline_keys_writes_the_path_with_probabilities(zoo, tmp_path):
    overrides = [f"input={zoo['images'][0].parent.parent}", *_pipeline_keys(zoo)]
    cfg = compose("predict", overrides, output_dir=tmp_path / "run")
    summary = run_predict(cfg)
    assert summary.n_images == len(zoo["images"]) and summary.n_failed == 0
    with open(summary.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    tree = Taxonomy.load()
    for r in rows:
        assert r["level1"] == tree.parent(r["level2"])
        assert r["pred"] == (r["level3"] or r["level2"])
        assert float(r["level1_prob"]) >= float(r["level2_prob"]) >= float(r["level3_prob"] or 0)
    doc = json.loads(summary.json_path.read_text())
    assert set(doc["predictions"][0]["hierarchy"][0]) == {
        "level1",
        "level2",
        "level3",
        "level1_prob",
        "level2_prob",
        "level3_prob",
    }
    with pytest.raises(ValueError, match="either ckpt_path or pipeline"):
        run_predict(
            compose("predict", [*overrides, f"ckpt_path={zoo['softmax']}"], output_dir=tmp_path / "run2")
        )


def test_hierarchical_rule_needs_its_level_names():
    info = ModelInfo(task="hierarchical", class_names=("AC-1",), image_size=8, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(CheckpointError, match="level1_names"):
        decision_rule(info)


def test_app_page_shows_intended_use_and_calibration(zoo):
    import gradio as gr

    from ana_lightning.export import INTENDED_USE

    demo = build_app(Predictor.load(zoo["sigmoid"], device="cpu"))
    text = "\n".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown))
    assert (
        INTENDED_USE in text
        and "calibrated** on the validation split" in text
        and "0.80–2.00 per class" in text
    )
    bare = Predictor.load(zoo["softmax"], device="cpu")
    assert "not calibrated" in calibration_note(bare)
    assert "level1 T = " in calibration_note(
        _predictor(zoo, "bundle")
    ) or "not calibrated" in calibration_note(_predictor(zoo, "bundle"))


def test_model_card_has_the_runs_real_data_figures_and_calibration_error(trained_checkpoint, tmp_path):
    _, run, best = trained_checkpoint
    result = export_model(best, format="torchscript", output=tmp_path / "m.torchscript.pt")
    card = result.card_path.read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    mca = (
        f"{metrics['test/mca']:.4f} [{metrics['test/mca_ci95_low']:.4f}, {metrics['test/mca_ci95_high']:.4f}]"
    )
    assert "## Real-data figures" in card and f"| `test/mca` | {mca} |" in card  # with its bootstrap interval
    assert "## Calibration" in card and "temperature-scaled" in card
    assert f"| as served | {metrics['test/ece']:.4f} |" in card
    assert f"| uncalibrated | {metrics['test/ece_uncalibrated']:.4f} |" in card


def test_model_card_of_a_synthetic_run_says_it_has_no_real_data_figure(tmp_path):
    from ana_lightning.export import _real_data_section

    (tmp_path / "config_resolved.yaml").write_text(
        "data:\n  _target_: ana_lightning.data.datamodules.SyntheticDataModule\n"
    )
    text = "\n".join(_real_data_section(tmp_path, {"test/mca": 0.9}))
    assert "None" in text and "synthetic" in text and "0.9" not in text


def test_model_card_counts_a_contest_level_runs_classes(tmp_path):
    """A contest-level run's manifest labels are tree nodes ("speckled"), which are not AC codes: the card
    maps them to the model's classes through classes.csv (it said "split manifest unreadable" before)."""
    from types import SimpleNamespace

    from ana_lightning.model_card import _training_data_section

    run = tmp_path / "run"
    run.mkdir()
    (run / "config_resolved.yaml").write_text(
        "data:\n  _target_: x.HEp2HierarchyDataModule\n  split_fractions: [1, 0, 0]\n"
    )
    (run / "classes.csv").write_text(
        "class,tree_label,level1,level2,code\nHomogeneous,AC-1,nuclear,homogeneous,AC-1\nSpeckled,speckled,nuclear,speckled,\n"
    )
    rows = [("a.png", "AC-1", "g1"), ("b.png", "speckled", "g2"), ("c.png", "speckled", "g3")]
    (run / "split_manifest.csv").write_text(
        "path,label,split,sha256,group\n"
        + "".join(f"{p},{lab},train,{i},{g}\n" for i, (p, lab, g) in enumerate(rows))
    )
    (run / "grouping.txt").write_text(
        "reader: i3a2014\ngrouping: no specimen column: 3 groups of consecutive IDs\n"
    )
    card = "\n".join(_training_data_section(run, SimpleNamespace(class_names=["Homogeneous", "Speckled"])))
    assert "unreadable" not in card and "grouped by patient" not in card
    assert "| Homogeneous | 1 | 0 | 0 |" in card and "| Speckled | 2 | 0 | 0 |" in card
    assert "| groups | 3 | 0 | 0 |" in card and "**No validation split**" in card
    assert "- Groups: no specimen column: 3 groups of consecutive IDs (`grouping.txt`)" in card


def test_model_card_per_class_figures_keep_the_models_class_names(tmp_path):
    """The per-class table names each output as the model does, with the ICAP label a contest class stands for."""
    from ana_lightning.model_card import _metrics_section

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"test/mca": 0.5}')
    (run / "test_per_class.csv").write_text(
        "class,name,precision,recall,f1,support\n"
        "AC-1,AC-1 Nuclear homogeneous,0.5,0.5,0.5,20\n"
        "Speckled,ICAP node *speckled* (AC-2; AC-4),0.5,0.25,0.3,20\n"
    )
    card = "\n".join(_metrics_section(run, run / "checkpoints" / "m.ckpt"))
    assert "| AC-1 Nuclear homogeneous | 0.500 | 0.500 |" in card
    assert "| Speckled (ICAP node *speckled* (AC-2; AC-4)) | 0.500 | 0.250 |" in card


def test_model_card_names_the_icap_node_of_each_contest_class_and_the_test_groups(tmp_path):
    """A lab reads what each output means (Speckled = the ICAP speckled node, AC-2/4/5/29) and that the
    figure is on groups never trained on; a class the run does not describe keeps empty cells."""
    from ana_lightning.model_card import _classes_section, _real_data_section
    from ana_lightning.taxonomy import Taxonomy

    run = tmp_path / "run"
    run.mkdir()
    (run / "classes.csv").write_text(
        "class,tree_label,level1,level2,code\nHomogeneous,AC-1,nuclear,homogeneous,AC-1\n"
        "Speckled,speckled,nuclear,speckled,\nGolgi,AC-22,cytoplasmic,polar/Golgi-like,AC-22\n"
    )
    table = "\n".join(
        _classes_section(["Homogeneous", "Speckled", "Golgi", "Other", "AC-3"], Taxonomy.load(), run)
    )
    assert "| 0 | Homogeneous | AC-1 Nuclear homogeneous | nuclear | homogeneous |" in table
    assert "| 1 | Speckled | ICAP node *speckled* (AC-2, AC-4, AC-5, AC-29) | nuclear | speckled |" in table
    assert "| 2 | Golgi | AC-22 Polar/Golgi-like | cytoplasmic | polar/Golgi-like |" in table
    assert "| 3 | Other | | | |" in table and "| 4 | AC-3 | Centromere | nuclear | centromere |" in table
    (run / "config_resolved.yaml").write_text(
        "data:\n  _target_: x.HEp2HierarchyDataModule\n  root: /cells\n"
    )
    (run / "split_manifest.csv").write_text(
        "path,label,split,sha256,group\n"
        + "".join(f"c{i}.png,AC-1,{'test' if i < 4 else 'train'},{i},s{i // 2}\n" for i in range(8))
    )
    m = {"test/mca": 0.72, "test/mca_ci95_low": 0.61, "test/mca_ci95_high": 0.84, "test/acc": 0.7}
    clean = "\n".join(_real_data_section(run, {**m, "test/shared_groups_with_train": 0.0}))
    assert (
        "held-out test split, 2 groups (specimens, slides or patients), none of which was trained on" in clean
    )
    assert "| `test/mca` | 0.7200 [0.6100, 0.8400] |" in clean and "| `test/acc` | 0.7000 |" in clean
    leaky = "\n".join(_real_data_section(run, {**m, "test/shared_groups_with_train": 1.0}))
    assert "**1 of them also in training** (not a figure on unseen groups)" in leaky


def test_a_pipeline_bundle_carries_its_models_bit_depth(zoo, tmp_path, caplog):
    """eval_hierarchy's pipeline.ckpt stores its members' data.bit_depth (ana-predict / ana-app / ana-export
    read files at it); members trained at different depths give a bundle that stores none, with a warning."""
    from ana_lightning.fields.mode import export_scale, training_scale

    def at(depth: int, name: str) -> str:
        ckpt = torch.load(
            zoo["level1" if name == "level1" else "level2"], map_location="cpu", weights_only=False
        )
        ckpt["datamodule_hyper_parameters"] = {"bit_depth": depth}
        torch.save(ckpt, tmp_path / f"{name}_{depth}.ckpt")
        return str(tmp_path / f"{name}_{depth}.ckpt")

    same = HierarchicalPipeline.from_checkpoints(level1=at(12, "level1"), level2=at(12, "level2"))
    bundle = same.write_bundle(tmp_path / "same.ckpt")
    assert training_scale(bundle)["bit_depth"] == 12 and export_scale(bundle) == {"bit_depth": 12}
    mixed = HierarchicalPipeline.from_checkpoints(level1=at(12, "level1"), level2=at(14, "level2"))
    with caplog.at_level("WARNING", logger="ana_lightning.models.hierarchy_pipeline"):
        bundle = mixed.write_bundle(tmp_path / "mixed.ckpt")
    assert training_scale(bundle)["bit_depth"] is None and "different data.bit_depth" in caplog.text
