"""Prefix caching in the engine: hits skip prefill, shared blocks, the ideal hit ratio."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from sim.config import ClusterConfig, LengthConfig, ModelConfig, WorkloadConfig
from sim.request import Request
from sim.simulate import simulate
from sim.trace import bundled, load_trace
from tests.factories import LinearStepModel, plan, run_requests, small_config


def test_a_repeated_prompt_skips_its_cached_blocks() -> None:
    p = dataclasses.replace(plan(), prefix_caching=True)
    ids = (11, 12, 13)  # 3 hash blocks of 16 tokens = engine blocks
    a = Request(0, 0.0, 48, 2, prefix_hashes=ids, hash_block_tokens=16)
    b = Request(1, 1.0, 48, 2, prefix_hashes=ids, hash_block_tokens=16)
    c = Request(2, 2.0, 40, 2, prefix_hashes=(11, 99, 98), hash_block_tokens=16)
    replica = run_requests(p, LinearStepModel(0.01, 0.001), [a, b, c])
    assert a.cached_tokens == 0
    assert b.cached_tokens == 32  # 2 of 3 blocks: the last prompt token is always computed
    assert c.cached_tokens == 16  # shares only the first block
    steps = pd.DataFrame(replica.step_columns())
    assert list(steps["num_prefill_tokens"][steps["num_prefill_tokens"] > 0]) == [48, 16, 24]
    assert b.first_token_at == 1.0 + (0.01 + 0.001 * 16)  # TTFT drops: a 16-token prefill
    assert replica.kv.num_free == replica.kv.num_blocks


def test_fp8_kv_raises_kv_and_prefix_cache_capacity_in_the_same_run() -> None:
    def run(kv: str):  # type: ignore[no-untyped-def]
        w = WorkloadConfig(kind="sessions", output=LengthConfig("uniform", low=50, high=200))
        w.sessions.num_sessions, w.sessions.system_prompt_tokens = 300, 6000
        w.sessions.num_system_prompts, w.sessions.session_rate_per_s = 40, 4.0
        quant = {"weights": "bf16", "activations": "bf16", "kv_cache": kv}
        cfg = small_config(
            model=ModelConfig("Llama-3.1-70B"),
            cluster=ClusterConfig(1, "H100-SXM", 4),
            workload=w,
            technique={"quantization": quant, "prefix_caching": {}},
        )
        return simulate(cfg)

    bf16, fp8 = run("bf16"), run("fp8")
    assert fp8.meta["kv_blocks_per_replica"] > 1.9 * bf16.meta["kv_blocks_per_replica"]
    hit = [
        r.requests["cached_tokens"].sum() / r.requests["input_tokens"].sum() for r in (bf16, fp8)
    ]
    assert hit[1] > hit[0]  # more blocks fit, fewer cached prefixes are evicted


def test_unbounded_cache_reaches_the_mooncake_ideal_hit_ratio() -> None:
    trace = load_trace(bundled("mooncake_synthetic"))
    cfg = small_config(
        cluster=ClusterConfig(1, "B200", 1),
        workload=WorkloadConfig(kind="trace", trace="mooncake_synthetic", rate_scale=0.5),
        technique={"prefix_caching": {"unbounded": True}},
    )
    req = simulate(cfg).requests
    served = (req["status"] == "finished").to_numpy()
    # the ideal over the served requests, with the engine's rule that the last prompt
    # token is always computed (a fully repeated prompt hits all but its last block)
    seen: set[int] = set()
    hits = blocks = 0
    for i, ids in enumerate(trace.prefix_hashes or ()):
        if not served[i]:
            continue
        lead = 0
        while lead < len(ids) and ids[lead] in seen:
            lead += 1
        hits += min(lead, (int(trace.input_tokens[i]) - 1) // 512)
        blocks += len(ids)
        seen.update(ids)
    fin = req[served]
    simulated = (fin["cached_tokens"] // 512).sum() / np.ceil(fin["input_tokens"] / 512).sum()
    assert simulated == hits / blocks
    assert abs(simulated - 0.640) < 0.01  # the data card's block-weighted ideal
