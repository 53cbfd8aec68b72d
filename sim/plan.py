"""One replica's shared cost and memory model: model + GPU + layout + formats in, plan out.

`ReplicaPlan` is the single value every technique edits (in the order the config lists
them). From it, `memory_plan` derives weight bytes, KV bytes per token and the number of
KV blocks per GPU, and `cost_params` derives the per-step constants the step-time model
multiplies by the batch's token counts. Everything is per GPU of one replica.

Parallel layout (`tp`, `pp`, `dp_attention`, `ep`; one scheduler per replica either way).
A replica has tp x dp_attention GPUs per pipeline stage and pp stages: tp x dp_attention x pp
GPUs. Attention and dense layers are tensor-parallel over `tp` GPUs; `dp_attention` such
groups each hold a full copy of them and the KV of their own sequences (the replica's batch is
split evenly over them). Routed experts are split over every GPU of a stage: `ep` ranks each
hold num_experts / ep whole experts, each expert tensor-parallel over the stage's
tp x dp_attention / ep GPUs (EP adds no GPUs, as in vLLM and SGLang). Pipeline stages hold
ceil(L / pp) or fewer of the L layers (uneven splits allowed, as in vLLM: DeepSeek-V3's 61
layers on pp=2); the heaviest stage sets memory and pace, so every per-stage quantity is the
whole model's times s = ceil(L / pp) / L (s = 1/pp when pp divides L), the embedding and LM
head included (an engine moves layers off the LM head's stage to balance it).

- Memory per GPU: dense weights x s / tp; routed experts x s / (tp x dp_attention); KV bytes
  per token x s / dp_attention on top of the TP split (GQA heads split up to kv_heads; MLA's
  latent is replicated on every TP rank), so PP and attention DP raise KV capacity while TP
  of an MLA model does not.
- Cost per GPU (`cost_params`): the heaviest stage's share of the batch's work: dense FLOPs
  per token x s / (tp x dp_attention), dense bytes x s / tp, the same for experts, attention
  and activation passes; two TP all-reduces per layer of the stage (latency + bytes / link,
  so small decode messages are latency-bound); with dp_attention > 1 an all-to-all dispatch
  and combine per MoE layer; with pp > 1 one activation send per stage.
- PP as a cost transform (`sim.step_time`): the engine keeps min(pp, T) microbatches in
  flight across steps (vLLM's virtual engines), so a step of T tokens (every sequence
  advances once) lasts the steady-state pipeline interval
      step_s = pp * (stage_s(T/m) + send_s(T/m)) + attention_stage_s * pp / m + overhead,
      m = min(pp, T),   send_s(x) = latency + x * hidden * 2 bytes / link bandwidth.
  With m = pp every stage is busy all the time; with fewer microbatches each stage idles
  (pp - m)/pp of the interval: the bubble factor pp/m. (GPipe's (m + p - 1)/m is for a pipe
  drained every batch; an engine that keeps microbatches in flight pays the fill once.)
  Left out: stage-time differences other than layer counts, overlap of sends with compute,
  and engines that only split whole sequences into microbatches (a single long prompt then
  gets no pipelining; here its chunk is cut into m sub-chunks, as chunked pipeline prefill
  does).
- EP and attention DP (`_with_alltoall`, `_link_bytes_per_s`): per MoE layer a dispatch and
  a combine, each latency + x·k·hidden·b·(ep-1)/ep / BW for x tokens per GPU, over NVLink
  inside a scale-up domain, the off-node share over the NIC beyond it. The busiest EP rank
  runs T·(1 + ep_skew) tokens' expert work (`expert_load_factor`). Left out: routing
  imbalance derived from data (ep_skew is the user's estimate), GEMM-shape efficiency (whole
  experts under EP vs thin TP shards: the roofline has none, so EP over the TP group costs
  what TP costs plus its skew), node-level deduplication of dispatched tokens (DeepEP), and
  the uneven split of a step's sequences over attention-DP groups.
"""

from __future__ import annotations

