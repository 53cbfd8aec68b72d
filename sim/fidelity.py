"""Validation results in (one frame per scenario file), fidelity report out: figures, tables, md.

Reads the frames `sim.validate.results_frame` builds (columns id, metric, measured, predicted,
error_pct, status, reason, group, hardware, model, mode) and writes, per file:

- `scatter.png`: predicted vs measured on log-log axes, coloured by hardware, with y = x and a
  ±25% band (every metric in its own unit; the diagonal is unit-free);
- `error_by_family.png`: absolute percentage error per metric family (box plot);
- `distribution.csv` / `distribution.png`: for every benchmark run (validation group) that
  publishes two or more statistics of one latency quantity (TTFT, TPOT, ITL, E2E: mean, p50,
  p90, p99), the relative error of each statistic and of the tail ratio p99/mean (or
  p99/p50), a scale-free distance between the measured and predicted distributions' shapes;
- `summary.md`: totals per file, APE per metric family, the worst rows and the skipped rows.

With several files (or `prefixed=True`) the figure and table names take the file's name as a
prefix. Figures use
the Agg canvas (no pyplot state), like `sim.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

THROUGHPUT_METRICS = ("output_tok_s", "output_tok_s_per_gpu", "total_tok_s", "requests_per_s")
STEP_METRICS = ("prefill_step_ms", "decode_step_ms")
LATENCY_QUANTITIES = ("ttft", "tpot", "itl", "e2e")
BAND = 0.25  # the scatter's shaded band: ±25%


def metric_family(metric: str) -> str:
    """throughput, step time, ratio, or the latency quantity (ttft, tpot, itl, e2e)."""
    if metric in THROUGHPUT_METRICS:
        return "throughput"
    if metric in STEP_METRICS:
        return "step time"
    if metric == "speedup_x":
        return "ratio"
    return metric.split("_")[0]


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def _error(measured: float, predicted: float) -> float:
    return 100.0 * (predicted - measured) / measured


def distribution_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run and latency quantity with >= 2 statistics: each statistic's error, plus the
    tail ratio p99/mean (or p99/p50) measured vs predicted."""
    records: list[dict[str, Any]] = []
    ok = _ok(frame)
    for group in ok["group"].unique():
        part = ok[ok["group"] == group]
        for quantity in LATENCY_QUANTITIES:
            stats: dict[str, tuple[float, float]] = {}
            for row in part.itertuples():
                name, _, stat = str(row.metric).partition("_")
                if name == quantity:
                    stats[stat.split("_")[0]] = (float(row.measured), float(row.predicted))
            if len(stats) < 2:
                continue
            for stat, (meas, pred) in stats.items():
                records.append(
                    {"group": group, "quantity": quantity, "stat": stat, "measured": meas,
                     "predicted": pred, "error_pct": _error(meas, pred)}
                )  # fmt: skip
            ref = "mean" if "mean" in stats else "p50" if "p50" in stats else ""
            if "p99" in stats and ref:
                meas = stats["p99"][0] / stats[ref][0]
                pred = stats["p99"][1] / stats[ref][1]
                records.append(
                    {"group": group, "quantity": quantity, "stat": f"p99/{ref}",
                     "measured": meas, "predicted": pred, "error_pct": _error(meas, pred)}
                )  # fmt: skip
    columns = ["group", "quantity", "stat", "measured", "predicted", "error_pct"]
    return pd.DataFrame.from_records(records, columns=columns)


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def scatter_figure(frame: pd.DataFrame, title: str) -> Any:
    """Predicted vs measured (log-log), colour by hardware, y = x and the ±25% band."""
    ok = _ok(frame)
    ok = ok[(ok["measured"] > 0) & (ok["predicted"] > 0)]
    fig = _figure(6.5, 6.0)
    ax = fig.add_subplot()
    for hardware in sorted(ok["hardware"].unique()):
        part = ok[ok["hardware"] == hardware]
        ax.scatter(part["measured"], part["predicted"], s=18, alpha=0.8, label=str(hardware))
    if len(ok):
        values = np.concatenate([ok["measured"].to_numpy(float), ok["predicted"].to_numpy(float)])
        xs = np.geomspace(values.min() / 2, values.max() * 2, 50)
        ax.plot(xs, xs, color="black", lw=1, label="y = x")
        ax.fill_between(xs, xs * (1 - BAND), xs * (1 + BAND), color="grey", alpha=0.2, label="±25%")
        ax.set_xlim(xs[0], xs[-1])
        ax.set_ylim(xs[0], xs[-1])
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (in the metric's unit)")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=10)
    return fig


def error_family_figure(frame: pd.DataFrame, title: str) -> Any:
    """Absolute percentage error per metric family (box plot; row counts in the labels)."""
    ok = _ok(frame)
    families = ok["metric"].map(metric_family)
    names = sorted(families.unique())
    data = [ok.loc[families == n, "error_pct"].abs().to_numpy(float) for n in names]
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    if names:
        ax.boxplot(data)
        labels = [f"{n}\n(n={len(d)})" for n, d in zip(names, data, strict=True)]
        ax.set_xticks(range(1, len(names) + 1), labels)
        ax.axhline(100 * BAND, color="grey", lw=0.8, ls="--", label="25%")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_ylabel("|error| (%, log scale)")
    ax.set_title(title, fontsize=10)
    return fig


def distribution_figure(table: pd.DataFrame, title: str) -> Any:
    """Signed error per statistic, one bar group per run and latency quantity."""
    fig = _figure(9.0, 4.5)
    ax = fig.add_subplot()
    if len(table):
        keys = (table["group"].str.slice(-48) + " " + table["quantity"]).tolist()
        labels = list(dict.fromkeys(keys))
        stats = list(dict.fromkeys(table["stat"].tolist()))
        width = 0.8 / len(stats)
        for j, stat in enumerate(stats):
            rows = [i for i, s in enumerate(table["stat"].tolist()) if s == stat]
            xs = [labels.index(keys[i]) + j * width for i in rows]
            ax.bar(xs, table["error_pct"].to_numpy(float)[rows], width=width, label=stat)
        ticks = [i + 0.4 - width / 2 for i in range(len(labels))]
        ax.set_xticks(ticks, labels, rotation=75, fontsize=6)
        ax.axhline(0, color="black", lw=0.8)
        ax.legend(fontsize=8)
    ax.set_ylabel("signed error (%)")
    ax.set_title(title, fontsize=10)
    return fig


def _pct(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.1f}%"


def markdown_summary(frames: Mapping[str, pd.DataFrame], worst: int = 10) -> str:
    """Totals per file, APE per metric family, the worst rows and the skipped rows."""
    lines = ["# Fidelity report", "", "APE = |predicted - measured| / measured.", ""]
    lines += ["| file | compared | skipped | not simulatable | median APE | p90 APE | max APE |"]
    lines += ["|---|---:|---:|---:|---:|---:|---:|"]
    for name, frame in frames.items():
        ape = _ok(frame)["error_pct"].abs().to_numpy(float)
        stats = [np.median(ape), np.percentile(ape, 90), ape.max()] if ape.size else [np.nan] * 3
        counts = [int((frame["status"] == s).sum()) for s in ("ok", "skipped", "not-simulatable")]
        cells = [*map(str, counts), *map(_pct, stats)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    for name, frame in frames.items():
        ok = _ok(frame)
        families = ok["metric"].map(metric_family)
        lines += ["", f"## {name}", ""]
        lines += ["| metric family | rows | median APE | p90 APE | median signed error |"]
        lines += ["|---|---:|---:|---:|---:|"]
        for family in sorted(families.unique()):
            e = ok.loc[families == family, "error_pct"].to_numpy(float)
            a = np.abs(e)
            lines.append(
                f"| {family} | {e.size} | {_pct(float(np.median(a)))} "
                f"| {_pct(float(np.percentile(a, 90)))} | {np.median(e):+.1f}% |"
            )
        order = np.argsort(-ok["error_pct"].abs().to_numpy(float), kind="stable")[:worst]
        top = ok.iloc[order]
        lines += ["", f"Worst {len(top)} rows:", ""]
        lines += ["| id | metric | measured | predicted | error |", "|---|---|---:|---:|---:|"]
        lines += [
            f"| {r.id} | {r.metric} | {float(r.measured):.4g} | {float(r.predicted):.4g} "  # type: ignore[arg-type]
            f"| {float(r.error_pct):+.1f}% |"  # type: ignore[arg-type]
            for r in top.itertuples()
        ]
        skipped = frame[frame["status"] == "skipped"]
        if len(skipped):
            lines += ["", "Skipped (simulatable=yes but not expressible):", ""]
            lines += [f"- `{r.id}` ({r.metric}): {r.reason}" for r in skipped.itertuples()]
    return "\n".join(lines) + "\n"


def write_report(
    frames: Mapping[str, pd.DataFrame], out_dir: Path, prefixed: bool | None = None
) -> list[Path]:
    """Write figures, distribution tables and summary.md into out_dir; return the paths.
    File names take the file's name as a prefix when `prefixed` (default: several files)."""
    prefixed = len(frames) > 1 if prefixed is None else prefixed
    from sim.plots import save_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, frame in frames.items():
        prefix = f"{name}_" if prefixed else ""
        table = distribution_table(frame)
        table_path = out_dir / f"{prefix}distribution.csv"
        table.to_csv(table_path, index=False)
        written.append(table_path)
        figures = {
            "scatter": scatter_figure(frame, f"{name}: predicted vs measured"),
            "error_by_family": error_family_figure(frame, f"{name}: |error| by metric family"),
            "distribution": distribution_figure(table, f"{name}: error per latency statistic"),
        }
        for stem, fig in figures.items():
            written.append(save_figure(fig, out_dir / f"{prefix}{stem}.png"))
    summary = out_dir / "summary.md"
    summary.write_text(markdown_summary(frames))
    return [*written, summary]
