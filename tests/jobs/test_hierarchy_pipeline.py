"""Hierarchical routing (consistency of the predicted path), the multi-head model, and the paper
pipeline end to end: paper_level1/2/3 runs on synthetic data, then ana-eval's hierarchical job."""

import csv
import json

import pytest
import torch

from ana_lightning.hierarchy_jobs import evaluate_hierarchy, train_level3
from ana_lightning.models.hierarchical import TreePaths, route
from ana_lightning.pipeline import train
from ana_lightning.taxonomy import Taxonomy

from conftest import TINY_BACKBONE, compose

TREE = Taxonomy.load()
L1, L2 = list(TREE.nodes(1)), list(TREE.nodes(2))


def _random_probs(n, k, gen):
    return torch.rand(n, k, generator=gen).pow(3).softmax(-1)


def _check_consistent(pred, paths):
    for l1, l2, leaf in pred.rows():
        assert TREE.parent(l2) == l1
        if leaf is None:
            assert l2 in paths and len(TREE.children(l2)) > 1  # a group without a level-3 model
        else:
            assert TREE.level_of(leaf, 2) == l2


@pytest.mark.parametrize("routing", ["hard", "product"])
def test_predicted_leaf_is_always_a_child_of_the_predicted_level2_node(routing):
    gen = torch.Generator().manual_seed(0)
    level3 = {
        "speckled": ["AC-2", "AC-4", "AC-5", "AC-29"],
        "nucleolar": ["AC-8", "AC-9", "AC-10"],
        "fibrillar": ["AC-15", "AC-17"],
    }
    paths = TreePaths(TREE, level3)
    n = 400
    # level-1/level-2 models that know only some nodes, in their own class order
    names1 = ["mitotic", "nuclear", "cytoplasmic"]
    names2 = L2[::-1][:15]
    p3 = {g: (_random_probs(n, len(c), gen), c) for g, c in level3.items()}
    pred = route(
        paths, _random_probs(n, 3, gen), names1, _random_probs(n, len(names2), gen), names2, p3, routing
    )
    assert len(pred) == n
    _check_consistent(
        pred,
        {"discrete nuclear dots", "nuclear envelope", "pleomorphic", "cytoplasmic speckled", "unconfirmed"},
    )
    assert set(pred.level1) <= set(names1)
    assert (pred.score >= 0).all() and (pred.score <= 1).all()


def test_product_routing_maximises_the_path_probability_and_hard_routing_commits_early():
    paths = TreePaths(TREE, {"speckled": ["AC-2", "AC-4"], "fibrillar": ["AC-15", "AC-16", "AC-17"]})
    # level 1 slightly prefers nuclear; level 2 is sure it is fibrillar (cytoplasmic)
    p1 = torch.tensor([[0.0, 0.55, 0.45, 0.0]])
    p2 = torch.zeros(1, len(L2))
    p2[0, L2.index("speckled")] = 0.3
    p2[0, L2.index("homogeneous")] = 0.3
    p2[0, L2.index("fibrillar")] = 0.4
    p3 = {
        "speckled": (torch.tensor([[0.5, 0.5]]), ["AC-2", "AC-4"]),
        "fibrillar": (torch.tensor([[0.1, 0.8, 0.1]]), ["AC-15", "AC-16", "AC-17"]),
    }
    hard = route(paths, p1, L1, p2, L2, p3, "hard")
    prod = route(paths, p1, L1, p2, L2, p3, "product")
    assert hard.rows() == [("nuclear", "homogeneous", "AC-1")]  # nuclear first, then its best child
    assert prod.rows() == [("cytoplasmic", "fibrillar", "AC-16")]  # 0.45 · 1.0 · 0.8 beats 0.55 · 0.5 · 1
    # brute force: the product path is the best of all complete paths
    best = max(
        ((a, b, c) for a, b, c in paths.paths if c),
        key=lambda t: float(p1[0, L1.index(t[0])]) * _cond(p2, t[1]) * _leaf(p3, t[1], t[2]),
    )
    assert prod.rows()[0] == best


def _cond(p2, g):
    sibs = [h for h in L2 if TREE.parent(h) == TREE.parent(g)]
    total = sum(float(p2[0, L2.index(h)]) for h in sibs)
    return 1.0 if len(sibs) == 1 else float(p2[0, L2.index(g)]) / total if total else 0.0


def _leaf(p3, g, leaf):
    if len(TREE.children(g)) == 1:
        return 1.0
    probs, names = p3[g]
    return float(probs[0, names.index(leaf)] / probs[0].sum())


def test_unknown_leaf_of_a_level3_model_is_refused():
    with pytest.raises(ValueError, match="AC-8.*not leaves of 'speckled'"):
        TreePaths(TREE, {"speckled": ["AC-2", "AC-8"]})


