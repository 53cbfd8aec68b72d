"""Where a step's time goes: the roofline's terms for one scenario row's setup.

    python benchmarks/step_breakdown.py benchmarks/heldout/trtllm_perf_overview.csv \\
        ho_trtllm_q3_30b_gb200tp1_1024_1024 --batch 1400 --context 1536

builds the row's setup as `servesim validate` does (model, GPU, layout, precision, engine)
and prints, for a decode step of `--batch` sequences each attending `--context` tokens (plus
`--prefill` prompt tokens of one fresh prompt, if given), how long each term of
`sim/step_time.py` takes on one GPU and which side of its roofline binds. Every figure is a
difference of the simulator's own step-time calls with one term's constants zeroed, so the
parts add up to the step exactly and the script restates no formula. The engine's CPU time
per step is printed beside the GPU time, with how the preset combines the two.

Use it to see what a miss is made of: a row predicted too fast whose step is all KV reads
needs a different story from one whose step is all expert weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim.cluster import build_plan
from sim.plan import CostParams, cost_params
from sim.step_time import EngineOverhead, Roofline, StepShape, decode_shape, prefill_shapes
from sim.validate import read_scenarios, setup_of, to_config


def step_shape(batch: int, context: int, prefill: int, window: int) -> StepShape:
    """`batch` decode tokens over `context` tokens each, plus one whole prompt of `prefill`
    tokens, as the simulator shapes them (`window`: the model's sliding window, 0 if none)."""
    shape = decode_shape(batch, context, window)
    if prefill:
        ((prompt, _),) = prefill_shapes(1, prefill, prefill, 1, True, window)
        shape = StepShape._make(a + b for a, b in zip(shape, prompt, strict=True))
    return shape


def _without(p: CostParams, **zeroed: Any) -> Roofline:
    return Roofline(dataclasses.replace(p, **zeroed))


def breakdown(p: CostParams, shape: StepShape) -> list[tuple[str, float, str]]:
    """(term, seconds, what binds) rows whose seconds add up to Roofline(p).step_seconds."""
    full = Roofline(p)
    t, s = shape.num_tokens, shape.num_samples
    tokens = full.token_seconds(t, s)
    rows: list[tuple[str, float, str]] = []

    def bound(compute_off: Roofline, bytes_off: Roofline) -> str:
        # the side whose removal leaves the step unchanged is not the one that binds
        no_compute = compute_off.token_seconds(t, s)
        no_bytes = bytes_off.token_seconds(t, s)
        return "compute" if no_bytes > no_compute else "memory" if no_compute > no_bytes else ""

    rest = tokens
    if p.num_experts:
        experts = tokens - _without(p, num_experts=0).token_seconds(t, s)
        why = bound(_without(p, expert_flops_per_token=0.0), _without(p, expert_bytes=0.0))
        rows.append(("experts", experts, why))
        rest -= experts
    lm = tokens - full.token_seconds(t, 0)
    rows.append(("LM head + sampling", lm, ""))
    rest -= lm
    collectives = tokens - _without(p, allreduce_count=0, alltoall_count=0.0).token_seconds(t, s)
    rows.append(("all-reduce / all-to-all", collectives, ""))
    rest -= collectives
    act = tokens - _without(p, act_bytes_per_token=0.0).token_seconds(t, s)
    rows.append(("activation passes", act, "memory"))
    rest -= act
    floor = tokens - _without(p, floor_s=0.0).token_seconds(t, s)
    rows.append(("layer floor", floor, ""))
    rest -= floor
    why = bound(_without(p, gemm_flops_per_token=0.0), _without(p, gemm_weight_bytes=0.0))
    rows.insert(0, ("dense GEMMs", rest, why))
    attention = full.step_seconds(shape) - tokens
    no_flops = _without(p, attn_flops_per_pair=0.0, attn_flops_per_pair_prefill=0.0)
    kv_only = no_flops.step_seconds(shape) - no_flops.token_seconds(t, s)
    rows.append(("attention", attention, "memory" if kv_only >= attention else "compute"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="scenario CSV (calibration_scenarios format)")
    parser.add_argument("id", help="the row's id, or a part of it that names one row")
    parser.add_argument("--batch", type=int, required=True, help="decoding sequences")
    parser.add_argument("--context", type=int, required=True, help="tokens each one attends")
    parser.add_argument("--prefill", type=int, default=0, help="prompt tokens in the step")
    args = parser.parse_args(argv)
    rows = [r for r in read_scenarios(args.file) if args.id in r.key("id")]
    if len(rows) != 1:
        names = ", ".join(r.key("id") for r in rows[:5]) or "none"
        print(f"step_breakdown: {args.id!r} names {len(rows)} rows ({names})", file=sys.stderr)
        return 2
    row = rows[0]
    setup, notes = setup_of(row, args.file.parent, None)
    plan = build_plan(to_config(setup))
    p = cost_params(plan)
    shape = step_shape(args.batch, args.context, args.prefill, plan.model.sliding_window)
    gpu_s = Roofline(p).step_seconds(shape)
    cpu = EngineOverhead.of(plan.engine)
    cpu_s = cpu.cpu_seconds(args.batch + (1 if args.prefill else 0))
    step_s = cpu.step_seconds(gpu_s, cpu_s)
    print(f"{row.key('id')}: {plan.model.name} on {plan.gpu.name}, {plan.layout}")
    experts = plan.expert_format if plan.model.is_moe else "-"
    print(
        f"formats: weights {plan.weight_format}, experts {experts}, "
        f"activations {plan.activation_format}, KV {plan.kv_format}; engine {plan.engine.name}"
    )
    for note in notes:
        print(f"  ({note})")
    print(f"step: {args.batch} decodes at context {args.context}, {args.prefill} prompt tokens")
    for name, seconds, why in breakdown(p, shape):
        share = seconds / gpu_s if gpu_s else 0.0
        print(f"  {name:26s} {seconds * 1e3:9.3f} ms  {share:6.1%}  {why}")
    print(f"  {'GPU':26s} {gpu_s * 1e3:9.3f} ms")
    how = "max (overlapped)" if plan.engine.overlap_scheduling else "added"
    print(f"  {'engine CPU':26s} {cpu_s * 1e3:9.3f} ms  ({how})")
    print(f"step {step_s * 1e3:.3f} ms -> {args.batch / step_s:,.0f} decode tokens/s per replica")
    return 0


if __name__ == "__main__":
    sys.exit(main())
