"""Named experiments: `python experiments/run_experiment.py NAME [--out DIR]`.

NAME is a Hydra experiment config `experiments/experiment/NAME.yaml` (`@package _global_`):
it sets the base run and lists its variants under `hydra.sweeper.params`, the same sweep
`servesim -m +experiment=NAME` runs as Hydra jobs. This script composes each variant,
runs `sim.simulate.simulate`, prints one table row per variant (memory plan, the roofline's
prefill and decode step times, and the simulated TTFT / TPOT / throughput) and writes
NAME.png (TTFT and TPOT CDFs, throughput and KV capacity bars) and NAME.csv into --out
(default outputs/experiments/NAME). Experiments: tp_pp_ep, fp8_vs_bf16; cluster-level
serving (their own table columns and figure, `VIEWS`): kv_routing (KV-aware vs round-robin
vs least-loaded routing over load: TTFT p50/p99 and prefix-hit ratio), pd_crossover
(aggregated vs 2P2D over load), xpyd_ratio (1P3D .. 3P1D: goodput per GPU), fp8_kv_disagg
(BF16 vs FP8 KV in a disaggregated cluster: transfer time, decode capacity).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from sim.cluster import build_plan  # noqa: E402
from sim.config import Config, register_configs  # noqa: E402
from sim.metrics import SLO, cluster_stats, request_metrics, summarize  # noqa: E402
from sim.plan import cost_params, memory_plan  # noqa: E402
from sim.planner import decode_step_seconds, prefill_seconds  # noqa: E402
from sim.plots import ecdf_points  # noqa: E402
from sim.simulate import simulate, to_config  # noqa: E402
from sim.step_time import Roofline  # noqa: E402

EXPERIMENTS_DIR = ROOT / "experiments"
PREFILL_TOKENS = 2048  # roofline columns: one prompt alone; a decode step of 64 x 4096
DECODE_SEQS, DECODE_CONTEXT = 64, 4096


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[str, ...]


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (EXPERIMENTS_DIR / "experiment").glob("*.yaml"))


def _compose(overrides: Sequence[str], hydra_node: bool = False) -> Any:
    register_configs()
    with initialize_config_dir(config_dir=str(EXPERIMENTS_DIR), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


def variants(name: str) -> list[Variant]:
    """The cartesian product of the experiment's `hydra.sweeper.params`."""
    cfg = _compose([f"+experiment={name}"], hydra_node=True)
    params = dict(cfg.hydra.sweeper.params or {})
    parser = OverridesParser.create()
    axes: list[list[str]] = []
    for key, value in params.items():
        override = parser.parse_overrides([f"{key}={value}"])[0]
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [value]
        axes.append([f"{key}={v}" for v in values])
    out = []
    for combo in itertools.product(*axes):
        label = " ".join(_label(c) for c in combo) or name
        out.append(Variant(label, (f"+experiment={name}", *combo)))
    return out


def _label(override: str) -> str:
    """cluster=tp4 -> tp4; technique=[fp8_kv] -> fp8_kv; x.rate_scale=4 -> rate_scale=4."""
    key, value = override.split("=", 1)
    value = value.strip("[]")
    try:
        float(value)
    except ValueError:
        return value
    return f"{key.rsplit('.', 1)[-1]}={value}"


def run_variant(variant: Variant) -> tuple[dict[str, Any], pd.DataFrame]:
    """Simulate one variant; its table row and its per-request metrics frame."""
    config: Config = to_config(_compose(variant.overrides))
    plan = build_plan(config)
    mem = memory_plan(plan)
    roofline = Roofline(cost_params(plan))
    result = simulate(config)
    s = summarize(result.requests, result.steps, result.meta, SLO(**vars(config.slo)))
    row = {
        "variant": variant.label,
        "layout": plan.layout,
        "gpus": result.meta["num_gpus"],
        "formats": f"{plan.weight_format}/{plan.activation_format}/{plan.kv_format}",
        "weights_gb_per_gpu": mem.weight_bytes_per_gpu / 1e9,
        "kv_capacity_tokens": mem.kv_capacity_tokens,
        "prefill_2048_ms": prefill_seconds(
            roofline, PREFILL_TOKENS, plan.engine.max_num_batched_tokens
        )
        * 1e3,
        "decode_64x4k_ms": decode_step_seconds(roofline, DECODE_SEQS, DECODE_CONTEXT) * 1e3,
        "ttft_p50_ms": s.ttft_s.p50 * 1e3,
        "ttft_p99_ms": s.ttft_s.p99 * 1e3,
        "tpot_p50_ms": s.tpot_s.p50 * 1e3,
        "tpot_p99_ms": s.tpot_s.p99 * 1e3,
        "output_tok_s": s.output_tok_per_s,
        "tok_s_per_gpu": s.output_tok_per_s_per_gpu,
        "preemptions": s.num_preemptions,
        "finished": s.num_finished,
        "prefix_hit": result.requests["cached_tokens"].sum()
        / max(int(result.requests["input_tokens"].sum()), 1),
    }
    arrivals = result.requests["arrival_at"]
    offered_per_s = len(arrivals) / max(float(arrivals.max() - arrivals.min()), 1e-9)
    row.update(_cluster_columns(variant, result.meta, s, config, offered_per_s))
    row.update(cluster_stats(result.requests, result.steps, result.transfers, result.meta))
    return row, request_metrics(result.requests)


