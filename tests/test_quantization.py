"""Quantization: bytes per format incl. scales, rates per GPU, the weight-only fallback, errors."""

from __future__ import annotations

import dataclasses

import pytest

from sim.cluster import build_plan
from sim.config import ClusterConfig, Config, EngineConfig, ModelConfig
from sim.dtypes import get_format
from sim.plan import (
    PlanError,
    ReplicaPlan,
    compute_rate_key,
    cost_params,
    expert_layout_factor,
    memory_plan,
)
from sim.step_time import Roofline, StepShape
from sim.techniques import TechniqueError

# Llama-3.1-8B parameters by component (tests/test_step_time.py derives them by hand)
H, L, INTER, V = 4096, 32, 14336, 128256
PARAMS = 2 * H * V + L * (2 * H * H + 2 * H * 1024) + L * 3 * H * INTER + L * 2 * H + H


def baseline(model: str = "Llama-3.1-8B", gpu: str = "H100-SXM") -> ReplicaPlan:
    """The checkpoint's formats (bf16), no technique."""
    return build_plan(Config(ModelConfig(model), ClusterConfig(1, gpu, 1)))


def quantized(model: str = "Llama-3.1-8B", gpu: str = "H100-SXM", **formats: str) -> ReplicaPlan:
    """technique=[quantization] with these formats (defaults: fp8 weights, activations, KV)."""
    technique = {"quantization": formats}
    return build_plan(Config(ModelConfig(model), ClusterConfig(1, gpu, 1), technique=technique))


@pytest.mark.parametrize(
    ("name", "bytes_per_element"),
    [
        ("bf16", 2.0),
        ("fp16", 2.0),
        ("fp8", 1.0),
        ("int8", 1.0),
        ("mxfp8", (8 + 8 / 32) / 8),  # one E8M0 scale per 32 elements
        ("nvfp4", (4 + 8 / 16) / 8),  # one FP8 scale per 16 (+ a negligible FP32 per tensor)
        ("mxfp4", (4 + 8 / 32) / 8),
        ("int4", (4 + 16 / 128) / 8),  # one fp16 scale per group of 128
    ],
)
def test_bytes_per_element_include_block_scales(name: str, bytes_per_element: float) -> None:
    assert get_format(name).bytes_per_element == bytes_per_element


@pytest.mark.parametrize("name", ["bf16", "fp8", "nvfp4", "mxfp4", "int4"])
def test_weight_bytes_per_gpu_follow_the_format(name: str) -> None:
    p = quantized(weights=name, activations="bf16", kv_cache="bf16")
    assert memory_plan(p).weight_bytes_per_gpu == PARAMS * get_format(name).bytes_per_element


