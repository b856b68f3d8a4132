"""The fields package after its split: segmenters built from names or ``_target_`` configs, the old
import paths, and no import circle inside ``ana_lightning.fields``."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from ana_lightning.fields.segment import (
    CellposeSegmenter,
    ClassicalSegmenter,
    build_segmenter,
    segment_field,
)

FIELDS = Path(__file__).resolve().parents[2] / "ana_lightning" / "fields"


def _field() -> np.ndarray:
    from ana_lightning.data.synthetic import render_field

    return render_field("AC-1", np.random.default_rng(0), size=160, nucleus_diameter_px=24)


def test_a_segmenter_from_a_name_a_target_config_or_an_object_segments_alike():
    img = _field()
    by_name = segment_field(img, 24.0, backend="classical")
    cfg = OmegaConf.create({"_target_": "ana_lightning.fields.segment.ClassicalSegmenter"})
    for spec in (ClassicalSegmenter(), cfg):
        seg = segment_field(img, 24.0, backend=spec)
        assert np.array_equal(seg.nuclei, by_name.nuclei) and np.array_equal(seg.cells, by_name.cells)
    assert by_name.n > 3
    assert np.array_equal(ClassicalSegmenter()(img, 24.0).cells, by_name.cells)


def test_build_segmenter_names_targets_and_errors():
    assert isinstance(build_segmenter("classical"), ClassicalSegmenter)
    cp = build_segmenter("cellpose", cellpose_model="cyto")
    assert isinstance(cp, CellposeSegmenter) and cp.model_type == "cyto"
    made = build_segmenter(
        {"_target_": "ana_lightning.fields.segment.CellposeSegmenter", "model_type": "nuclei"}
    )
    assert isinstance(made, CellposeSegmenter) and made.model_type == "nuclei"
    with pytest.raises(ValueError, match="watershed"):
        build_segmenter("watershed")
    with pytest.raises(ValueError, match="segmenter=3"):
        build_segmenter(3)


def test_cellpose_without_the_package_is_a_clear_error():
    pytest.importorskip("skimage")
    try:
        import cellpose  # noqa: F401

        pytest.skip("cellpose is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install cellpose"):
        CellposeSegmenter()(_field(), 24.0)


def test_old_import_paths_keep_working():
    from ana_lightning.fields import verdicts
    from ana_lightning.fields.scale import nucleus_channel
    from ana_lightning.fields.segment import BACKENDS

    for name in (
        "training_scale",
        "field_mode",
        "FieldPredictor",
        "FieldResult",
        "run_field_predict",
        "specimen_verdicts",
        "write_specimens",
        "field_columns",
        "FIELD_KEYS",
    ):
        assert getattr(verdicts, name) is not None, name
    assert callable(nucleus_channel) and BACKENDS == ("classical", "cellpose")


def _imports(path: Path) -> set[str]:
    """Sibling modules of ``ana_lightning.fields`` that ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ana_lightning.fields."):
            out.add(node.module.split(".")[2])
    return out


def test_no_import_circle_inside_the_fields_package():
    graph = {p.stem: _imports(p) for p in FIELDS.glob("*.py")}
    assert "segment" in graph["scale"] and "scale" not in graph["segment"]  # the circle that was

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            x = todo.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                todo += graph.get(x, set())
        return False

    circles = [(m, d) for m, deps in graph.items() for d in deps if d in graph and reaches(d, m)]
    assert not circles, circles
