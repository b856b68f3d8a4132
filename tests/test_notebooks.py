"""The notebooks run top to bottom (slow: `make test-slow`)."""

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")))
def test_notebook_executes(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("ANA_NOTEBOOK_DIR", str(tmp_path))
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert (tmp_path / "eval" / "test_confusion_matrix.png").exists()
