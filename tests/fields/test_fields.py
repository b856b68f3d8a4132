"""ana_lightning.fields: scale estimate, segmentation, crops, combining, field/specimen verdicts."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ana_lightning.data.synthetic import render_field
from ana_lightning.fields.combine import INSUFFICIENT, combine_probs
from ana_lightning.fields.crops import cell_crops, tiles
from ana_lightning.fields.scale import estimate_nucleus_diameter, nucleus_channel, resolve_scale
from ana_lightning.fields.segment import segment_field
from ana_lightning.fields.simulate import read_sim_fields, sim_field, true_nucleus_diameter, write_sim_fields

from conftest import compose

REFERENCE = (
    Path(os.environ.get("ANA_SHARED", Path(__file__).resolve().parents[2] / ".." / "shared"))
    / "data"
    / "ana-pattern-quest"
)
DIAMETERS = (14, 22, 34, 52)


# ------------------------------------------------------------------------------------- simulator
def test_simulator_renders_at_a_given_nucleus_diameter_with_masks():
    for d in DIAMETERS:
        img, m = render_field(
            "AC-1", np.random.default_rng(3), size=256, nucleus_diameter_px=d, return_masks=True
        )
        assert img.shape == (256, 256, 3) and m["cells"].shape == m["nuclei"].shape == (256, 256)
        assert abs(true_nucleus_diameter(m["nuclei"]) / d - 1) < 0.12
        nuc = m["nuclei"]
        inside = m["cells"][nuc > 0] == nuc[nuc > 0]  # a nucleus lies in its own cell (overlaps aside)
        assert inside.mean() > 0.9
        assert not np.isin(nuc, np.flatnonzero(m["mitotic"])).any()  # mitotic cells have no nucleus label
    # the default call is unchanged: same image as before this option existed, no masks
    a = render_field("AC-4", np.random.default_rng(5), size=128)
    assert isinstance(a, np.ndarray) and a.shape == (128, 128, 3)
    with pytest.raises(ValueError, match="nucleus_diameter_px"):
        render_field("AC-1", np.random.default_rng(0), size=64, nucleus_diameter_px=500)


def test_simulator_crowding_packs_nuclei_until_they_touch():
    """crowding (0-1): a confluent culture for segmentation benchmarks; 0 renders the field it always did."""

    def touching_share(m) -> float:
        """Share of the nuclei with another nucleus among their 8 neighbouring pixels."""
        from scipy import ndimage as ndi

        nuc = m["nuclei"]
        higher = ndi.grey_dilation(nuc, size=3) > nuc
        lower = ndi.grey_erosion(np.where(nuc > 0, nuc, nuc.max() + 1), size=3) < nuc
        return len(np.unique(nuc[(nuc > 0) & (higher | lower)])) / max(int(nuc.max()), 1)

    plain = render_field(
        "AC-1", np.random.default_rng(3), size=256, nucleus_diameter_px=16, return_masks=True
    )
    same = render_field(
        "AC-1", np.random.default_rng(3), size=256, nucleus_diameter_px=16, return_masks=True, crowding=0
    )
    assert np.array_equal(plain[0], same[0]) and np.array_equal(plain[1]["nuclei"], same[1]["nuclei"])
    dense = render_field(
        "AC-1", np.random.default_rng(3), size=256, nucleus_diameter_px=16, return_masks=True, crowding=0.8
    )
    assert dense[1]["nuclei"].max() > 1.8 * plain[1]["nuclei"].max()  # more nuclei in the same field
    assert touching_share(dense[1]) > touching_share(plain[1]) + 0.3
    assert abs(true_nucleus_diameter(dense[1]["nuclei"]) / 16 - 1) < 0.2  # the nuclei keep their size
    with pytest.raises(ValueError, match="crowding=2"):
        render_field("AC-1", np.random.default_rng(0), size=64, crowding=2)


def test_sim_fields_round_trip(tmp_path):
    root = write_sim_fields(tmp_path / "sim", ["AC-1", "AC-3"], [20, 40], size=128)
    rows = read_sim_fields(root)
    assert len(rows) == 4 and {r["label"] for r in rows} == {"AC-1", "AC-3"}
    for r in rows:
        assert r["image"].shape == (128, 128, 3) and r["nuclei"].max() > 0
        assert abs(float(r["true_diameter_px"]) - true_nucleus_diameter(r["nuclei"])) < 1e-2


# ------------------------------------------------------------------------------------- scale
@pytest.mark.parametrize(("code", "dapi"), [("AC-1", False), ("AC-7", False), ("AC-3", True)])
def test_scale_estimate_within_15_percent_at_four_magnifications(code, dapi):
    for d in DIAMETERS:
        img, m = sim_field(code, d, seed=11, size=320, dapi=dapi)
        true = true_nucleus_diameter(m["nuclei"])
        est = estimate_nucleus_diameter(img)
        assert abs(est.diameter_px / true - 1) < 0.15, (code, d, est, true)
        assert est.channel == ("dapi" if dapi else "signal") or code == "AC-1"


@pytest.mark.slow
@pytest.mark.parametrize("code", ["AC-0", "AC-6", "AC-8", "AC-11", "AC-19", "AC-21", "AC-22", "AC-26"])
def test_scale_estimate_with_dapi_is_robust_to_non_nuclear_patterns(code):
    """Negative, dots, nucleolar, envelope, cytoplasmic, Golgi: with a DAPI channel the nuclei are measured."""
    for d in DIAMETERS:
        img, m = sim_field(code, d, seed=5, size=320, dapi=True)
        ratio = estimate_nucleus_diameter(img).diameter_px / true_nucleus_diameter(m["nuclei"])
        assert abs(ratio - 1) < 0.15, (code, d, ratio)


def test_dapi_channel_is_detected_and_leakage_is_not():
    with_dapi, _ = sim_field("AC-22", 22, seed=1, size=192, dapi=True)
    without, _ = sim_field("AC-22", 22, seed=1, size=192, dapi=False)
    assert nucleus_channel(with_dapi)[1] == "dapi"
    assert nucleus_channel(without)[1] == "signal"


def test_user_given_scale_wins_and_bad_values_are_refused():
    img, _ = sim_field("AC-1", 22, seed=2, size=160)
    assert resolve_scale(img, nucleus_diameter_px=40).diameter_px == 40
    s = resolve_scale(img, pixel_size=0.5, nucleus_diameter_um=12)
    assert s.diameter_px == pytest.approx(24) and s.source == "pixel_size"
    with pytest.raises(ValueError, match="pixel_size"):
        resolve_scale(img, pixel_size=0)
    with pytest.raises(ValueError, match="nucleus_diameter_px"):
        resolve_scale(img, nucleus_diameter_px=-3)
    with pytest.raises(ValueError, match="no nucleus-like object"):
        estimate_nucleus_diameter(np.zeros((64, 64, 3), np.uint8))


# ------------------------------------------------------------------------------------- segmentation
def _f1(pred: np.ndarray, true: np.ndarray, ignore: np.ndarray) -> float:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fseg", Path(__file__).resolve().parents[2] / "experiments" / "benchmarks" / "field_segmentation.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.prf(*mod.match_f1(pred, true, ignore))[2]


@pytest.mark.parametrize("d", [16, 40])
def test_segmentation_finds_the_true_nuclei(d):
    img, m = sim_field("AC-1", d, seed=4, size=288)
    seg = segment_field(img)
    mit = np.isin(m["cells"], np.flatnonzero(m["mitotic"]))
    assert _f1(seg.nuclei, m["nuclei"], mit) > 0.8
    assert (
        seg.cells.max() == seg.nuclei.max()
        and (seg.cells[seg.nuclei > 0] == seg.nuclei[seg.nuclei > 0]).all()
    )
    # a useless segmentation scores low: the metric can fail
    assert _f1(np.roll(seg.nuclei, d, axis=1), m["nuclei"], mit) < 0.3


def test_a_ring_of_touching_nuclei_is_split_not_filled_and_dropped():
    """Touching nuclei around a gap larger than a nucleus (a dense field's cluster; ICAP AC-1 1473346177-0 had
    ~50 nuclei so merged): the gap is space between nuclei, not a hole inside one. Filled, the ring became one
    object the watershed could not split and the size filter dropped: no cell at all."""
    d, n, size = 16, 12, 200
    yy, xx = np.mgrid[:size, :size]
    grey = np.zeros((size, size), np.float32)
    radius = n * (d - 1) / (2 * np.pi)  # neighbours touch
    for k in range(n):
        cy, cx = size / 2 + radius * np.sin(2 * np.pi * k / n), size / 2 + radius * np.cos(2 * np.pi * k / n)
        grey[(yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2] = 0.8
    img = (np.stack([0.2 * grey, grey, 0.2 * grey], -1) * 255).astype(np.uint8)
    assert np.pi * (radius - d / 2) ** 2 > np.pi * d * d / 4  # the gap is larger than a nucleus
    seg = segment_field(img, d)
    assert seg.n == n
    # a hole inside a nucleus (a nucleolar pattern's dim centre) is still filled: one nucleus per ring of stain
    ring = ((yy - 100) ** 2 + (xx - 100) ** 2 <= 12**2) & ((yy - 100) ** 2 + (xx - 100) ** 2 > 5**2)
    one = (np.stack([0.2 * ring, ring, 0.2 * ring], -1) * 200).astype(np.uint8)
    seg = segment_field(one, 24)
    assert seg.n == 1 and (seg.nuclei[100, 100] == 1)


def test_mitotic_cells_are_flagged():
    hits = total = 0
    for seed in range(3):
        img, m = sim_field("AC-1", 30, seed=seed, size=320)
        seg = segment_field(img, diameter_px=true_nucleus_diameter(m["nuclei"]))
        for j in np.flatnonzero(seg.mitotic):
            total += 1
            hits += bool(np.isin(m["cells"][seg.nuclei == j], np.flatnonzero(m["mitotic"])).mean() > 0.5)
    assert total >= 1 and hits / total >= 0.5


def test_cellpose_backend_names_what_is_missing():
    pytest.importorskip("skimage")
    try:
        import cellpose  # noqa: F401
    except ImportError:
        img, _ = sim_field("AC-1", 20, seed=0, size=96)
        with pytest.raises(ImportError, match="cellpose"):
            segment_field(img, 20, backend="cellpose")
    with pytest.raises(ValueError, match="backend"):
        segment_field(np.zeros((32, 32, 3), np.uint8), 8, backend="magic")


# ------------------------------------------------------------------------------------- crops, tiles, combine
def test_cell_crops_are_contest_style():
    img, _ = sim_field("AC-3", 24, seed=1, size=200)
    seg = segment_field(img, 24)
    crops = cell_crops(img, seg, margin=0.1)
    assert len(crops) == seg.n > 5
    for c in crops:
        r0, c0, r1, c1 = c.bbox
        assert c.image.shape[:2] == c.mask.shape == (r1 - r0, c1 - c0)
        assert (c.image[..., 0] == c.image[..., 1]).all()  # grey, like the contest cells
        assert c.mask.sum() == (seg.nuclei[r0:r1, c0:c1] == c.label).sum() == (seg.nuclei == c.label).sum()


def test_cell_crops_leave_out_a_dapi_counterstain():
    """Cells cut from a field with DAPI in blue are the FITC stain alone: the cell models learnt FITC cells, and
    the brightest channel would show each nucleus's DAPI (homogeneous) over a Golgi or centromere pattern."""
    img, _ = sim_field("AC-22", 24, seed=1, size=200, dapi=True)
    seg = segment_field(img, 24)
    assert seg.channel == "dapi" and (img[..., 2].astype(int) > img[..., :2].max(axis=2)).mean() > 0.1
    crops = cell_crops(img, seg, margin=0.1)
    assert len(crops) > 5
    for c in crops:
        r0, c0, r1, c1 = c.bbox
        assert np.array_equal(c.image[..., 0], img[r0:r1, c0:c1, :2].max(axis=2))
    for c in cell_crops(img, seg, margin=0.1, grey=False):  # in colour too: FITC green, no DAPI blue
        r0, c0, r1, c1 = c.bbox
        assert np.array_equal(c.image[..., :2], img[r0:r1, c0:c1, :2]) and not c.image[..., 2].any()
    plain = sim_field("AC-22", 24, seed=1, size=200)[0]  # no DAPI: the brightest channel, as before
    seg = segment_field(plain, 24)
    c = cell_crops(plain, seg, margin=0.1)[0]
    r0, c0, r1, c1 = c.bbox
    assert seg.channel == "signal" and np.array_equal(c.image[..., 0], plain[r0:r1, c0:c1].max(axis=2))


