"""Executes the notebooks: they are documentation that must keep working."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    # The kernel inherits the environment: where the repository is, where to cache data.
    monkeypatch.setenv("MLB_JAX_ROOT", str(path.parents[1]))
    monkeypatch.setenv("MLB_JAX_DATA_CACHE", str(tmp_path / "data"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    # Every notebook ends its checks with printed evidence; figures land in the run directory.
    assert outputs.strip()
    assert list(tmp_path.glob("*.png")), "the notebook must save its figure"
