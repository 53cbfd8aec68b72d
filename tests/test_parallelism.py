"""Parallel layouts by hand: TP all-reduce, PP bubble and sends, EP all-to-all and skew, errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import pytest

from sim.cluster import build_plan
from sim.config import ClusterConfig, Config, ModelConfig
from sim.plan import PlanError, ReplicaPlan, cost_params
from sim.step_time import Roofline, StepShape
from tests.factories import plan, small_config

# Llama-3.1-8B (see tests/test_step_time.py) and the H100-SXM profile
H, L, INTER, V = 4096, 32, 14336, 128256
ATTN = L * (2 * H * H + 2 * H * 1024)
MLP = L * 3 * H * INTER
NORMS = L * 2 * H + H
RATE = 989.4e12 * 0.5
BW = 3.35e12 * 0.8865
FLOOR = 24.49e-6  # GPU seconds per layer and step (H100 profile)
NVLINK = 450e9 * 0.971  # unidirectional NVLink4 at the profile's collective efficiency
LATENCY = 42.91e-6
NIC = 400e9 / 8


def layout(p: ReplicaPlan, **fields: object) -> ReplicaPlan:
    return dataclasses.replace(p, **fields)  # type: ignore[arg-type]


def without(p: ReplicaPlan, **zeroed: object) -> Roofline:
    return Roofline(dataclasses.replace(cost_params(p), **zeroed))  # type: ignore[arg-type]


# ---- tensor parallelism: all-reduce = latency + bytes / link --------------------------------


def test_all_reduce_matches_the_nccl_bus_bandwidth_model() -> None:
    p = plan("Llama-3.1-70B", tp=8)
    c = cost_params(p)
    for tokens in (1, 64, 8192):
        message = tokens * 8192 * 2  # T x hidden x bf16
        per = c.allreduce_latency_s + tokens * c.allreduce_bytes_per_token / c.allreduce_bytes_per_s
        assert per == pytest.approx(p.gpu.allreduce_s(message, 8), rel=1e-12)
        assert per == pytest.approx(LATENCY + message * 2 * 7 / 8 / NVLINK, rel=1e-12)


def test_small_decode_all_reduces_are_latency_bound() -> None:
    # NCCL on 8 H100s (calibration_targets.csv): 43.7 GB/s bus bandwidth at 1 MB, 361.8 at 64 MB
    gpu = plan(tp=8).gpu
    for message, measured in ((1e6, 43.7e9), (64e6, 361.8e9)):
        busbw = message * 2 * 7 / 8 / gpu.allreduce_s(message, 8)
        assert busbw == pytest.approx(measured, rel=0.2)  # 42.91 us latency fitted on serving data
    c = cost_params(plan("Llama-3.1-70B", tp=8))
    one_token = c.allreduce_latency_s + c.allreduce_bytes_per_token / c.allreduce_bytes_per_s
    assert c.allreduce_latency_s / one_token > 0.99  # a decode step's message is all latency
    only_ar = Roofline(c).token_seconds(1, 1) - without(
        plan("Llama-3.1-70B", tp=8), allreduce_count=0
    ).token_seconds(1, 1)
    assert only_ar == pytest.approx(160 * one_token, rel=1e-9)  # 2 per layer x 80 layers


# ---- pipeline parallelism: stages, microbatches, bubble, sends --------------------------------


def test_pipeline_bubble_factor_is_stages_over_microbatches() -> None:
    model = Roofline(cost_params(layout(plan(), pp=4)))
    assert [model.microbatches(n) for n in (1, 2, 3, 4, 100)] == [1, 2, 3, 4, 4]
    assert [model.bubble(n) for n in (1, 2, 3, 4, 100)] == [4.0, 2.0, 4 / 3, 1.0, 1.0]


def test_pipeline_decode_step_by_hand() -> None:
    """pp=4, two sequences at 1000 tokens: m = 2 microbatches of one token each."""
    model = Roofline(cost_params(layout(plan(), pp=4)))
    s = 8 / 32  # a stage holds 8 of the 32 layers (and a quarter of the embedding/LM head)
    x = 1.0  # tokens per microbatch
    gemm = max(2 * (ATTN + MLP) * s * x / RATE, (ATTN + MLP + NORMS) * 2 * s / BW)
    lm_head = max(2 * H * V * s * x / RATE, H * V * 2 * s / BW)
    act = L * (12 * H + 3 * INTER) * 2 * s * x / BW
    send = LATENCY + x * H * 2 / NVLINK  # 4 GPUs: one NVLink domain
    tokens_s = 4 * (gemm + lm_head + act + 8 * FLOOR + send)  # a stage runs 8 layers
    pairs, read = 2 * 1001, 2 * 1000
    # attention: 905 pairs of fixed work per query token, at 60.36 % of the GEMM rate
    flops = 4 * 32 * 128 * L * s * (pairs + 905.0 * 2)
    attn = max(flops / (RATE * 0.6036), 131072 * s * (read + 2) / BW)
    expected = tokens_s + attn * 4 / 2  # bubble: 4 stages, 2 microbatches
    assert model.token_seconds(2, 2) == pytest.approx(tokens_s, rel=1e-12)
    assert model.step_seconds(StepShape(2, 2, pairs, read)) == pytest.approx(expected, rel=1e-12)


def test_pipeline_gives_no_decode_latency_gain_but_splits_kv_reads_when_full() -> None:
    one, four = Roofline(cost_params(plan())), Roofline(cost_params(layout(plan(), pp=4)))
    # a single sequence crosses all 4 stages: at least the unpipelined step plus sends
    assert four.token_seconds(1, 1) > one.token_seconds(1, 1)
    # with >= 4 sequences the pipe is full: each GPU reads a quarter of the KV per step
    n, read = 256, 256 * 4000
    full = four.attention_seconds(n, read + n, read, 0, 0)
    assert full == pytest.approx(one.attention_seconds(n, read + n, read, 0, 0) / 4, rel=1e-12)


def test_pipeline_sends_cross_the_nic_beyond_one_scale_up_domain() -> None:
    inside = cost_params(layout(plan("Llama-3.1-70B", tp=4), pp=2))
    across = cost_params(layout(plan("Llama-3.1-70B", tp=8), pp=2))  # 16 GPUs: two nodes
    assert inside.pp_send_bytes_per_s == NVLINK
    assert across.pp_send_bytes_per_s == NIC
    assert across.pp_send_bytes_per_token == 8192 * 2
    assert across.allreduce_count == 2 * 40  # the all-reduces of one stage's 40 layers


def test_uneven_stages_pace_the_pipeline_by_the_heaviest() -> None:
    ds = layout(plan("DeepSeek-V3", gpu="H200", tp=8), pp=2)  # 61 layers: 31 + 30
    c, full = cost_params(ds), cost_params(layout(ds, pp=1))
    assert c.allreduce_count == 2 * 31
    assert c.gemm_weight_bytes == pytest.approx(full.gemm_weight_bytes * 31 / 61, rel=1e-12)
    assert c.alltoall_count == 0  # no attention DP: the TP all-reduce combines experts


# ---- expert parallelism: all-to-all and skew ---------------------------------------------------


def test_all_to_all_per_moe_layer_by_hand() -> None:
    # DeepSeek-V3 on 8 H200s, attention DP 8 + EP 8, bf16 activations: 58 MoE layers, top-8
    p = layout(plan("DeepSeek-V3", gpu="H200"), dp_attention=8, ep=8, activation_format="bf16")
    c = cost_params(p)
    per_token = 8 * 7168 * 2 * (7 / 8) / 8  # k x hidden x bytes x (ep-1)/ep over 8 GPUs
    bw = 450e9 * 0.973  # H200 NVLink at its collective efficiency
    assert (c.alltoall_count, c.alltoall_bytes_per_s) == (2 * 58, bw)
    assert c.alltoall_bytes_per_token == pytest.approx(per_token, rel=1e-15)
    assert c.allreduce_count == 0  # tp=1: attention and dense layers need no all-reduce
    t = 64
    only = Roofline(c).token_seconds(t, t) - without(p, alltoall_count=0.0).token_seconds(t, t)
    assert only == pytest.approx(116 * (LATENCY + t * per_token / bw), rel=1e-9)


def test_all_to_all_beyond_the_domain_is_paced_by_the_nic() -> None:
    p = layout(plan("DeepSeek-V3"), dp_attention=16, ep=16)  # two H100 nodes
    c = cost_params(p)
    # 8 of the 15 peers are off-node: 1 / max((7/15) / NVLink, (8/15) / NIC)
    assert c.alltoall_bytes_per_s == pytest.approx(1 / max(7 / 15 / NVLINK, 8 / 15 / NIC))
    assert c.alltoall_bytes_per_token == pytest.approx(8 * 7168 * 1.5 * (15 / 16) / 16)


def test_ep_skew_makes_the_busiest_rank_set_the_pace() -> None:
    # Mixtral-8x7B: 32 layers, 8 experts of 3 x 4096 x 14336, top-2; 4 GPUs
    mixtral = plan("Mixtral-8x7B", tp=4)
    skewed = layout(mixtral, ep=4, ep_skew=0.25)
    assert cost_params(skewed).expert_load_factor == 1.25
    assert cost_params(layout(mixtral, ep_skew=0.25)).expert_load_factor == 1.0  # ep=1: none
    expert_flops = 2 * 32 * 3 * 4096 * 14336 * 2 / 4  # per token per GPU
    t = 8192  # compute-bound: every expert's weights are read anyway
    extra = Roofline(cost_params(skewed)).token_seconds(t, 1) - Roofline(
        cost_params(layout(mixtral, ep=4))
    ).token_seconds(t, 1)
    assert extra == pytest.approx(expert_flops * t * 0.25 / RATE, rel=1e-9)


# ---- bad layouts: one clear line each -----------------------------------------------------------


def build(model: str, *, gpu: str = "H100-SXM", **cluster: object) -> ReplicaPlan:
    return build_plan(Config(ModelConfig(model), ClusterConfig(gpu=gpu, **cluster)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "cluster", "match"),
    [
        ("Llama-3.1-8B", {"pp": 33}, "cluster.pp=33 exceeds Llama-3.1-8B's 32 layers"),
        ("Mixtral-8x7B", {"ep": 3}, "cluster.ep=3 does not divide Mixtral-8x7B's 8 experts"),
        ("Llama-3.1-8B", {"tp": 2, "ep": 2}, "cluster.ep=2 needs a mixture-of-experts model"),
        ("Llama-3.1-8B", {"dp_attention": 2}, "cluster.dp_attention=2 needs a mixture-of"),
        ("Mixtral-8x7B", {"tp": 2, "ep": 4}, "cluster.ep=4 must divide the 2 GPUs"),
        ("Mixtral-8x7B", {"dp_attention": 4, "ep": 2}, r"needs cluster.ep = tp x dp_att"),
        ("Llama-3.1-70B", {"tp": 16}, "exceeds H100-SXM's scale-up domain of 8 GPUs"),
        ("Llama-3.1-8B", {"pp": 0}, "cluster.pp must be >= 1"),
        ("Mixtral-8x7B", {"tp": 2, "ep": 2, "ep_skew": -0.1}, "ep_skew must be >= 0"),
        ("Llama-3.1-405B", {"tp": 8}, "does not fit on H100-SXM with tp=8: .*cluster.pp"),
    ],
)
def test_bad_layouts_are_one_clear_error(model: str, cluster: dict[str, Any], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        build(model, **cluster)


def test_good_layouts_build_and_count_gpus() -> None:
    assert build("Llama-3.1-405B", tp=8, pp=2).num_gpus == 16
    assert build("DeepSeek-V3", gpu="H200", tp=1, dp_attention=8, ep=8).num_gpus == 8
    assert build("DeepSeek-V3", tp=1, dp_attention=16, ep=16).num_gpus == 16
    assert build("Qwen3-235B-A22B", gpu="H200", tp=4, ep=4).layout == "tp=4 ep=4"


# ---- the engine: stepping equals stretches with every layout ------------------------------------


@pytest.mark.parametrize(
    ("model", "cluster"),
    [
        ("Llama-3.1-8B", {"tp": 1, "pp": 2}),
        ("Qwen3-30B-A3B", {"tp": 1, "dp_attention": 2, "ep": 2, "ep_skew": 0.3}),
        ("Qwen3-30B-A3B", {"tp": 2, "pp": 3, "ep": 2}),
    ],
)
def test_stretches_equal_stepping_for_every_layout(model: str, cluster: dict[str, object]) -> None:
    from sim.simulate import simulate

    def run(fast: bool):  # type: ignore[no-untyped-def]
        cfg = small_config(
            model=ModelConfig(model),
            cluster=ClusterConfig(1, "H100-SXM", **cluster),  # type: ignore[arg-type]
            fast_forward=fast,
        )
        return simulate(cfg)

    a, b = run(True), run(False)
    assert a.meta["num_gpus"] == b.meta["num_gpus"] > 1
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)


# ---- Hydra: layout keys sweep, the named experiment composes ----------------------------------


def test_layout_keys_are_hydra_overrides() -> None:
    from tests.test_cli import compose_with

    cfg = compose_with(["model=mixtral-8x7b", "cluster.tp=2", "cluster.pp=2", "cluster.ep=2"])
    assert (cfg.cluster.tp, cfg.cluster.pp, cfg.cluster.ep) == (2, 2, 2)
    cfg = compose_with(["cluster=dp4ep4", "cluster.ep_skew=0.1"])
    assert (cfg.cluster.dp_attention, cfg.cluster.ep, cfg.cluster.ep_skew) == (4, 4, 0.1)


def test_tp_pp_ep_experiment_lists_its_layouts() -> None:
    from experiments.run_experiment import run_variant, variants

    vs = variants("tp_pp_ep")
    labels = [v.label for v in vs]
    assert len(vs) == 10 and labels[0] == "tp4 rate_scale=4" and "dp4ep4 rate_scale=16" in labels
    short = dataclasses.replace(vs[2], overrides=(*vs[2].overrides, "workload.end_s=20"))
    row, frame = run_variant(short)
    assert (row["layout"], row["gpus"]) == ("tp=1 pp=4", 4)
    assert row["finished"] == len(frame) > 0
