"""Batch counts in, step seconds out: a per-kernel-class roofline on one GPU of a TP group.

A step's GPU time is the sum of its kernel classes, each bound by compute or memory
(whichever is slower), plus tensor-parallel collectives:

    dense GEMMs   max(2·P_dense·(T + pad) / R_gemm,  W_dense / BW)
    MoE experts   max(2·P_expert·E_touched·rows(m) / R_gemm,  E_touched(T)·W_expert / BW)
    LM head       max(2·h·V·(S + pad) / R_gemm,  h·V·b / BW)    S = sequences sampled
    floor         layers·layer_floor                            kernel minimum durations
    attention     max(F_pair·(pairs + apad·T) / R_attn,  KV_tok·(read + T) / BW)
    other passes  A_tok·T / BW                    norms, rotary, activation, MoE combine
    all-reduce    n_ar·(latency + T·h·2 / BW_ar)
    all-to-all    n_a2a·(latency + T·a2a_tok / BW_a2a)              EP with attention DP
    sampling      fixed + per_sample·S (S > 0)             engine.sampling (0 when greedy)

`pad` (gemm_pad_tokens, per GPU profile) is the GEMM-shape cost: a GEMM over M tokens
costs as much compute as M + pad would at the large-GEMM rate (tile padding, fixed kernel
cost), so small-M GEMMs run below the peak. A touched expert sees m = k·T / E_touched tokens
and its grouped GEMM computes rows(m) = min(max(16, 1.5·m), m + pad) rows: the kernels pick
a token tile to fit m (`expert_gemm_rows`). `layer_floor` (per GPU profile) is GPU time a
layer costs whatever the batch; overlap scheduling cannot hide it. `apad` (measured,
`sim.plan.ATTENTION_PAD_PAIRS_PER_TOKEN`) is attention's fixed work per query token.
F_pair is per pair of decode tokens; prompt tokens (the step's prefill pairs and tokens)
cost F_pair_prefill where a model sets it: MLA (DeepSeek-V2/V3) decodes in the latent space
(278,528 FLOPs per pair and layer for DeepSeek-V3) but prefills with K and V expanded per
head (81,920), as vLLM, SGLang and TensorRT-LLM do (left out: expanding a chunk's cached
latent context to K and V, a GEMM of about 4 % of that chunk's attention at 32K tokens).

All constants are one GPU's share of one pipeline stage (`sim.plan.cost_params`). With EP
the busiest rank sets the pace: the expert term sees T·(1 + skew) tokens. With pp stages
the engine keeps m = min(pp, T) microbatches in flight and a step lasts the pipeline's
steady-state interval (sim/plan.py explains the model):

    step = pp·(stage(T/m, S/m) + send(T/m)) + sampling + attention·pp/m,
    send(x) = latency + x·h·2 / BW_link,     bubble factor pp/m (1 when the pipe is full)

T = tokens in the step; `pairs` = Σ over scheduled tokens of the context they attend to;
`read` = KV tokens read. Expected experts touched per layer with T tokens choosing k of E
uniformly: E·(1 − (1 − k/E)^T).

The engine's CPU time (scheduling, sampling, output processing and streaming, launches not
hidden by CUDA graphs) is `EngineOverhead`: fixed seconds a step plus seconds per request
in flight, added to the GPU time, or overlapped with it (max) by engines that schedule step
n+1 while step n runs. In flight counts the running requests and at most `max_num_seqs` of
the waiting ones. The waiting share is a fitted proxy: runs of 1,000 requests sent at once
(the offline rows of the latency file) step slower than their running batch explains. Real
engines do not scan an ever longer queue each step (vLLM's scheduler stops at the first
request it cannot admit; SGLang stops prefix-matching the queue beyond 128 waiting), so the
count is capped and a benchmark's prompt count cannot slow every step without bound.

`token_seconds` covers the terms that depend only on (T, S); `attention_seconds` the terms
that grow with context. Both accept numpy arrays for attention inputs so a stretch of pure
decode steps (constant T and S, context growing by one per step) evaluates in one call with
the same floating-point operations as stepping one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol, overload

import numpy as np

from sim.plan import CostParams, EngineSpec


class StepShape(NamedTuple):
    """Sufficient statistics of one engine step's batch."""

    num_tokens: int  # T: tokens processed (prefill chunk tokens + decode tokens)
    num_samples: int  # S: sequences that produce logits this step
    attn_pairs: float  # Σ context attended by each scheduled token (causal)
    kv_read_tokens: float  # Σ context KV tokens read (excl. this step's new tokens)
    attn_pairs_window: int = 0  # same, capped at the sliding window
    kv_read_tokens_window: int = 0
    prefill_pairs: float = 0  # the part of attn_pairs from prompt tokens (prefill chunks)
    prefill_tokens: int = 0  # the prompt tokens among num_tokens