import dataclasses
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
    # what gpu_memory_utilization is a share of. total: all HBM holds weights, workspace and
    # KV (vLLM gpu_memory_utilization, SGLang mem_fraction_static); free: the KV cache gets
    # that share of what weights and workspace leave (TensorRT-LLM
    # KvCacheConfig.free_gpu_memory_fraction, default 0.9)
    kv_memory_basis: str = "total"
    enable_chunked_prefill: bool = True
    max_model_len: int = 0  # 0 = the model's max_position_embeddings
    step_overhead_s: float = 0.0  # CPU per step: scheduling, launches not hidden by graphs
    inflight_overhead_s: float = 0.0  # CPU per step per request in flight, see EngineOverhead
    overlap_scheduling: bool = False  # CPU work of step n+1 overlaps GPU work of step n
    request_overhead_s: float = 0.0  # arrival to engine queue: API server, tokenization
    runtime_reserve_bytes: float = 1.5e9  # CUDA context, NCCL buffers, CUDA graphs
    # incremental: blocks as tokens are computed, preempt when they run out (vLLM);
    # full: a request's blocks for prompt + whole output are reserved when it is admitted,
    # so nothing is ever preempted (TensorRT-LLM's GUARANTEED_NO_EVICT)
    kv_reservation: str = "incremental"
    # TensorRT-LLM's context batch waiting (batch_wait_timeout_iters, batch_wait_max_tokens_ratio;
    # both 0 by default): while requests decode, new prompts are held back until their tokens
    # plus the decode tokens reach ratio x max_num_batched_tokens or they have been held for
    # `batch_wait_steps` steps, so prefills run in fewer, larger batches
    batch_wait_steps: int = 0
    batch_wait_tokens_ratio: float = 0.0
    # how the MoE kernels lay out MXFP4 expert weights. checkpoint: as stored; vllm: padded
    # as vLLM's Mxfp4MoEMethod.create_weights does (`expert_layout_factor`)
    mxfp4_moe_layout: str = "checkpoint"
    # how the engine picks each sequence's next token. greedy: argmax (the benchmarks'
    # temperature 0; microseconds a step, left out). top_p_torch: top-p by sorting the logits
    # in PyTorch (vLLM's torch-native sampler), SAMPLING_TOP_P_* per step (measured)
    sampling: str = "greedy"
    # vLLM v0's multi-step scheduling (--num-scheduler-steps, 0.5.5-0.7): the scheduler runs
    # once per block of this many decode steps, so the CPU cost of a decode step is paid once
    # a block and a new request is admitted only when a block ends (1: every step)
    num_scheduler_steps: int = 1


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding as the engine and cost model see it (technique speculative).

    Each decode step drafts `num_draft_tokens` (k) tokens per sequence and verifies k + 1 in
    one target pass; draft i is kept if drafts 1..i-1 were and it passes, with conditional
    probability acceptance[i-1]. A step commits 1 + (drafts kept) tokens.
    """

    method: str  # draft | eagle | mtp | ngram
    num_draft_tokens: int
    acceptance: tuple[float, ...]  # conditional acceptance per draft position, len k
    sampled: bool  # draw each request's steps (seeded) or use the expected value
    draft_model: ModelSpec | None = None  # method=draft
    head_layers: float = 1.0  # eagle/mtp: draft head cost in target decoder layers

    @property
    def survival(self) -> tuple[float, ...]:
        """P(at least m drafts kept), m = 1..k."""
        out, p = [], 1.0
        for a in self.acceptance:
            p *= a
            out.append(p)
        return tuple(out)

    @property
    def expected_tokens(self) -> float:
        """Tokens committed per step: 1 + Σ_m P(at least m kept); (1-a^(k+1))/(1-a) for a."""
        return 1.0 + sum(self.survival)


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
    speculation: Speculation | None = None  # technique speculative
    notes: tuple[str, ...] = field(default=())  # what techniques changed, for the summary
    pp: int = 1  # pipeline stages (the heaviest holds ceil(layers / pp) layers)
    ep: int = 1  # expert-parallel ranks per stage (divides tp x dp_attention)
    dp_attention: int = 1  # attention data-parallel groups per stage (each tp GPUs)
    ep_skew: float = 0.0  # busiest EP rank's extra share of expert work (0.2 = 20 % more)

    @property
    def stage_gpus(self) -> int:
        """GPUs of one pipeline stage: tp x dp_attention."""
        return self.tp * self.dp_attention

    @property
    def num_gpus(self) -> int:
        """GPUs of one replica: tp x dp_attention x pp."""
        return self.stage_gpus * self.pp

    @property
    def stage_layers(self) -> int:
        """Layers of the heaviest pipeline stage: ceil(layers / pp)."""
        return -(-self.model.num_layers // self.pp)

    @property
    def stage_share(self) -> float:
        """The heaviest stage's share s of the model: stage_layers / layers (1.0 for pp=1)."""
        return self.stage_layers / self.model.num_layers

    @property
    def layout(self) -> str:
        """Short layout label, e.g. 'tp=8', 'tp=4 pp=2', 'tp=1 dp=8 ep=8'."""
        parts = [f"tp={self.tp}"]
        parts += [f"pp={self.pp}"] if self.pp > 1 else []
        parts += [f"dp={self.dp_attention}"] if self.dp_attention > 1 else []
        parts += [f"ep={self.ep}"] if self.ep > 1 else []
        return " ".join(parts)


