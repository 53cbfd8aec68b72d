"""Speculative decoding: the expected-token formula, sampled step counts, and the
batch-size antagonism emerging from the step cost."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.config import ClusterConfig, EngineConfig, LengthConfig, ModelConfig, WorkloadConfig
from sim.kv_cache import KVCache
from sim.plan import PlanError, Speculation
from sim.scheduler import Scheduler
from sim.simulate import simulate
from tests.factories import plan, small_config


def test_expected_tokens_per_step_formula() -> None:
    a, k = 0.7, 3
    spec = Speculation("ngram", k, (a,) * k, sampled=False)
    assert spec.expected_tokens == pytest.approx((1 - a ** (k + 1)) / (1 - a))
    by_position = Speculation("ngram", 3, (0.9, 0.5, 0.2), sampled=False)
    assert by_position.expected_tokens == pytest.approx(1 + 0.9 + 0.45 + 0.09)


def test_sampled_step_counts_have_the_right_mean() -> None:
    spec = Speculation("ngram", 4, (0.8,) * 4, sampled=True)
    e = plan(max_num_batched_tokens=8192, max_num_seqs=256).engine
    sched = Scheduler(e, KVCache(1000, 16), speculation=spec, rng=np.random.default_rng(1))
    steps = np.array([sched._decode_steps(1000) for _ in range(400)])
    assert 1000 / steps.mean() == pytest.approx(spec.expected_tokens, rel=0.01)
    assert steps.std() > 0  # a distribution, not a constant
    expected = Scheduler(e, KVCache(1000, 16), speculation=dataclasses.replace(spec, sampled=False))
    assert expected._decode_steps(1000) == int(np.ceil(1000 / spec.expected_tokens))


def run(concurrency: int, technique: dict[str, object]) -> tuple[float, float]:
    """Output tokens/s and mean TTFT of a closed loop at `concurrency` requests in flight."""
    n = max(4 * concurrency, 8)
    w = WorkloadConfig(
        kind="synthetic",
        num_requests=n,
        arrival="offline",
        input=LengthConfig("fixed", value=64),
        output=LengthConfig("fixed", value=512),
        concurrency=concurrency,
    )
    cfg = small_config(
        model=ModelConfig("Llama-3.1-8B"),
        cluster=ClusterConfig(1, "H100-SXM", 1),
        workload=w,
        technique=technique,
        engine=EngineConfig(max_num_seqs=1024, max_num_batched_tokens=8192),
    )
    req = simulate(cfg).requests
    tokens_per_s = req["output_tokens"].sum() / (req["finished_at"].max() - req["arrival_at"].min())
    return tokens_per_s, float((req["first_token_at"] - req["arrival_at"]).mean())


def test_speculation_pays_at_batch_one_and_loses_at_large_batch() -> None:
    a, k = 0.7, 3
    spec = {
        "speculative": {"method": "ngram", "num_tokens": k, "acceptance": a, "sampling": "expected"}
    }
    tau = (1 - a ** (k + 1)) / (1 - a)  # 2.53 tokens a step
    base1, ttft1 = run(1, {})
    fast1, spec_ttft1 = run(1, spec)
    # memory-bound at batch 1: verifying 4 tokens costs about what 1 does, drafting is free
    assert fast1 / base1 == pytest.approx(tau, rel=0.08)
    assert spec_ttft1 == pytest.approx(ttft1, rel=1e-9)  # TTFT untouched
    base, fast = run(512, {})[0], run(512, spec)[0]
    # at 512 sequences the 4x verify width makes steps compute-bound: the gain turns to a loss
    assert fast / base < 1.0


def test_bad_speculative_parameters() -> None:
    def bad(**params: object) -> None:
        simulate(small_config(technique={"speculative": params}))

    with pytest.raises(PlanError, match="method='medusa'"):
        bad(method="medusa")
    with pytest.raises(PlanError, match="needs draft_model"):
        bad(method="draft")
    with pytest.raises(PlanError, match="3 rates for num_tokens=2"):
        bad(num_tokens=2, acceptance_by_position=[0.9, 0.8, 0.7])
    with pytest.raises(PlanError, match="in \\[0, 1\\]"):
        bad(acceptance=1.5)
