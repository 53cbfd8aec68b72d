"""notebooks/analysis.ipynb executes top to bottom on a run directory and shows its plots."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from jupyter_client.kernelspec import find_kernel_specs
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analysis.ipynb"


def write_synthetic_run(run_dir: Path) -> None:
    """Synthetic fixture: a tiny two-replica run in the simulator's output schema, as Parquet.

    The numbers are made up to exercise the notebook, not produced by the simulator.
    """
    rng = np.random.default_rng(7)
    n = 40
    arrival = np.sort(rng.uniform(0.0, 10.0, n))
    first_token = arrival + rng.uniform(0.05, 0.6, n)
    output = rng.integers(1, 200, n)
    finished = first_token + (output - 1) * 0.02
    gone = np.arange(n) == 3  # one rejected request
    pd.DataFrame(
        {
            "request_id": np.arange(n, dtype=np.int64),
            "replica": np.where(gone, -1, np.arange(n) % 2),
            "arrival_at": arrival,
            "first_scheduled_at": np.where(gone, np.nan, arrival + 0.01),
            "first_token_at": np.where(gone, np.nan, first_token),
            "finished_at": np.where(gone, np.nan, finished),
            "input_tokens": rng.integers(32, 1024, n),
            "output_tokens": output,
            "cached_tokens": np.zeros(n, dtype=np.int64),
            "num_preemptions": np.zeros(n, dtype=np.int64),
            "status": np.where(gone, "rejected", "finished"),
            "reason": np.where(
                gone, "prompt+output 140000 tokens exceeds max_model_len 131072", ""
            ),
        }
    ).to_parquet(run_dir / "requests.parquet")
    m = 500
    decode = rng.integers(0, 16, m)
    pd.DataFrame(
        {
            "replica": np.arange(m, dtype=np.int64) % 2,
            "start_at": np.linspace(0.0, 14.0, m),
            "duration_s": np.full(m, 0.02),
            "num_seqs": decode + 1,
            "num_tokens": decode + 64,
            "num_prefill_tokens": np.full(m, 64),
            "num_prefill_seqs": np.ones(m, dtype=np.int64),
            "num_decode_seqs": decode,
            "num_decode_tokens": decode,
            "kv_blocks_used": rng.integers(0, 512, m),
            "kv_blocks_total": np.full(m, 512),
            "num_waiting": rng.integers(0, 5, m),
            "num_preempted": np.zeros(m, dtype=np.int64),
        }
    ).to_parquet(run_dir / "steps.parquet")
    meta = {"num_gpus": 2, "replicas": 2, "gpu": "H100", "model": "synthetic", "tp": 1}
    summary = {"slo": {"ttft_s": 0.25, "tpot_s": 0.05}}  # the part of Summary.to_dict() it reads
    (run_dir / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}))


def test_analysis_notebook_runs_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "python3" not in find_kernel_specs():
        pytest.skip("no 'python3' Jupyter kernelspec in this environment")
    write_synthetic_run(tmp_path)
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
    assert "output tok/s/GPU (2 GPUs)" in text and "TTFT <= 250 ms and TPOT <= 50 ms" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # CDFs, histograms, timeline