def fmt(name: str) -> Format:
    return get_format(name)


def gemm_format(plan: ReplicaPlan, weight_format: str) -> Format:
    """The format a GEMM with these weights computes in: weights and activations meet at
    the wider format. Weights narrower than the activations (or weight-only, INT4) are
    dequantized to the activation format: the weight-only fallback, e.g. NVFP4 weights with
    FP8 activations on H100 store 4.5 bits per weight and run at the FP8 rate."""
    act, weights = fmt(plan.activation_format), fmt(weight_format)
    if weights.compute and weights.element_bits > act.element_bits:
        return weights
    return act


def _rate_key(gpu: GPUSpec, f: Format, role: str) -> str:
    """`f`'s tensor-core rate key on `gpu`; PlanError (never another generation's rate)."""
    if not f.compute:
        raise PlanError(f"{role} format {f.name!r} is weight-only; use bf16, fp8, ...")
    if f.rate_key not in gpu.peak_flops_per_s:
        have = ", ".join(sorted(gpu.peak_flops_per_s))
        raise PlanError(
            f"{gpu.name} has no {f.rate_key} tensor-core rate for {role} format "
            f"{f.name!r} (it has {have}); choose one of those or another GPU (FP4 compute "
            f"needs Blackwell; FP4 weights with fp8/bf16 activations run weight-only)"
        )
    if f.block_scaled and f.name not in gpu.block_scaled_formats:
        raise PlanError(
            f"{gpu.name} does not run block-scaled {f.name!r} natively; "
            f"use fp8/bf16 {role}s or a GPU listing it in block_scaled_formats"
        )
    return f.rate_key


def compute_rate_key(plan: ReplicaPlan) -> str:
    """The peak-FLOP/s key dense GEMMs run at: weights and activations meet at the wider
    format (`gemm_format`); an activation format the GPU cannot run is a PlanError."""
    _rate_key(plan.gpu, fmt(plan.activation_format), "activation")
    return _rate_key(plan.gpu, gemm_format(plan, plan.weight_format), "activation")


def expert_rate_key(plan: ReplicaPlan) -> str:
    """As `compute_rate_key`, for the routed experts' GEMMs (their own weight format)."""
    _rate_key(plan.gpu, fmt(plan.activation_format), "activation")
    return _rate_key(plan.gpu, gemm_format(plan, plan.expert_format), "activation")


def attention_rate_key(plan: ReplicaPlan) -> str:
    """Attention runs at 16-bit (FlashAttention-style kernels), or FP8 when the KV cache is
    FP8 and the GPU has an FP8 rate; never at an FP4 GEMM rate."""
    gpu = plan.gpu
    if fmt(plan.kv_format).rate_key == "fp8" and "fp8" in gpu.peak_flops_per_s:
        return "fp8"
    return "bf16" if "bf16" in gpu.peak_flops_per_s else "fp16"


def achievable_flops_per_s(gpu: GPUSpec, rate_key: str) -> float:
    eff = gpu.efficiency
    return gpu.peak_flops_per_s[rate_key] * eff.matmul_frac.get(
        rate_key, min(eff.matmul_frac.values())
    )


@dataclass(frozen=True)
class MemoryPlan:
    weight_bytes_per_gpu: float
    workspace_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    kv_capacity_bytes_per_gpu: float
    num_blocks: int
    block_size: int
    # a sequence's sliding-window layers keep the KV of its last `sliding_window` tokens
    # (plus the block being written), stored in pages of the full-attention layers' block
    # size (vLLM's hybrid KV manager); their KV bytes per token over the full layers'
    window_kv_ratio: float = 0.0
    sliding_window: int = 0

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def window_blocks(self, seq_tokens: int) -> int:
        """Blocks a sequence of `seq_tokens` tokens (prompt + output) holds for its sliding
        layers: min(seq_tokens, window) + one block being written, e.g. gpt-oss-120b (18 full,
        18 sliding layers, window 128, 16-token blocks): (128 + 16) / 16 = 9 for any sequence
        of 128 tokens or more, (64 + 16) / 16 = 5 for one of 64. 0 without sliding layers."""
        if not self.window_kv_ratio:
            return 0
        tokens = min(seq_tokens, self.sliding_window) + self.block_size
        return math.ceil(self.window_kv_ratio * tokens / self.block_size)

    @property
    def window_blocks_per_seq(self) -> int:
        """The most blocks a sequence holds for its sliding layers (a window's worth)."""
        return self.window_blocks(self.sliding_window)


