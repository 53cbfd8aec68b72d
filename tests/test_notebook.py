"""notebooks/analysis.ipynb executes top to bottom on a run directory and shows its plots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import find_kernel_specs
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analysis.ipynb"


def write_run(run_dir: Path) -> None:
    """A real (small) simulator run, written the way the CLI writes it."""
    from sim.__main__ import write_outputs
    from sim.metrics import SLO
    from sim.simulate import simulate
    from tests.factories import small_config

    write_outputs(simulate(small_config()), run_dir, SLO(), plots=False)


def test_analysis_notebook_runs_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "python3" in find_kernel_specs(), "ipykernel's python3 kernelspec is missing"
    write_run(tmp_path)
    monkeypatch.setenv("SERVESIM_RUN_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "stored with outputs"
    )
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(tmp_path) in text and "TTFT (ms)" in text and "goodput" in text
    # meta and SLO from summary.json reached summarize()
    assert "output tok/s/GPU (1 GPUs)" in text and "TTFT <= 2000 ms and TPOT <= 100 ms" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # CDFs, histograms, timeline
