"""experiment=synthetic_pretrain: synthetic cells in the I3A layout → a model that ana-eval scores on
an I3A folder, and a backbone file that model.backbone.weights loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ana_lightning.data.synthetic_cells import generate_cell_dataset
from ana_lightning.models.backbones import WeightsError, create_backbone
from ana_lightning.pipeline import evaluate
from ana_lightning.pretrain import BACKBONE_FILE, train

from conftest import TINY_BACKBONE, compose

pytestmark = pytest.mark.slow  # one tiny training run (~10-15 s under load)

I3A_CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


def _overrides(cache: Path) -> list[str]:
    return [
        "experiment=synthetic_pretrain",
        f"data.cache_dir={cache}",
        "data.n_per_class=12",
        "data.cells_per_field=2",
        "data.image_size=32",
        "data.batch_size=16",
        "model.backbone.width=8",
        "trainer.max_epochs=1",
        "+trainer.enable_model_summary=false",
        "callbacks.rich_progress_bar=null",
    ]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    base = tmp_path_factory.mktemp("pretrain")
    run = base / "runs" / "r1"
    cfg = compose("train", _overrides(base / "cache"), output_dir=run)
    assert cfg.job == "ana_lightning.jobs.pretrain.train"
    metrics, objs = train(cfg)
    return base, run, metrics, objs


def test_trains_on_the_six_i3a_classes_in_the_i3a_layout(pretrained):
    base, run, metrics, objs = pretrained
    dm = objs["datamodule"]
    assert sorted(dm.class_names) == sorted(I3A_CLASSES)  # the contest's own names (the cell recipe)
    rendered = next((base / "cache").iterdir())
    assert (rendered / "gt_training.csv").is_file() and (rendered / "00001_Mask.png").is_file()
    # groups are the rendered specimens: no field's cells on both sides of a split
    groups = {s: {r.group for r in dm.splits[s]} for s in ("train", "val", "test")}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    assert "test/mca" in metrics and (run / "metrics.json").is_file()


def test_backbone_file_loads_into_another_run(pretrained):
    _, run, _, objs = pretrained
    path = run / BACKBONE_FILE
    sd = torch.load(path, weights_only=True)
    assert not any(k.startswith("fc.") for k in sd), "the classifier head is not part of the backbone file"
    net = create_backbone("cellnet", num_classes=3, width=8, weights=str(path))  # another task: 3 classes
    trained = objs["model"].net.body.state_dict()
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    assert best.is_file()
    for k, v in net.state_dict().items():
        if k in sd:
            assert torch.equal(v, sd[k])
    assert set(sd) < set(trained)
    with pytest.raises(WeightsError):
        create_backbone(TINY_BACKBONE, num_classes=3, weights=str(path))  # another architecture is refused


def test_ana_eval_scores_the_checkpoint_on_an_i3a_folder(pretrained, tmp_path):
    _, run, _, _ = pretrained
    other = generate_cell_dataset(tmp_path / "i3a", n_per_class=3, cells_per_field=3, seed=7, progress=False)
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    cfg = compose(
        "eval",
        [
            f"ckpt_path={best}",
            f"data.root={other}",
            "split=all",
            "callbacks.rich_progress_bar=null",
        ],
        output_dir=tmp_path / "eval",
    )
    metrics, objs = evaluate(cfg)
    assert objs["split"] == "all" and "test/mca" in metrics
    assert "images: 18" in (tmp_path / "eval" / "evaluated.txt").read_text()