def _cluster_columns(
    variant: Variant, meta: dict[str, Any], s: Any, config: Config, offered_per_s: float
) -> dict[str, Any]:
    """The sweep's values (one column per swept key) and cluster-level serving numbers.

    goodput_per_gpu = offered requests/s x share of requests within the SLO / GPUs (the
    offered rate, not the run's drain-dependent span, so runs of one load compare directly).
    """
    sweep = {}
    for override in variant.overrides[1:]:
        key, value = override.split("=", 1)
        sweep[key.rsplit(".", 1)[-1]] = value.strip("[]")
    decode = meta.get("pools", {}).get("decode", meta)
    return {
        **sweep,
        "policy": config.router.policy,
        "ttft_p90_ms": s.ttft_s.p90 * 1e3,
        "itl_p99_ms": s.itl_s.p99 * 1e3,
        "goodput_frac": s.goodput_fraction,
        "goodput_per_gpu": offered_per_s * s.goodput_fraction / meta["num_gpus"],
        "decode_kv_tokens": decode["kv_capacity_tokens_per_replica"],
    }


def format_table(table: pd.DataFrame) -> str:
    formats = {c: (lambda v: f"{v:,.1f}") for c in table.columns if table[c].dtype.kind == "f"}
    for c in ("hit_ratio", "load_imbalance", "goodput_frac", "goodput_per_gpu", "prefix_hit"):
        formats[c] = lambda v: f"{v:.3f}"
    for c in ("kv_capacity_tokens", "decode_kv_tokens"):
        formats[c] = lambda v: f"{v:,}"
    return table.to_string(index=False, formatters=formats)


