"""Neural Style Transfer synthesis: labels kept, training sources only, resumable, refused when leaking."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ana_lightning.data.images import load_image
from ana_lightning.data.splits import LeakageError
from ana_lightning.style_transfer import (
    MANIFEST,
    VGG19_LAYERS,
    VGG19_WEIGHTS_FILE,
    StyleTransfer,
    VGGFeatures,
    WeightsNotFoundError,
    plan_jobs,
    stylize,
    stylize_job,
)

from conftest import compose, tiny_train_overrides, write_class_images

# Shallow layers and tiny images keep most tests to a second or two on a CPU.
FAST = [
    "content_layers=[relu2_1]",
    "style_layers=[relu1_1,relu2_1]",
    "image_size=32",
    "iterations=2",
    "allow_random_weights=true",
    "progress=false",
]


def _fast_transfer(**kw) -> StyleTransfer:
    args = dict(
        content_layers=["relu2_1"],
        style_layers=["relu1_1", "relu2_1"],
        iterations=2,
        allow_random_weights=True,
        device="cpu",
    )
    return StyleTransfer(**{**args, **kw})


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty torch hub cache, whatever this machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


@pytest.fixture
def data(tmp_path) -> Path:
    return write_class_images(tmp_path / "data", {"AC-1": 5, "ac-2": 5, "AC10": 5}, size=40)


def _stylize_cfg(root: Path, out: Path, run: Path, extra: list[str] | None = None):
    return compose(
        "stylize",
        [f"data.root={root}", f"output={out}", "n_per_image=2", *FAST, *(extra or [])],
        output_dir=run,
    )


def test_two_iterations_at_64px_with_random_weights(tmp_path, no_weights):
    """The default layers (up to relu5_1), 64×64, 2 iterations, on the CPU: a usable labelled set."""
    root = write_class_images(tmp_path / "data", {"AC-1": 3, "AC-2": 3}, size=48)
    out = tmp_path / "styl"
    cfg = compose(
        "stylize",
        [
            f"data.root={root}",
            f"output={out}",
            "n_per_image=1",
            "iterations=2",
            "image_size=64",
            "batch_size=8",
            "allow_random_weights=true",
            "progress=false",
        ],
        output_dir=tmp_path / "run",
    )
    summary, objs = stylize_job(cfg)
    rows = _rows(out)
    assert summary["written"] == len(rows) == summary["planned"] > 0
    assert objs["transfer"].weights_source == "random"
    for row in rows:
        img = load_image(out / row["path"])
        assert img.shape == (64, 64, 3)
        assert row["iterations"] == "2" and row["image_size"] == "64" and row["weights"] == "random"
        assert row["seed"] and row["content_sha256"] and row["style_sha256"] and float(row["final_loss"]) >= 0
    assert (tmp_path / "run" / "stylize_summary.json").is_file()


def test_labels_kept_and_only_training_images_are_sources(data, tmp_path):
    out = tmp_path / "styl"
    cfg = _stylize_cfg(data, out, tmp_path / "run")
    _, objs = stylize_job(cfg)
    splits = objs["datamodule"].splits
    train = {str(Path(r.path).resolve()): r for r in splits["train"]}
    held_out = {str(Path(r.path).resolve()) for s in ("val", "test") for r in splits[s]}
    rows = _rows(out)
    assert len(rows) == 2 * len(train)
    for row in rows:
        content, style = train[row["content"]], train[row["style"]]  # KeyError = a non-training source
        assert row["label"] == ";".join(content.codes) == ";".join(style.codes)
        assert row["content"] != row["style"] and row["content"] not in held_out
        assert Path(row["path"]).parts[0] == content.codes[0]  # <output>/<AC code>/...
    pairs = [(r["content"], r["style"]) for r in rows]
    assert len(set(pairs)) == len(pairs)


def test_split_manifest_of_a_run_decides_the_sources(data, tmp_path):
    # a split made with another seed than stylize's data.seed: its train images must be the sources
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.data.splits import save_manifest, split_records
    from ana_lightning.taxonomy import Taxonomy

    records, _ = read_single_label_folder(data, Taxonomy.load())
    splits = split_records(records, seed=123)
    manifest = save_manifest(splits, tmp_path / "run0" / "split_manifest.csv", root=data)
    out = tmp_path / "styl"
    stylize_job(_stylize_cfg(data, out, tmp_path / "run", [f"split_manifest={manifest}", "n_per_image=1"]))
    train = {str(Path(r.path).resolve()) for r in splits["train"]}
    assert {r["content"] for r in _rows(out)} == train
    assert {r["style"] for r in _rows(out)} <= train


def test_interrupted_run_resumes_without_duplicates(data, tmp_path, monkeypatch):
    import ana_lightning.style_transfer as st
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    records, _ = read_single_label_folder(data, Taxonomy.load())
    records = [r for r in records if r.codes == ("AC-1",)][:3] + [r for r in records if r.codes == ("AC-2",)][
        :3
    ]
    out = tmp_path / "styl"
    real_fsync, calls = os.fsync, []

    def ctrl_c_on_the_fifth_image(fd):
        calls.append(fd)
        if len(calls) == 5:  # the 5th image's bytes are written but not yet renamed into place
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(st.os, "fsync", ctrl_c_on_the_fifth_image)
    with pytest.raises(KeyboardInterrupt):
        stylize(records, out, _fast_transfer(), n_per_image=2, image_size=32, batch_size=3, progress=False)
    monkeypatch.setattr(st.os, "fsync", real_fsync)

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix == ".png")
    assert len(files) == 4 and not list(out.rglob(".*.tmp"))  # no half-written image, no temp file
    assert {r["path"] for r in _rows(out)} == {str(p.relative_to(out)) for p in files}
    before = {p: p.read_bytes() for p in files}

    summary = stylize(
        records, out, _fast_transfer(), n_per_image=2, image_size=32, batch_size=3, progress=False
    )
    rows = _rows(out)
    assert summary.already_done == 4 and summary.written == summary.planned - 4 == len(rows) - 4
    assert len({r["path"] for r in rows}) == len(rows) == len(list(out.rglob("*.png"))) == 2 * len(records)
    assert all(p.read_bytes() == b for p, b in before.items())  # finished images were not redone
    again = stylize(
        records, out, _fast_transfer(), n_per_image=2, image_size=32, batch_size=3, progress=False
    )
    assert again.written == 0 and len(_rows(out)) == len(rows)


def test_other_parameters_in_the_same_folder_are_refused(data, tmp_path):
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    records, _ = read_single_label_folder(data, Taxonomy.load())
    out = tmp_path / "styl"
    stylize(records[:4], out, _fast_transfer(), n_per_image=1, image_size=32, progress=False)
    with pytest.raises(ValueError, match="other parameters.*iterations: 2 then, 3 now"):
        stylize(records[:4], out, _fast_transfer(iterations=3), n_per_image=1, image_size=32, progress=False)


def test_a_folder_of_other_files_or_inside_the_data_is_never_written_into(data, tmp_path):
    """output= naming someone's folder used to add stylized images among theirs and replace their
    manifest.csv; output= inside data.root put synthetic images into the dataset every later run reads."""
    import hashlib

    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    records, _ = read_single_label_folder(data, Taxonomy.load())
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "manifest.csv").write_text("path,label\nx.png,AC-1\n")
    (theirs / "x.png").write_bytes(b"their image")

    def digest():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in theirs.rglob("*") if p.is_file()}

    before = digest()
    with pytest.raises(
        ValueError, match=rf"{theirs} holds files that ana-stylize did not write \(manifest.csv, x.png\)"
    ):
        stylize(records[:2], theirs, _fast_transfer(), n_per_image=1, image_size=32, progress=False)
    assert digest() == before
    with pytest.raises(ValueError, match=r"is inside data.root=.*data.extra_train=<output>"):
        stylize_job(_stylize_cfg(data, data / "stylized", tmp_path / "run"))
    assert not (data / "stylized").exists()


def test_batched_equals_one_at_a_time():
    nst = _fast_transfer(iterations=3)
    g = torch.Generator().manual_seed(0)
    content, style = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    batched, losses = nst(content, style)
    for i in range(3):
        one, loss = nst(content[i : i + 1], style[i : i + 1])
        # Adam steps by ~lr·sign(gradient): where a gradient is ~0, rounding may flip a few pixels' steps
        diff = (one[0] - batched[i]).abs()
        assert diff.max() < 2e-3 and diff.mean() < 1e-5
        assert loss[0] == pytest.approx(losses[i], rel=1e-3)
    assert (batched - content).abs().mean() > 0.01  # it did optimise: ~100x the batched/single difference


@pytest.mark.parametrize("optimizer,init", [("lbfgs", "content"), ("adam", "noise")])
def test_optimizers_and_inits_reduce_the_loss(optimizer, init):
    g = torch.Generator().manual_seed(1)
    content, style = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    first = _fast_transfer(iterations=1, optimizer=optimizer, init=init)(content, style, seeds=[1, 2])[1]
    out, last = _fast_transfer(iterations=8, optimizer=optimizer, init=init)(content, style, seeds=[1, 2])
    assert out.shape == content.shape and 0 <= out.min() and out.max() <= 1
    assert all(b < a for a, b in zip(first, last, strict=True))


def test_missing_weights_stop_with_a_clear_message(no_weights):
    with pytest.raises(WeightsNotFoundError) as e:
        VGGFeatures(["relu1_1"])
    msg = str(e.value)
    assert str(no_weights / "hub" / "checkpoints" / VGG19_WEIGHTS_FILE) in msg
    assert "allow_random_weights=true" in msg and "TORCH_HOME" in msg and "weights=" in msg
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        VGGFeatures(["relu1_1"], weights="/nope.pth", allow_random_weights=True)


def test_weights_from_the_hub_cache_or_a_local_file(no_weights, tmp_path):
    from torchvision.models import VGG19_Weights

    assert VGG19_Weights.IMAGENET1K_V1.url.endswith("/" + VGG19_WEIGHTS_FILE)
    state = {"features.0.weight": torch.randn(64, 3, 3, 3), "features.0.bias": torch.randn(64)}
    cached = no_weights / "hub" / "checkpoints" / VGG19_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    net = VGGFeatures(["relu1_1"])
    assert net.source == str(cached) and torch.equal(net.body[0].weight, state["features.0.weight"])

    from safetensors.torch import save_file

    local = tmp_path / "vgg.safetensors"
    save_file({"0.weight": state["features.0.weight"] * 2, "0.bias": state["features.0.bias"]}, str(local))
    assert torch.equal(
        VGGFeatures(["relu1_1"], weights=str(local)).body[0].weight, 2 * state["features.0.weight"]
    )
    with pytest.raises(ValueError, match=r"lacks features\.2\.weight"):
        VGGFeatures(["relu1_2"], weights=str(local))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="relu9_9.*conv1_1"):
        VGGFeatures(["relu9_9"], allow_random_weights=True)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'lbfgs', got 'sgd'"):
        StyleTransfer(optimizer="sgd", allow_random_weights=True)
    assert VGG19_LAYERS[VGG19_LAYERS.index("relu5_1") - 1] == "conv5_1"


def test_plan_is_deterministic_and_extends_with_n_per_image():
    from ana_lightning.data.records import ImageRecord

    recs = [
        ImageRecord(f"/d/AC-{c}/{i}.png", (f"AC-{c}",), sha256=f"{c}{i}") for c in (1, 2) for i in range(5)
    ]
    recs.append(ImageRecord("/d/AC-3/only.png", ("AC-3",), sha256="x"))
    recs.append(ImageRecord("/d/AC-1/copy.png", ("AC-1",), sha256="10"))  # a byte-identical copy of AC-1/0
    jobs, warnings = plan_jobs(recs, 2, seed=0)
    assert jobs == plan_jobs(list(reversed(recs)), 2, seed=0)[0]
    assert any("AC-3" in w for w in warnings) and all(j.content.codes != ("AC-3",) for j in jobs)
    assert all(j.content.sha256 != j.style.sha256 for j in jobs)
    assert "/d/AC-1/copy.png" not in {
        p for j in jobs for p in (j.content.path, j.style.path)
    }  # copies count once
    more = {j.relpath: j for j in plan_jobs(recs, 3, seed=0)[0]}
    assert all(j.relpath in more and more[j.relpath].style == j.style for j in jobs)
    assert [j.style for j in plan_jobs(recs, 2, seed=1)[0]] != [j.style for j in jobs]


# ---------------------------------------------------------------------------------------------- extra_train
def test_extra_train_adds_to_the_training_split_only(data, tmp_path):
    from ana_lightning.pipeline import train

    out = tmp_path / "styl"
    stylize_job(_stylize_cfg(data, out, tmp_path / "srun"))
    n_extra = len(_rows(out))
    cfg = compose(
        "train",
        tiny_train_overrides(data) + ["debug=fdr", f"data.extra_train={out}"],
        output_dir=tmp_path / "run",
    )
    metrics, objs = train(cfg)
    dm = objs["datamodule"]
    assert len(dm.extra_train_records) == n_extra
    assert len(dm.dataset("train")) == len(dm.splits["train"]) + n_extra
    assert len(dm.dataset("val")) == len(dm.splits["val"]) and len(dm.dataset("test")) == len(
        dm.splits["test"]
    )
    assert all(str(out) not in r.path for s in dm.splits.values() for r in s)
    manifest = (tmp_path / "run" / "split_manifest.csv").read_text()
    assert "__00_" not in manifest and "test/mca" in metrics  # the split manifest lists real images only


def test_stylized_set_from_val_or_test_sources_is_refused(data, tmp_path):
    from ana_lightning.pipeline import build_datamodule

    cfg = compose("train", tiny_train_overrides(data), output_dir=tmp_path / "run")
    dm = build_datamodule(cfg)
    dm.setup()
    held_out = dm.splits["val"] + dm.splits["test"]
    out = tmp_path / "leaky"
    stylize(held_out, out, _fast_transfer(), n_per_image=1, image_size=32, progress=False)
    assert _rows(out)
    dm = build_datamodule(cfg, extra_train=str(out))
    with pytest.raises(LeakageError, match=r"(?s)(val|test) split.*split_manifest"):
        dm.setup()


def test_stylized_set_from_other_data_is_refused(data, tmp_path):
    from ana_lightning.data.records import DatasetError, read_single_label_folder
    from ana_lightning.pipeline import build_datamodule
    from ana_lightning.taxonomy import Taxonomy

    other = write_class_images(tmp_path / "other", {"AC-1": 4}, size=40, seed=7)
    records, _ = read_single_label_folder(other, Taxonomy.load())
    out = tmp_path / "foreign"
    stylize(records, out, _fast_transfer(), n_per_image=1, image_size=32, progress=False)
    cfg = compose(
        "train", tiny_train_overrides(data) + [f"data.extra_train={out}"], output_dir=tmp_path / "run"
    )
    with pytest.raises(DatasetError, match="is not in the data"):
        build_datamodule(cfg).setup()
    with pytest.raises(FileNotFoundError, match="no manifest.csv"):
        build_datamodule(cfg, extra_train=str(tmp_path)).setup()


def test_tampered_label_is_refused(data, tmp_path):
    from ana_lightning.data.records import DatasetError
    from ana_lightning.pipeline import build_datamodule

    out = tmp_path / "styl"
    stylize_job(_stylize_cfg(data, out, tmp_path / "srun", ["n_per_image=1"]))
    text = (out / MANIFEST).read_text().splitlines()
    header, first = text[0], text[1].split(",")
    first[header.split(",").index("label")] = "AC-2" if first[1] != "AC-2" else "AC-1"
    (out / MANIFEST).write_text("\n".join([header, ",".join(first), *text[2:]]) + "\n")
    cfg = compose(
        "train", tiny_train_overrides(data) + [f"data.extra_train={out}"], output_dir=tmp_path / "run"
    )
    with pytest.raises(DatasetError, match="differs from its content image"):
        build_datamodule(cfg).setup()


def test_console_command(data, tmp_path):
    out = tmp_path / "styl"
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "th")}
    cmd = [
        sys.executable,
        "-m",
        "ana_lightning.cli.stylize",
        f"data.root={data}",
        f"output={out}",
        "n_per_image=1",
        *FAST,
        "progress=true",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stylizing" in res.stdout + res.stderr  # the progress bar
    assert len(_rows(out)) == len(list(out.rglob("*.png"))) > 0
    assert np.all([load_image(p).shape == (32, 32, 3) for p in out.rglob("*.png")])


def test_job_without_weights_stops_before_writing(data, tmp_path, no_weights):
    cfg = _stylize_cfg(data, tmp_path / "styl", tmp_path / "run", ["allow_random_weights=false"])
    with pytest.raises(WeightsNotFoundError, match="No VGG-19 weights found"):
        stylize_job(cfg)
    assert not list((tmp_path / "styl").rglob("*.png"))


def test_truncated_output_is_made_again_on_rerun(data, tmp_path):
    from ana_lightning.data.images import load_image
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    records, _ = read_single_label_folder(data, Taxonomy.load())
    records = [r for r in records if r.codes == ("AC-1",)][:3]
    out = tmp_path / "styl"
    first = stylize(
        records, out, _fast_transfer(), n_per_image=1, image_size=32, batch_size=3, progress=False
    )
    pngs = sorted(out.rglob("*.png"))
    assert first.written == len(pngs) == 3
    cut, unlisted = pngs[0], pngs[1]
    cut.write_bytes(cut.read_bytes()[:60])  # truncated (a partial copy)
    rows = [r for r in _rows(out) if r["path"] != str(unlisted.relative_to(out))]
    with open(out / MANIFEST, "w", newline="") as f:  # and one finished image the manifest does not list
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    again = stylize(
        records, out, _fast_transfer(), n_per_image=1, image_size=32, batch_size=3, progress=False
    )
    assert again.already_done == 2 and again.written == 1  # only the truncated one is redone
    load_image(cut)  # whole again
    assert {r["path"] for r in _rows(out)} == {str(p.relative_to(out)) for p in pngs}


def test_nst_settings_are_a_target_config_and_the_top_level_keys_still_work(tmp_path):
    from omegaconf import open_dict

    from ana_lightning.jobs.stylize import transfer_config
    from ana_lightning.utils import build

    cfg = _stylize_cfg(tmp_path / "d", tmp_path / "o", tmp_path / "r", ["iterations=3", "device=cpu"])
    assert cfg.transfer._target_ == "ana_lightning.nst.StyleTransfer"
    via_block = build(transfer_config(cfg))
    assert (
        isinstance(via_block, StyleTransfer)
        and via_block.iterations == 3
        and via_block.style_layers == ("relu1_1", "relu2_1")
    )
    direct = _stylize_cfg(
        tmp_path / "d", tmp_path / "o", tmp_path / "r", ["transfer.iterations=5", "device=cpu"]
    )
    assert build(transfer_config(direct)).iterations == 5  # the block's own key
    with open_dict(cfg):
        del cfg.transfer  # a config written before the transfer block: built from the top-level keys
    assert build(transfer_config(cfg)).params() == via_block.params()


def test_a_stylized_set_made_at_another_bit_depth_is_refused(data, tmp_path):
    """manifest.csv records the data.bit_depth its sources were read at; a run reading at another depth refuses
    the set (its images would be as dim, or as bright, as the other depth makes them)."""
    from ana_lightning.data.images import set_bit_depth
    from ana_lightning.data.records import DatasetError
    from ana_lightning.pipeline import build_datamodule

    cfg = compose("train", tiny_train_overrides(data), output_dir=tmp_path / "run")
    dm = build_datamodule(cfg)
    dm.setup()
    out = tmp_path / "styl12"
    set_bit_depth(12)  # as ana-stylize data.bit_depth=12 reads (the fixture's 8-bit files read the same)
    stylize(dm.splits["train"][:2], out, _fast_transfer(), n_per_image=1, image_size=32, progress=False)
    assert {r["bit_depth"] for r in _rows(out)} == {"12"}
    with pytest.raises(DatasetError, match=r"data.bit_depth=12, but this run reads at data.bit_depth=null"):
        build_datamodule(cfg, extra_train=str(out)).setup()
    assert build_datamodule(cfg, extra_train=str(out), bit_depth=12).setup() is None  # the same depth: read
