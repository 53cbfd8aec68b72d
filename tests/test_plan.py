"""Memory plan by hand: weights per GPU for each layout, GQA and MLA KV bytes, KV capacity."""

from __future__ import annotations

import dataclasses

import pytest

from sim.plan import (
    ReplicaPlan,
    kv_bytes_per_token_per_gpu,
    memory_plan,
    weight_bytes_per_gpu,
)
from tests.factories import plan


def layout(p: ReplicaPlan, **fields: object) -> ReplicaPlan:
    return dataclasses.replace(p, **fields)  # type: ignore[arg-type]


# DeepSeek-V3 (config.json): 61 layers, MLA with kv_lora_rank 512 and qk_rope_head_dim 64.
MLA_ELEMENTS = 61 * (512 + 64)


def test_mla_kv_bytes_per_token_by_hand() -> None:
    p = layout(plan("DeepSeek-V3", gpu="H200", tp=8), kv_format="bf16")
    assert kv_bytes_per_token_per_gpu(p) == MLA_ELEMENTS * 2 == 70_272  # reference CSV value
    assert kv_bytes_per_token_per_gpu(layout(p, kv_format="fp8")) == MLA_ELEMENTS == 35_136


def test_mla_latent_is_replicated_over_tp_but_not_over_attention_dp() -> None:
    base = layout(plan("DeepSeek-V3", gpu="H200"), kv_format="bf16")
    for tp in (1, 2, 4, 8):
        assert kv_bytes_per_token_per_gpu(layout(base, tp=tp)) == 70_272
    dp = layout(base, tp=1, dp_attention=8, ep=8)
    assert kv_bytes_per_token_per_gpu(dp) == 70_272 / 8


def test_gqa_kv_heads_split_up_to_kv_heads_then_replicated() -> None:
    # Llama-3.1-70B: 80 layers, 8 KV heads of 128; Qwen3-30B-A3B: 48 layers, 4 KV heads
    llama = plan("Llama-3.1-70B")
    assert kv_bytes_per_token_per_gpu(layout(llama, tp=4)) == 2 * 80 * 2 * 128 * 2
    assert kv_bytes_per_token_per_gpu(layout(llama, tp=8)) == 2 * 80 * 1 * 128 * 2
    qwen = plan("Qwen3-30B-A3B", tp=8)
    assert kv_bytes_per_token_per_gpu(qwen) == 2 * 48 * 1 * 128 * 2  # 4 heads on 8 ranks


def test_pipeline_stages_split_kv_and_weights_by_the_heaviest_stage() -> None:
    llama = plan("Llama-3.1-70B", tp=4)
    pp2 = layout(llama, pp=2)
    assert kv_bytes_per_token_per_gpu(pp2) == 2 * 40 * 2 * 128 * 2  # 40 of 80 layers
    assert weight_bytes_per_gpu(pp2) == weight_bytes_per_gpu(llama) / 2
    # 61 layers on 2 stages: the heaviest holds 31 and sets memory
    ds = layout(plan("DeepSeek-V3", gpu="H200", tp=8), kv_format="bf16", pp=2)
    assert ds.stage_layers == 31
    assert kv_bytes_per_token_per_gpu(ds) == pytest.approx(31 * 576 * 2, rel=1e-15)


def test_weight_bytes_per_gpu_for_each_layout_by_hand() -> None:
    p405 = plan("Llama-3.1-405B", gpu="H200", tp=8)
    total = p405.model.total_params
    assert weight_bytes_per_gpu(p405) == total * 2 / 8
    assert weight_bytes_per_gpu(layout(p405, pp=2)) == pytest.approx(total * 2 / 16, rel=1e-15)
    # DeepSeek-V3 (fp8 checkpoint) on 8 GPUs: TP shards everything; attention DP keeps the
    # dense weights whole on every GPU and splits only the routed experts
    ds = plan("DeepSeek-V3", gpu="H200", tp=8)
    c = ds.model.params
    dense = c.total - c.routed_experts
    assert weight_bytes_per_gpu(ds) == pytest.approx(c.total / 8, rel=1e-12)
    dp = layout(ds, tp=1, dp_attention=8, ep=8)
    assert weight_bytes_per_gpu(dp) == pytest.approx(dense + c.routed_experts / 8, rel=1e-12)
    # EP over the TP group moves experts around but not bytes
    assert weight_bytes_per_gpu(layout(ds, ep=8)) == weight_bytes_per_gpu(ds)


def test_layout_counts_gpus_and_labels() -> None:
    p = layout(plan("DeepSeek-V3", gpu="H200"), tp=2, dp_attention=4, ep=8)
    assert (p.stage_gpus, p.num_gpus, p.layout) == (8, 8, "tp=2 dp=4 ep=8")
    q = layout(plan("Llama-3.1-70B"), tp=4, pp=3)
    assert (q.num_gpus, q.layout, q.stage_layers) == (12, "tp=4 pp=3", 27)


def test_pipeline_parallelism_raises_kv_capacity() -> None:
    tp8 = plan("Llama-3.1-405B", gpu="H200", tp=8)
    pp2 = layout(tp8, pp=2)
    a, b = memory_plan(tp8), memory_plan(pp2)
    # half the weights and half the KV bytes per token on each GPU: more than twice the tokens
    assert b.kv_bytes_per_token_per_gpu == a.kv_bytes_per_token_per_gpu / 2
    assert b.kv_capacity_tokens > 2 * a.kv_capacity_tokens


def test_attention_dp_stops_mla_kv_duplication() -> None:
    tp8 = plan("DeepSeek-V3", gpu="H200", tp=8)
    dp8 = layout(tp8, tp=1, dp_attention=8, ep=8)
    a, b = memory_plan(tp8), memory_plan(dp8)
    # dense weights replicated cost some bytes, but each token's latent lives on one GPU only
    assert b.weight_bytes_per_gpu > a.weight_bytes_per_gpu
    assert b.kv_capacity_tokens > 4 * a.kv_capacity_tokens
    per_gpu_tokens = b.kv_capacity_bytes_per_gpu / (MLA_ELEMENTS * 1.0)
    assert b.kv_capacity_tokens == pytest.approx(8 * per_gpu_tokens, rel=1e-3)


def test_a_model_whose_every_layer_slides_charges_them_per_token() -> None:
    # Mistral-7B-v0.1-style: the window applies to all layers, so no full-attention layer
    # sets the page size; the sliding layers are charged per token (an upper bound)
    p = plan("gpt-oss-120b", tp=2)
    every = dataclasses.replace(p.model, num_sliding_layers=p.model.num_layers)
    mem = memory_plan(layout(p, model=every))
    per_token = 2 * 36 * (8 / 2) * 64 * 2  # 36 layers x 4 KV heads per GPU x 64 x 2 bytes
    assert mem.kv_bytes_per_token_per_gpu == per_token
    assert mem.window_blocks_per_seq == 0 and mem.num_blocks > 0