def test_tiles_cover_the_field_at_the_given_scale():
    img = np.random.default_rng(0).integers(0, 255, (300, 200, 3), np.uint8)
    ts = list(tiles(img, 0.5, 64, overlap=0.25))  # rescaled 150×100: 3×2 tiles
    assert all(t.image.shape == (64, 64, 3) for t in ts) and len(ts) == 6
    assert max(t.box[2] for t in ts) == 300 and max(t.box[3] for t in ts) == 200
    small = list(tiles(img[:40, :40], 1.0, 64))  # smaller than a tile: one padded tile
    assert len(small) == 1 and small[0].image.shape == (64, 64, 3)


def test_combining_rules():
    p = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    assert combine_probs(p, "vote").tolist() == pytest.approx([2 / 3, 1 / 3, 0])
    assert combine_probs(p, "mean").tolist() == pytest.approx(p.mean(0).tolist())
    g = np.exp(np.log(p).mean(0))
    assert combine_probs(p, "mean_log").tolist() == pytest.approx((g / g.sum()).tolist())
    assert combine_probs(p, "mean_log").sum() == pytest.approx(1)
    with pytest.raises(ValueError, match="combine"):
        combine_probs(p, "median")
    with pytest.raises(ValueError, match="N>=1"):
        combine_probs(np.zeros((0, 3)), "mean")


