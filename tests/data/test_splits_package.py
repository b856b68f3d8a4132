"""data.splits as the one owner of manifests: matching, the training run's manifest, tree labels."""

import ast
from pathlib import Path

import pytest

from ana_lightning.data.records import DatasetError, ImageRecord
from ana_lightning.data.splits import (
    SPLIT_MANIFEST,
    load_manifest,
    match_manifest,
    run_manifest,
    save_manifest,
    split_records,
    training_hashes,
    training_split_manifest,
)
from ana_lightning.taxonomy import LabelError, Taxonomy

TREE = Taxonomy.load()


def _records(root: Path, n: int = 8) -> list[ImageRecord]:
    return [
        ImageRecord(str(root / c / f"{i}.png"), (c,), None, f"{c}-{i}")
        for c in ("AC-1", "AC-4")
        for i in range(n)
    ]


def test_match_by_path_names_every_mismatch(tmp_path):
    recs = _records(tmp_path)
    manifest = save_manifest(split_records(recs, seed=1), tmp_path / SPLIT_MANIFEST, root=tmp_path)
    got = match_manifest(recs, manifest, tmp_path, TREE)
    assert {s: len(v) for s, v in got.items()} == {
        s: len(v) for s, v in load_manifest(manifest, tmp_path).items()
    }
    changed = [ImageRecord(r.path, r.codes, None, "other") if i == 0 else r for i, r in enumerate(recs[1:])]
    relabelled = [ImageRecord(recs[0].path, ("AC-5",), None, recs[0].sha256)]
    with pytest.raises(DatasetError) as e:
        match_manifest(relabelled + changed[:-1], manifest, tmp_path, TREE)
    assert "sha256 differs" in str(e.value) and "differs from ('AC-1',)" in str(e.value)
    assert "but not in the dataset" in str(e.value)  # the record left out of the data
    # left out of the manifest: a warning, not an error
    extra = ImageRecord(str(tmp_path / "AC-1" / "new.png"), ("AC-1",), None, "new")
    assert sum(map(len, match_manifest([*recs, extra], manifest, tmp_path, TREE).values())) == len(recs)


def test_match_by_content_follows_moved_files_and_ignores_other_sources(tmp_path):
    recs = _records(tmp_path / "old")
    other = [ImageRecord(str(tmp_path / "single" / f"{i}.png"), ("AC-5",), None, f"s{i}") for i in range(4)]
    splits = split_records(recs + other, seed=0)
    manifest = save_manifest(splits, tmp_path / SPLIT_MANIFEST, root=tmp_path)
    moved = [ImageRecord(r.path.replace("/old/", "/new/"), r.codes, None, r.sha256) for r in recs]
    got = match_manifest(moved, manifest, tmp_path, TREE, by_content=True)
    split_of = {r.sha256: s for s, v in splits.items() for r in v}
    assert all(split_of[r.sha256] == s for s, v in got.items() for r in v)
    assert sum(map(len, got.values())) == len(recs)
    with pytest.raises(DatasetError, match="not in the dataset"):
        match_manifest(moved, manifest, tmp_path, TREE)  # by path: the moved files are not found
    stranger = [ImageRecord(str(tmp_path / "x.png"), ("AC-1",), None, "unknown")]
    with pytest.raises(DatasetError, match="none of this dataset's images is in the manifest"):
        match_manifest(stranger, manifest, tmp_path, TREE, by_content=True)


def test_the_training_runs_manifest_beside_a_checkpoint(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    assert run_manifest(ckpt) == (tmp_path / "run" / SPLIT_MANIFEST).resolve()
    assert training_split_manifest(ckpt, "auto") is None  # none there: evaluate all images
    with pytest.raises(FileNotFoundError, match="split=test needs the training run's split manifest"):
        training_split_manifest(ckpt, "test")
    recs = _records(tmp_path)
    splits = split_records(recs, seed=0)
    save_manifest(splits, tmp_path / "run" / SPLIT_MANIFEST, root=tmp_path)
    assert training_split_manifest(ckpt, "test") == run_manifest(ckpt)
    assert training_split_manifest(ckpt, "test", given="mine.csv") is None  # data.split_manifest wins
    assert training_split_manifest(ckpt, "all") is None
    assert training_hashes(run_manifest(ckpt)) == {r.sha256 for r in splits["train"]}
    assert training_hashes(tmp_path / "nothing.csv") is None


def test_tree_labels_are_read_by_the_taxonomy():
    assert TREE.parse_label("ac_5") == "AC-5" and TREE.parse_label("nucleolar") == "nucleolar"
    with pytest.raises(LabelError, match="'nucleoli'"):
        TREE.parse_label("nucleoli")
    assert TREE.leaves("nucleolar") == TREE.children("nucleolar") and TREE.leaves("AC-8") == ("AC-8",)
    assert TREE.label_path("nucleolar") == ("nuclear", "nucleolar", None)
    for level in (1, 2):
        groups = TREE.leaves_by_group(level=level)
        assert list(groups) == list(TREE.nodes(level))
        assert all(tuple(groups[g]) == TREE.children(g) for g in groups)
        assert sorted((c for v in groups.values() for c in v), key=TREE.codes.index) == list(TREE.codes)
    assert TREE.leaves_by_group(["AC-4", "AC-1", "AC-2"]) == {
        "speckled": ["AC-4", "AC-2"],
        "homogeneous": ["AC-1"],
    }


def test_the_data_package_imports_no_job_module():
    """data.* never imports style_transfer, pipeline or the job modules (no circle back into data)."""
    data = Path(__file__).resolve().parents[2] / "ana_lightning" / "data"
    found = []
    for p in data.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 + (p.parent != data):
                if (node.module or "").split(".")[0] in (
                    "style_transfer",
                    "pipeline",
                    "hierarchy_jobs",
                    "jobs",
                ):
                    found.append(f"{p.name}: {node.module}")
    assert not found