class EngineOverhead(NamedTuple):
    """The engine's CPU work per step and whether it overlaps the GPU's (engine preset)."""

    step_s: float = 0.0  # fixed per step
    inflight_s: float = 0.0  # per request in flight per step (the running ones, + waiting)
    overlap: bool = False  # True: step = max(GPU, CPU); False: GPU + CPU
    waiting_cap: int = 0  # waiting requests that count as in flight, at most (max_num_seqs)

    def cpu_seconds(self, num_running: int, num_waiting: int = 0) -> float:
        return self.step_s + self.inflight_s * (num_running + min(num_waiting, self.waiting_cap))

    def step_seconds(self, gpu_s: float, cpu_s: float) -> float:
        return max(gpu_s, cpu_s) if self.overlap else gpu_s + cpu_s

    @classmethod
    def of(cls, engine: EngineSpec) -> EngineOverhead:
        return cls(
            engine.step_overhead_s,
            engine.inflight_overhead_s,
            engine.overlap_scheduling,
            engine.max_num_seqs,
        )

    def total_seconds(self, model: Roofline, shape: StepShape, num_running: int) -> float:
        """One engine step: the GPU time of `shape` with the CPU time of its requests."""
        return self.step_seconds(model.step_seconds(shape), self.cpu_seconds(num_running))


class StepTimeModel(Protocol):
    """What a replica needs: the roofline below, or a measured table behind the same calls.

    `decode_seconds(fixed, T, contexts, v, c)` must equal, bit for bit,
    `fixed + attention_seconds(T, v·x + c, x, 0, 0)` for each context x (it exists to make
    stretches cheap).
    """

    def token_seconds(self, num_tokens: int, num_samples: int) -> float: ...

    def decode_seconds(
        self,
        fixed_s: float,
        num_tokens: int,
        contexts: Iterable[float],
        verify: int,
        pairs_extra: int,
    ) -> list[float]: ...

    @overload
    def attention_seconds(
        self,
        num_tokens: int,
        pairs: float,
        read: float,
        pairs_w: int,
        read_w: int,
        prefill_pairs: float = 0,
        prefill_tokens: int = 0,
    ) -> float: ...

    @overload
    def attention_seconds(
        self,
        num_tokens: int,
        pairs: np.ndarray,
        read: np.ndarray,
        pairs_w: np.ndarray,
        read_w: np.ndarray,
    ) -> np.ndarray: ...


MOE_MIN_TILE_ROWS = 16.0  # smallest token tile of grouped MoE GEMMs (mma.sync / swap-AB)
MOE_TILE_WASTE = 1.5  # a power-of-two tile >= m tokens holds about 1.5·m rows on average


def expert_gemm_rows(tokens_per_expert: float, pad: float) -> float:
    """Rows one expert's grouped GEMM computes for m tokens: min(max(16, 1.5·m), m + pad).

    Grouped MoE kernels (vLLM fused_moe and Marlin MoE, TensorRT-LLM's swap-AB grouped
    GEMMs) pick the token tile from the tokens per expert: a power of two at least m, and at
    least 16 rows, so a lightly loaded expert computes 16 rows, not m + pad, and a tile holds
    about 1.5·m rows on average (rounding up to the next power of two). Heavily loaded experts
    run large tiles like a dense GEMM: m + pad, the large-GEMM shape cost.
    """
    return min(max(MOE_MIN_TILE_ROWS, MOE_TILE_WASTE * tokens_per_expert), tokens_per_expert + pad)