def test_fp8_runs_prefill_faster_through_the_flop_rate() -> None:
    bf16, fp8 = cost_params(baseline()), cost_params(quantized())
    assert bf16.gemm_rate_flops_per_s == 989.4e12 * 0.5  # H100 profile, bf16
    assert fp8.gemm_rate_flops_per_s == 1978.9e12 * 0.5786  # fp8 peak x serving fraction
    shape = StepShape(2048, 1, 2048 * 2049 // 2, 0)
    ratio = Roofline(bf16).step_seconds(shape) / Roofline(fp8).step_seconds(shape)
    assert ratio > 1.5  # compute-bound: the rate ratio is 1.77


def test_fp8_runs_decode_faster_through_bytes() -> None:
    bf16, fp8 = cost_params(baseline()), cost_params(quantized())
    assert fp8.gemm_weight_bytes == bf16.gemm_weight_bytes / 2
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token / 2
    shape = StepShape(8, 8, 8 * 2001, 8 * 2000)
    assert fp8.floor_s == bf16.floor_s > 0  # kernel minimum durations do not shrink
    bf16, fp8 = (dataclasses.replace(c, floor_s=0.0) for c in (bf16, fp8))
    ratio = Roofline(bf16).step_seconds(shape) / Roofline(fp8).step_seconds(shape)
    assert 1.8 < ratio <= 2.0  # weight- and KV-read bound: bytes halve


def test_memory_freed_by_fp8_weights_becomes_kv_capacity() -> None:
    bf16 = memory_plan(baseline())
    w8 = memory_plan(quantized(weights="fp8", activations="bf16", kv_cache="bf16"))
    freed = bf16.weight_bytes_per_gpu - w8.weight_bytes_per_gpu
    assert freed == PARAMS * 1.0
    assert w8.kv_capacity_bytes_per_gpu == pytest.approx(bf16.kv_capacity_bytes_per_gpu + freed)
    assert w8.num_blocks == int(w8.kv_capacity_bytes_per_gpu // (131072 * 16))


def test_fp8_kv_cache_doubles_kv_capacity() -> None:
    bf16 = memory_plan(baseline())
    kv8 = memory_plan(quantized(weights="bf16", activations="bf16", kv_cache="fp8"))
    assert kv8.kv_bytes_per_token_per_gpu == 2 * L * 8 * 128 * 1  # 65,536 bytes
    assert kv8.kv_capacity_bytes_per_gpu == bf16.kv_capacity_bytes_per_gpu
    assert kv8.num_blocks == int(kv8.kv_capacity_bytes_per_gpu // (65536 * 16))
    assert kv8.num_blocks >= 2 * bf16.num_blocks


@pytest.mark.parametrize(
    ("gpu", "formats", "match"),
    [
        ("H100-SXM", {"activations": "nvfp4", "weights": "nvfp4"}, "no fp4 tensor-core rate"),
        ("H100-SXM", {"activations": "mxfp4"}, "FP4 compute needs Blackwell"),
        ("A100-SXM-80GB", {"activations": "fp8"}, "no fp8 tensor-core rate"),
        ("H100-SXM", {"activations": "mxfp8"}, "does not run block-scaled 'mxfp8'"),
        ("H100-SXM", {"activations": "int4"}, "weight-only"),
        ("H100-SXM", {"kv_cache": "mxfp4"}, "no engine stores a KV cache"),
    ],
)
def test_formats_a_gpu_cannot_run_are_clear_errors(
    gpu: str, formats: dict[str, str], match: str
) -> None:
    with pytest.raises(PlanError, match=match):
        quantized(gpu=gpu, **formats)


def test_unknown_format_and_unknown_key_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown number format 'fp6'"):
        quantized(weights="fp6")
    with pytest.raises(TechniqueError, match="weigths"):
        quantized(weigths="fp8")


def test_fp4_weights_on_hopper_fall_back_to_weight_only() -> None:
    p = quantized(weights="nvfp4", activations="fp8", kv_cache="fp8")
    assert compute_rate_key(p) == "fp8"  # never the Blackwell FP4 rate
    assert memory_plan(p).weight_bytes_per_gpu == PARAMS * 0.5625
    assert any("nvfp4 run weight-only on H100-SXM" in n for n in p.notes)
    int4 = quantized(gpu="A100-SXM-80GB", weights="int4", activations="bf16", kv_cache="bf16")
    assert compute_rate_key(int4) == "bf16"
    assert any("int4 run weight-only" in n for n in int4.notes)


def test_fp4_compute_runs_at_the_fp4_rate_on_blackwell() -> None:
    p = quantized(gpu="B200", weights="nvfp4", activations="nvfp4", kv_cache="fp8")
    assert compute_rate_key(p) == "fp4"
    assert cost_params(p).gemm_rate_flops_per_s == 9000e12 * 0.4
    w4a8 = quantized(gpu="B200", weights="nvfp4", activations="fp8", kv_cache="fp8")
    assert compute_rate_key(w4a8) == "fp8"  # W4A8: dequantized to fp8 for the GEMM


def test_weights_and_activations_meet_at_the_wider_format() -> None:
    p = quantized(weights="bf16", activations="fp8", kv_cache="bf16")
    assert compute_rate_key(p) == "bf16"
    assert any("dense GEMMs run at the bf16 rate" in n for n in p.notes)


def test_experts_follow_weights_but_never_widen_the_checkpoint() -> None:
    p = quantized("gpt-oss-120b")  # MXFP4 experts in the checkpoint
    assert (p.weight_format, p.expert_format) == ("fp8", "mxfp4")
    assert quantized("gpt-oss-120b", "H200", experts="fp8").expert_format == "fp8"
    q = quantized("Qwen3-30B-A3B", weights="nvfp4", activations="fp8")
    assert q.expert_format == "nvfp4"


def test_vllm_mxfp4_layout_pads_gpt_oss_experts() -> None:
    """gpt-oss-120b: hidden 2880, expert intermediate 2880, 128 experts in 36 layers."""

    def gpt_oss(layout: str, gpu: str = "H100-SXM", tp: int = 1) -> ReplicaPlan:
        engine = EngineConfig(mxfp4_moe_layout=layout)
        return build_plan(Config(ModelConfig("gpt-oss-120b"), ClusterConfig(1, gpu, tp), engine))

    stored, marlin = gpt_oss("checkpoint"), gpt_oss("vllm")
    assert expert_layout_factor(stored) == 1.0
    # Marlin (no native MXFP4 on H100): hidden 2880 -> 3072, intermediate 2880 -> 2944
    assert expert_layout_factor(marlin) == pytest.approx(3072 * 2944 / 2880**2, rel=1e-12)
    # FlashInfer on B200 (native MXFP4), TP8: intermediate 360 per GPU -> 512
    b200 = gpt_oss("vllm", "B200", 8)
    assert expert_layout_factor(b200) == pytest.approx(3072 * 512 / (2880 * 360), rel=1e-12)
    # three 2880 x 2880 matrices and their biases (gate, up: 2880 each; down: 2880)
    experts = 36 * 128 * 3 * (2880 * 2880 + 2880) * get_format("mxfp4").bytes_per_element
    extra = memory_plan(marlin).weight_bytes_per_gpu - memory_plan(stored).weight_bytes_per_gpu
    assert extra == pytest.approx(experts * (3072 * 2944 / 2880**2 - 1), rel=1e-9)
    assert memory_plan(marlin).weight_bytes_per_gpu / 2**30 == pytest.approx(65.8, abs=0.05)
    assert memory_plan(marlin).num_blocks < memory_plan(stored).num_blocks
    c0, c1 = cost_params(stored), cost_params(marlin)
    assert c1.expert_bytes / c0.expert_bytes == pytest.approx(3072 * 2944 / 2880**2, rel=1e-12)
    assert c1.expert_flops_per_token / c0.expert_flops_per_token == pytest.approx(
        3072 * 2944 / 2880**2, rel=1e-12
    )
    # only MXFP4 experts are padded
    dense = build_plan(
        Config(ModelConfig("Qwen3-30B-A3B"), ClusterConfig(1, "H100-SXM", 1), EngineConfig())
    )
    assert expert_layout_factor(dense) == 1.0


def test_quality_notes_reach_the_run_summary() -> None:
    from sim.__main__ import describe
    from sim.simulate import simulate
    from tests.factories import small_config

    cfg = small_config(technique={"quantization": {"weights": "nvfp4", "activations": "fp8"}})
    cfg = dataclasses.replace(cfg, workload=dataclasses.replace(cfg.workload, num_requests=20))
    text = describe(simulate(cfg).meta)
    assert "weights nvfp4, activations fp8, KV fp8" in text
    assert "weights nvfp4: E2M1 elements, one FP8 scale per 16" in text
    assert "run weight-only on H100-SXM" in text
    assert "sensitivity rises weights < activations < KV cache < attention" in text


def test_fp8_vs_bf16_experiment_composes_its_variants() -> None:
    from experiments.run_experiment import variants
    from tests.test_cli import compose_with

    cfg = compose_with(["+experiment=fp8_vs_bf16"])
    assert (cfg.model.name, cfg.cluster.tp, cfg.workload.end_s) == ("Llama-3.1-70B", 4, 300)
    labels = [v.label for v in variants("fp8_vs_bf16")]
    assert labels[0] == "bf16 rate_scale=2" and "quantization rate_scale=4" in labels
    w8a8 = compose_with(["+experiment=fp8_vs_bf16", "technique=[fp8_w8a8]"])
    assert w8a8.technique["quantization"]["kv_cache"] == "bf16"
