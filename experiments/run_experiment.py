"""Named experiments: `python experiments/run_experiment.py NAME [--out DIR]`.

NAME is a Hydra experiment config `experiments/experiment/NAME.yaml` (`@package _global_`):
it sets the base run and lists its variants under `hydra.sweeper.params`, the same sweep
`servesim -m +experiment=NAME` runs as Hydra jobs. This script composes each variant,
runs `sim.simulate.simulate`, prints one table row per variant (memory plan, the roofline's
prefill and decode step times, and the simulated TTFT / TPOT / throughput) and writes
NAME.png (TTFT and TPOT CDFs, throughput and KV capacity bars) and NAME.csv into --out
(default outputs/experiments/NAME). Experiments: tp_pp_ep, fp8_vs_bf16.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
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
from sim.metrics import request_metrics, summarize  # noqa: E402
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
    s = summarize(result.requests, result.steps, result.meta)
    row = {
        "variant": variant.label,
        "layout": plan.layout,
        "gpus": plan.num_gpus * config.cluster.replicas,
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
    }
    return row, request_metrics(result.requests)


def format_table(table: pd.DataFrame) -> str:
    formats = {c: (lambda v: f"{v:,.1f}") for c in table.columns if table[c].dtype.kind == "f"}
    formats["kv_capacity_tokens"] = lambda v: f"{v:,}"
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
    figure(args.name, table, frames).savefig(png, dpi=110)
    print(format_table(table))
    print(f"wrote {png} and {args.name}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