class Roofline:
    """The default step-time model over CostParams (see the module docstring)."""

    def __init__(self, params: CostParams) -> None:
        self.p = params

    def experts_touched(self, num_tokens: float) -> float:
        p = self.p
        if not p.num_experts or num_tokens <= 0:
            return 0.0
        miss = math.exp(num_tokens * math.log1p(-p.experts_per_token / p.num_experts))
        return p.num_experts * (1.0 - miss)

    def token_seconds(self, num_tokens: int, num_samples: int) -> float:
        """Every term that depends on T and S only (all but attention)."""
        p = self.p
        sampling = (
            p.sampling_fixed_s + p.sampling_s_per_sample * num_samples if num_samples else 0.0
        )
        if p.pp_stages == 1:
            return self.stage_seconds(num_tokens, num_samples) + sampling
        m = self.microbatches(num_tokens)
        x = num_tokens / m
        send = p.pp_send_latency_s + x * p.pp_send_bytes_per_token / p.pp_send_bytes_per_s
        return p.pp_stages * (self.stage_seconds(x, num_samples / m) + send) + sampling

    def microbatches(self, num_tokens: int) -> int:
        """Microbatches in flight for a step of T tokens: min(pp, T) (at least 1)."""
        return max(1, min(self.p.pp_stages, num_tokens))

    def bubble(self, num_tokens: int) -> float:
        """Pipeline bubble factor pp / m: how much longer than the busy time a step lasts."""
        return self.p.pp_stages / self.microbatches(num_tokens)

    def stage_seconds(self, num_tokens: float, num_samples: float) -> float:
        """One pipeline stage (the whole model when pp = 1) on T tokens, S samples."""
        p = self.p
        bw = p.hbm_bytes_per_s
        rate = p.gemm_rate_flops_per_s
        pad = p.gemm_pad_tokens  # GEMM shape: M tokens compute as M + pad
        t = max(p.gemm_flops_per_token * (num_tokens + pad) / rate, p.gemm_weight_bytes / bw)
        if p.num_experts:
            expert_rate = p.expert_rate_flops_per_s or rate
            expert_tokens = num_tokens * p.expert_load_factor  # the busiest EP rank
            touched = self.experts_touched(expert_tokens)
            # each touched expert's GEMM pads its own few tokens (see expert_gemm_rows)
            k = max(p.experts_per_token, 1)
            rows = expert_gemm_rows(k * expert_tokens / touched, pad) if touched else 0.0
            padded = touched * rows / k
            t += max(p.expert_flops_per_token * padded / expert_rate, touched * p.expert_bytes / bw)
        if num_samples:
            t += max(p.lm_head_flops_per_sample * (num_samples + pad) / rate, p.lm_head_bytes / bw)
        t += p.act_bytes_per_token * num_tokens / bw + p.floor_s
        if p.allreduce_count:
            per = p.allreduce_latency_s + num_tokens * p.allreduce_bytes_per_token / (
                p.allreduce_bytes_per_s
            )
            t += p.allreduce_count * per
        if p.alltoall_count:
            per = p.alltoall_latency_s + num_tokens * p.alltoall_bytes_per_token / (
                p.alltoall_bytes_per_s
            )
            t += p.alltoall_count * per
        return t

    @overload
    def attention_seconds(
        self,
        num_tokens: int,
        pairs: float,
        read: float,
        pairs_w: int,
        read_w: int,
        prefill_pairs: float = 0,
        prefill_tokens: int = 0,
    ) -> float: ...

    @overload
    def attention_seconds(
        self,
        num_tokens: int,
        pairs: np.ndarray,
        read: np.ndarray,
        pairs_w: np.ndarray,
        read_w: np.ndarray,
    ) -> np.ndarray: ...

    def attention_seconds(
        self,
        num_tokens: int,
        pairs: Any,
        read: Any,
        pairs_w: Any,
        read_w: Any,
        prefill_pairs: float = 0,
        prefill_tokens: int = 0,
    ) -> Any:
        """Attention compute vs KV traffic; scalars or same-shape arrays (pairs, read, ...).

        `prefill_pairs` and `prefill_tokens` (the prompt tokens' share of pairs and
        num_tokens) cost attn_flops_per_pair_prefill where the model sets it (MLA).
        """
        p = self.p
        mx = np.maximum if isinstance(pairs, np.ndarray) else max
        pad = p.attn_pad_pairs_per_token * num_tokens  # each query token's fixed work
        if p.attn_flops_per_pair_prefill and prefill_tokens:
            pre = prefill_pairs + p.attn_pad_pairs_per_token * prefill_tokens
            full = p.attn_flops_per_pair * (pairs + pad - pre) + p.attn_flops_per_pair_prefill * pre
        else:
            full = p.attn_flops_per_pair * (pairs + pad)
        flops = full + p.attn_flops_per_pair_window * (pairs_w + pad)
        kv = p.kv_bytes_per_token * (read + num_tokens)
        kv = kv + p.kv_bytes_per_token_window * (read_w + num_tokens)
        t = mx(flops / p.attn_rate_flops_per_s, kv / p.hbm_bytes_per_s)
        if p.pp_stages > 1:  # the same bubble factor as decode_seconds, bit for bit
            return t * self.bubble(num_tokens)
        return t

    def decode_seconds(
        self,
        fixed_s: float,
        num_tokens: int,
        contexts: Iterable[float],
        verify: int,
        pairs_extra: int,
    ) -> list[float]:
        """Durations of pure-decode steps (no sliding window), one per decode-group context.

        A step whose group holds x context tokens and verifies `verify` tokens per sequence
        reads x KV tokens and attends verify·x + pairs_extra pairs; its duration is
        fixed_s + attention_seconds(num_tokens, pairs, x, 0, 0) with the same float
        operations (the window terms add exact zeros), in one comprehension.
        """
        p = self.p
        fpp, rate = p.attn_flops_per_pair, p.attn_rate_flops_per_s
        kvb, bw = p.kv_bytes_per_token, p.hbm_bytes_per_s
        t, v, c = num_tokens, verify, pairs_extra
        pad = p.attn_pad_pairs_per_token * num_tokens
        if p.pp_stages > 1:
            b = self.bubble(num_tokens)
            return [
                fixed_s + max(fpp * (v * x + c + pad) / rate, kvb * (x + t) / bw) * b
                for x in contexts
            ]
        return [fixed_s + max(fpp * (v * x + c + pad) / rate, kvb * (x + t) / bw) for x in contexts]

    def step_seconds(self, shape: StepShape) -> float:
        return self.token_seconds(shape.num_tokens, shape.num_samples) + self.attention_seconds(
            shape.num_tokens,
            shape.attn_pairs,
            shape.kv_read_tokens,
            shape.attn_pairs_window,
            shape.kv_read_tokens_window,
            shape.prefill_pairs,
            shape.prefill_tokens,
        )


