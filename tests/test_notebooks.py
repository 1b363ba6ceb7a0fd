"""Every notebook runs in a real Jupyter kernel (nbclient + ipykernel), cell by cell, as a user's
Jupyter would run it; a failing cell fails the test with the cell's traceback."""
from __future__ import annotations

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# run after the notebook, in its kernel: tables of the inspection notebook agree with each other
CHECKS = """
if "steps" in globals() and "reasons" in globals():
    assert steps["dropped"].sum() == reasons["docs"].sum()
    assert (steps["docs_in"] == steps["docs_out"] + steps["dropped"]).all()
"""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_a_jupyter_kernel(path, ray_session, monkeypatch):
    import ray

    # the kernel joins the test session's Ray instead of starting a second one on 2 cores
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    nb = nbformat.read(path, as_version=4)
    assert any(c.cell_type == "code" for c in nb.cells), f"{path.name} has no code"
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute()
    except CellExecutionError as e:  # names the cell and carries the kernel's traceback
        pytest.fail(f"{path.name}: {e}")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