# ------------------------------------------------------------------------------------------- end to end
def _common(base):
    return [
        f"data.cache_dir={base}/synthetic",
        "data.n_per_class=4",
        "data.render_size=64",
        "data.image_size=32",
        "data.batch_size=16",
        f"model.backbone.name={TINY_BACKBONE}",
        "trainer.max_epochs=1",
        "+trainer.enable_model_summary=false",
        "callbacks.rich_progress_bar=null",
        "callbacks.early_stopping=null",
    ]


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("paper")
    runs = {}
    for exp in ("paper_level1", "paper_level2"):
        runs[exp] = base / "outputs" / exp / "runs" / "r"
        train(compose("train", [f"experiment={exp}", *_common(base)], output_dir=runs[exp]))
    runs["paper_level3"] = base / "outputs" / "paper_level3" / "runs" / "r"
    metrics, objs = train_level3(
        compose(
            "train",
            ["experiment=paper_level3", *_common(base), "groups=[speckled,fibrillar]"],
            output_dir=runs["paper_level3"],
        )
    )
    return base, runs, metrics, objs


def test_paper_level3_writes_one_subfolder_per_group(paper_runs):
    _, runs, metrics, objs = paper_runs
    run = runs["paper_level3"]
    assert set(objs["groups"]) == {"speckled", "fibrillar"}
    for slug in ("speckled", "fibrillar"):
        assert (run / slug / "best_checkpoint.txt").exists() and (run / slug / "metrics.json").exists()
    saved_all = json.loads((run / "metrics.json").read_text())
    assert {"test/speckled/mca", "test/fibrillar/mca", "test/mca_mean_over_groups"} <= set(saved_all)
    assert "test/mca" not in saved_all  # a mean of the groups' MCAs is not an MCA over all leaves
    assert saved_all["test/mca_mean_over_groups"] == pytest.approx(
        (saved_all["test/speckled/mca"] + saved_all["test/fibrillar/mca"]) / 2
    )
    assert "fibrillar" in (run / "level3_models.yaml").read_text() and (run / "level3_report.md").exists()
    saved = json.loads((run / "speckled" / "metrics.json").read_text())
    assert saved["test/mca"] == pytest.approx(metrics["test/speckled/mca"])


def test_hierarchical_evaluation_of_the_validation_split_names_its_figures_val(paper_runs, tmp_path):
    _, runs, _, _ = paper_runs
    out = tmp_path / "eval_val"
    levels = [f"pipeline.level{lv}={runs[f'paper_level{lv}']}" for lv in (1, 2, 3)]
    metrics, objs = evaluate_hierarchy(compose("eval_hierarchy", [*levels, "split=val"], output_dir=out))
    assert objs["split"] == "val" and "val/level1_mca" in metrics
    assert not [k for k in json.loads((out / "metrics.json").read_text()) if k.startswith("test/")]
    rows = list(csv.DictReader(open(out / "val_paths.csv")))
    assert len(rows) == len(objs["datamodule"].splits["val"]) > 0 and not list(out.glob("test_*"))


@pytest.mark.parametrize("routing", ["hard", "product"])
def test_hierarchical_evaluation_writes_per_level_reports_and_paths(paper_runs, tmp_path, routing):
    _, runs, _, _ = paper_runs
    out = tmp_path / "eval"
    metrics, objs = evaluate_hierarchy(
        compose(
            "eval_hierarchy",
            [
                f"pipeline.level1={runs['paper_level1']}",
                f"pipeline.level2={runs['paper_level2']}",
                f"pipeline.level3={runs['paper_level3']}",
                f"pipeline.routing={routing}",
            ],
            output_dir=out,
        )
    )
    assert objs["split"] == "test"  # the level-1 run's split manifest, on the data it was trained on
    for lv in (1, 2, 3):
        assert (out / f"test_level{lv}_confusion_matrix.png").exists() and (
            out / f"test_level{lv}_per_class.csv"
        ).exists()
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    rows = list(csv.DictReader(open(out / "test_paths.csv")))
    # each level's accuracy and MCA are scikit-learn's on the written true and predicted paths
    from sklearn.metrics import accuracy_score, recall_score

    for lv, (t_col, p_col) in zip(
        (1, 2, 3),
        (("true_level1", "pred_level1"), ("true_level2", "pred_level2"), ("true_leaf", "pred_leaf")),
        strict=True,
    ):
        y = [r[t_col] for r in rows if r[t_col]]
        p = [r[p_col] or "<none>" for r in rows if r[t_col]]
        assert metrics[f"test/level{lv}_acc"] == pytest.approx(accuracy_score(y, p))
        assert metrics[f"test/level{lv}_mca"] == pytest.approx(
            recall_score(y, p, labels=sorted(set(y)), average="macro")
        )
    assert len(rows) == len(objs["datamodule"].splits["test"]) > 0
    for r in rows:
        assert TREE.parent(r["pred_level2"]) == r["pred_level1"]
        if r["pred_leaf"]:
            assert TREE.level_of(r["pred_leaf"], 2) == r["pred_level2"]
        else:  # groups without a level-3 model stop at level 2
            assert (
                r["pred_level2"] not in ("speckled", "fibrillar") and len(TREE.children(r["pred_level2"])) > 1
            )
        assert TREE.level_of(r["true_leaf"], 2) == r["true_level2"]
    # the level-1 accuracy is the level-1 checkpoint's own argmax under hard routing
    level1_test = json.loads((runs["paper_level1"] / "metrics.json").read_text())["test/acc"]
    if routing == "hard":
        assert metrics["test/level1_acc"] == pytest.approx(level1_test, abs=1e-6)


