"""Roofline numbers for a known case, computed by hand from the published configs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.plan import Speculation, cost_params, draft_cost_params, memory_plan
from sim.step_time import Roofline, StepShape, expert_gemm_rows
from tests.factories import plan

# Llama-3.1-8B (config.json): hidden 4096, 32 layers, 32 heads, 8 KV heads, head_dim 128,
# intermediate 14336, vocab 128256, untied embeddings.
H, L, INTER, V = 4096, 32, 14336, 128256
ATTN = L * (2 * H * H + 2 * H * 1024)  # q, o: 4096x4096; k, v: 4096x1024
MLP = L * 3 * H * INTER
NORMS = L * 2 * H + H
# H100-SXM profile: 989.4 TFLOP/s bf16 dense at 50 %, 3.35 TB/s at 88.65 %, GEMMs over M
# tokens compute as M + 130.1, 24.49 us of GPU time per layer and step (serving
# efficiencies, GEMM-shape cost and layer floor fitted by benchmarks/calibrate.py);
# attention at 60.36 % of the GEMM rate after a fixed 905 pairs of work per query token
# (measured on an H100 and an H200: hardware_profiles/measured/).
RATE = 989.4e12 * 0.5
BW = 3.35e12 * 0.8865
PAD = 130.1
FLOOR = 24.49e-6
ATT = RATE * 0.6036
APAD = 905.0


def test_parameter_counts_by_hand() -> None:
    p = plan().model.params
    assert p.attention == ATTN == 1_342_177_280
    assert p.dense_mlp == MLP == 5_637_144_576
    assert p.embedding == p.lm_head == H * V
    assert p.norms == NORMS


def test_decode_step_of_one_sequence_by_hand() -> None:
    model = Roofline(cost_params(plan()))
    # one sequence with 1000 tokens of context decodes its 1001st token
    t = model.step_seconds(StepShape(1, 1, 1001, 1000))
    gemm = max(2 * (ATTN + MLP) * (1 + PAD) / RATE, (ATTN + MLP + NORMS) * 2 / BW)
    lm_head = max(2 * H * V * (1 + PAD) / RATE, H * V * 2 / BW)
    act = L * (12 * H + 3 * INTER) * 2 * 1 / BW
    kv_per_token = 2 * L * 8 * 128 * 2  # 131,072 bytes
    attn = max(4 * 32 * 128 * L * (1001 + APAD) / ATT, kv_per_token * (1000 + 1) / BW)
    assert t == pytest.approx(gemm + lm_head + act + attn + L * FLOOR, rel=1e-12)
    assert t == pytest.approx(5.884e-3, rel=1e-3)  # ~5.9 ms: 15 GB of weights, 0.8 ms floor


def test_prefill_step_of_2048_tokens_by_hand() -> None:
    model = Roofline(cost_params(plan()))
    q = 2048
    pairs = q * (q + 1) // 2
    t = model.step_seconds(StepShape(q, 1, pairs, 0))
    gemm = max(2 * (ATTN + MLP) * (q + PAD) / RATE, (ATTN + MLP + NORMS) * 2 / BW)
    lm_head = max(2 * H * V * (1 + PAD) / RATE, H * V * 2 / BW)
    act = L * (12 * H + 3 * INTER) * 2 * q / BW
    attn = max(4 * 32 * 128 * L * (pairs + APAD * q) / ATT, 131072 * q / BW)
    assert t == pytest.approx(gemm + lm_head + act + attn + L * FLOOR, rel=1e-12)
    assert gemm == 2 * (ATTN + MLP) * (q + PAD) / RATE  # compute-bound at this size


def test_tensor_parallel_all_reduce_by_hand() -> None:
    p = plan("Llama-3.1-70B", tp=4)
    c = cost_params(p)
    assert c.allreduce_count == 2 * 80
    # H100: 42.91 us latency, 450 GB/s unidirectional NVLink at 97.1 %; ring moves 2(n-1)/n
    per = 42.91e-6 + 32 * 8192 * 2 / (450e9 * 0.971 / (2 * 3 / 4))
    only_ar = Roofline(c).token_seconds(32, 32) - Roofline(
        dataclasses.replace(c, allreduce_count=0)
    ).token_seconds(32, 32)
    assert only_ar == pytest.approx(160 * per, rel=1e-12)


def test_moe_touches_experts_by_expected_count() -> None:
    c = cost_params(plan("Qwen3-30B-A3B"))
    model = Roofline(c)
    assert model.experts_touched(1) == pytest.approx(8)
    assert model.experts_touched(10_000) == pytest.approx(128)
    assert model.experts_touched(16) == pytest.approx(128 * (1 - (1 - 8 / 128) ** 16))


def test_expert_gemm_rows_follow_the_kernel_tile() -> None:
    # at least a 16-row tile; about 1.5 m rows for a power-of-two tile >= m; m + pad when large
    assert expert_gemm_rows(1.0, 96) == 16
    assert expert_gemm_rows(10.0, 96) == 16
    assert expert_gemm_rows(20.0, 96) == 30
    assert expert_gemm_rows(192.0, 96) == 288  # both branches meet here
    assert expert_gemm_rows(1000.0, 96) == 1096


def test_moe_expert_term_by_hand() -> None:
    """Qwen3-30B-A3B (config.json): 48 layers, 128 experts of 3 x 2048 x 768, top-8, bf16."""
    c = cost_params(plan("Qwen3-30B-A3B"))
    per_expert = 48 * 3 * 2048 * 768
    assert c.expert_bytes == per_expert * 2
    model = Roofline(c)
    dense_only = Roofline(dataclasses.replace(c, num_experts=0))
    for tokens in (1, 16, 64, 4096):
        touched = 128 * (1 - (1 - 8 / 128) ** tokens)
        rows = expert_gemm_rows(8 * tokens / touched, PAD)  # tokens per touched expert
        compute = 2 * per_expert * touched * rows / RATE
        memory = touched * per_expert * 2 / BW
        term = model.token_seconds(tokens, 0) - dense_only.token_seconds(tokens, 0)
        assert term == pytest.approx(max(compute, memory), rel=1e-9)
    # decode of 64 sequences reads the experts; a 4096-token prefill computes them
    one = model.token_seconds(64, 0) - dense_only.token_seconds(64, 0)
    assert one == pytest.approx(128 * (1 - (15 / 16) ** 64) * per_expert * 2 / BW, rel=1e-9)


def test_moe_combine_traffic_by_hand() -> None:
    """Qwen3-30B-A3B: 48 MoE layers, hidden 2048, 8 experts of intermediate 768 per token."""
    c = cost_params(plan("Qwen3-30B-A3B"))
    # norms, residuals, rotary (12 hidden passes); gated activation over 8 x 768 (3 passes);
    # the combine writes and reads each token's 8 expert outputs of 2048 (2 passes), bf16
    per_layer = 12 * 2048 + 3 * 8 * 768 + 2 * 8 * 2048
    assert c.act_bytes_per_token == 48 * per_layer * 2
    # with 4 EP ranks each GPU sees a quarter of the expert outputs
    ep4 = cost_params(dataclasses.replace(plan("Qwen3-30B-A3B", tp=4), ep=4))
    per_layer_ep4 = 12 * 2048 + 3 * 8 * 768 / 4 + 2 * 8 * 2048 / 4
    assert ep4.act_bytes_per_token == pytest.approx(48 * per_layer_ep4 * 2, rel=1e-12)


def test_layer_floor_adds_per_layer_gpu_time() -> None:
    c = cost_params(plan())
    assert c.floor_s == pytest.approx(L * FLOOR, rel=1e-12)
    without = Roofline(dataclasses.replace(c, floor_s=0.0))
    for tokens in (1, 512):
        gap = Roofline(c).token_seconds(tokens, 1) - without.token_seconds(tokens, 1)
        assert gap == pytest.approx(L * FLOOR, rel=1e-9)


def test_vector_attention_equals_scalar_attention() -> None:
    model = Roofline(cost_params(plan("gpt-oss-120b", tp=2)))
    pairs = np.array([1000, 5000, 123457])
    read = pairs - 7
    vec = model.attention_seconds(7, pairs, read, pairs // 3, read // 3)
    for i in range(3):
        scalar = model.attention_seconds(
            7, int(pairs[i]), int(read[i]), int(pairs[i] // 3), int(read[i] // 3)
        )
        assert vec[i] == scalar


def test_kv_blocks_from_memory_left_after_weights() -> None:
    p = plan(gpu_memory_utilization=0.9, max_num_batched_tokens=8192, max_num_seqs=256)
    mem = memory_plan(p)
    weights = (2 * H * V + ATTN + MLP + NORMS) * 2
    workspace = 8192 * (4 * H + 3 * INTER) * 2 + 256 * V * 4 + 1.5e9
    kv = 81559 * 2**20 * 0.9 - weights - workspace  # nvidia-smi total of an H100 SXM
    assert mem.weight_bytes_per_gpu == weights
    assert mem.num_blocks == int(kv // (131072 * 16))
    # TensorRT-LLM's free_gpu_memory_fraction: 90 % of what weights and workspace leave
    free = memory_plan(
        dataclasses.replace(p, engine=dataclasses.replace(p.engine, kv_memory_basis="free"))
    )
    kv_free = (81559 * 2**20 - weights - workspace) * 0.9
    assert free.num_blocks == int(kv_free // (131072 * 16))
    assert free.num_blocks > mem.num_blocks


def test_top_p_sampling_cost_by_hand() -> None:
    """engine.sampling=top_p_torch: 205 us + 0.158 ns per logit a step (measured on an H100,
    hardware_profiles/measured/H100-SXM_sampling_2026-11-27.csv); greedy adds nothing."""
    greedy = Roofline(cost_params(plan()))
    top_p = Roofline(cost_params(plan(sampling="top_p_torch")))
    for samples in (1, 64, 256):
        extra = top_p.token_seconds(samples, samples) - greedy.token_seconds(samples, samples)
        assert extra == pytest.approx(205e-6 + 0.158e-9 * V * samples, rel=1e-9)
    assert extra * 1e3 == pytest.approx(5.39, abs=0.01)  # 256 sequences over 128,256 tokens
    # a prefill chunk that samples nothing pays nothing
    assert top_p.token_seconds(2048, 0) == greedy.token_seconds(2048, 0)
    # with pipeline stages, once per step (the last stage samples)
    pp_greedy = Roofline(cost_params(dataclasses.replace(plan(), pp=4)))
    pp_top_p = Roofline(cost_params(dataclasses.replace(plan(sampling="top_p_torch"), pp=4)))
    extra = pp_top_p.token_seconds(8, 8) - pp_greedy.token_seconds(8, 8)
    assert extra == pytest.approx(205e-6 + 0.158e-9 * V * 8, rel=1e-9)
    # drafts are proposed greedily: an EAGLE head pays no sampling cost
    spec = Speculation("eagle", 3, (0.7, 0.6, 0.5), sampled=False)
    draft = draft_cost_params(dataclasses.replace(plan(sampling="top_p_torch"), speculation=spec))
    assert draft is not None
    assert (draft.sampling_fixed_s, draft.sampling_s_per_sample) == (0.0, 0.0)


def test_mla_prefill_attention_runs_unabsorbed_and_decode_in_the_latent_space() -> None:
    # DeepSeek-V3 (config.json): 128 heads, 61 layers, kv_lora_rank 512, qk_rope 64,
    # qk_nope 128, v_head_dim 128. Decode attends in the latent space: per pair and layer
    # 2·128·(512 + 64) + 2·128·512 = 278,528 FLOPs; a prompt token attends with K and V
    # expanded per head: 2·128·(128 + 64) + 2·128·128 = 81,920. On 8 H200s, 16 heads a GPU.
    p = plan("DeepSeek-V3", "H200", tp=8)
    c = cost_params(p)
    assert c.attn_flops_per_pair == 278_528 / 8 * 61
    assert c.attn_flops_per_pair_prefill == 81_920 / 8 * 61
    model = Roofline(c)
    # a step of 4 decoding sequences (1000 of context) and one 2048-token prompt chunk
    # after 4096 computed tokens: only the attention terms differ
    dec_pairs, pre_pairs = 4 * 1001, 2048 * 4096 + 2048 * 2049 // 2
    shape = StepShape(4 + 2048, 5, dec_pairs + pre_pairs, 4 * 1000 + 4096, 0, 0, pre_pairs, 2048)
    rate = c.attn_rate_flops_per_s
    flops = c.attn_flops_per_pair * (dec_pairs + APAD * 4) + c.attn_flops_per_pair_prefill * (
        pre_pairs + APAD * 2048
    )
    kv = c.kv_bytes_per_token * (4 * 1000 + 4096 + 2052)
    attention = max(flops / rate, kv / c.hbm_bytes_per_s)
    assert model.step_seconds(shape) == pytest.approx(
        model.token_seconds(2052, 5) + attention, rel=1e-12
    )
    # counted as decode, the prompt's attention would cost 278,528 / 81,920 = 3.4x as much
    as_decode = shape._replace(prefill_pairs=0, prefill_tokens=0)
    others = model.token_seconds(2052, 5)
    ratio = (model.step_seconds(as_decode) - others) / (model.step_seconds(shape) - others)
    assert 3.3 < ratio < 278_528 / 81_920


def test_gqa_attention_is_the_same_for_prompt_and_decode_tokens() -> None:
    model = Roofline(cost_params(plan()))
    pairs = 2048 * 2049 // 2
    split = StepShape(2048, 1, pairs, 0, 0, 0, pairs, 2048)
    assert model.step_seconds(split) == model.step_seconds(StepShape(2048, 1, pairs, 0))
