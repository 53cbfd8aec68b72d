"""Run frames in, matplotlib figures and PNG files out (CDFs, histograms, KV/batch timeline).

Figures are plain `matplotlib.figure.Figure` objects rendered by the Agg canvas: no pyplot, no
global backend switch, no state shared between calls, so plotting is safe in threads and worker
processes. `*_figure` functions build a figure; `plot_*` functions save one to the explicit
path they are given and return it. Requests frames may be raw simulator output or already
passed through `sim.metrics.request_metrics`. Large runs are reduced before drawing (CDFs to
at most `max_points` quantiles, the timeline to at most `max_points` time buckets per
series), vectorised, so a 10^6-step run plots in about a second.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sim.metrics import STEP_COLUMNS, ensure_columns, with_request_metrics

# metric column -> (axis label with unit, scale from stored unit to plotted unit)
METRIC_LABELS: dict[str, tuple[str, float]] = {
    "ttft_s": ("TTFT (ms)", 1e3),
    "tpot_s": ("TPOT (ms)", 1e3),
    "e2e_s": ("end-to-end latency (s)", 1.0),
    "queue_s": ("queueing delay (ms)", 1e3),
    "output_tps": ("per-request output speed (tok/s)", 1.0),
}
CDF_METRICS: tuple[str, ...] = ("ttft_s", "tpot_s", "output_tps")
HISTOGRAM_METRICS: tuple[str, ...] = ("ttft_s", "tpot_s", "e2e_s", "output_tps")
MAX_POINTS = 2000
PLOT_FILES: tuple[str, ...] = (
    "ttft_tpot_tps_cdf.png",
    "latency_histograms.png",
    "kv_batch_timeline.png",
)


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as an image (format from the suffix) to `path`, creating parent folders."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """`fig` rendered as PNG in memory (for notebooks: ``display(Image(data=png_bytes(fig)))``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _metric_values(requests: pd.DataFrame, metric: str) -> tuple[np.ndarray, str]:
    """Finite values of `metric`, scaled to the plotted unit, and the axis label."""
    frame = requests if metric in requests.columns else with_request_metrics(requests)
    label, scale = METRIC_LABELS.get(metric, (metric, 1.0))
    values = frame[metric].to_numpy(dtype=np.float64, na_value=np.nan) * scale
    return values[np.isfinite(values)], label


def _use_log(values: np.ndarray) -> bool:
    """Log axis when the positive data span more than 1.5 decades."""
    if values.size == 0 or values.min() <= 0:
        return False
    return bool(values.max() / values.min() > 10**1.5)


def _no_data(ax: Axes, label: str) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(label)


def ecdf_points(values: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF (x sorted, y = fraction <= x), reduced to at most `max_points` points.

    The reduction keeps evenly spaced ranks including the first and last sample, so the curve
    is exact at the points drawn.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    y = np.arange(1, x.size + 1, dtype=np.float64) / max(x.size, 1)
    if x.size > max_points:
        keep = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(np.int64))
        x, y = x[keep], y[keep]
    return x, y


def _draw_cdf(ax: Axes, values: np.ndarray, label: str, name: str | None = None) -> None:
    x, y = ecdf_points(values)
    ax.step(x, y, where="post", label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0.0, 1.01)
    ax.grid(True, which="both", alpha=0.3)


def cdf_figure(requests: pd.DataFrame, metrics: Sequence[str] = CDF_METRICS) -> Figure:
    """One empirical-CDF panel per metric (default TTFT, TPOT, per-request output speed)."""
    fig = _new_figure(4.2 * len(metrics), 3.6)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    requests = with_request_metrics(requests)
    for ax, metric in zip(axes, metrics, strict=True):
        values, label = _metric_values(requests, metric)
        if values.size == 0:
            _no_data(ax, label)
            continue
        _draw_cdf(ax, values, label)
        if _use_log(values):
            ax.set_xscale("log")
        ax.set_title(f"{label.split(' (')[0]} CDF (n={values.size:,})")
    return fig


def _linear_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin edges; (near-)constant data get a small window around the value."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1e-300):
        pad = 0.05 * abs(lo) if lo != 0 else 0.5
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, bins + 1)