def window_sum(x: int, window: int) -> int:
    """Σ_{p=1..x} min(p, window): attended pairs of x causal tokens under a sliding window."""
    m = min(x, window)
    return m * (m + 1) // 2 + max(x - window, 0) * window


def decode_shape(num_seqs: int, context: int, window: int = 0) -> StepShape:
    """One decode token for each of `num_seqs` sequences holding `context` tokens (the
    sliding-window layers attend and read at most `window` of them; 0: no such layers)."""
    pairs_w = num_seqs * min(context + 1, window) if window else 0
    read_w = num_seqs * min(context, window) if window else 0
    return StepShape(
        num_seqs, num_seqs, num_seqs * (context + 1), num_seqs * context, pairs_w, read_w
    )


def prefill_shapes(
    batch: int,
    prompt: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    chunked: bool = True,
    window: int = 0,
) -> Iterator[tuple[StepShape, int]]:
    """The steps an engine takes to prefill `batch` prompts of `prompt` tokens alone (in
    order, chunked by the token budget, at most max_num_seqs sequences a step), each with
    its number of sequences."""
    done = [0] * batch
    nxt = 0
    while nxt < batch:
        budget = max_num_batched_tokens
        chunks: list[tuple[int, int]] = []
        for i in range(nxt, batch):
            if budget <= 0 or len(chunks) >= max_num_seqs:
                break
            q = min(prompt - done[i], budget)
            if q < prompt - done[i] and not chunked:
                if chunks:
                    break
                q = prompt - done[i]  # an unchunked prompt over the budget runs alone
            chunks.append((i, q))
            budget -= q
        tokens = pairs = read = pairs_w = read_w = samples = 0
        for i, q in chunks:
            c = done[i]
            tokens, pairs, read = tokens + q, pairs + q * c + q * (q + 1) // 2, read + c
            if window:
                pairs_w += window_sum(c + q, window) - window_sum(c, window)
                read_w += min(c, window)
            done[i] += q
            samples += done[i] == prompt
        nxt += samples
        yield StepShape(tokens, samples, pairs, read, pairs_w, read_w, pairs, tokens), len(chunks)