# ------------------------------------------------------------------------------------- ana-predict on fields
@pytest.fixture(scope="module")
def field_folder(tmp_path_factory) -> Path:
    """Two specimens (folders) of simulator fields at two magnifications, plus one unreadable file."""
    root = tmp_path_factory.mktemp("fields")
    for spec, code, d in (("patient1", "AC-1", 18), ("patient2", "AC-3", 30)):
        for i in range(2):
            img, _ = sim_field(code, d + 4 * i, seed=i, size=192)
            (root / spec).mkdir(exist_ok=True)
            cv2.imwrite(str(root / spec / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (root / "patient2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tile_args(ckpt, folder) -> list[str]:
    """ana-predict keys for the fixture's field model read in tiles at a 6 px nucleus."""
    return [f"ckpt_path={ckpt}", f"input={folder}", "progress=false", "model_nucleus_diameter_px=6"]


def test_ana_predict_field_model_tiles_specimens_and_report(trained_checkpoint, field_folder, tmp_path):
    from ana_lightning.predict import run_predict

    _, _, ckpt = trained_checkpoint
    cfg = compose(
        "predict",
        [*_tile_args(ckpt, field_folder), "overlays=true", "group_by=folder"],
        output_dir=tmp_path / "run",
    )
    summary = run_predict(cfg)
    assert (summary.n_images, summary.n_failed) == (5, 1)
    rows = _rows(summary.csv_path)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4 and all(r["unit"] == "tiles" and int(r["n_used"]) >= 1 for r in ok)
    assert {"p_AC-1", "p_AC-2", "p_AC-10", "nucleus_diameter_px", "verdict"} <= set(rows[0])
    for r in ok:  # the estimated scale is the rendered one (±15%), tiles taken at the model's 6 px
        d = float(r["nucleus_diameter_px"])
        assert float(r["rescale_factor"]) == pytest.approx(6 / d, rel=1e-3)
        assert sum(float(r[f"p_{c}"]) for c in ("AC-1", "AC-2", "AC-10")) == pytest.approx(1, abs=1e-4)
        assert Path(r["overlay"]).is_file()
    bad = next(r for r in rows if r["status"] == "error")
    assert "broken.png" in bad["path"] and bad["error"]
    specs = {r["specimen"]: r for r in _rows(tmp_path / "run" / "specimens.csv")}
    assert set(specs) == {"patient1", "patient2"} and specs["patient2"]["n_fields"] == "3"
    # the model has no negative class (AC-0): it names patterns, and does not call the specimen positive
    assert specs["patient1"]["screening"] == "not screened" and specs["patient1"]["patterns"]
    md = (tmp_path / "run" / "specimens.md").read_text()
    assert "**Screening: not screened** — this model has no negative class (AC-0)" in md
    assert "patient1" in md and "thumbnails/" in md and "overlays/" in md
    assert (tmp_path / "run" / "specimens.html").read_text().count("<img") >= 8
    assert (
        tmp_path / "run" / "config_resolved.yaml"
    ).is_file()  # the run folder records the job, as in image mode


def test_field_mode_shows_its_progress_unless_told_not_to(trained_checkpoint, field_folder, tmp_path, capsys):
    """A folder of fields on a CPU takes minutes (0.7 s a field with the cell recipe): both passes show
    a bar with the count, as image mode does; progress=false keeps the console quiet."""
    from ana_lightning.predict import run_predict

    _, _, ckpt = trained_checkpoint
    shown = [a.replace("progress=false", "progress=true") for a in _tile_args(ckpt, field_folder)]
    run_predict(compose("predict", shown, output_dir=tmp_path / "shown"))
    out = capsys.readouterr().out
    assert "estimating scale" in out and "predicting fields" in out and "5/5" in out.replace(" ", "")
    run_predict(compose("predict", _tile_args(ckpt, field_folder), output_dir=tmp_path / "quiet"))
    out = capsys.readouterr().out
    assert "estimating scale" not in out and "predicting fields" not in out


class _PidSegmenter:
    """The classical segmenter, writing the id of the process each call runs in (for the num_workers test)."""

    def __init__(self, log: str):
        from ana_lightning.fields.segment import ClassicalSegmenter

        self.log, self.inner = log, ClassicalSegmenter()

    def nuclei(self, image, grey, diameter_px):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return self.inner.nuclei(image, grey, diameter_px)


@pytest.mark.parametrize("model", ["cell", "tiles"])
def test_field_mode_num_workers_cuts_fields_in_worker_processes_with_the_same_results(
    trained_checkpoint, field_folder, tmp_path, model
):
    """num_workers=N: N processes read and segment the fields (both passes) while this one runs the model; the
    predictions, cells.csv and overlays are those of num_workers=0, the broken file the same error row."""
    from ana_lightning.predict import run_predict

    _, _, ckpt = trained_checkpoint
    args = (
        [f"ckpt_path={ckpt}", f"input={field_folder}", "progress=false", "model_kind=cell", "min_cells=1"]
        if model == "cell"
        else _tile_args(ckpt, field_folder)
    )
    out = {}
    for w in (0, 2):
        log = tmp_path / f"pids{w}.txt"
        seg = {"_target_": f"{__name__}._PidSegmenter", "log": str(log)}
        cfg = compose(
            "predict",
            [*args, f"num_workers={w}", "overlays=true", "per_cell_csv=true"],
            output_dir=tmp_path / f"w{w}",
        )
        cfg.segmenter = seg
        summary = run_predict(cfg)
        assert (summary.n_images, summary.n_failed) == (5, 1)
        out[w] = summary.csv_path.read_text().replace(str(tmp_path / f"w{w}"), "<run>")
        pids = set(log.read_text().split())
        assert (pids == {str(os.getpid())}) if w == 0 else (pids and str(os.getpid()) not in pids)
    assert out[2] == out[0]
    if model == "cell":
        assert (tmp_path / "w2" / "cells.csv").read_text() == (tmp_path / "w0" / "cells.csv").read_text()
    pics = [
        sorted(p.relative_to(tmp_path / f"w{w}") for p in (tmp_path / f"w{w}").rglob("*.png")) for w in (0, 2)
    ]
    assert len(pics[0]) >= 4 and pics[0] == pics[1]  # an overlay per field read
    for rel in pics[0]:
        assert np.array_equal(cv2.imread(str(tmp_path / "w0" / rel)), cv2.imread(str(tmp_path / "w2" / rel)))
    with pytest.raises(ValueError, match="num_workers='two'"):
        run_predict(compose("predict", [*args, "num_workers=two"], output_dir=tmp_path / "bad"))


def test_cells_out_writes_the_cells_of_labelled_fields_as_training_cells(trained_checkpoint, tmp_path):
    """cells_out=<folder> with truth=: every interphase cell not cut by the border that the cell model read, as an
    I3A-layout folder labelled by the model class the field's label meets (round 24); the same with worker
    processes; a field whose label meets no class is not written."""
    from ana_lightning.data.contest import read_i3a2014
    from ana_lightning.predict import run_predict
    from ana_lightning.taxonomy import Taxonomy

    _, _, ckpt = trained_checkpoint  # classes AC-1, AC-2, AC-10
    lab = tmp_path / "lab"
    for code, d, i in (("ac-1", 18, 0), ("ac-1", 22, 1), ("ac-3", 20, 0)):
        img, _ = sim_field(code.upper(), d, seed=i, size=192)
        (lab / code).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(lab / code / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    base = [f"ckpt_path={ckpt}", f"input={lab}", "progress=false", "model_kind=cell", "truth=folder"]
    written = {}
    for w in (0, 2):
        out = tmp_path / f"cells{w}"
        run_predict(
            compose(
                "predict",
                [*base, f"cells_out={out}", f"num_workers={w}", "per_cell_csv=true"],
                output_dir=tmp_path / f"r{w}",
            )
        )
        rows = _rows(out / "gt_training.csv")
        written[w] = (rows, [(out / f"{r['Image ID']}.png").read_bytes() for r in rows])
        cells = _rows(tmp_path / f"r{w}" / "cells.csv")
        read = [c for c in cells if "/ac-1/" in c["path"] and c["mitotic"] == "0" and c["border"] == "0"]
        assert len(rows) == len(read) >= 10  # each ac-1 cell the model read as interphase and whole
        assert {r["Image class"] for r in rows} == {"AC-1"}  # ac-3 meets no class of this model
        assert sorted({r["Field"] for r in rows}) == ["ac-1/f0.png", "ac-1/f1.png"]
        assert all(r["Specimen ID"] == r["Field"] for r in rows)  # no group_by: each field its own specimen
        for r in rows[:5]:
            crop = np.array(Image.open(out / f"{r['Image ID']}.png"))
            mask = np.array(Image.open(out / f"{r['Image ID']}_Mask.png"))
            assert crop.ndim == 2 and crop.dtype == np.uint8 and mask.shape == crop.shape
            assert set(np.unique(mask)) <= {0, 255} and 0 < (mask > 0).mean() < 1
    assert written[2] == written[0]  # cut in worker processes: the same cells
    data = read_i3a2014(tmp_path / "cells0", Taxonomy.load())  # what data.extra_train reads
    assert len(data.records) == len(written[0][0]) and {r.codes for r in data.records} == {("AC-1",)}
    assert len({r.group for r in data.records}) == 2 and len(data.masks) == len(data.records)
    with pytest.raises(ValueError, match="cells_out=.* needs truth="):
        run_predict(
            compose("predict", [*base[:-1], f"cells_out={tmp_path / 'x'}"], output_dir=tmp_path / "e1")
        )
    with pytest.raises(FileExistsError, match="cells_out=.*cells0 exists and is not an empty folder"):
        run_predict(
            compose("predict", [*base, f"cells_out={tmp_path / 'cells0'}"], output_dir=tmp_path / "e2")
        )
    with pytest.raises(ValueError, match="cells_out=.* not a cell model"):
        run_predict(
            compose(
                "predict",
                [*_tile_args(ckpt, lab), "truth=folder", f"cells_out={tmp_path / 'y'}"],
                output_dir=tmp_path / "e3",
            )
        )
    # a label that meets several classes of the model (a level-1 node) and none alone: refused before reading
    (tmp_path / "amb" / "nuclear").mkdir(parents=True)
    shutil.copy(lab / "ac-1" / "f0.png", tmp_path / "amb" / "nuclear" / "f0.png")
    amb = [
        f"ckpt_path={ckpt}",
        f"input={tmp_path / 'amb'}",
        "progress=false",
        "model_kind=cell",
        "truth=folder",
    ]
    with pytest.raises(
        ValueError, match=r"cells_out=.*no field's label meets exactly one class.*labels: nuclear;"
    ):
        run_predict(
            compose(
                "predict",
                [*amb, "truth_min_level=1", f"cells_out={tmp_path / 'z'}"],
                output_dir=tmp_path / "e4",
            )
        )
    assert not (tmp_path / "z").exists()


def test_ordered_map_keeps_the_order_reads_ahead_boundedly_and_raises_a_jobs_error():
    from ana_lightning.fields.job import ordered_map

    taken = []

    def jobs():
        for i in range(20):
            taken.append(i)
            yield i

    results = ordered_map(abs, (-j for j in jobs()), 2)
    assert next(results) == 0 and len(taken) <= 5  # at most two jobs per worker ahead of the one consumed
    assert list(results) == list(range(1, 20))
    with pytest.raises(TypeError):
        list(ordered_map(abs, [1, "x", 3], 1))
    assert list(ordered_map(abs, [-1, -2], 0)) == [1, 2]
    # a worker killed (out of memory, say) is an error that says what to do, not a pool's traceback
    with pytest.raises(RuntimeError, match="num_workers=1.*fewer workers"):
        list(ordered_map(os._exit, [3], 1))


def test_field_mode_reports_oversized_files_without_reading_them(trained_checkpoint, field_folder, tmp_path):
    """max_file_mb holds in field mode too: a file over it is an error row naming the limit, the others are read."""
    from ana_lightning.predict import run_predict

    _, _, ckpt = trained_checkpoint
    sizes = sorted(f.stat().st_size for f in field_folder.rglob("*.png") if f.name != "broken.png")
    limit = (sizes[0] + sizes[-1]) / 2 / 2**20  # between the smallest and the largest field
    cfg = compose(
        "predict", [*_tile_args(ckpt, field_folder), f"max_file_mb={limit}"], output_dir=tmp_path / "run"
    )
    rows = _rows(run_predict(cfg).csv_path)
    over = [r for r in rows if Path(r["path"]).stat().st_size > limit * 2**20]
    assert over and all(r["status"] == "error" and "max_file_mb" in r["error"] for r in over)
    rest = [r for r in rows if r not in over and "broken" not in r["path"]]
    assert rest and all(r["status"] == "ok" for r in rest)


def test_ana_predict_cell_model_per_cell_csv_and_insufficient_cells(
    trained_checkpoint, field_folder, tmp_path
):
    from ana_lightning.predict import run_predict

    _, _, ckpt = trained_checkpoint
    cfg = compose(
        "predict",
        [
            f"ckpt_path={ckpt}",
            f"input={field_folder}",
            "progress=false",
            "model_kind=cell",
            "per_cell_csv=true",
            "combine=vote",
            "min_cells=3",
        ],
        output_dir=tmp_path / "run",
    )
    run_predict(cfg)
    rows = [r for r in _rows(tmp_path / "run" / "predictions.csv") if r["status"] == "ok"]
    cells = _rows(tmp_path / "run" / "cells.csv")
    for r in rows:
        mine = [c for c in cells if c["path"] == r["path"]]
        used = [c for c in mine if c["used"] == "1"]
        assert r["unit"] == "cells" and int(r["n_used"]) == len(used) and int(r["n_cells"]) == len(mine)
        assert all(c["mitotic"] == "0" and c["border"] == "0" for c in used)
        votes = [c["pred"] for c in used]  # vote: share of cells per class
        for k in ("AC-1", "AC-2", "AC-10"):
            assert float(r[f"p_{k}"]) == pytest.approx(votes.count(k) / len(votes), abs=1e-6)
    cfg = compose(
        "predict",
        [f"ckpt_path={ckpt}", f"input={field_folder}", "progress=false", "model_kind=cell", "min_cells=1000"],
        output_dir=tmp_path / "run2",
    )
    run_predict(cfg)
    rows = [r for r in _rows(tmp_path / "run2" / "predictions.csv") if r["status"] == "ok"]
    assert rows and all(r["verdict"] == INSUFFICIENT for r in rows)


def test_a_folder_of_cell_crops_read_as_fields_says_how_to_read_them_as_cells(
    trained_checkpoint, field_folder, tmp_path, caplog
):
    """Single-cell crops without masks beside them are read as fields by a cell model: each holds one cell and
    gets no verdict. A WARNING says how to read them as cells; a folder of fields gets none."""
    import logging

    from ana_lightning.predict import run_predict

    _, _, ckpt = trained_checkpoint
    img, _ = sim_field("AC-1", 30, seed=0, size=192)
    seg = segment_field(img, 30.0)
    crops = tmp_path / "crops"
    crops.mkdir()
    for c in [c for c in cell_crops(img, seg, margin=0.1, grey=False) if not c.touches_border][:4]:
        cv2.imwrite(str(crops / f"cell{c.label}.png"), cv2.cvtColor(c.image, cv2.COLOR_RGB2BGR))
    assert len(list(crops.glob("*.png"))) == 4
    said = {}
    for name, folder in (("crops", crops), ("fields", field_folder)):
        caplog.clear()
        over = [
            f"ckpt_path={ckpt}",
            f"input={folder}",
            "progress=false",
            "model_kind=cell",
            "nucleus_diameter_px=30",
        ]
        with caplog.at_level(logging.WARNING):
            run_predict(compose("predict", over, output_dir=tmp_path / name))
        rows = [r for r in _rows(tmp_path / name / "predictions.csv") if r["status"] == "ok"]
        said[name] = [m for m in caplog.messages if "held at most one cell" in m]
        if name == "crops":
            assert len(rows) == 4 and all(
                int(r["n_cells"]) <= 1 and r["verdict"] == INSUFFICIENT for r in rows
            )
    assert len(said["crops"]) == 1 and "4 of the 4 field(s) read" in said["crops"][0]
    assert "fields=false" in said["crops"][0] and said["fields"] == []


def test_field_model_without_a_stored_scale_is_refused_clearly(trained_checkpoint, field_folder, tmp_path):
    from ana_lightning.predict import run_predict

    _, _, ckpt = trained_checkpoint
    cfg = compose(
        "predict",
        [f"ckpt_path={ckpt}", f"input={field_folder}", "progress=false", "overlays=true"],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(ValueError, match="model_nucleus_diameter_px"):
        run_predict(cfg)
    # without any field option the old whole-image behaviour is kept
    cfg = compose(
        "predict",
        [f"ckpt_path={ckpt}", f"input={field_folder}", "progress=false"],
        output_dir=tmp_path / "r2",
    )
    assert "pred" in _rows(run_predict(cfg).csv_path)[0]


@pytest.mark.slow
def test_training_scale_is_stored_and_used(tmp_path):
    """data.nucleus_diameter_px: fields brought to one scale in training, stored in the checkpoint, and
    ana-predict then reads fields at that scale without being told."""
    from ana_lightning.fields.verdicts import training_scale
    from ana_lightning.pipeline import train
    from ana_lightning.predict import run_predict

    from conftest import tiny_train_overrides

    root = tmp_path / "data"
    for code, d in (("AC-1", 20), ("AC-3", 36)):
        (root / code).mkdir(parents=True)
        for i in range(8):
            img, _ = sim_field(code, d if i % 2 else d * 0.6, seed=i, size=160)
            cv2.imwrite(str(root / code / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    run = tmp_path / "runs" / "r"
    train(
        compose(
            "train", [*tiny_train_overrides(root, epochs=1), "data.nucleus_diameter_px=8"], output_dir=run
        )
    )
    ckpt = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    assert training_scale(ckpt) == {
        "nucleus_diameter_px": 8.0,
        "input_kind": None,
        "cell_mask": "none",
        "crop_fraction": None,
        "bit_depth": None,
        "channels": None,
    }
    cfg = compose(
        "predict", [f"ckpt_path={ckpt}", f"input={root}", "progress=false"], output_dir=tmp_path / "p"
    )
    rows = _rows(run_predict(cfg).csv_path)
    assert all(
        r["unit"] == "tiles"
        and float(r["rescale_factor"]) == pytest.approx(8 / float(r["nucleus_diameter_px"]), rel=1e-3)
        for r in rows
    )


# ------------------------------------------------------------------------------------- real reference fields
@pytest.mark.skipif(
    not REFERENCE.is_dir(), reason="reference fields not present (../shared/data/ana-pattern-quest)"
)
def test_reference_fields_scale_and_segmentation():
    from ana_lightning.data.images import load_image

    # nuclear patterns of the 300-px reference fields: nuclei are ~18–40 px across
    for code in ("ac-1", "ac-8", "ac-11", "ac-6"):
        f = sorted((REFERENCE / "patterns" / code).glob("*.jp*g"))[0]
        img = load_image(f)
        est = estimate_nucleus_diameter(img)
        assert 16 <= est.diameter_px <= 42 and est.reliable, (f, est)
        seg = segment_field(img, est.diameter_px)
        assert seg.n >= 10, (f, seg.n)


def test_cell_crops_framed_as_the_model_was_trained():
    """A model trained with data.crop_fraction gets square field crops in which the cell's box spans that
    share of the side, also for cells at the field's edge (filled past it); without it, the margin cut."""
    img, _ = sim_field("AC-1", 24, seed=3, size=160)
    seg = segment_field(img, 24)
    framed = cell_crops(img, seg, fraction=0.5)
    plain = cell_crops(img, seg, margin=0.1)
    assert len(framed) == len(plain) == seg.n > 3
    edge = 0
    for f, p in zip(framed, plain, strict=True):
        h, w = f.image.shape[:2]
        rows, cols = np.nonzero(f.mask.any(axis=1))[0], np.nonzero(f.mask.any(axis=0))[0]
        box = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
        assert h == w == round(box / 0.5) and f.mask.sum() == p.mask.sum() == f.area
        r0, c0, r1, c1 = f.bbox
        edge += r0 == 0 or c0 == 0 or r1 == img.shape[0] or c1 == img.shape[1]
    assert edge > 0  # the test covers cells whose square reaches past the field
    with pytest.raises(ValueError, match="crop_fraction"):
        cell_crops(img, seg, fraction=1.5)


def test_field_predictor_cuts_cells_at_the_models_framing():
    """A cell model trained with data.crop_fraction: the field predictor hands it square crops at that
    framing (field_mode's fourth value); without it, the margin cut as before."""
    from types import SimpleNamespace

    import torch

    from ana_lightning.fields.predictor import FieldPredictor
    from ana_lightning.predict.rules import ModelInfo, SingleLabelRule

    seen: list[tuple[int, int]] = []

    class Stub:
        class_names, task, source = ("a", "b"), "single_label", "stub"
        info = SimpleNamespace(image_size=16, thresholds=None, extra={})

        def preprocess(self, image):
            seen.append(image.shape[:2])
            return torch.zeros(3, 16, 16)

        def predict_proba(self, batch):
            return np.tile([0.7, 0.3], (len(batch), 1))

        def decide(self, probs):
            return ("a",)

        rule = SingleLabelRule(
            ModelInfo(task="single_label", class_names=("a", "b"), image_size=16, mean=(0,) * 3, std=(1,) * 3)
        )

    img, _ = sim_field("AC-1", 24, seed=3, size=160)
    est = estimate_nucleus_diameter(img)
    framed = FieldPredictor(Stub(), "cell", None, cell_mask="channel", crop_fraction=0.5)
    res, _ = framed.predict_field(img, est)
    assert res.n_cells == len(seen) > 3 and all(h == w for h, w in seen)
    want = [c.image.shape[:2] for c in cell_crops(img, segment_field(img, est.diameter_px), fraction=0.5)]
    assert seen == want
    seen.clear()
    FieldPredictor(Stub(), "cell", None, cell_mask="channel").predict_field(img, est)
    assert seen == [
        c.image.shape[:2] for c in cell_crops(img, segment_field(img, est.diameter_px), margin=0.1)
    ]


def test_cell_crops_follow_the_models_mask_mode():
    img, _ = sim_field("AC-1", 24, seed=2, size=160)
    seg = segment_field(img, 24)
    plain = cell_crops(img, seg, margin=0.2)
    applied = cell_crops(img, seg, margin=0.2, mask_mode="apply")
    chan = cell_crops(img, seg, margin=0.2, mask_mode="channel")
    for p, a, c in zip(plain, applied, chan, strict=True):
        assert (a.image[~a.mask] == 0).all() and (a.image[a.mask] == p.image[a.mask]).all()
        assert (c.image[..., 2] == np.where(c.mask, 255, 0)).all()


def test_training_scale_reads_the_checkpoint(tmp_path):
    import torch

    from ana_lightning.fields.verdicts import training_scale

    cells = tmp_path / "cells.ckpt"
    torch.save(
        {"state_dict": {}, "datamodule_hyper_parameters": {"reader": "i3a2014", "mask": "apply"}}, cells
    )
    assert training_scale(cells) == {
        "nucleus_diameter_px": None,
        "input_kind": "cell",
        "cell_mask": "apply",
        "crop_fraction": None,
        "bit_depth": None,
        "channels": None,
    }
    # the same reader given as a _target_ config (data.reader: {_target_: …I3A2014Reader, …})
    target = tmp_path / "target.ckpt"
    reader = {"_target_": "ana_lightning.data.readers.I3A2014Reader", "grouping": "blocks"}
    torch.save(
        {"state_dict": {}, "datamodule_hyper_parameters": {"reader": reader, "mask": "channel"}}, target
    )
    assert training_scale(target) == {
        "nucleus_diameter_px": None,
        "input_kind": "cell",
        "cell_mask": "channel",
        "crop_fraction": None,
        "bit_depth": None,
        "channels": None,
    }
    framed = tmp_path / "framed.ckpt"
    dm = {"reader": "i3a2014", "mask": "channel", "crop_fraction": 0.7}
    torch.save({"state_dict": {}, "datamodule_hyper_parameters": dm}, framed)
    assert training_scale(framed)["crop_fraction"] == 0.7
    dm["bit_depth"] = 12  # data.bit_depth: how its files with more than 8 bits were read
    torch.save({"state_dict": {}, "datamodule_hyper_parameters": dm}, framed)
    assert training_scale(framed)["bit_depth"] == 12
    # a reader class that cannot be imported here tells nothing (not an error)
    gone = tmp_path / "gone.ckpt"
    torch.save(
        {"state_dict": {}, "datamodule_hyper_parameters": {"reader": {"_target_": "nowhere.Reader"}}}, gone
    )
    assert training_scale(gone)["input_kind"] is None
    fields = tmp_path / "fields.ckpt"
    torch.save({"state_dict": {}, "datamodule_hyper_parameters": {"nucleus_diameter_px": 13}}, fields)
    assert training_scale(fields)["nucleus_diameter_px"] == 13.0
    assert training_scale(tmp_path / "model.onnx")["nucleus_diameter_px"] is None


def test_app_shows_the_cell_overlay_of_a_field(trained_checkpoint, field_folder):
    """ana-app with a cell model on a field: the preview is the overlay, the probabilities are the
    field's combined cell probabilities (as ana-predict computes them)."""
    from ana_lightning.app import analyse, field_predictor
    from ana_lightning.predict import load_predictor

    _, _, ckpt = trained_checkpoint
    cfg = compose("app", [f"ckpt_path={ckpt}", "model_kind=cell", "min_cells=1", "combine=mean"])
    predictor = load_predictor(cfg, "ana-app")
    fp = field_predictor(cfg, predictor)
    assert fp is not None and fp.kind == "cell"
    path = field_folder / "patient1" / "f0.png"
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    preview, text, chart, probs = analyse(predictor, path.read_bytes(), field=fp)
    res, _ = fp.predict_field(image, estimate_nucleus_diameter(image), "x", want_overlay_labels=True)
    assert probs is not None and np.allclose(probs, res.probs)
    assert preview.shape[1] > image.shape[1]  # the field plus the legend panel
    assert f"{res.n_used} cells" in text and chart is not None
    assert (
        field_predictor(compose("app", [f"ckpt_path={ckpt}"]), predictor) is None
    )  # a field model: whole image
    # too few usable cells: no verdict, a row of a several-fields upload and left out of the specimen (it
    # crashed the page before: the label "insufficient cells" is no class)
    from ana_lightning.app import analyse_many

    strict = field_predictor(
        compose("app", [f"ckpt_path={ckpt}", "model_kind=cell", f"min_cells={res.n_used + 1}"]), predictor
    )
    _, text, chart, probs = analyse(predictor, path.read_bytes(), field=strict)
    assert text.startswith("### insufficient cells") and probs is None and chart is None
    _, text, _, state = analyse_many(predictor, [path.read_bytes(), path.read_bytes()], field=strict)
    assert "No field could be read" in text and state["probs"] is None and text.count("| no verdict |") == 2


def test_field_mode_warns_about_overexposed_fields(trained_checkpoint, field_folder, tmp_path, caplog):
    import logging
    import shutil

    from ana_lightning.predict import run_predict

    _, _, ckpt = trained_checkpoint
    inp = tmp_path / "in"
    shutil.copytree(field_folder / "patient1", inp)
    img = cv2.imread(str(inp / "f0.png"))
    img[: img.shape[0] // 2] = 255
    cv2.imwrite(str(inp / "f0.png"), img)
    with caplog.at_level(logging.WARNING, logger="ana_lightning.data.images"):
        run_predict(compose("predict", _tile_args(ckpt, inp), output_dir=tmp_path / "run"))
    (said,) = [r.getMessage() for r in caplog.records if "overexposed" in r.getMessage()]
    share = (
        cv2.imread(str(inp / "f0.png")).max(axis=2) >= 255
    ).mean()  # the half clipped, and what already was
    assert said.startswith("1 field(s) overexposed") and f"f0.png ({share:.0%} saturated)" in said
    assert "f1.png" not in said


def test_specimen_screening_needs_a_negative_class():
    """A model with AC-0 screens (negative: no patterns; positive: its patterns); a model without it names
    its patterns and says "not screened", never "positive" (which it could not have told from negative)."""
    from types import SimpleNamespace

    from ana_lightning.fields.predictor import FieldResult
    from ana_lightning.fields.specimens import NOT_SCREENED, specimen_verdicts

    def model(names):
        return SimpleNamespace(
            class_names=tuple(names),
            task="single_label",
            info=SimpleNamespace(thresholds=None),
            rule=SimpleNamespace(combine=lambda p, how: p.mean(axis=0)),
        )

    def specimen(names, probs):
        fields = [FieldResult(path="f", verdict=(), probs=np.array(probs), group="s")]
        (row,) = specimen_verdicts(fields, model(names))
        return row["screening"], row["patterns"]

    assert specimen(["AC-0", "AC-1", "AC-4"], [0.7, 0.2, 0.1]) == ("negative", "")
    assert specimen(["AC-0", "AC-1", "AC-4"], [0.1, 0.6, 0.3]) == ("positive", "AC-1;AC-4")
    assert specimen(["AC-1", "AC-4"], [0.6, 0.4]) == (NOT_SCREENED, "AC-1;AC-4")
    assert specimen(["Homogeneous", "Golgi"], [0.3, 0.7]) == (NOT_SCREENED, "Golgi;Homogeneous")
    # a level-1 model (the tree's nodes as classes): its "negative" node screens as AC-0 does
    assert specimen(["negative", "nuclear", "cytoplasmic"], [0.6, 0.3, 0.1]) == ("negative", "")
    assert specimen(["negative", "nuclear", "cytoplasmic"], [0.3, 0.6, 0.1]) == ("positive", "nuclear")
