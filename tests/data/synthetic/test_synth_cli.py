"""``ana-synth`` as a Hydra command (conf/synth.yaml, conf/generator/) and its old argparse flags."""

from __future__ import annotations

import csv
import hashlib
import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_method

from ana_lightning.cli.synth import main, translate_legacy

from conftest import REPO


@pytest.fixture(autouse=True)
def _run_folders_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("ANA_ROOT", str(tmp_path))  # Hydra's run folder (outputs/synth/runs/...) goes there
    # an in-process Hydra run points the root logger at this test's captured stdout: put it back after
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("layout", ["fields", "hospital", "cells"])
def test_generator_keys_are_the_writer_arguments(layout):
    cfg = yaml.safe_load((REPO / "conf" / "generator" / f"{layout}.yaml").read_text())
    fn = get_method(cfg.pop("_target_"))
    assert cfg.pop("_partial_") is True
    assert set(cfg) == set(inspect.signature(fn).parameters)


def test_overrides_write_each_layout(tmp_path, capsys):
    main(
        [
            f"generator.root={tmp_path / 'f'}",
            "generator.n_per_class=1",
            "generator.size=48",
            "generator.codes=[AC-0,AC-31]",
            "generator.progress=false",
        ]
    )
    assert "wrote 2 images" in capsys.readouterr().out
    assert [r["label"] for r in _rows(tmp_path / "f" / "manifest.csv")] == ["AC-0", "AC-31"]

    main(
        [
            "generator=hospital",
            f"generator.root={tmp_path / 'h'}",
            "generator.n_images=3",
            "generator.size=48",
            "generator.n_patients=2",
            "generator.progress=false",
        ]
    )
    assert "wrote 3 images" in capsys.readouterr().out
    assert len(_rows(tmp_path / "h" / "manifest.csv")) == 3

    main(
        [
            "generator=cells",
            f"generator.root={tmp_path / 'c'}",
            "generator.n_per_class=1",
            "generator.codes='AC-1,AC-3'",
            "generator.progress=false",
        ]
    )
    assert "wrote 2 cells" in capsys.readouterr().out
    assert [r["Image class"] for r in _rows(tmp_path / "c" / "gt_training.csv")] == [
        "Homogeneous",
        "Centromere",
    ]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            [
                "--n-per-class",
                "1",
                "--size",
                "48",
                "--codes",
                "AC-2,AC-25",
                "--format",
                "jpg",
                "--dapi",
                "--difficulty",
                "hard",
                "--seed",
                "3",
                "--no-progress",
            ],
            [
                "generator.n_per_class=1",
                "generator.size=48",
                "generator.codes=[AC-2,AC-25]",
                "generator.fmt=jpg",
                "generator.dapi=true",
                "generator.difficulty=hard",
                "generator.seed=3",
                "generator.progress=false",
            ],
        ),
        (
            [
                "--hospital",
                "--n-images",
                "4",
                "--n-patients",
                "2",
                "--max-patterns",
                "2",
                "--size",
                "48",
                "--no-progress",
            ],
            [
                "generator=hospital",
                "generator.n_images=4",
                "generator.n_patients=2",
                "generator.max_patterns=2",
                "generator.size=48",
                "generator.progress=false",
            ],
        ),
        (
            [
                "--cells",
                "--classes",
                "level2",
                "--codes",
                "AC-4,AC-26",
                "--n-per-class",
                "2",
                "--cells-per-field",
                "1",
                "--intermediate-fraction",
                "0.3",
                "--color",
                "green",
                "--no-progress",
            ],
            [
                "generator=cells",
                "generator.classes=level2",
                "generator.codes=[AC-4,AC-26]",
                "generator.n_per_class=2",
                "generator.cells_per_field=1",
                "generator.intermediate_fraction=0.3",
                "generator.color=green",
                "generator.progress=false",
            ],
        ),
    ],
    ids=["fields", "hospital", "cells"],
)
def test_old_flags_write_the_same_files_as_overrides(tmp_path, capsys, old, new):
    main(["--output", str(tmp_path / "old"), *old])
    err = capsys.readouterr().err
    assert "deprecated" in err and "generator.root=" in err
    main([f"generator.root={tmp_path / 'new'}", *new])
    a, b = _digest(tmp_path / "old"), _digest(tmp_path / "new")
    assert a and a == b


def test_translate_legacy():
    assert translate_legacy(["generator.size=64", "--cfg", "job"]) == ["generator.size=64", "--cfg", "job"]
    assert translate_legacy(["-o", "x y", "--dapi", "--seed=4"]) == [
        "generator.root='x y'",
        "generator.dapi=true",
        "generator.seed=4",
    ]
    # flags the chosen layout never used are dropped, as the old command silently did
    assert translate_legacy(["--hospital", "--format", "jpg", "--n-images", "5"]) == [
        "generator=hospital",
        "generator.n_images=5",
    ]
    assert translate_legacy(["--output", "it's"]) == ["generator.root='it\\'s'"]


def test_bad_value_stops_with_a_message_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([f"generator.root={tmp_path / 'x'}", "generator.codes=[AC-99]", "generator.progress=false"])
    assert e.value.code == 2
    assert "AC-99" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path / "y"), "--format", "tiff"])  # argparse choices, as before


@pytest.mark.slow  # ~5-20 s: a fresh interpreter imports torch (the shared resolvers need it)
def test_console_command_runs_in_a_subprocess(tmp_path):
    env = {**os.environ, "ANA_ROOT": str(tmp_path)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ana_lightning.cli.synth",
            f"generator.root={tmp_path / 's'}",
            "generator.n_per_class=1",
            "generator.size=40",
            "generator.codes=[AC-5]",
            "generator.progress=false",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "s" / "AC-5" / "AC-5_00000.png").is_file()
    assert list((tmp_path / "outputs" / "synth" / "runs").glob("*/.hydra/config.yaml"))


@pytest.mark.parametrize(
    "layout,table,extra",
    [
        (
            "fields",
            "manifest.csv",
            ["generator.n_per_class=1", "generator.size=40", "generator.codes=[AC-1]"],
        ),
        ("hospital", "manifest.csv", ["generator.n_images=2", "generator.n_patients=1", "generator.size=40"]),
        ("cells", "gt_training.csv", ["generator.n_per_class=1", "generator.codes=[AC-1]"]),
    ],
)
def test_a_folder_of_someone_elses_files_is_never_written_into(tmp_path, capsys, layout, table, extra):
    """ana-synth into a folder of real images (a wrong generator.root) used to add synthetic images among them
    and replace their manifest.csv / gt_training.csv: now it refuses and leaves every file as it was. Its
    own folders still resume, also those written before the folders were marked."""
    real = tmp_path / "real"
    (real / "AC-1").mkdir(parents=True)
    (real / "AC-1" / "field1.png").write_bytes(b"a real field")
    (real / table).write_text("Image ID,Image class\n00001,Homogeneous\n")
    before = _digest(real)
    args = [f"generator={layout}", f"generator.root={real}", "generator.progress=false", *extra]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{real} holds files that ana-synth did not write (AC-1, {table})" in err
    assert _digest(real) == before
    # its own folder: written, then resumed; one written before the marker existed resumes too
    own = tmp_path / "own"
    main([f"generator={layout}", f"generator.root={own}", "generator.progress=false", *extra])
    written = _digest(own)
    assert ".ana-synth" in written
    (own / ".ana-synth").unlink()
    main([f"generator={layout}", f"generator.root={own}", "generator.progress=false", *extra])
    assert _digest(own) == written
