"""The exploration notebook runs from top to bottom on the generated sample (so it cannot rot)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks", "abo_exploration.ipynb"
)


@pytest.mark.slow
def test_exploration_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ABO_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("ABO_NOTEBOOK_QUICK", "1")  # every cell, on a shorter training and search
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any failure
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    images = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert images >= 8  # the figures were produced and shown
    for name in ("per_class_f1", "confusion_matrix", "mistakes", "gradcam", "reliability"):
        assert os.path.getsize(tmp_path / "work" / "evaluation" / f"{name}.png") > 0
