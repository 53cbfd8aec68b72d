"""One replica's shared cost and memory model: model + GPU + layout + formats in, plan out.

`ReplicaPlan` is the single value every technique edits (in the order the config lists
them). From it, `memory_plan` derives weight bytes, KV bytes per token and the number of
KV blocks per GPU, and `cost_params` derives the per-step constants the step-time model
multiplies by the batch's token counts. Everything is per GPU of one tensor-parallel group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sim.dtypes import Format, get_format
from sim.hardware import GPUSpec, ModelSpec


class PlanError(ValueError):
    """A replica layout that cannot work (model does not fit, bad TP, unsupported format)."""


@dataclass(frozen=True)
class EngineSpec:
    """Engine limits and fixed costs (vLLM-v1-like; presets in experiments/engine/)."""

    name: str = "vllm"
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    gpu_memory_utilization: float = 0.90
    enable_chunked_prefill: bool = True
    max_model_len: int = 0  # 0 = the model's max_position_embeddings
    step_overhead_s: float = 0.0  # scheduling + launch cost per step not hidden by graphs
    runtime_reserve_bytes: float = 1.5e9  # CUDA context, NCCL buffers, CUDA graphs


@dataclass(frozen=True)
class ReplicaPlan:
    """Everything that fixes one replica's step cost and memory (techniques edit this)."""

    model: ModelSpec
    gpu: GPUSpec
    engine: EngineSpec
    tp: int = 1
    weight_format: str = "bf16"  # dense (non-expert) weights
    expert_format: str = "bf16"  # routed-expert weights
    activation_format: str = "bf16"  # GEMM compute precision
    kv_format: str = "bf16"
    prefix_caching: bool = False  # index full prompt blocks by prefix (technique prefix_caching)
    kv_blocks_override: int = 0  # > 0: this many KV blocks regardless of memory (what-if)
    notes: tuple[str, ...] = field(default=())  # what techniques changed, for the summary


def fmt(name: str) -> Format:
    return get_format(name)


def compute_rate_key(plan: ReplicaPlan) -> str:
    """The peak-FLOP/s key GEMMs run at: weights and activations meet at the wider format."""
    act = fmt(plan.activation_format)
    if not act.compute:
        raise PlanError(f"activation format {act.name!r} is weight-only; use bf16, fp8, ...")
    gpu = plan.gpu
    if act.rate_key not in gpu.peak_flops_per_s:
        have = ", ".join(sorted(gpu.peak_flops_per_s))
        raise PlanError(
            f"{gpu.name} has no {act.rate_key} tensor-core rate for activation format "
            f"{act.name!r} (it has {have}); choose one of those or another GPU"
        )
    if act.block_scaled and act.name not in gpu.block_scaled_formats:
        raise PlanError(
            f"{gpu.name} does not run block-scaled {act.name!r} natively; "
            f"use fp8/bf16 activations or a GPU listing it in block_scaled_formats"
        )
    return act.rate_key


@dataclass(frozen=True)
class MemoryPlan:
    weight_bytes_per_gpu: float
    workspace_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    kv_capacity_bytes_per_gpu: float
    num_blocks: int
    block_size: int

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


def kv_heads_per_gpu(model: ModelSpec, tp: int) -> float:
    """KV heads each TP rank stores: split when kv_heads >= tp, else replicated (>= 1)."""
    return max(model.num_kv_heads / tp, 1.0)


def kv_bytes_per_token_per_gpu(plan: ReplicaPlan) -> float:
    """KV-cache bytes one token adds on one GPU (MLA latents are replicated on every rank)."""
    m = plan.model
    b = fmt(plan.kv_format).bytes_per_element
    if m.is_mla:
        return m.kv_bytes_per_token(b)
    layers = m.num_full_attention_layers
    return 2.0 * layers * kv_heads_per_gpu(m, plan.tp) * m.head_dim * b


def weight_bytes_per_gpu(plan: ReplicaPlan) -> float:
    p = plan.model.params
    dense = p.embedding + p.lm_head + p.attention + p.dense_mlp + p.shared_experts + p.router
    dense += p.norms
    wb = fmt(plan.weight_format).bytes_per_element
    eb = fmt(plan.expert_format).bytes_per_element
    return (dense * wb + p.routed_experts * eb) / plan.tp


