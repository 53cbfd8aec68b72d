"""Quantization: number formats for weights, routed experts, activations and KV cache.

Changes: weight bytes per GPU (so KV capacity), bytes read per step (weights and KV), the
GEMM compute rate (the activation format's tensor-core peak), KV bytes per token (so KV
capacity, decode attention traffic and, with disaggregation, bytes transferred).
Weight formats without a native rate (INT4, or FP4 on Hopper) are weight-only: stored
narrow, dequantized to the activation format for the GEMM. An activation format the GPU
has no rate for is an error, never a silent rate of another generation.
Quality (the simulator invents no accuracy numbers): sensitivity rises from weights to
activations to KV cache to attention; each chosen format's note goes into the summary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sim.dtypes import get_format
from sim.plan import ReplicaPlan, compute_rate_key
from sim.techniques.base import Technique


@dataclass
class QuantizationConfig:
    weights: str = "fp8"
    activations: str = "fp8"
    kv_cache: str = "fp8"
    experts: str = ""  # routed-expert weights; "" = same as weights


def apply(plan: ReplicaPlan, q: QuantizationConfig) -> ReplicaPlan:
    weights = get_format(q.weights)
    experts = get_format(q.experts or q.weights)
    acts = get_format(q.activations)
    kv = get_format(q.kv_cache)
    if not kv.compute and kv.name != "int4":
        raise ValueError(f"KV-cache format {kv.name!r} is not supported")
    notes = [
        f"weights {weights.name}: {weights.quality_note}",
        f"activations {acts.name}: {acts.quality_note}",
        f"kv cache {kv.name}: {kv.quality_note}",
    ]
    if experts.name != weights.name:
        notes.append(f"experts {experts.name}: {experts.quality_note}")
    new = dataclasses.replace(
        plan,
        weight_format=weights.name,
        expert_format=experts.name,
        activation_format=acts.name,
        kv_format=kv.name,
        notes=(*plan.notes, *notes),
    )
    compute_rate_key(new)  # clear error if the GPU cannot run the activation format
    return new


CHANGES = (
    "weight bytes/GPU -> KV capacity; bytes read per step (weights, KV); GEMM FLOP/s (activation "
    "format's peak); KV bytes/token -> KV capacity, attention traffic, KV transfer bytes"
)

TECHNIQUE = Technique("quantization", QuantizationConfig, apply, CHANGES)
