"""Layout planner: model, GPUs, precisions and a target load in; fit and step times per layout out.

`servesim plan --model NAME [--gpu h100,h200,b200] [--precision checkpoint,fp8]
[--concurrency 64] [--context 4096] [--prompt 2048] [--ep-skew 0] [--engine vllm]
[--max-gpus 64] [--gpus 8,16] [--all]` answers "the minimum GPU count for this model, and
TP vs PP vs EP for this situation".

For every GPU type and precision it enumerates layouts of 1, 2, 4, ... GPUs (one replica):
tensor x pipeline parallel (tp x pp), and for MoE models also expert parallelism over the TP
group (ep = tp) and attention data parallelism (tp x dp_attention GPUs, ep = all of them).
Each layout is built exactly as a simulation would build it (`sim.cluster.layout_plan`:
layout checks, techniques, memory plan), so an infeasible layout shows the simulator's own
reason. A layout is feasible when the weights fit and the KV cache holds `concurrency`
sequences of `context` tokens. For feasible layouts it reports the roofline's
(`sim.step_time`) prefill time of one `prompt`-token request alone (chunked at the engine's
token budget) and the duration of one decode step of `concurrency` sequences at `context`
tokens each, with the decode tokens/s that step gives. No queueing: `servesim` runs with a
workload give the distributions.

Precisions: `checkpoint` (the model's own formats), `bf16`, `fp8` (W8A8, FP8 KV), `nvfp4`
and `mxfp4` (FP4 weights and activations, FP8 KV), `int4` (weight-only, bf16 activations and
KV), or any `weights/activations/kv` triple such as `nvfp4/fp8/fp8`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sim.cluster import engine_spec, layout_plan
from sim.config import ClusterConfig, engine_preset
from sim.dtypes import get_format
from sim.hardware import GPUSpec, ModelSpec, ProfileError, load_gpu, load_model
from sim.plan import EngineSpec, PlanError, ReplicaPlan, cost_params, memory_plan
from sim.step_time import EngineOverhead, Roofline, decode_shape, prefill_shapes
from sim.techniques import TechniqueError

PRESETS = {
    "bf16": ("bf16", "bf16", "bf16"),
    "fp8": ("fp8", "fp8", "fp8"),
    "nvfp4": ("nvfp4", "nvfp4", "fp8"),
    "mxfp4": ("mxfp4", "mxfp4", "fp8"),
    "int4": ("int4", "bf16", "bf16"),
}


@dataclass(frozen=True)
class Precision:
    """Formats of weights, activations and KV cache; `checkpoint` keeps the model's own."""

    name: str
    formats: tuple[str, str, str] | None  # None = checkpoint

    def technique(self) -> dict[str, Any]:
        if self.formats is None:
            return {}
        w, a, kv = self.formats
        return {"quantization": {"weights": w, "activations": a, "kv_cache": kv}}


@dataclass(frozen=True)
class Target:
    """The situation: sequences in flight, tokens each holds, prompt length for prefill."""

    concurrency: int = 64
    context_tokens: int = 4096
    prompt_tokens: int = 2048
    ep_skew: float = 0.0  # busiest EP rank's extra expert load (applies where ep > 1)


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int = 1
    dp_attention: int = 1
    ep: int = 1

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp_attention

    @property
    def label(self) -> str:
        parts = [f"tp{self.tp}"]
        parts += [f"pp{self.pp}"] if self.pp > 1 else []
        parts += [f"dp{self.dp_attention}"] if self.dp_attention > 1 else []
        parts += [f"ep{self.ep}"] if self.ep > 1 else []
        return "-".join(parts)

    def cluster(self, gpu: str, ep_skew: float = 0.0) -> ClusterConfig:
        return ClusterConfig(1, gpu, self.tp, self.pp, self.ep, self.dp_attention, ep_skew)


@dataclass(frozen=True)
class PlanRow:
    gpu: str
    precision: str
    layout: Layout
    feasible: bool
    reason: str = ""  # why not (empty when feasible)
    weight_gb_per_gpu: float = math.nan
    kv_capacity_tokens: int = 0
    kv_needed_tokens: int = 0
    prefill_s: float = math.nan
    decode_step_s: float = math.nan

    def tokens_per_s(self, target: Target) -> float:
        return target.concurrency / self.decode_step_s if self.feasible else math.nan