def kv_heads_per_gpu(model: ModelSpec, tp: int) -> float:
    """KV heads each TP rank stores: split when kv_heads >= tp, else replicated (>= 1)."""
    return max(model.num_kv_heads / tp, 1.0)


def kv_bytes_per_token_per_gpu(plan: ReplicaPlan, layers: int | None = None) -> float:
    """KV-cache bytes one token adds per GPU of the replica, on average.

    GQA: 2 x full-attention layers x kv_heads_per_gpu x head_dim x bytes (heads split over
    TP ranks, replicated once tp > kv_heads). MLA: layers x (kv_lora_rank + qk_rope_head_dim)
    x bytes, the latent replicated on every TP rank. Times the heaviest stage's share of the
    layers (`stage_share`) and divided by dp_attention (a sequence's KV lives on one
    attention-DP group only). `layers` overrides the layer count (the sliding layers).
    """
    m = plan.model
    b = fmt(plan.kv_format).bytes_per_element
    if m.is_mla:
        per_rank = m.kv_bytes_per_token(b)
    else:
        count = m.num_full_attention_layers if layers is None else layers
        per_rank = 2.0 * count * kv_heads_per_gpu(m, plan.tp) * m.head_dim * b
    return per_rank * plan.stage_share / plan.dp_attention


def window_kv_ratio(plan: ReplicaPlan, kv_tok_full: float) -> float:
    """KV bytes per token of the sliding-window layers over the full-attention layers' (the
    pages are sized by the full layers); 0 without sliding layers."""
    m = plan.model
    if not m.num_sliding_layers or m.is_mla or kv_tok_full <= 0:
        return 0.0
    return kv_bytes_per_token_per_gpu(plan, m.num_sliding_layers) / kv_tok_full


MXFP4_MOE_LAYOUTS = ("checkpoint", "vllm")
KV_RESERVATIONS = ("incremental", "full")  # vLLM allocates as it goes; TRT-LLM reserves all
SAMPLING_MODES = ("greedy", "top_p_torch")


def round_up(value: float, multiple: int) -> float:
    return math.ceil(value / multiple) * multiple