def histogram_figure(
    requests: pd.DataFrame, metrics: Sequence[str] = HISTOGRAM_METRICS, bins: int = 60
) -> Figure:
    """One histogram per metric, log-spaced bins on a log axis when the data span decades."""
    ncols = len(metrics) if len(metrics) <= 3 else 2
    nrows = -(-len(metrics) // ncols)
    fig = _new_figure(4.2 * ncols, 3.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    requests = with_request_metrics(requests)
    for ax, metric in zip(axes, metrics, strict=False):
        values, label = _metric_values(requests, metric)
        if values.size == 0:
            _no_data(ax, label)
            continue
        if _use_log(values):
            edges = np.geomspace(values.min(), values.max(), bins + 1)
            ax.set_xscale("log")
        else:
            edges = _linear_edges(values, bins)
        counts, _ = np.histogram(values, bins=edges)
        ax.stairs(counts, edges, fill=True, alpha=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("requests")
        ax.set_title(f"{label.split(' (')[0]} (n={values.size:,})")
        ax.grid(True, alpha=0.3)
    return fig


def timeline_buckets(steps: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Steps reduced to at most `max_points` time buckets per replica, time-weighted.

    Returns one row per (replica, non-empty bucket): t_s (bucket start), kv_usage
    (kv_blocks_used / kv_blocks_total), num_seqs and num_waiting, each averaged over the steps
    starting in the bucket, weighted by duration_s (unweighted where all durations are zero).
    """
    st = ensure_columns(steps, STEP_COLUMNS)
    columns = ["replica", "t_s", "kv_usage", "num_seqs", "num_waiting"]
    if st.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    t = st["start_at"].to_numpy(dtype=np.float64)
    t0, span = float(t.min()), float(t.max() - t.min())
    width = span / max_points if span > 0 else 1.0
    bucket = np.minimum(((t - t0) / width).astype(np.int64), max_points - 1)
    dur = st["duration_s"].to_numpy(dtype=np.float64)
    w = np.where(dur > 0, dur, 0.0)
    w = w if w.sum() > 0 else np.ones_like(w)
    with np.errstate(divide="ignore", invalid="ignore"):
        kv = st["kv_blocks_used"].to_numpy(np.float64) / st["kv_blocks_total"].to_numpy(np.float64)
    frame = pd.DataFrame(
        {
            "replica": st["replica"].to_numpy(dtype=np.int64),
            "bucket": bucket,
            "w": w,
            "kv_usage": np.where(np.isfinite(kv), kv, 0.0) * w,
            "num_seqs": st["num_seqs"].to_numpy(np.float64) * w,
            "num_waiting": st["num_waiting"].to_numpy(np.float64) * w,
        }
    )
    sums = frame.groupby(["replica", "bucket"], sort=True).sum()
    weight = sums.pop("w").to_numpy()
    out = sums.div(np.where(weight > 0, weight, np.nan), axis=0).reset_index()
    out["t_s"] = t0 + out.pop("bucket").to_numpy(np.float64) * width
    return out[columns]


def timeline_figure(steps: pd.DataFrame, max_points: int = MAX_POINTS) -> Figure:
    """KV usage, batch size (num_seqs) and queue length vs time, one line per replica."""
    fig = _new_figure(10.0, 7.5)
    axes = fig.subplots(3, 1, sharex=True)
    panels = (
        ("kv_usage", "KV cache usage (fraction of blocks)"),
        ("num_seqs", "batch size (sequences)"),
        ("num_waiting", "queue length (requests)"),
    )
    data = timeline_buckets(steps, max_points)
    if data.empty:
        for ax, (_, label) in zip(axes, panels, strict=True):
            ax.set_ylabel(label, fontsize=8)
        _no_data(axes[-1], "time (s)")
        return fig
    groups = list(data.groupby("replica", sort=True))
    for ax, (column, label) in zip(axes, panels, strict=True):
        for replica, g in groups:
            ax.plot(g["t_s"], g[column], lw=0.8, label=f"replica {replica}")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[1:]:
        ax.set_ylim(bottom=0.0)
    axes[0].set_ylim(0.0, 1.02)
    axes[-1].set_xlabel("time (s)")
    if len(groups) <= 8:
        axes[0].legend(fontsize=7, loc="upper right")
    return fig


def compare_cdfs_figure(frames: Mapping[str, pd.DataFrame], metric: str) -> Figure:
    """Empirical CDFs of one metric for several runs on one axis, labelled by the dict keys."""
    fig = _new_figure(6.0, 4.2)
    ax = fig.subplots()
    label = METRIC_LABELS.get(metric, (metric, 1.0))[0]
    series = {name: _metric_values(frame, metric)[0] for name, frame in frames.items()}
    series = {name: v for name, v in series.items() if v.size}
    if not series:
        _no_data(ax, label)
        return fig
    for name, values in series.items():
        _draw_cdf(ax, values, label, name=f"{name} (n={values.size:,})")
    if _use_log(np.concatenate(list(series.values()))):
        ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"{label.split(' (')[0]} CDF")
    return fig


def plot_cdfs(requests: pd.DataFrame, path: str | Path) -> Path:
    """TTFT, TPOT and per-request output-speed CDFs saved to `path`."""
    return save_figure(cdf_figure(requests), path)


def plot_histograms(requests: pd.DataFrame, path: str | Path) -> Path:
    """TTFT, TPOT, E2E and per-request output-speed histograms saved to `path`."""
    return save_figure(histogram_figure(requests), path)


def plot_timeline(steps: pd.DataFrame, path: str | Path) -> Path:
    """Per-replica KV usage, batch size and queue length vs time saved to `path`."""
    return save_figure(timeline_figure(steps), path)


def plot_compare_cdfs(frames: Mapping[str, pd.DataFrame], metric: str, path: str | Path) -> Path:
    """Overlaid CDFs of `metric` (e.g. "ttft_s") across runs saved to `path`."""
    return save_figure(compare_cdfs_figure(frames, metric), path)


def write_plots(requests: pd.DataFrame, steps: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """The standard run plots (`PLOT_FILES`) written into `out_dir`; returns their paths."""
    out = Path(out_dir)
    metrics = with_request_metrics(requests)
    cdf, hist, timeline = (out / name for name in PLOT_FILES)
    return [
        plot_cdfs(metrics, cdf),
        plot_histograms(metrics, hist),
        plot_timeline(steps, timeline),
    ]