def parse_precision(text: str) -> Precision:
    """A preset name, `checkpoint`, or a `weights/activations/kv` triple of format names."""
    name = text.strip().lower()
    if name == "checkpoint":
        return Precision(name, None)
    if name in PRESETS:
        return Precision(name, PRESETS[name])
    parts = name.split("/")
    if len(parts) != 3:
        known = ", ".join(["checkpoint", *PRESETS])
        raise ValueError(f"precision {text!r}: use one of {known} or weights/activations/kv")
    w, a, kv = (get_format(p).name for p in parts)
    return Precision(name, (w, a, kv))


def candidate_layouts(model: ModelSpec, num_gpus: int) -> list[Layout]:
    """Layouts of one replica on `num_gpus` GPUs worth comparing (power-of-two splits).

    Dense: every tp x pp = num_gpus. MoE: the same with experts tensor-parallel (ep=1), with
    pp=1 also expert-parallel over the TP group (ep=tp), and attention DP with pp=1: tp x dp
    GPUs, experts over all of them (ep = num_gpus).
    """
    out: list[Layout] = []
    tps = [t for t in _powers_of_two(num_gpus) if num_gpus % t == 0]
    for tp in tps:
        pp = num_gpus // tp
        out.append(Layout(tp, pp))
        if model.is_moe and tp > 1 and pp == 1:
            out.append(Layout(tp, pp, 1, tp))
    if model.is_moe:
        out += [Layout(tp, 1, num_gpus // tp, num_gpus) for tp in tps if tp < num_gpus]
    return out


def _powers_of_two(limit: int) -> list[int]:
    return [1 << i for i in range(limit.bit_length()) if 1 << i <= limit]


def load_engine(name: str) -> EngineSpec:
    """An engine preset from experiments/engine/NAME.yaml."""
    return engine_spec(engine_preset(name))


def prefill_seconds(
    model: Roofline, prompt_tokens: int, budget: int, overhead: EngineOverhead | None = None
) -> float:
    """One request's prompt alone, in chunks of the engine's token budget (causal pairs)."""
    overhead = overhead or EngineOverhead()
    steps = prefill_shapes(1, prompt_tokens, budget, 1)
    return sum(overhead.total_seconds(model, shape, seqs) for shape, seqs in steps)


def decode_step_seconds(
    model: Roofline,
    concurrency: int,
    context_tokens: int,
    overhead: EngineOverhead | None = None,
) -> float:
    """One decode step of `concurrency` sequences holding `context_tokens` tokens each."""
    overhead = overhead or EngineOverhead()
    shape = decode_shape(concurrency, context_tokens)
    return overhead.total_seconds(model, shape, concurrency)


def evaluate(
    model: ModelSpec,
    gpu: GPUSpec,
    engine: EngineSpec,
    precision: Precision,
    layout: Layout,
    target: Target,
) -> PlanRow:
    """Build one layout as a simulation would; feasibility, memory and step times."""
    row = PlanRow(gpu.name, precision.name, layout, False)
    try:
        cluster = layout.cluster(gpu.name, target.ep_skew)
        plan = layout_plan(model, gpu, engine, cluster, precision.technique())
    except (PlanError, TechniqueError, ValueError) as err:
        return _replace(row, reason=str(err).split("; ")[0])
    return _measure(row, plan, target)


def _measure(row: PlanRow, plan: ReplicaPlan, target: Target) -> PlanRow:
    mem = memory_plan(plan)
    # each sequence: its context's blocks plus its sliding-window layers' blocks
    blocks_per_seq = math.ceil(target.context_tokens / mem.block_size) + mem.window_blocks(
        target.context_tokens
    )
    needed = target.concurrency * blocks_per_seq * mem.block_size
    row = _replace(
        row,
        weight_gb_per_gpu=mem.weight_bytes_per_gpu / 1e9,
        kv_capacity_tokens=mem.kv_capacity_tokens,
        kv_needed_tokens=needed,
    )
    if target.concurrency > plan.engine.max_num_seqs:
        return _replace(
            row,
            reason=f"concurrency {target.concurrency} exceeds the engine's max_num_seqs "
            f"{plan.engine.max_num_seqs}",
        )
    if mem.kv_capacity_tokens < needed:
        return _replace(
            row,
            reason=f"KV cache holds {mem.kv_capacity_tokens:,} tokens; {target.concurrency} "
            f"x {target.context_tokens} needs {needed:,}"
            + (" with its sliding-window blocks" if mem.window_blocks_per_seq else ""),
        )
    roofline = Roofline(cost_params(plan))
    overhead = EngineOverhead.of(plan.engine)
    return _replace(
        row,
        feasible=True,
        prefill_s=prefill_seconds(
            roofline, target.prompt_tokens, plan.engine.max_num_batched_tokens, overhead
        ),
        decode_step_s=decode_step_seconds(
            roofline, target.concurrency, target.context_tokens, overhead
        ),
    )


def _replace(row: PlanRow, **changes: Any) -> PlanRow:
    return dataclasses.replace(row, **changes)


def plan_rows(
    model: ModelSpec,
    gpus: Sequence[GPUSpec],
    precisions: Sequence[Precision],
    target: Target,
    engine: EngineSpec,
    gpu_counts: Iterable[int],
) -> list[PlanRow]:
    """Every candidate layout of every GPU count, per GPU type and precision."""
    counts = sorted(set(gpu_counts))
    return [
        evaluate(model, gpu, engine, prec, layout, target)
        for gpu in gpus
        for prec in precisions
        for n in counts
        for layout in candidate_layouts(model, n)
    ]


def rows_for(rows: Sequence[PlanRow], gpu: str, precision: str) -> list[PlanRow]:
    return [r for r in rows if r.gpu == gpu and r.precision == precision]


def minimum_gpus(rows: Sequence[PlanRow], gpu: str, precision: str) -> int | None:
    """The fewest GPUs of any feasible layout (None: nothing fits)."""
    ok = [r.layout.num_gpus for r in rows_for(rows, gpu, precision) if r.feasible]
    return min(ok) if ok else None


def shown_counts(n_min: int | None, max_gpus: int) -> set[int]:
    """GPU counts a report tabulates: the largest that fails, the minimum, and twice it."""
    if n_min is None:
        return {max_gpus}
    return {n for n in (n_min // 2, n_min, n_min * 2) if 1 <= n <= max_gpus}


def format_report(
    model: ModelSpec,
    rows: Sequence[PlanRow],
    target: Target,
    max_gpus: int,
    counts: set[int] | None = None,
) -> str:
    """Summary of minimum GPUs, then a table per GPU type and precision (`counts`: the GPU
    counts to tabulate; None: around each minimum)."""
    keys = list(dict.fromkeys((r.gpu, r.precision) for r in rows))
    active = f" ({model.active_params / 1e9:.0f}B active)" if model.is_moe else ""
    lines = [
        f"{model.name}: {model.total_params / 1e9:.0f}B parameters{active}; target "
        f"{target.concurrency} sequences x {target.context_tokens} tokens of context, "
        f"prefill of one {target.prompt_tokens}-token prompt; EP skew {target.ep_skew:g}; "
        f"one replica of up to {max_gpus} GPUs",
        "",
        "minimum GPUs (fastest layouts at that count: decode step / prefill):",
    ]
    for gpu, prec in keys:
        n_min = minimum_gpus(rows, gpu, prec)
        if n_min is None:
            lines.append(f"  {gpu:<10} {prec:<16} {'-':>4}  nothing fits within {max_gpus} GPUs")
            continue
        ok = [r for r in rows_for(rows, gpu, prec) if r.feasible and r.layout.num_gpus == n_min]
        dec = min(ok, key=lambda r: r.decode_step_s)
        pre = min(ok, key=lambda r: r.prefill_s)
        lines.append(
            f"  {gpu:<10} {prec:<16} {n_min:>4}  {dec.layout.label} "
            f"({dec.decode_step_s * 1e3:.1f} ms) / {pre.layout.label} "
            f"({pre.prefill_s * 1e3:.0f} ms)"
        )
    for gpu, prec in keys:
        show = (
            counts if counts is not None else shown_counts(minimum_gpus(rows, gpu, prec), max_gpus)
        )
        lines += ["", f"{gpu}, {prec}:", *_table_header()]
        lines += [
            _table_row(r, target) for r in rows_for(rows, gpu, prec) if r.layout.num_gpus in show
        ]
    return "\n".join(lines)


def _table_header() -> list[str]:
    return [
        f"  {'gpus':>4} {'layout':<14} {'weights':>8} {'KV cap':>11} {'prefill':>9} "
        f"{'decode':>9} {'tok/s':>8} {'tok/s':>7}  status",
        f"  {'':>4} {'':<14} {'GB/GPU':>8} {'tokens':>11} {'ms':>9} {'ms/step':>9} "
        f"{'':>8} {'/GPU':>7}",
    ]


def _table_row(r: PlanRow, target: Target) -> str:
    n = r.layout.num_gpus
    nan = math.isnan(r.weight_gb_per_gpu)
    weights = f"{'-':>8}" if nan else f"{r.weight_gb_per_gpu:8.1f}"
    kv = f"{r.kv_capacity_tokens:>11,}" if r.kv_capacity_tokens else f"{'-':>11}"
    if not r.feasible:
        blank = " " * 37
        return f"  {n:>4} {r.layout.label:<14} {weights} {kv} {blank}  {r.reason}"
    tps = r.tokens_per_s(target)
    return (
        f"  {n:>4} {r.layout.label:<14} {weights} {kv} {r.prefill_s * 1e3:9.1f} "
        f"{r.decode_step_s * 1e3:9.2f} {tps:8.0f} {tps / n:7.0f}  ok"
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="servesim plan",
        description="Minimum GPUs and TP vs PP vs EP layouts for a model, GPU and load.",
    )
    ap.add_argument("--model", required=True, help="model profile name or alias")
    ap.add_argument("--gpu", default="h100,h200,b200", help="GPU profiles, comma-separated")
    ap.add_argument(
        "--precision",
        default="checkpoint,fp8",
        help="checkpoint, bf16, fp8, nvfp4, mxfp4, int4 or weights/activations/kv; comma list",
    )
    ap.add_argument("--concurrency", type=int, default=64, help="sequences in flight")
    ap.add_argument("--context", type=int, default=4096, help="tokens each sequence holds")
    ap.add_argument("--prompt", type=int, default=2048, help="prompt tokens for the prefill time")
    ap.add_argument("--ep-skew", type=float, default=0.0, help="EP load skew (0.2 = +20%%)")
    ap.add_argument("--max-gpus", type=int, default=64, help="largest replica considered")
    ap.add_argument("--gpus", default="", help="GPU counts to tabulate, e.g. 8,16")
    ap.add_argument("--engine", default="vllm", help="engine preset (experiments/engine)")
    ap.add_argument("--all", action="store_true", help="tabulate every GPU count")
    return ap


def run(args: argparse.Namespace) -> str:
    """The report for parsed arguments (ValueError and friends on bad input)."""
    for key in ("concurrency", "context", "prompt", "max_gpus"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    model = load_model(args.model)
    gpus = [load_gpu(g.strip()) for g in args.gpu.split(",") if g.strip()]
    precisions = [parse_precision(p) for p in args.precision.split(",") if p.strip()]
    target = Target(args.concurrency, args.context, args.prompt, args.ep_skew)
    engine = load_engine(args.engine)
    counts = set(_powers_of_two(args.max_gpus))
    chosen: set[int] | None = None
    if args.gpus:
        chosen = {int(n) for n in args.gpus.split(",")}
        if min(chosen) < 1:
            raise ValueError(f"--gpus counts must be >= 1, got {args.gpus}")
        counts |= chosen
    if args.all:
        chosen = counts
    rows = plan_rows(model, gpus, precisions, target, engine, counts)
    return format_report(model, rows, target, max(counts), chosen)


def main(argv: Sequence[str]) -> int:
    """`servesim plan ...`: print the report; 2 on a bad argument, model or GPU."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse printed the usage
        return int(exc.code or 0)
    try:
        print(run(args))
    except (ProfileError, PlanError, TechniqueError, ValueError) as err:
        print(f"servesim plan: error: {err}")
        return 2
    return 0
