"""A non-editable install finds its configs from any working directory (conf/ ships in the wheel)."""

import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(REPO),
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        cwd=out,
    )
    whl = next(out.glob("ana_lightning-*.whl"))
    site = out / "site"
    with zipfile.ZipFile(whl) as z:
        z.extractall(site)
        names = set(z.namelist())
    return site, names


def test_wheel_contains_every_config(wheel_site):
    _, names = wheel_site
    for p in (REPO / "conf").rglob("*.yaml"):
        rel = "ana_lightning/conf/" + p.relative_to(REPO / "conf").as_posix()
        assert rel in names, f"{rel} is missing from the wheel"
    assert "ana_lightning/resources/icap_tree.yaml" in names


def test_wheel_contains_every_package(wheel_site):
    _, names = wheel_site
    for init in (REPO / "ana_lightning").rglob("__init__.py"):
        rel = init.relative_to(REPO).as_posix()
        assert rel in names, (
            f"{rel} is missing from the wheel: list its package in pyproject.toml [tool.setuptools]"
        )


@pytest.mark.parametrize("command", ["train", "eval"])
def test_installed_commands_compose_from_another_directory(wheel_site, tmp_path, command):
    site, _ = wheel_site
    code = (
        "import sys, ana_lightning; assert ana_lightning.__file__.startswith(sys.argv[1]), ana_lightning.__file__; "
        f"sys.argv = ['ana-{command}', '--cfg', 'job', 'ckpt_path=x.ckpt', 'experiment=single_resnet50', 'data.root=/x'] "
        f"if '{command}' == 'train' else ['ana-eval', '--cfg', 'job', 'ckpt_path=x.ckpt']; "
        f"from ana_lightning.cli.{command} import main; main()"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "_target_: ana_lightning.data" in r.stdout
    if command == "train":
        assert "name: resnet50" in r.stdout


def test_installed_synth_composes_and_has_the_simulator_package(wheel_site, tmp_path):
    site, names = wheel_site
    assert "ana_lightning/data/synthetic/patterns/nuclear.py" in names
    code = (
        "import sys, ana_lightning; assert ana_lightning.__file__.startswith(sys.argv[1]), ana_lightning.__file__; "
        "from ana_lightning.cli.synth import main; main(['--cfg', 'job', 'generator=cells'])"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "_target_: ana_lightning.data.synthetic.generate_cell_dataset" in r.stdout


def test_the_wheel_ships_the_licence_and_the_citation_matches_the_package(wheel_site):
    """The licence pyproject.toml declares is the LICENSE the wheel carries, and CITATION.cff cites the
    version and licence being installed (a release that bumps one and not the other fails here)."""
    import re

    import yaml

    _, names = wheel_site
    text = (REPO / "pyproject.toml").read_text()  # tomllib is Python >= 3.11; the project runs on 3.10
    project = {
        "version": re.search(r'^version = "([^"]+)"', text, re.M).group(1),
        "license": {"text": re.search(r'^license = \{ text = "([^"]+)" \}', text, re.M).group(1)},
    }
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert str(cff["version"]) == project["version"] and cff["license"] == project["license"]["text"]
    assert (REPO / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert project["license"]["text"] == "Apache-2.0"
    assert any(
        n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names
    ), sorted(n for n in names if "dist-info" in n)
    for ref in cff["references"]:  # every reference says what it is and names who made it
        assert ref["type"] and ref["title"] and ref["authors"]
