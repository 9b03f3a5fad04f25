"""probes/analysis.ipynb runs top to bottom on a recorded run."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "probes" / "analysis.ipynb"


def test_analysis_notebook_executes(tiny_recorded_run, monkeypatch):
    monkeypatch.setenv("GUPPY_RUN", str(tiny_recorded_run))
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tiny_recorded_run.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) == 3