def expert_layout_factor(plan: ReplicaPlan) -> float:
    """Routed-expert weight elements as the MoE kernels hold them, over the checkpoint's.

    `engine.mxfp4_moe_layout=vllm` pads MXFP4 experts as vLLM's Mxfp4MoEMethod.create_weights
    (v0.10-0.11) does for its kernels: on a GPU without native MXFP4 (Marlin, weight-only)
    the hidden size to a multiple of 256 and the per-GPU intermediate size to 128; on one
    with native MXFP4 (FlashInfer's TensorRT-LLM kernels) both to 256. The padding is held
    in memory, read every step and computed over. For gpt-oss-120b (hidden and intermediate
    2880) on one H100: 3072 x 2944 / 2880^2 = 1.090; on eight B200: 3072 x 512 / (2880 x 360)
    = 1.517.
    """
    m = plan.model
    if plan.engine.mxfp4_moe_layout != "vllm" or not m.is_moe or plan.expert_format != "mxfp4":
        return 1.0
    expert_tp = max(plan.stage_gpus // plan.ep, 1)  # GPUs sharing one expert's matrices
    inter = m.moe_intermediate_size / expert_tp
    native = "mxfp4" in plan.gpu.block_scaled_formats
    hidden_pad = round_up(m.hidden_size, 256)
    inter_pad = round_up(inter, 256 if native else 128)
    return hidden_pad * inter_pad / (m.hidden_size * inter)


def weight_bytes_per_gpu(plan: ReplicaPlan) -> float:
    p = plan.model.params
    dense = p.embedding + p.lm_head + p.attention + p.dense_mlp + p.shared_experts + p.router
    dense += p.norms
    wb = fmt(plan.weight_format).bytes_per_element
    eb = fmt(plan.expert_format).bytes_per_element
    # dense weights: TP-split, replicated per attention-DP group; experts: split over all
    # GPUs of a stage (EP ranks x expert TP); the heaviest pipeline stage's share of all
    total = dense * wb + p.routed_experts * expert_layout_factor(plan) * eb / plan.dp_attention
    spec = plan.speculation
    if spec is not None and spec.draft_model is not None:  # a draft model lives beside it
        total += spec.draft_model.total_params * wb
    elif spec is not None and spec.method in ("eagle", "mtp"):  # a head of a few layers
        per_layer = (p.attention + p.dense_mlp + p.shared_experts + p.routed_experts) / max(
            plan.model.num_layers, 1
        )
        total += spec.head_layers * per_layer * wb
    return total * plan.stage_share / plan.tp


def workspace_bytes_per_gpu(plan: ReplicaPlan) -> float:
    """Peak activation memory of a max-size step, logits, and the runtime reserve (a step's
    tokens and sequences are split over the attention-DP groups)."""
    m, e = plan.model, plan.engine
    dp = plan.dp_attention
    inter = m.moe_intermediate_size * m.experts_per_token if m.is_moe else m.intermediate_size
    per_token = (4 * m.hidden_size + 3 * inter / plan.tp) * 2.0
    logits = e.max_num_seqs / dp * m.vocab_size / plan.tp * 4.0
    return e.max_num_batched_tokens / dp * per_token + logits + e.runtime_reserve_bytes


def memory_plan(plan: ReplicaPlan) -> MemoryPlan:
    """Weights, workspace and KV blocks per GPU; PlanError if the model does not fit."""
    gpu, e = plan.gpu, plan.engine
    weights = weight_bytes_per_gpu(plan)
    work = workspace_bytes_per_gpu(plan)
    if e.kv_memory_basis == "free":
        usable = gpu.hbm_bytes
        kv_capacity = (usable - weights - work) * e.gpu_memory_utilization
        share = f"{gpu.hbm_bytes / 1e9:.0f} GB of HBM"
    else:
        usable = gpu.hbm_bytes * e.gpu_memory_utilization
        kv_capacity = usable - weights - work
        share = f"{gpu.hbm_bytes / 1e9:.0f} GB x gpu_memory_utilization {e.gpu_memory_utilization}"
    kv_tok_full = kv_bytes_per_token_per_gpu(plan)
    kv_tok = kv_tok_full
    if kv_tok <= 0:  # every layer slides (Mistral-7B-v0.1): charge them per token, a bound
        kv_tok = kv_bytes_per_token_per_gpu(plan, plan.model.num_sliding_layers)
    num_blocks = int(kv_capacity // (kv_tok * e.block_size)) if kv_capacity > 0 else 0
    if num_blocks < 1:
        raise PlanError(
            f"{plan.model.name} does not fit on {gpu.name} with {plan.layout}: weights "
            f"{weights / 1e9:.1f} GB + workspace {work / 1e9:.1f} GB per GPU exceed "
            f"{usable / 1e9:.1f} GB usable ({share}); raise cluster.tp or "
            f"cluster.pp, use a larger GPU, or quantize the weights (technique=[quantization])"
        )
    if plan.kv_blocks_override > 0:
        num_blocks = plan.kv_blocks_override
    ratio = window_kv_ratio(plan, kv_tok_full)
    window = plan.model.sliding_window if ratio else 0
    return MemoryPlan(weights, work, kv_tok, kv_capacity, num_blocks, e.block_size, ratio, window)


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
    expert_rate_flops_per_s: float = 0.0  # routed-expert GEMMs (0 = gemm_rate_flops_per_s)
    expert_load_factor: float = 1.0  # busiest EP rank's expert work over the mean (1 + skew)
    # prompt tokens' attention where it differs from decode's (MLA: prefill runs unabsorbed,
    # K and V expanded per head; decode runs in the latent space); 0 = attn_flops_per_pair
    attn_flops_per_pair_prefill: float = 0.0
    gemm_pad_tokens: float = 0.0  # GEMM-shape cost: M tokens compute as M + this (per GEMM)
    attn_pad_pairs_per_token: float = 0.0  # attention's per-query-token cost, in pairs
    floor_s: float = 0.0  # per-step GPU time no batch shape removes: layers x layer floor
    sampling_fixed_s: float = 0.0  # choosing tokens: per step with any sample (engine.sampling)
    sampling_s_per_sample: float = 0.0  # ... plus this per sequence sampled
    alltoall_count: float = 0.0  # EP dispatch + combine per stage and step (2 per MoE layer)
    alltoall_bytes_per_token: float = 0.0  # per collective, per token of the step, per GPU
    alltoall_latency_s: float = 0.0
    alltoall_bytes_per_s: float = 0.0  # effective per-GPU bandwidth (scale-up and/or NIC)
    pp_stages: int = 1
    pp_send_bytes_per_token: float = 0.0  # hidden state sent to the next stage, per GPU
    pp_send_latency_s: float = 0.0
    pp_send_bytes_per_s: float = 0.0


# Non-GEMM activation passes per layer, in units of hidden / intermediate elements read or
# written: 2 RMSNorms (read+write), 2 residual adds, rotary on q/k, the gated activation
# (read gate+up, write out). Documented estimate; the calibration bounds its effect.
ACT_PASSES_HIDDEN = 12.0
ACT_PASSES_INTERMEDIATE = 3.0
ACT_PASSES_MOE_COMBINE = 2.0  # per routed expert output: written, then read by the combine
ATTENTION_FRACTION_OF_MATMUL = 0.6036  # flash-attention FLOP/s relative to large GEMMs
# Flash attention's fixed work per query token (tile set-up, softmax rescaling, the
# epilogue), in pairs of attention: a token attending to x keys costs x + this. Measured:
# causal prefills of 1k-16k tokens fit pairs + 884 per token on an H100 and + 927 on an
# H200, each within 11 % (hardware_profiles/measured/, benchmarks/roofline_check.py).
ATTENTION_PAD_PAIRS_PER_TOKEN = 905.0
# Top-p sampling through PyTorch (sort, softmax, cumsum, mask, scatter, softmax, exponential
# race over fp32 logits): a step costs FIXED + PER_LOGIT x sequences x vocabulary. Measured on
# an H100 for 1-256 sequences over 128k-201k vocabularies, within -30 % / +15 % of every row
# (hardware_profiles/measured/H100-SXM_sampling_2026-11-27.csv); used for every GPU.
SAMPLING_TOP_P_FIXED_S = 205e-6
SAMPLING_TOP_P_S_PER_LOGIT = 0.158e-9


def cost_params(plan: ReplicaPlan) -> CostParams:
    """Per-GPU constants of one pipeline stage's share of a step (see the module docstring)."""
    m, gpu, tp = plan.model, plan.gpu, plan.tp
    s, dp = plan.stage_share, plan.dp_attention
    p = m.params
    eff = gpu.efficiency
    gemm_rate = achievable_flops_per_s(gpu, compute_rate_key(plan))
    expert_rate = achievable_flops_per_s(gpu, expert_rate_key(plan)) if m.is_moe else gemm_rate
    wb = fmt(plan.weight_format).bytes_per_element
    eb = fmt(plan.expert_format).bytes_per_element
    ab = fmt(plan.activation_format).bytes_per_element
    work = tp * dp  # GPUs sharing a stage's work (weights replicated over attention DP)
    dense_params = p.attention + p.dense_mlp + p.shared_experts + p.router
    lm_params = m.hidden_size * m.vocab_size
    kv_tok_full = kv_bytes_per_token_per_gpu(plan)
    kvb = fmt(plan.kv_format).bytes_per_element
    kv_tok_window = 0.0
    if m.num_sliding_layers:
        kv_tok_window = (
            2.0 * m.num_sliding_layers * kv_heads_per_gpu(m, tp) * m.head_dim * kvb * s / dp
        )
    full_layers = m.num_full_attention_layers
    pair = m.attention_flops_per_pair_per_layer / tp
    inter = m.moe_intermediate_size * m.experts_per_token if m.is_moe else m.intermediate_size
    act = m.num_layers * (ACT_PASSES_HIDDEN * m.hidden_size + ACT_PASSES_INTERMEDIATE * inter / tp)
    # MoE combine: each token's k expert outputs (hidden wide, partial sums on every expert-TP
    # rank) are written by the down projection and read back by the weighted sum; an EP
    # rank sees k·T/ep of them (times dp: the act term below is per attention-DP group)
    act += (
        ACT_PASSES_MOE_COMBINE
        * m.num_moe_layers
        * m.experts_per_token
        * m.hidden_size
        * dp
        / plan.ep
    )
    num_experts = m.num_experts if m.is_moe else 0
    per_expert = p.routed_experts * expert_layout_factor(plan) / num_experts if num_experts else 0.0
    ar_bw = 0.0
    if tp > 1:
        ar_bw = gpu.scaleup_bw_bytes_per_s * eff.allreduce_bw_frac / (2.0 * (tp - 1) / tp)
    params = CostParams(
        gemm_flops_per_token=2.0 * dense_params * s / work,
        gemm_weight_bytes=(dense_params + p.norms) * wb * s / tp,
        expert_flops_per_token=2.0 * per_expert * m.experts_per_token * s / work,
        expert_bytes=per_expert * eb * s / work,
        num_experts=num_experts,
        experts_per_token=m.experts_per_token,
        lm_head_flops_per_sample=2.0 * lm_params * s / work,
        lm_head_bytes=lm_params * wb * s / tp,
        attn_flops_per_pair=pair * full_layers * s / dp,
        attn_flops_per_pair_prefill=(
            m.prefill_attention_flops_per_pair_per_layer / tp * full_layers * s / dp
            if m.is_mla
            else 0.0
        ),
        attn_flops_per_pair_window=pair * m.num_sliding_layers * s / dp,
        window_tokens=m.sliding_window,
        kv_bytes_per_token=kv_tok_full,
        kv_bytes_per_token_window=kv_tok_window,
        act_bytes_per_token=act * ab * s / dp,
        gemm_rate_flops_per_s=gemm_rate,
        attn_rate_flops_per_s=achievable_flops_per_s(gpu, attention_rate_key(plan))
        * ATTENTION_FRACTION_OF_MATMUL,
        hbm_bytes_per_s=gpu.hbm_bw_bytes_per_s * eff.hbm_frac,
        allreduce_count=2 * plan.stage_layers if tp > 1 else 0,
        allreduce_bytes_per_token=m.hidden_size * 2.0 / dp,
        allreduce_latency_s=eff.allreduce_latency_s,
        allreduce_bytes_per_s=ar_bw,
        expert_rate_flops_per_s=expert_rate,
        expert_load_factor=1.0 + plan.ep_skew if plan.ep > 1 else 1.0,
        gemm_pad_tokens=gpu.efficiency.gemm_pad_tokens,
        attn_pad_pairs_per_token=ATTENTION_PAD_PAIRS_PER_TOKEN,
        floor_s=plan.stage_layers * eff.layer_floor_s,
    )
    if plan.engine.sampling == "top_p_torch":
        params = dataclasses.replace(
            params,
            sampling_fixed_s=SAMPLING_TOP_P_FIXED_S,
            sampling_s_per_sample=SAMPLING_TOP_P_S_PER_LOGIT * m.vocab_size,
        )
    return _with_pipeline(plan, _with_alltoall(plan, ab, params))


def _link_bytes_per_s(gpu: GPUSpec, num_gpus: int) -> float:
    """Per-GPU bandwidth of traffic spread evenly over `num_gpus` GPUs: the scale-up link
    (at the profile's collective efficiency) inside one scale-up domain; beyond it the
    share leaving the domain goes over the NIC (line rate) while the rest stays on NVLink,
    concurrently: 1 / max(f_in / BW_up, f_out / BW_nic), f_out = (n - D) / (n - 1)."""
    up = gpu.scaleup_bw_bytes_per_s * gpu.efficiency.allreduce_bw_frac
    d = gpu.scaleup_domain_gpus
    if num_gpus <= d:
        return up
    f_out = (num_gpus - d) / (num_gpus - 1)
    return 1.0 / max((1.0 - f_out) / up, f_out / gpu.nic_bw_bytes_per_s)


def _with_alltoall(plan: ReplicaPlan, act_bytes: float, params: CostParams) -> CostParams:
    """EP dispatch + combine with attention DP (each GPU owns T / (tp x dp) tokens).

    Per MoE layer two all-to-alls (dispatch in the activation format, combine in bf16); one
    moves, per GPU, x · k · hidden · b · (ep - 1)/ep bytes (x = tokens on the GPU) and costs
    latency + bytes / link. Without attention DP the tokens are replicated over the TP group,
    each rank runs its experts on them and the layer's TP all-reduce combines the outputs.
    """
    m, ep = plan.model, plan.ep
    if plan.dp_attention == 1 or ep == 1:
        return params
    b = (act_bytes + 2.0) / 2.0  # mean of dispatch and combine element bytes
    per_token = m.experts_per_token * m.hidden_size * b * (ep - 1) / ep / plan.stage_gpus
    return dataclasses.replace(
        params,
        alltoall_count=2.0 * m.num_moe_layers * plan.stage_share,
        alltoall_bytes_per_token=per_token,
        alltoall_latency_s=plan.gpu.efficiency.allreduce_latency_s,
        alltoall_bytes_per_s=_link_bytes_per_s(plan.gpu, plan.stage_gpus),
    )


def _with_pipeline(plan: ReplicaPlan, params: CostParams) -> CostParams:
    """PP: a stage sends T · hidden · 2 bytes (bf16 residual stream) to the next one, per TP
    rank in parallel; over NVLink if the replica fits one scale-up domain, else the NIC."""
    if plan.pp == 1:
        return params
    gpu = plan.gpu
    within = plan.num_gpus <= gpu.scaleup_domain_gpus
    up = gpu.scaleup_bw_bytes_per_s * gpu.efficiency.allreduce_bw_frac
    return dataclasses.replace(
        params,
        pp_stages=plan.pp,
        pp_send_bytes_per_token=plan.model.hidden_size * 2.0 / plan.dp_attention,
        pp_send_latency_s=gpu.efficiency.allreduce_latency_s,
        pp_send_bytes_per_s=up if within else gpu.nic_bw_bytes_per_s,
    )


def validate_layout(plan: ReplicaPlan) -> None:
    """Clear errors for impossible layouts (TP, then PP, EP and attention DP)."""
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
    _validate_pipeline_and_experts(plan)


def _validate_pipeline_and_experts(plan: ReplicaPlan) -> None:
    """Clear errors for impossible PP / EP / attention-DP layouts."""
    m, pp, ep, dp = plan.model, plan.pp, plan.ep, plan.dp_attention
    for key, value in (("pp", pp), ("ep", ep), ("dp_attention", dp)):
        if value < 1:
            raise PlanError(f"cluster.{key} must be >= 1, got {value}")
    if not plan.ep_skew >= 0:
        raise PlanError(f"cluster.ep_skew must be >= 0, got {plan.ep_skew}")
    if pp > m.num_layers:
        raise PlanError(
            f"cluster.pp={pp} exceeds {m.name}'s {m.num_layers} layers (a stage holds at "
            f"least one layer); use at most {m.num_layers} stages"
        )
    if not m.is_moe and (ep > 1 or dp > 1):
        key, value = ("ep", ep) if ep > 1 else ("dp_attention", dp)
        raise PlanError(
            f"cluster.{key}={value} needs a mixture-of-experts model; {m.name} is dense "
            f"(use cluster.tp, cluster.pp or more cluster.replicas)"
        )
    if m.is_moe and m.num_experts % ep:
        raise PlanError(
            f"cluster.ep={ep} does not divide {m.name}'s {m.num_experts} experts; use a "
            f"divisor such as {', '.join(str(d) for d in _divisors(m.num_experts)[:8])}"
        )
    if plan.stage_gpus % ep:
        raise PlanError(
            f"cluster.ep={ep} must divide the {plan.stage_gpus} GPUs of a pipeline stage "
            f"(tp {plan.tp} x dp_attention {dp}): experts are split over those GPUs, EP adds "
            f"no GPUs; raise cluster.tp or cluster.dp_attention, or lower cluster.ep"
        )
    if dp > 1 and ep != plan.stage_gpus:
        raise PlanError(
            f"cluster.dp_attention={dp} needs cluster.ep = tp x dp_attention = "
            f"{plan.stage_gpus}: each attention-DP group's tokens are dispatched to experts "
            f"split over all {plan.stage_gpus} GPUs of the stage"
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def max_model_len(plan: ReplicaPlan) -> int:
    cap = plan.engine.max_model_len or plan.model.max_position_embeddings
    return int(min(cap, plan.model.max_position_embeddings))


def draft_cost_params(plan: ReplicaPlan) -> CostParams | None:
    """Cost of drafting one token for each sequence of a batch (None when free: n-gram).

    method=draft: the draft model on the same GPUs (same TP and formats); eagle/mtp: a head
    of `head_layers` target decoder layers plus the LM head. Draft attention is left out
    (small against weight reads at draft sizes); a draft step has no extra fixed overhead,
    and its tokens are picked greedily (no sampling cost).
    """
    spec = plan.speculation
    if spec is None or spec.method == "ngram":
        return None
    if spec.method == "draft":
        assert spec.draft_model is not None
        draft = spec.draft_model
        params = cost_params(
            dataclasses.replace(
                plan, model=draft, expert_format=plan.weight_format, speculation=None
            )
        )
    else:
        params = cost_params(dataclasses.replace(plan, speculation=None))
        f = spec.head_layers / plan.model.num_layers
        params = dataclasses.replace(
            params,
            gemm_flops_per_token=params.gemm_flops_per_token * f,
            gemm_weight_bytes=params.gemm_weight_bytes * f,
            expert_flops_per_token=params.expert_flops_per_token * f,
            expert_bytes=params.expert_bytes * f,
            act_bytes_per_token=params.act_bytes_per_token * f,
            allreduce_count=round(params.allreduce_count * f),
            floor_s=params.floor_s * f,
        )
    # drafts are proposed greedily (argmax): no sampling cost whatever engine.sampling says
    return dataclasses.replace(params, sampling_fixed_s=0.0, sampling_s_per_sample=0.0)