def workspace_bytes_per_gpu(plan: ReplicaPlan) -> float:
    """Peak activation memory of a max-size step, logits, and the runtime reserve."""
    m, e = plan.model, plan.engine
    inter = m.moe_intermediate_size * m.experts_per_token if m.is_moe else m.intermediate_size
    per_token = (4 * m.hidden_size + 3 * inter / plan.tp) * 2.0
    logits = e.max_num_seqs * m.vocab_size / plan.tp * 4.0
    return e.max_num_batched_tokens * per_token + logits + e.runtime_reserve_bytes


def memory_plan(plan: ReplicaPlan) -> MemoryPlan:
    """Weights, workspace and KV blocks per GPU; PlanError if the model does not fit."""
    gpu, e = plan.gpu, plan.engine
    weights = weight_bytes_per_gpu(plan)
    work = workspace_bytes_per_gpu(plan)
    usable = gpu.hbm_bytes * e.gpu_memory_utilization
    kv_capacity = usable - weights - work
    kv_tok = kv_bytes_per_token_per_gpu(plan)
    num_blocks = int(kv_capacity // (kv_tok * e.block_size)) if kv_capacity > 0 else 0
    if num_blocks < 1:
        raise PlanError(
            f"{plan.model.name} does not fit on {gpu.name} with tp={plan.tp}: weights "
            f"{weights / 1e9:.1f} GB + workspace {work / 1e9:.1f} GB per GPU exceed "
            f"{usable / 1e9:.1f} GB usable ({gpu.hbm_bytes / 1e9:.0f} GB x "
            f"gpu_memory_utilization {e.gpu_memory_utilization}); raise cluster.tp, use a "
            f"larger GPU, or quantize the weights (technique=[quantization])"
        )
    if plan.kv_blocks_override > 0:
        num_blocks = plan.kv_blocks_override
    return MemoryPlan(weights, work, kv_tok, kv_capacity, num_blocks, e.block_size)


@dataclass(frozen=True)
class CostParams:
    """Per-GPU constants of one engine step; step_time multiplies them by batch counts."""

    gemm_flops_per_token: float  # dense + shared-expert + active routed GEMMs (2 x params)
    gemm_weight_bytes: float  # dense weights read once per step (excl. LM head, experts)
    expert_flops_per_token: float  # routed experts actually run per token (top-k)
    expert_bytes: float  # bytes of one expert in every MoE layer (per GPU)
    num_experts: int
    experts_per_token: int
    lm_head_flops_per_sample: float
    lm_head_bytes: float
    attn_flops_per_pair: float  # full-attention layers (per GPU)
    attn_flops_per_pair_window: float  # sliding-window layers (per GPU)
    window_tokens: int
    kv_bytes_per_token: float  # full-attention layers, per GPU
    kv_bytes_per_token_window: float  # sliding layers, per GPU
    act_bytes_per_token: float  # non-GEMM passes over activations (norms, rotary, ...)
    gemm_rate_flops_per_s: float
    attn_rate_flops_per_s: float
    hbm_bytes_per_s: float
    allreduce_count: int  # collectives per step (2 per layer when tp > 1)
    allreduce_bytes_per_token: float
    allreduce_latency_s: float
    allreduce_bytes_per_s: float  # algorithm bandwidth for one all-reduce
    step_overhead_s: float


# Non-GEMM activation passes per layer, in units of hidden / intermediate elements read or
# written: 2 RMSNorms (read+write), 2 residual adds, rotary on q/k, the gated activation
# (read gate+up, write out). Documented estimate; the calibration bounds its effect.
ACT_PASSES_HIDDEN = 12.0
ACT_PASSES_INTERMEDIATE = 3.0
ATTENTION_FRACTION_OF_MATMUL = 0.5  # flash-attention FLOP/s relative to large GEMMs


def cost_params(plan: ReplicaPlan) -> CostParams:
    m, gpu, tp = plan.model, plan.gpu, plan.tp
    p = m.params
    eff = gpu.efficiency
    rate_key = compute_rate_key(plan)
    peak = gpu.peak_flops_per_s[rate_key]
    gemm_rate = peak * eff.matmul_frac.get(rate_key, min(eff.matmul_frac.values()))
    wb = fmt(plan.weight_format).bytes_per_element
    eb = fmt(plan.expert_format).bytes_per_element
    ab = fmt(plan.activation_format).bytes_per_element
    dense_params = p.attention + p.dense_mlp + p.shared_experts + p.router
    lm_params = m.hidden_size * m.vocab_size
    kv_tok_full = kv_bytes_per_token_per_gpu(plan)
    kvb = fmt(plan.kv_format).bytes_per_element
    kv_tok_window = 0.0
    if m.num_sliding_layers:
        kv_tok_window = 2.0 * m.num_sliding_layers * kv_heads_per_gpu(m, tp) * m.head_dim * kvb
    full_layers = m.num_full_attention_layers
    pair = m.attention_flops_per_pair_per_layer / tp
    inter = m.moe_intermediate_size * m.experts_per_token if m.is_moe else m.intermediate_size
    act = m.num_layers * (ACT_PASSES_HIDDEN * m.hidden_size + ACT_PASSES_INTERMEDIATE * inter / tp)
    num_experts = m.num_experts if m.is_moe else 0
    per_expert = p.routed_experts / num_experts if num_experts else 0.0
    ar_bw = 0.0
    if tp > 1:
        ar_bw = gpu.scaleup_bw_bytes_per_s * eff.allreduce_bw_frac / (2.0 * (tp - 1) / tp)
    return CostParams(
        gemm_flops_per_token=2.0 * dense_params / tp,
        gemm_weight_bytes=(dense_params + p.norms) * wb / tp,
        expert_flops_per_token=2.0 * per_expert * m.experts_per_token / tp,
        expert_bytes=per_expert * eb / tp,
        num_experts=num_experts,
        experts_per_token=m.experts_per_token,
        lm_head_flops_per_sample=2.0 * lm_params / tp,
        lm_head_bytes=lm_params * wb / tp,
        attn_flops_per_pair=pair * full_layers,
        attn_flops_per_pair_window=pair * m.num_sliding_layers,
        window_tokens=m.sliding_window,
        kv_bytes_per_token=kv_tok_full,
        kv_bytes_per_token_window=kv_tok_window,
        act_bytes_per_token=act * ab,
        gemm_rate_flops_per_s=gemm_rate,
        attn_rate_flops_per_s=gemm_rate * ATTENTION_FRACTION_OF_MATMUL,
        hbm_bytes_per_s=gpu.hbm_bw_bytes_per_s * eff.hbm_frac,
        allreduce_count=2 * m.num_layers if tp > 1 else 0,
        allreduce_bytes_per_token=m.hidden_size * 2.0,
        allreduce_latency_s=eff.allreduce_latency_s,
        allreduce_bytes_per_s=ar_bw,
        step_overhead_s=plan.engine.step_overhead_s,
    )


def validate_layout(plan: ReplicaPlan) -> None:
    """Clear errors for impossible tensor-parallel layouts."""
    m, gpu, tp = plan.model, plan.gpu, plan.tp
    if tp < 1:
        raise PlanError(f"cluster.tp must be >= 1, got {tp}")
    if m.num_heads % tp:
        raise PlanError(
            f"cluster.tp={tp} does not divide {m.name}'s {m.num_heads} attention heads; "
            f"use a divisor such as {', '.join(str(d) for d in _divisors(m.num_heads)[:6])}"
        )
    if tp > gpu.scaleup_domain_gpus:
        raise PlanError(
            f"cluster.tp={tp} exceeds {gpu.name}'s scale-up domain of "
            f"{gpu.scaleup_domain_gpus} GPUs; tensor parallelism needs NVLink-class links"
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def max_model_len(plan: ReplicaPlan) -> int:
    cap = plan.engine.max_model_len or plan.model.max_position_embeddings
    return int(min(cap, plan.model.max_position_embeddings))


def blocks_for(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size)
