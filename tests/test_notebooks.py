"""Notebooks: committed without outputs, on the python3 kernel, and they run (smoke settings)."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, real_data

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill)"


def test_walkthrough_runs_top_to_bottom(tmp_path):
    papermill = pytest.importorskip("papermill")
    real_data("pneumoniamnist.npz")
    out = tmp_path / "walkthrough.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "00_walkthrough.ipynb"), str(out), kernel_name="python3",
                               parameters={"smoke": True}, cwd=str(ROOT), progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
              if o["output_type"] == "error"]
    assert not errors
    text = "".join("".join(o.get("text", "")) for c in executed["cells"] if c["cell_type"] == "code"
                   for o in c["outputs"])
    assert "aggregation weights" in text and "FedAvg + own synthetic" in text
