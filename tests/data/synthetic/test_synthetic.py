"""Tests of the synthetic HEp-2 field simulator (ana_lightning.data.synthetic)."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from ana_lightning.data import synthetic
from ana_lightning.data.synthetic import CODES, generate_dataset, generate_hospital_dataset, render_field

POSITIVE = [c for c in CODES if c != "AC-0"]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------
# render_field
# ---------------------------------------------------------------------------------------------


def test_codes_in_natural_order():
    assert CODES == tuple(f"AC-{i}" for i in range(32))


@pytest.mark.parametrize("code", CODES)
def test_every_code_renders_uint8_rgb(code):
    img = render_field(code, _rng(1, 2), size=96)
    assert img.shape == (96, 96, 3)
    assert img.dtype == np.uint8
    assert img.flags["C_CONTIGUOUS"]


def test_same_seed_same_image_different_seed_different_image():
    for code in ("AC-1", "AC-16", "AC-27"):
        a = render_field(code, _rng(5), 128)
        b = render_field(code, _rng(5), 128)
        c = render_field(code, _rng(6), 128)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_positive_patterns_are_green_dominant():
    for k, code in enumerate(POSITIVE):
        for i in range(2):
            m = render_field(code, _rng(3, k, i), 128).reshape(-1, 3).mean(0)
            assert m[1] > m[0] and m[1] > m[2], (code, m)


def test_negative_is_darker_than_homogeneous():
    neg = np.mean([render_field("AC-0", _rng(4, i), 128)[..., 1].mean() for i in range(5)])
    hom = np.mean([render_field("AC-1", _rng(4, i), 128)[..., 1].mean() for i in range(5)])
    assert neg < 0.6 * hom
    # "no structure": the negative field has no bright spots
    assert max(np.percentile(render_field("AC-0", _rng(4, i), 128)[..., 1], 99.5) for i in range(5)) < 80


def test_dapi_adds_blue_nuclei():
    plain = render_field("AC-21", _rng(8), 128)
    dapi = render_field("AC-21", _rng(8), 128, dapi=True)
    assert dapi[..., 2].mean() > plain[..., 2].mean() + 10
    assert np.array_equal(plain[..., 1], dapi[..., 1])  # same field, same FITC channel


def test_mixed_field_shows_every_pattern():
    """A mixed field shares its cells with the single-pattern renders of the same seed: it is bright
    both where the nuclear pattern alone is bright and where the cytoplasmic pattern alone is."""

    def green(code):
        return render_field(code, _rng(9), 128)[..., 1].astype(np.float32)

    nuc, cyto, mixed = green("AC-1"), green("AC-21"), green(["AC-1", "AC-21"])
    nuc_s, cyto_s = cv2.GaussianBlur(nuc, (0, 0), 2.0), cv2.GaussianBlur(cyto, (0, 0), 3.0)
    in_nuc = nuc_s > np.percentile(nuc_s, 75)
    in_cyto = (cyto_s > np.percentile(cyto_s, 75)) & (nuc_s < np.percentile(nuc_s, 50))
    assert in_nuc.sum() > 100 and in_cyto.sum() > 100
    assert mixed[in_cyto].mean() > 1.5 * nuc[in_cyto].mean()  # the cytoplasmic pattern was added
    assert mixed[in_nuc].mean() > 1.5 * cyto[in_nuc].mean()  # the nuclear pattern was added


def test_render_field_rejects_bad_input():
    with pytest.raises(ValueError):
        render_field("AC-99", _rng(0))
    with pytest.raises(ValueError):
        render_field(["AC-1", "AC-2", "AC-3", "AC-4"], _rng(0))
    # lenient spelling is accepted
    assert np.array_equal(render_field("ac-4", _rng(0), 64), render_field("AC-4", _rng(0), 64))


def _texture_features(img: np.ndarray) -> np.ndarray:
    """Share of fine-scale vs mid-scale energy in the bright (nuclear) areas of the green channel."""
    g = img[..., 1].astype(np.float32) / 255.0
    b1 = cv2.GaussianBlur(g, (0, 0), 1.0)
    b3 = cv2.GaussianBlur(g, (0, 0), 3.0)
    m = b3 > max(float(np.percentile(b3, 60)), 0.05)
    tot = float(g[m].var()) + 1e-6
    return np.array([((g - b1)[m] ** 2).mean() / tot, ((b1 - b3)[m] ** 2).mean() / tot])


@pytest.mark.parametrize("pair", [("AC-4", "AC-5"), ("AC-8", "AC-10")])
def test_siblings_separable_by_nearest_centroid(pair):
    """Fine vs coarse speckles (and homogeneous vs punctate nucleoli) differ in texture scale: a
    nearest-centroid rule on two texture statistics, fitted on 20 renders per class, must classify
    20 held-out renders per class well above chance."""
    feats = {
        c: np.stack([_texture_features(render_field(c, _rng(7, k, i), 256)) for i in range(40)])
        for k, c in enumerate(pair)
    }
    train = np.concatenate([feats[c][:20] for c in pair])
    mu, sd = train.mean(0), train.std(0) + 1e-9
    cent = {c: ((feats[c][:20] - mu) / sd).mean(0) for c in pair}
    hits = [
        min(pair, key=lambda d, x=x: float(np.sum(((x - mu) / sd - cent[d]) ** 2))) == c
        for c in pair
        for x in feats[c][20:]
    ]
    assert np.mean(hits) >= 0.75


def test_rendering_is_fast_enough():
    """Loose guard (the benchmark measures properly): well under 50 ms per 256x256 field."""
    import time

    rng = _rng(11)
    render_field("AC-1", rng)
    t = time.process_time()
    for code in CODES:
        render_field(code, rng)
    assert (time.process_time() - t) / len(CODES) < 0.05


# ---------------------------------------------------------------------------------------------
# generate_dataset
# ---------------------------------------------------------------------------------------------


def test_generate_dataset_layout_manifest_and_determinism(tmp_path):
    codes = ["AC-1", "AC-4", "AC-22"]
    a = generate_dataset(tmp_path / "a", codes=codes, n_per_class=3, size=64, seed=3, progress=False)
    b = generate_dataset(tmp_path / "b", codes=codes, n_per_class=3, size=64, seed=3, progress=False)
    assert a == tmp_path / "a"
    da, db = _digest(a), _digest(b)
    assert da == db  # byte-identical, manifest included
    assert len([k for k in da if k.endswith(".png")]) == 9
    assert "AC-4/AC-4_00002.png" in da

    rows = _read_csv(a / "manifest.csv")
    assert list(rows[0].keys()) == ["path", "label", "seed", "size", "dapi"]
    assert len(rows) == 9
    assert {r["label"] for r in rows} == set(codes)
    for r in rows:
        assert (a / r["path"]).is_file()
        assert "\\" not in r["path"] and r["path"].startswith(r["label"] + "/")
        assert r["seed"] == "3" and r["size"] == "64"

    img = cv2.imread(str(a / "AC-1" / "AC-1_00000.png"), cv2.IMREAD_COLOR)
    assert img.shape == (64, 64, 3)

    # a different seed gives different images
    c = generate_dataset(tmp_path / "c", codes=["AC-1"], n_per_class=1, size=64, seed=4, progress=False)
    assert _digest(c)["AC-1/AC-1_00000.png"] != da["AC-1/AC-1_00000.png"]


def test_generate_dataset_subset_gives_same_files(tmp_path):
    full = generate_dataset(
        tmp_path / "full", codes=["AC-2", "AC-5", "AC-9"], n_per_class=2, size=64, progress=False
    )
    sub = generate_dataset(tmp_path / "sub", codes=["AC-9"], n_per_class=2, size=64, progress=False)
    df, ds = _digest(full), _digest(sub)
    for i in range(2):
        key = f"AC-9/AC-9_{i:05d}.png"
        assert df[key] == ds[key]


def test_generate_dataset_resumes(tmp_path, monkeypatch):
    root = generate_dataset(tmp_path / "d", codes=["AC-3", "AC-7"], n_per_class=3, size=64, progress=False)
    before = _digest(root)
    victim = root / "AC-7" / "AC-7_00001.png"
    victim.unlink()

    calls = []
    real = synthetic.render_field
    from ana_lightning.data.synthetic import writers  # where generate_dataset looks its renderer up

    def counting(code, rng, size=256, dapi=False):
        calls.append(code)
        return real(code, rng, size=size, dapi=dapi)

    monkeypatch.setattr(writers, "render_field", counting)
    generate_dataset(root, codes=["AC-3", "AC-7"], n_per_class=3, size=64, progress=False)
    assert calls == ["AC-7"]
    assert _digest(root) == before
    assert not list(root.rglob("*.tmp"))


def test_generate_dataset_jpg_and_dapi(tmp_path):
    root = generate_dataset(
        tmp_path / "j", codes=["AC-18"], n_per_class=1, size=64, dapi=True, fmt="jpg", progress=False
    )
    rows = _read_csv(root / "manifest.csv")
    assert rows[0]["path"] == "AC-18/AC-18_00000.jpg" and rows[0]["dapi"] == "1"
    assert (root / rows[0]["path"]).is_file()


# ---------------------------------------------------------------------------------------------
# generate_hospital_dataset
# ---------------------------------------------------------------------------------------------

_LABEL_DIR = re.compile(r"^AC-\d{1,2}(?:(?: \+ |, |_)AC-\d{1,2}){0,2}$")


def _parse_label_dir(name: str) -> list[str]:
    assert _LABEL_DIR.match(name), name
    return re.findall(r"AC-\d{1,2}", name)


def test_hospital_layout(tmp_path):
    root = generate_hospital_dataset(
        tmp_path / "h", n_images=40, n_patients=8, size=64, seed=2, progress=False
    )
    rows = _read_csv(root / "manifest.csv")
    assert list(rows[0].keys()) == ["path", "labels", "group"]
    assert len(rows) == 40
    groups = {r["group"] for r in rows}
    assert groups == {f"patient{k:03d}" for k in range(8)}
    combos_per_patient: dict[str, set[str]] = {}
    for r in rows:
        parts = Path(r["path"]).parts
        assert len(parts) == 3 and parts[0] == r["group"]
        codes = _parse_label_dir(parts[1])
        assert 1 <= len(codes) <= 3
        assert all(c in CODES for c in codes)
        assert codes == r["labels"].split(";")
        assert (root / r["path"]).is_file()
        combos_per_patient.setdefault(r["group"], set()).add(parts[1])
    assert all(1 <= len(v) <= 3 for v in combos_per_patient.values())
    assert sum(len(codes.split(";")) > 1 for codes in (r["labels"] for r in rows)) > 0

    again = generate_hospital_dataset(
        tmp_path / "h2", n_images=40, n_patients=8, size=64, seed=2, progress=False
    )
    assert _digest(root) == _digest(again)


def test_hospital_respects_codes_and_max_patterns(tmp_path):
    root = generate_hospital_dataset(
        tmp_path / "h",
        n_images=12,
        codes=["AC-1", "AC-4", "AC-21"],
        max_patterns=2,
        n_patients=4,
        size=48,
        progress=False,
    )
    for r in _read_csv(root / "manifest.csv"):
        labels = r["labels"].split(";")
        assert set(labels) <= {"AC-1", "AC-4", "AC-21"} and 1 <= len(labels) <= 2


def test_cli(tmp_path, capsys):
    synthetic.main(
        [
            "--output",
            str(tmp_path / "cli"),
            "--n-per-class",
            "1",
            "--size",
            "48",
            "--codes",
            "AC-0,AC-31",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert "2 images" in out and str(tmp_path / "cli") in out
    assert (tmp_path / "cli" / "AC-31" / "AC-31_00000.png").is_file()
    synthetic.main(
        ["--output", str(tmp_path / "hosp"), "--hospital", "--n-images", "3", "--size", "48", "--no-progress"]
    )
    assert len(_read_csv(tmp_path / "hosp" / "manifest.csv")) == 3
