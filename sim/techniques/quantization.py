"""Quantization: number formats for weights, routed experts, activations and KV cache.

Changes: weight bytes per GPU (so KV capacity), bytes read per step (weights and KV), the
GEMM compute rate (the activation format's tensor-core peak), KV bytes per token (so KV
capacity, decode attention traffic and, with disaggregation, bytes transferred).
Storage bytes per element include block scales (sim/dtypes.py: MXFP8/MXFP4 one 8-bit scale
per 32 elements, NVFP4 one FP8 scale per 16, INT4 one fp16 scale per 128).

Compute: a GEMM runs where weights and activations meet, at the wider of the two formats
(`sim.plan.gemm_format`), at the GPU's peak for that format. Documented fallback: weights
narrower than the activations (INT4 always; NVFP4/MXFP4 weights with fp8/bf16 activations,
e.g. on Hopper) are weight-only: stored narrow, dequantized to the activation format for the
GEMM, and the summary says so. An activation format the GPU has no rate for (FP4 on H100,
FP8 on A100) is a PlanError, never a silent rate of another generation.
`experts: ""` follows `weights` but never widens a checkpoint that ships narrower experts
(gpt-oss's MXFP4 experts stay MXFP4 under weights=fp8); set it explicitly to override.

Quality (the simulator invents no accuracy numbers): sensitivity rises from weights to
activations to KV cache to attention; each chosen format's note goes into the summary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sim.dtypes import Format, get_format
from sim.plan import PlanError, ReplicaPlan, compute_rate_key, expert_rate_key, gemm_format
from sim.techniques.base import Technique

# Formats a KV cache can be stored in, with engines that ship them (vLLM: fp8; LMDeploy:
# int8, int4; TensorRT-LLM: fp8, int8, nvfp4 on Blackwell). MX formats have no KV kernels.
KV_FORMATS = ("bf16", "fp16", "fp8", "int8", "int4", "nvfp4")
SENSITIVITY_NOTE = (
    "quality: sensitivity rises weights < activations < KV cache < attention; "
    "no accuracy numbers are simulated (check the model's published evals per format)"
)


@dataclass
class QuantizationConfig:
    weights: str = "fp8"
    activations: str = "fp8"
    kv_cache: str = "fp8"
    experts: str = ""  # routed-expert weights; "" = as weights, never wider than the checkpoint


def expert_format(plan: ReplicaPlan, weights: Format, experts: str) -> Format:
    """The routed experts' format: explicit, else the weights' unless that is wider than
    the checkpoint's expert format."""
    if experts:
        return get_format(experts)
    ckpt = get_format(plan.expert_format)
    return ckpt if ckpt.bytes_per_element < weights.bytes_per_element else weights


def weight_only_note(plan: ReplicaPlan, role: str, weights: Format) -> list[str]:
    """The summary line for the weight-only fallback, when it applies."""
    compute = gemm_format(plan, weights.name)
    if compute.name == weights.name or weights.bytes_per_element >= compute.bytes_per_element:
        return []
    return [
        f"{role} {weights.name} run weight-only on {plan.gpu.name}: stored at "
        f"{weights.bytes_per_element * 8:g} bits/element, dequantized to {compute.name} for "
        f"the GEMM ({compute.rate_key} rate)"
    ]


def apply(plan: ReplicaPlan, q: QuantizationConfig) -> ReplicaPlan:
    weights = get_format(q.weights)
    experts = expert_format(plan, weights, q.experts)
    acts = get_format(q.activations)
    kv = get_format(q.kv_cache)
    if kv.name not in KV_FORMATS:
        raise PlanError(
            f"technique.quantization.kv_cache={kv.name!r}: no engine stores a KV cache in it; "
            f"use one of {', '.join(KV_FORMATS)}"
        )
    notes = [
        f"weights {weights.name}: {weights.quality_note}",
        f"activations {acts.name}: {acts.quality_note}",
        f"kv cache {kv.name}: {kv.quality_note}",
    ]
    if experts.name != weights.name and plan.model.is_moe:
        notes.append(f"experts {experts.name}: {experts.quality_note}")
    new = dataclasses.replace(
        plan,
        weight_format=weights.name,
        expert_format=experts.name,
        activation_format=acts.name,
        kv_format=kv.name,
    )
    compute_rate_key(new)  # clear error if the GPU cannot run the activation format
    notes += weight_only_note(new, "weights", weights)
    if gemm_format(new, weights.name).name != acts.name:
        notes.append(
            f"activations {acts.name} are narrower than the {weights.name} weights: dense "
            f"GEMMs run at the {weights.name} rate"
        )
    if plan.model.is_moe:
        expert_rate_key(new)
        if experts.name != weights.name:
            notes += weight_only_note(new, "experts", experts)
    notes.append(SENSITIVITY_NOTE)
    return dataclasses.replace(new, notes=(*plan.notes, *notes))


CHANGES = (
    "weight bytes/GPU -> KV capacity; bytes read per step (weights, KV); GEMM FLOP/s (activation "
    "format's peak); KV bytes/token -> KV capacity, attention traffic, KV transfer bytes"
)

TECHNIQUE = Technique("quantization", QuantizationConfig, apply, CHANGES)