def figure(name: str, table: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> Figure:
    fig = Figure(figsize=(13.0, 8.0), layout="constrained")
    FigureCanvasAgg(fig)
    (a, b), (c, d) = fig.subplots(2, 2)
    for label, frame in frames.items():
        for ax, metric in ((a, "ttft_s"), (b, "tpot_s")):
            values = frame[metric].to_numpy(dtype=np.float64)
            values = values[~np.isnan(values)] * 1e3
            if values.size:
                x, y = ecdf_points(values)
                ax.step(x, y, where="post", label=label)
    for ax, title in ((a, "TTFT (ms)"), (b, "TPOT (ms)")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(title)
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{title.split(' ')[0]} CDF")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    labels = table["variant"].tolist()
    c.bar(labels, table["tok_s_per_gpu"], color="tab:blue")
    c.set_ylabel("output tokens/s per GPU (simulated)")
    d.bar(labels, table["kv_capacity_tokens"] / 1e6, color="tab:green")
    d.set_ylabel("KV capacity per replica (M tokens)")
    for ax in (c, d):
        ax.tick_params(axis="x", labelrotation=30)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"experiment {name}")
    return fig


# -- cluster-level serving experiments: their columns and figures ---------------------------

LATENCY = ["ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms"]
PD = ["variant", "gpus", *LATENCY, "itl_p99_ms", "goodput_frac", "goodput_per_gpu"]


def _lines(
    ax: Any, table: pd.DataFrame, by: str, y: str, label: str = "", style: str = "-o"
) -> None:
    """One line per value of `by`: `y` against rate_scale."""
    for key, group in table.groupby(by, sort=False):
        x = group["rate_scale"].astype(float)
        ax.plot(x, group[y], style, label=f"{key}{label}")
    ax.set_xlabel("load (workload.rate_scale)")
    ax.grid(True, alpha=0.3)


def routing_figure(name: str, table: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> Figure:
    workloads = list(dict.fromkeys(table["workload"]))
    fig = Figure(figsize=(13.0, 4.2 * len(workloads)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(workloads), 2, squeeze=False)
    for (a, b), workload in zip(axes, workloads, strict=True):
        part = table[table["workload"] == workload]
        _lines(a, part, "router", "ttft_p50_ms", " p50")
        _lines(a, part, "router", "ttft_p99_ms", " p99", "--x")
        a.set_yscale("log")
        a.set_ylabel("TTFT (ms)")
        a.set_title(f"{workload}: TTFT")
        _lines(b, part, "router", "hit_ratio")
        b.set_ylabel("cluster prefix-hit ratio")
        b.set_ylim(0, 1)
        b.set_title(f"{workload}: prefix-cache hits")
        for ax in (a, b):
            ax.legend(fontsize=8)
    fig.suptitle(f"experiment {name}: routing policy vs load")
    return fig


def crossover_figure(name: str, table: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> Figure:
    fig = Figure(figsize=(13.0, 8.0), layout="constrained")
    FigureCanvasAgg(fig)
    panels = [
        ("ttft_p99_ms", "TTFT p99 (ms)", True),
        ("tpot_p99_ms", "TPOT p99 (ms)", True),
        ("itl_p99_ms", "ITL p99 (ms)", True),
        ("goodput_per_gpu", "goodput per GPU (req/s within SLO)", False),
    ]
    for ax, (column, label, log) in zip(fig.subplots(2, 2).ravel(), panels, strict=True):
        _lines(ax, table, "topology", column)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"experiment {name}: aggregated vs disaggregated at equal GPU count")
    return fig


def _bars(ax: Any, table: pd.DataFrame, groups: str, bars: str, y: str) -> None:
    """Grouped bars: one group per value of `groups`, one bar per value of `bars`."""
    keys = list(dict.fromkeys(table[bars]))
    width = 0.8 / len(keys)
    group_keys = list(dict.fromkeys(table[groups]))
    for i, key in enumerate(keys):
        part = table[table[bars] == key].set_index(groups).reindex(group_keys)
        x = np.arange(len(group_keys)) + (i - (len(keys) - 1) / 2) * width
        ax.bar(x, part[y].to_numpy(dtype=float), width, label=str(key))
    ax.set_xticks(np.arange(len(group_keys)), [f"{groups}={g}" for g in group_keys])
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def ratio_figure(name: str, table: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> Figure:
    fig = Figure(figsize=(13.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    a, b, c = fig.subplots(1, 3)
    _bars(a, table, "rate_scale", "topology", "goodput_per_gpu")
    a.set_ylabel("goodput per GPU (req/s within SLO)")
    _bars(b, table, "rate_scale", "topology", "ttft_p99_ms")
    b.set_ylabel("TTFT p99 (ms)")
    b.set_yscale("log")
    _bars(c, table, "rate_scale", "topology", "tpot_p99_ms")
    c.set_ylabel("TPOT p99 (ms)")
    c.set_yscale("log")
    fig.suptitle(f"experiment {name}: prefill:decode ratio on 4 GPUs")
    return fig


def fp8_disagg_figure(name: str, table: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> Figure:
    fig = Figure(figsize=(13.0, 8.0), layout="constrained")
    FigureCanvasAgg(fig)
    (a, b), (c, d) = fig.subplots(2, 2)
    for label, frame in frames.items():
        seconds = (frame["kv_transfer_end_at"] - frame["kv_transfer_start_at"]).to_numpy(float)
        seconds = seconds[~np.isnan(seconds)] * 1e3
        if seconds.size:
            x, y = ecdf_points(seconds)
            a.step(x, y, where="post", label=label)
    a.set_xscale("log")
    a.set_xlabel("KV transfer time (ms)")
    a.set_ylabel("fraction of transfers")
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8)
    _bars(b, table, "rate_scale", "technique", "decode_kv_tokens")
    b.set_ylabel("KV capacity per decode replica (tokens)")
    _bars(c, table, "rate_scale", "technique", "tpot_p99_ms")
    c.set_ylabel("TPOT p99 (ms)")
    _bars(d, table, "rate_scale", "technique", "goodput_per_gpu")
    d.set_ylabel("goodput per GPU (req/s within SLO)")
    fig.suptitle(f"experiment {name}: BF16 vs FP8 KV cache, disaggregated")
    return fig


FigureFn = Callable[[str, pd.DataFrame, dict[str, pd.DataFrame]], Figure]
# name -> (printed columns, figure); other experiments print every column with `figure`
VIEWS: dict[str, tuple[list[str], FigureFn]] = {
    "kv_routing": (
        ["variant", "hit_ratio", "load_imbalance", *LATENCY, "preemptions", "finished"],
        routing_figure,
    ),
    "pd_crossover": ([*PD, "transfer_p50_ms", "prefill_util", "decode_util"], crossover_figure),
    "xpyd_ratio": ([*PD, "prefill_util", "decode_util"], ratio_figure),
    "fp8_kv_disagg": (
        [
            "variant",
            "decode_kv_tokens",
            "transfer_p50_ms",
            "transfer_p99_ms",
            "kv_gb_moved",
            *LATENCY,
            "goodput_per_gpu",
            "preemptions",
        ],
        fp8_disagg_figure,
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run_experiment.py", description=__doc__.split("\n")[0])
    ap.add_argument("name", choices=experiment_names())
    ap.add_argument("--out", type=Path, default=None, help="output folder")
    args = ap.parse_args(argv)
    out = args.out or ROOT / "outputs" / "experiments" / args.name
    rows, frames = [], {}
    for variant in variants(args.name):
        row, frame = run_variant(variant)
        rows.append(row)
        frames[variant.label] = frame
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{args.name}.csv", index=False)
    png = out / f"{args.name}.png"
    columns, draw = VIEWS.get(args.name, (None, figure))
    draw(args.name, table, frames).savefig(png, dpi=110)
    print(format_table(table if columns is None else table[columns]))
    print(f"wrote {png} and {args.name}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
