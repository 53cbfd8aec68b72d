"""End-to-end runs: conservation, queueing theory, determinism, rejections, bad input."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

from sim.config import ClusterConfig, EngineConfig, ModelConfig, RouterConfig, WorkloadConfig
from sim.hardware import ProfileError
from sim.plan import PlanError
from sim.request import Request
from sim.simulate import simulate
from sim.techniques import TechniqueError
from tests.factories import LinearStepModel, plan, run_requests, small_config


def assert_conserved(result) -> None:  # type: ignore[no-untyped-def]
    req, steps = result.requests, result.steps
    fin = req[req["status"] == "finished"]
    assert set(req["status"]) <= {"finished", "rejected"}
    assert (req.loc[req["status"] == "rejected", "reason"] != "").all()
    # every finished request got exactly its output tokens, each emitted once
    assert int(steps["num_output_tokens"].sum()) == int(fin["output_tokens"].sum())
    if req["num_preemptions"].sum() == 0:  # 1 token from the prefill, the rest decoding
        assert int(steps["num_decode_tokens"].sum()) + len(fin) == int(fin["output_tokens"].sum())
    # every prompt token was computed at least once (exactly once without preemption)
    prefill = int(steps["num_prefill_tokens"].sum())
    if req["num_preemptions"].sum() == 0:
        assert prefill == int(fin["input_tokens"].sum())
    else:
        assert prefill > int(fin["input_tokens"].sum())
    assert (fin["first_token_at"] >= fin["arrival_at"]).all()
    assert (fin["finished_at"] >= fin["first_token_at"]).all()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"cluster": ClusterConfig(replicas=3, gpu="H100-SXM", tp=1)},
        {"router": RouterConfig("random"), "cluster": ClusterConfig(2, "H100-SXM", 1)},
        {"engine": EngineConfig(gpu_memory_utilization=0.26, max_num_seqs=256)},  # preempts
        {"engine": EngineConfig(enable_chunked_prefill=False, max_num_batched_tokens=2048)},
        {"model": ModelConfig("Qwen3-30B-A3B")},
        {"model": ModelConfig("gpt-oss-120b")},
        {"model": ModelConfig("DeepSeek-V3"), "cluster": ClusterConfig(1, "H200", 8)},
    ],
)
def test_conservation(overrides: dict[str, object]) -> None:
    # simulate() itself raises if a request is lost or a KV block is still held at the end
    result = simulate(small_config(**overrides))
    assert_conserved(result)
    assert (result.requests["status"] == "finished").all()


def test_mdl_queue_matches_md1_mean_wait() -> None:
    """One replica, one sequence per step, constant step D: an M/D/1 queue."""
    step_s = 0.01
    for rho, tolerance in ((0.5, 0.04), (0.75, 0.10)):
        rng = np.random.default_rng(7)
        arrivals = np.cumsum(rng.exponential(step_s / rho, 40_000))
        reqs = [Request(i, float(a), 16, 1) for i, a in enumerate(arrivals)]
        run_requests(plan(max_num_seqs=1), LinearStepModel(step_s), reqs)
        wait = np.mean([r.first_scheduled_at - r.arrival_at for r in reqs])
        md1 = rho * step_s / (2 * (1 - rho))  # Pollaczek-Khinchine for deterministic service
        assert wait == pytest.approx(md1, rel=tolerance)
        assert all(r.first_token_at - r.first_scheduled_at == pytest.approx(step_s) for r in reqs)


def _parquet_bytes(frame) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def test_same_seed_same_parquet_bytes() -> None:
    cfg = small_config(router=RouterConfig("random"), cluster=ClusterConfig(2, "H100-SXM", 1))
    a, b = simulate(cfg), simulate(cfg)
    assert _parquet_bytes(a.requests) == _parquet_bytes(b.requests)
    assert _parquet_bytes(a.steps) == _parquet_bytes(b.steps)
    c = simulate(dataclasses.replace(cfg, seed=1))
    assert _parquet_bytes(a.requests) != _parquet_bytes(c.requests)


def test_requests_too_long_are_rejected_with_a_reason() -> None:
    cfg = small_config(model=ModelConfig("Llama-2-70B"), cluster=ClusterConfig(1, "H100-SXM", 4))
    cfg.workload.input = type(cfg.workload.input)("uniform", low=3000, high=5000)
    result = simulate(cfg)
    req = result.requests
    rejected = req[req["status"] == "rejected"]
    too_long = req["input_tokens"] + req["output_tokens"] > 4096
    assert too_long.any()
    assert (rejected.index == req.index[too_long]).all()
    assert rejected["reason"].str.contains("exceeds max_model_len 4096").all()
    assert_conserved(result)


def test_closed_loop_keeps_concurrency_in_flight() -> None:
    cfg = small_config()
    cfg.workload.concurrency = 4
    result = simulate(cfg)
    req = result.requests.sort_values("arrival_at")
    # at any arrival, at most 4 requests are in flight
    for t in req["arrival_at"].to_numpy()[::17]:
        in_flight = ((req["arrival_at"] <= t) & (req["finished_at"] > t)).sum()
        assert in_flight <= 4
    assert result.steps["num_seqs"].max() == 4


def test_offline_trace_arrives_at_time_zero() -> None:
    cfg = small_config()
    cfg.workload.arrival = "offline"
    result = simulate(cfg)
    assert (result.requests["arrival_at"] == 0).all()
    assert result.steps["num_waiting"].iloc[0] > 0


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"cluster": ClusterConfig(1, "H900", 1)}, ProfileError, "unknown gpu 'H900'"),
        ({"model": ModelConfig("Llama-9-7B")}, ProfileError, "unknown model 'Llama-9-7B'"),
        (
            {"model": ModelConfig("Llama-3.1-405B"), "cluster": ClusterConfig(1, "H100-SXM", 8)},
            PlanError,
            "does not fit on H100-SXM with tp=8",
        ),
        ({"cluster": ClusterConfig(1, "H100-SXM", 3)}, PlanError, "does not divide"),
        ({"cluster": ClusterConfig(1, "H100-SXM", 16)}, PlanError, "scale-up domain"),
        ({"cluster": ClusterConfig(0, "H100-SXM", 1)}, PlanError, "replicas must be >= 1"),
        ({"router": RouterConfig("fastest")}, ValueError, "unknown router.policy 'fastest'"),
        ({"technique": {"sparsity": {}}}, TechniqueError, "unknown technique 'sparsity'"),
        (
            {"technique": {"quantization": {"weigths": "fp8"}}},
            TechniqueError,
            "technique.quantization: Key 'weigths' not in 'QuantizationConfig'",
        ),
        (
            {"technique": {"quantization": {"activations": "nvfp4"}}},
            PlanError,
            "does not run block-scaled 'nvfp4'|has no fp4",
        ),
        (
            {"engine": EngineConfig(max_num_seqs=512, max_num_batched_tokens=256)},
            ValueError,
            "must be >= engine.max_num_seqs",
        ),
        (
            {"engine": EngineConfig(kv_memory_basis="spare")},
            PlanError,
            "engine.kv_memory_basis='spare': use total or free",
        ),
        (
            {"engine": EngineConfig(mxfp4_moe_layout="marlin")},
            PlanError,
            "engine.mxfp4_moe_layout='marlin': use checkpoint or vllm",
        ),
        (
            {"engine": EngineConfig(kv_reservation="ful")},
            PlanError,
            "engine.kv_reservation='ful': use incremental or full",
        ),
        (
            {"engine": EngineConfig(sampling="top_k")},
            PlanError,
            "engine.sampling='top_k': use greedy or top_p_torch",
        ),
        (
            {"workload": WorkloadConfig(kind="trace", trace="nope.csv")},
            ValueError,
            "workload.trace='nope.csv' is neither a bundled trace nor an existing file",
        ),
        (
            {"workload": WorkloadConfig(kind="trace", trace="azure_cnv")},
            ValueError,
            "did you mean 'azure_conv'",
        ),
        ({"workload": WorkloadConfig(kind="replay")}, ValueError, "workload.kind='replay'"),
    ],
)
def test_bad_input_gives_a_clear_error(
    overrides: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        simulate(small_config(**overrides))
