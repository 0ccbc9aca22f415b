"""Executes every notebook in notebooks/ (CPU, in a temporary copy) and fails on any cell error.

The notebooks carry their own assertion cells, so a wrong result fails here too. Each runs with
the "python3" kernel, which jupyter_client starts with this interpreter (and so this environment).
"""
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="executing the notebooks needs nbformat (pip install nbformat)")
nbclient = pytest.importorskip("nbclient", reason="executing the notebooks needs nbclient (pip install nbclient)")
pytest.importorskip("ipykernel", reason="executing the notebooks needs ipykernel (pip install ipykernel)")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def test_notebooks_are_present():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOKS_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    # A copy, so that executing never rewrites the committed notebook and its saved outputs.
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    client.execute()  # raises CellExecutionError, with the failing cell and its traceback
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors
