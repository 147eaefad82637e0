"""examples/quickstart.ipynb runs top to bottom against the live server (conftest.py)."""

import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_is_stored_without_outputs(server):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    stored = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert stored and all(not c.outputs and c.execution_count is None for c in stored)
    os.environ["RAVEN_SERVER"] = server  # the kernel inherits it
    began = time.monotonic()
    NotebookClient(notebook, timeout=60, kernel_name="python3").execute()
    elapsed = time.monotonic() - began
    print(f"notebook ran in {elapsed:.1f} s")
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "sequence " in text
    frames = [o for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert frames, "the trades frame was not shown"
    assert [o for o in outputs if "image/png" in o.get("data", {})], "the chart was not drawn"
