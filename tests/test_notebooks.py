"""Notebooks are executed: every code cell runs in order, as a kernel would (no Jupyter needed)."""
from __future__ import annotations

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, ray_session):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code"
    namespace: dict = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        src = "".join(cell["source"])
        try:
            exec(compile(src, f"{path.name}[cell {i}]", "exec"), namespace)
        except Exception as e:  # name the cell that broke
            raise AssertionError(f"{path.name} cell {i} failed: {e!r}\n{src}") from e
    if "steps" in namespace:  # the inspection notebook: its tables agree with each other
        steps, reasons = namespace["steps"], namespace["reasons"]
        assert steps["dropped"].sum() == reasons["docs"].sum()
        assert (steps["docs_in"] == steps["docs_out"] + steps["dropped"]).all()
