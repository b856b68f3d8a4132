import csv
import shutil

import pytest
import torch

from ana_lightning.data.datamodules import SingleLabelDataModule
from ana_lightning.data.records import DatasetError

from conftest import write_class_images


def _dm(root, **kw):
    kw.setdefault("image_size", 32)
    kw.setdefault("batch_size", 4)
    return SingleLabelDataModule(root=str(root), **kw)


def test_natural_class_order_and_targets(tmp_path):
    root = write_class_images(tmp_path / "d", {"ac-10": 4, "AC-2": 4, "AC-1": 4, "ac_0": 4})
    dm = _dm(root)
    dm.setup()
    assert dm.class_names == ["AC-0", "AC-1", "AC-2", "AC-10"]
    ds = dm.dataset("train")
    for i in range(len(ds)):
        item = ds[i]
        code = dm.class_names[int(item["target"])]
        assert f"/{code.lower().replace('-', '')}" in ds.records[i].path.lower().replace("-", "").replace(
            "_", ""
        )
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)


def test_bad_inputs_listed_together(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 4, "AC-2": 4})
    (root / "patient12").mkdir()
    (root / "AC-5").mkdir()  # empty class folder
    data = (root / "AC-1" / "img_000.png").read_bytes()
    (root / "AC-2" / "broken.png").write_bytes(data[:200])
    (root / "AC-2" / "notes.txt").write_text("x")
    (root / "AC-2" / ".DS_Store").write_text("ignored")
    with pytest.raises(DatasetError) as e:
        _dm(root).setup()
    msg = str(e.value)
    for needle in ("patient12", "AC-5", "empty class folder", "broken.png", "notes.txt", "on_bad_file=skip"):
        assert needle in msg
    assert ".DS_Store" not in msg


def test_skip_bad_files_and_report(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 6, "AC-2": 6})
    (root / "AC-2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dm = _dm(root, on_bad_file="skip")
    dm.setup()
    assert sum(len(v) for v in dm.splits.values()) == 12
    out = tmp_path / "run"
    out.mkdir()
    dm.write_reports(out)
    rows = list(csv.DictReader(open(out / "bad_files.csv")))
    assert [r["path"].endswith("broken.png") for r in rows] == [True]
    manifest = list(csv.DictReader(open(out / "split_manifest.csv")))
    assert set(manifest[0]) >= {"path", "label", "split", "sha256"}
    assert len(manifest) == 12


def test_split_manifest_reused(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 10, "AC-2": 10})
    dm = _dm(root, seed=1)
    dm.setup()
    dm.write_reports(tmp_path)
    dm2 = _dm(root, seed=99, split_manifest=str(tmp_path / "split_manifest.csv"))
    dm2.setup()
    assert [r.path for r in dm2.splits["test"]] == [r.path for r in dm.splits["test"]]
    # A file changed since the manifest was written is refused.
    shutil.copy(root / "AC-1" / "img_001.png", root / "AC-1" / "img_000.png")
    with pytest.raises(DatasetError, match="sha256"):
        _dm(root, split_manifest=str(tmp_path / "split_manifest.csv")).setup()


def test_class_weights_from_training_split_only(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 20, "AC-2": 10})
    dm = _dm(root)
    dm.setup()
    n1 = sum(r.codes == ("AC-1",) for r in dm.splits["train"])
    n2 = sum(r.codes == ("AC-2",) for r in dm.splits["train"])
    w = dm.class_weights()
    n = n1 + n2
    assert w == pytest.approx([n / (2 * n1), n / (2 * n2)])


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _dm(tmp_path / "nope").setup()


def test_augmentation_repeats_for_a_seed():
    import albumentations as A
    import numpy as np

    from ana_lightning.data.transforms import build_transform

    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)

    def run(seed):
        torch.manual_seed(seed)
        tf = build_transform(32, [A.HorizontalFlip(p=0.5), A.RandomRotate90(p=1.0)])
        return torch.stack([tf(img) for _ in range(8)])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_single_image_last_training_batch_is_dropped(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 10, "AC-2": 10})
    dm = _dm(root)
    dm.setup()
    n = len(dm.splits["train"])
    dm.hparams.batch_size = n - 1  # remainder of exactly one image
    assert dm.train_dataloader().drop_last and len(dm.train_dataloader()) == 1
    dm.hparams.batch_size = n - 2
    assert not dm.train_dataloader().drop_last
    dm.hparams.batch_size = n - 1
    assert not dm.val_dataloader().drop_last