def test_multihead_model_trains_and_routes_consistently(tmp_path):
    run = tmp_path / "outputs" / "paper_multihead" / "runs" / "r"
    metrics, objs = train(
        compose("train", ["experiment=paper_multihead", *_common(tmp_path)], output_dir=run)
    )
    for lv in (1, 2, 3):
        assert f"test/level{lv}_mca" in metrics
    rows = list(csv.DictReader(open(run / "test_paths.csv")))
    assert len(rows) == len(objs["datamodule"].splits["test"])
    for r in rows:
        assert (
            TREE.parent(r["pred_level2"]) == r["pred_level1"]
            and TREE.level_of(r["pred_leaf"], 2) == r["pred_level2"]
        )
    out = tmp_path / "eval"
    m, _ = evaluate_hierarchy(
        compose("eval_hierarchy", [f"pipeline.multihead={run}", "pipeline.routing=product"], output_dir=out)
    )
    assert m["test/level3_acc"] == pytest.approx(metrics["test/level3_acc"], abs=1e-6)


def test_ana_eval_of_one_level3_group_checkpoint(paper_runs, tmp_path):
    from ana_lightning.pipeline import evaluate

    base, runs, metrics, _ = paper_runs
    best = (runs["paper_level3"] / "speckled" / "best_checkpoint.txt").read_text().strip()
    cfg = compose(
        "eval",
        [
            "data=hierarchy",
            "data.level=3",
            f"ckpt_path={best}",
            *_common(base)[:4],
            "callbacks.rich_progress_bar=null",
        ],
        output_dir=tmp_path / "eval",
    )
    m, objs = evaluate(cfg)
    assert objs["split"] == "test" and objs["datamodule"].class_names == ["AC-2", "AC-4", "AC-5", "AC-29"]
    assert m["test/mca"] == pytest.approx(metrics["test/speckled/mca"], abs=1e-6)


def test_a_run_folder_resolves_to_its_one_best_or_final_checkpoint(tmp_path):
    from ana_lightning.models.hierarchical import resolve_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="0 best-"):
        resolve_checkpoint(tmp_path / "run")
    (ckpts / "final-epoch009.ckpt").write_bytes(b"x")  # a run without a validation split
    assert resolve_checkpoint(tmp_path / "run") == ckpts / "final-epoch009.ckpt"
    (ckpts / "best-epoch004.ckpt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path / "run") == ckpts / "best-epoch004.ckpt"
    (tmp_path / "run" / "best_checkpoint.txt").write_text(str(ckpts / "final-epoch009.ckpt") + "\n")
    assert resolve_checkpoint(tmp_path / "run") == ckpts / "final-epoch009.ckpt"


def test_eval_hierarchy_reads_another_folder_at_the_models_bit_depth(paper_runs, tmp_path):
    """data.root=<another folder of the same camera>: 16-bit files are read at the data.bit_depth the pipeline's
    models trained at (as ana-eval and ana-predict do); data.bit_depth=null reads their own range; models of
    different depths need it typed."""
    import numpy as np
    from PIL import Image

    from ana_lightning.models.hierarchical import resolve_checkpoint

    _, runs, _, _ = paper_runs
    rng = np.random.default_rng(0)
    for code in ("AC-1", "AC-2", "AC-15"):
        (tmp_path / "cam" / code).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 4096, (40, 40)).astype(np.uint16)).save(
                tmp_path / "cam" / code / f"{i}.tif"
            )
    ckpts = {}
    for exp, depth in (("paper_level1", 12), ("paper_level2", 12), ("other", 14)):
        state = torch.load(
            resolve_checkpoint(runs["paper_level1" if exp == "other" else exp]),
            map_location="cpu",
            weights_only=True,
        )
        state["datamodule_hyper_parameters"]["bit_depth"] = depth
        ckpts[exp] = tmp_path / f"{exp}.ckpt"
        torch.save(state, ckpts[exp])

    def run(name, level2, *extra):
        return evaluate_hierarchy(
            compose(
                "eval_hierarchy",
                [
                    f"pipeline.level1={ckpts['paper_level1']}",
                    f"pipeline.level2={ckpts[level2]}",
                    f"data.root={tmp_path / 'cam'}",
                    "data.image_size=32",
                    "split=all",
                    "bundle=false",
                    *extra,
                ],
                output_dir=tmp_path / name,
            )
        )

    _, objs = run("auto", "paper_level2")
    assert objs["datamodule"].hparams.bit_depth == 12 and len(objs["prediction"]) == 9
    _, objs = run("own", "paper_level2", "data.bit_depth=null")
    assert objs["datamodule"].hparams.bit_depth is None
    with pytest.raises(ValueError, match=r"different data.bit_depth \(\[12, 14\]\)"):
        run("mixed", "other")
    _, objs = run("typed", "other", "data.bit_depth=12")
    assert objs["datamodule"].hparams.bit_depth == 12
