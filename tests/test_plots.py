"""Spec for sim.plots: every plot writes a real PNG to the path it is given."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from sim.metrics import empty_requests, empty_steps, request_metrics
from sim.plots import (
    PLOT_FILES,
    cdf_figure,
    compare_cdfs_figure,
    ecdf_points,
    histogram_figure,
    plot_cdfs,
    plot_compare_cdfs,
    png_bytes,
    timeline_buckets,
    write_plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_run(
    num_requests: int = 300, num_steps: int = 5000, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic fixture in the simulator's output schema (not a simulation result)."""
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0.0, 60.0, num_requests))
    scheduled = arrival + rng.exponential(0.05, num_requests)
    first_token = scheduled + rng.lognormal(-2.0, 0.8, num_requests)
    output = rng.integers(1, 400, num_requests)
    finished = first_token + (output - 1) * rng.uniform(0.01, 0.05, num_requests)
    status = np.where(rng.random(num_requests) < 0.05, "rejected", "finished")
    gone = status == "rejected"
    requests = pd.DataFrame(
        {
            "request_id": np.arange(num_requests, dtype=np.int64),
            "replica": np.where(gone, -1, rng.integers(0, 2, num_requests)),
            "arrival_at": arrival,
            "first_scheduled_at": np.where(gone, np.nan, scheduled),
            "first_token_at": np.where(gone, np.nan, first_token),
            "finished_at": np.where(gone, np.nan, finished),
            "input_tokens": rng.integers(16, 2048, num_requests),
            "output_tokens": output,
            "cached_tokens": np.zeros(num_requests, dtype=np.int64),
            "num_preemptions": np.zeros(num_requests, dtype=np.int64),
            "status": status,
            "reason": np.where(gone, "prompt+output exceeds max_model_len", ""),
        }
    )
    decode = rng.integers(0, 64, num_steps)
    steps = pd.DataFrame(
        {
            "replica": rng.integers(0, 2, num_steps),
            "start_at": np.sort(rng.uniform(0.0, 70.0, num_steps)),
            "duration_s": rng.uniform(0.005, 0.05, num_steps),
            "num_seqs": decode + 1,
            "num_tokens": decode + 256,
            "num_prefill_tokens": np.full(num_steps, 255),
            "num_prefill_seqs": np.ones(num_steps, dtype=np.int64),
            "num_decode_seqs": decode,
            "num_decode_tokens": decode,
            "kv_blocks_used": rng.integers(0, 1000, num_steps),
            "kv_blocks_total": np.full(num_steps, 1000),
            "num_waiting": rng.integers(0, 20, num_steps),
            "num_preempted": np.zeros(num_steps, dtype=np.int64),
        }
    )
    return requests, steps


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width > 200 and height > 200
    assert len(data) > min_bytes, f"{path} looks empty ({len(data)} bytes)"


def test_write_plots_writes_the_standard_pngs(tmp_path: Path) -> None:
    requests, steps = synthetic_run()
    paths = write_plots(requests, steps, tmp_path / "run")
    assert [p.name for p in paths] == list(PLOT_FILES)
    for p in paths:
        assert p.parent == tmp_path / "run"
        assert_png(p)


def test_plot_functions_take_raw_or_derived_frames_and_return_their_path(tmp_path: Path) -> None:
    requests, _ = synthetic_run(seed=1)
    out = tmp_path / "nested" / "c.png"
    assert plot_cdfs(request_metrics(requests), out) == out
    assert_png(out)


def test_compare_cdfs_overlays_runs(tmp_path: Path) -> None:
    runs = {f"seed {s}": synthetic_run(seed=s)[0] for s in range(3)}
    assert_png(plot_compare_cdfs(runs, "tpot_s", tmp_path / "tpot.png"))
    fig = compare_cdfs_figure(runs, "ttft_s")
    assert len(fig.axes[0].get_lines()) == 3
    assert fig.axes[0].get_xlabel() == "TTFT (ms)"


def render(fig: Figure) -> None:
    """Draw a figure to PNG in memory at low resolution (exercises the full render path)."""
    assert png_bytes(fig, dpi=30)[:8] == PNG_MAGIC


def test_plots_survive_empty_and_all_rejected_runs(tmp_path: Path) -> None:
    for p in write_plots(empty_requests(), empty_steps(), tmp_path):
        assert_png(p, min_bytes=1000)
    requests, _ = synthetic_run(num_requests=5)
    all_rejected = requests.assign(status="rejected", finished_at=np.nan)
    render(histogram_figure(all_rejected))
    render(compare_cdfs_figure({"empty": empty_requests()}, "ttft_s"))


def test_plots_survive_constant_and_single_values() -> None:
    requests, _ = synthetic_run(num_requests=50)
    decode_s = (requests["output_tokens"] - 1) * 0.02  # TPOT 20 ms for everyone, up to rounding
    constant = requests.assign(finished_at=requests["first_token_at"] + decode_s)
    render(histogram_figure(constant))
    render(cdf_figure(constant.iloc[:1]))
    render(histogram_figure(constant.iloc[:1]))


def test_plotting_never_touches_pyplot_global_state(tmp_path: Path) -> None:
    # pyplot owns the global figure manager and backend switch; sim.plots must not load it.
    code = (
        "import sys; import sim.plots as p; from sim.metrics import empty_requests, empty_steps; "
        f"p.write_plots(empty_requests(), empty_steps(), {str(tmp_path)!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_cdf_axes_have_units() -> None:
    requests, _ = synthetic_run()
    labels = [ax.get_xlabel() for ax in cdf_figure(requests).axes]
    assert labels == ["TTFT (ms)", "TPOT (ms)", "per-request output speed (tok/s)"]


def test_ecdf_points_are_exact_and_bounded() -> None:
    x, y = ecdf_points(np.array([3.0, 1.0, 2.0, 2.0]))
    np.testing.assert_array_equal(x, [1.0, 2.0, 2.0, 3.0])
    np.testing.assert_array_equal(y, [0.25, 0.5, 0.75, 1.0])
    x, y = ecdf_points(np.arange(100_000.0), max_points=2000)
    assert len(x) <= 2000 and x[0] == 0.0 and x[-1] == 99_999.0 and y[-1] == 1.0


def test_timeline_is_bucketed_and_time_weighted() -> None:
    steps = pd.DataFrame(
        {
            "replica": [0, 0, 1],
            "start_at": [0.0, 0.25, 0.5],
            "duration_s": [0.25, 0.75, 0.5],
            "num_seqs": [2, 6, 1],
            "kv_blocks_used": [1, 5, 2],
            "kv_blocks_total": [10, 10, 4],
            "num_waiting": [4, 0, 0],
        }
    )  # missing contract columns are tolerated
    b = timeline_buckets(steps, max_points=1)  # one bucket per replica
    assert list(b["replica"]) == [0, 1]
    assert b["num_seqs"].tolist() == [(2 * 0.25 + 6 * 0.75) / 1.0, 1.0]
    assert b["kv_usage"].tolist() == pytest.approx([(0.1 * 0.25 + 0.5 * 0.75), 0.5])
    assert b["num_waiting"].tolist() == [1.0, 0.0]
    big = steps.iloc[np.tile(np.arange(3), 20_000)].reset_index(drop=True)
    big["start_at"] = np.arange(len(big)) * 0.01
    per_replica = timeline_buckets(big).groupby("replica").size()
    assert (per_replica <= 2000).all()
