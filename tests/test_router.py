"""Routing policies pick replicas from published counters (and prefix indexes) only."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import simpy

from sim.config import ClusterConfig, LengthConfig, RouterConfig, WorkloadConfig
from sim.metrics import cluster_stats
from sim.replica import Replica
from sim.request import Request
from sim.router import POLICIES, Router, RouterState, get_policy
from sim.simulate import simulate
from tests.factories import LinearStepModel, plan, small_config


@dataclass
class View:
    num_outstanding: int
    kv_usage: float = 0.0
    prefill_tokens_left: int = 0
    decode_tokens_left: int = 0
    cached: int = 0  # leading prompt tokens cached here
    keys: list[Hashable] = field(default_factory=list)

    def cached_prefix_tokens(self, request: Request) -> int:
        return self.cached

    def prefix_keys(self, request: Request) -> list[Hashable]:
        return self.keys

    def cached_units(self) -> tuple[frozenset[Hashable], int]:
        return frozenset(self.keys[: self.cached // 16]), 16


def pick(name: str, loads: list[int], n: int = 1, seed: int = 0) -> list[int]:
    state = RouterState(np.random.default_rng(seed))
    views = [View(x) for x in loads]
    return [get_policy(name)(views, Request(i, 0.0, 1, 1), state) for i in range(n)]


def choose(name: str, views: list[View], request: Request, **state: object) -> int:
    return get_policy(name)(views, request, RouterState(np.random.default_rng(0), **state))  # type: ignore[arg-type]


def test_round_robin_cycles() -> None:
    assert pick("round_robin", [5, 0, 0], n=7) == [0, 1, 2, 0, 1, 2, 0]


def test_least_outstanding_picks_the_least_loaded_lowest_index() -> None:
    assert pick("least_outstanding", [3, 1, 1, 2]) == [1]


def test_random_is_seeded_and_covers_replicas() -> None:
    a, b = pick("random", [0] * 4, n=200, seed=3), pick("random", [0] * 4, n=200, seed=3)
    assert a == b and set(a) == {0, 1, 2, 3}


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="round_robin, random, least_outstanding"):
        get_policy("nearest")
    assert set(POLICIES) >= {"round_robin", "random", "least_outstanding", "kv_aware"}


def test_least_tokens_and_least_kv_read_their_counters() -> None:
    r = Request(0, 0.0, 100, 10)
    views = [View(1, 0.5, 900, 0), View(9, 0.1, 100, 500), View(0, 0.1, 700, 0)]
    assert choose("least_tokens", views, r) == 1  # 600 tokens of work left, the fewest
    assert choose("least_kv", views, r) == 2  # KV 10 %: a tie broken by fewer outstanding


def test_power_of_two_takes_the_less_loaded_of_two_random_replicas() -> None:
    state = RouterState(np.random.default_rng(5))
    views = [View(x) for x in (4, 0, 9, 2)]
    picks = [get_policy("power_of_two")(views, Request(i, 0, 1, 1), state) for i in range(400)]
    assert 2 not in picks  # the busiest always loses its pair
    assert picks.count(1) > picks.count(3) > picks.count(0) > 0  # by rank


def test_session_affinity_is_sticky_until_overloaded() -> None:
    state = RouterState(np.random.default_rng(0), affinity_slack=2)
    views = [View(0), View(0)]
    policy = get_policy("session_affinity")
    first = policy(views, Request(0, 0.0, 10, 1, session_id=7), state)
    views[first].num_outstanding = 2  # busier, within the slack: stays
    assert policy(views, Request(1, 0.0, 10, 1, session_id=7), state) == first
    views[first].num_outstanding = 3  # 3 above the least loaded: moves, and sticks there
    moved = policy(views, Request(2, 0.0, 10, 1, session_id=7), state)
    assert moved != first and state.sessions[7] == moved
    assert policy(views, Request(3, 0.0, 10, 1), state) == moved  # no session: least loaded


def test_kv_aware_picks_the_longest_cached_prefix_when_loads_are_equal() -> None:
    r = Request(0, 0.0, 4096, 10)
    views = [View(3, cached=1024), View(3, cached=3072), View(3, cached=2048)]
    assert choose("kv_aware", views, r) == 1
    # the cost trades cache hits against queued prompt tokens (load_weight 1)
    views[1].prefill_tokens_left = 2500  # 4096 - 3072 + 2500 > 4096 - 2048
    assert choose("kv_aware", views, r) == 2
    assert choose("kv_aware", views, r, load_weight=0.0) == 1  # cache hits alone


def test_kv_aware_spreads_ties_round_robin() -> None:
    state = RouterState(np.random.default_rng(0))
    views = [View(0), View(0), View(0)]
    policy = get_policy("kv_aware")
    assert [policy(views, Request(i, 0, 64, 1), state) for i in range(4)] == [0, 1, 2, 0]


def _replica_with_prefix(env: simpy.Environment, index: int, cached_units: int) -> Replica:
    """A replica whose prefix index holds the first `cached_units` blocks of ids 1..8."""
    p = dataclasses.replace(plan(), prefix_caching=True)
    replica = Replica(env, index, p, LinearStepModel(0.01))  # type: ignore[arg-type]
    keys = replica.prefix_keys(_prompt())
    replica.kv.allocate(cached_units)
    for key in keys[:cached_units]:
        replica.kv.register(key)
    replica.kv.release(keys[:cached_units])  # cached, evictable, still matchable
    return replica


def _prompt(i: int = 0) -> Request:
    return Request(i, 0.0, 8 * 16, 4, prefix_hashes=tuple(range(1, 9)), hash_block_tokens=16)


def test_kv_aware_reads_each_replicas_prefix_index() -> None:
    env = simpy.Environment()
    replicas = [_replica_with_prefix(env, i, units) for i, units in enumerate((2, 5, 3))]
    assert [r.cached_prefix_tokens(_prompt()) for r in replicas] == [32, 80, 48]
    state = RouterState(np.random.default_rng(0))
    assert get_policy("kv_aware")(replicas, _prompt(), state) == 1
    # a fully cached prompt still computes its last token: 7 of 8 blocks count
    full = _replica_with_prefix(env, 3, 8)
    assert full.cached_prefix_tokens(_prompt()) == 7 * 16


def test_a_stale_router_sees_published_snapshots_late() -> None:
    env = simpy.Environment()
    views = [View(0), View(5)]
    router = Router(
        env, views, "least_outstanding", RouterState(np.random.default_rng(0)),
        period_s=1.0, delay_s=0.25, running=lambda: env.now < 3,
    )  # fmt: skip
    seen: list[tuple[float, int]] = []

    def probe():  # type: ignore[no-untyped-def]
        for t in (0.1, 0.3, 1.1, 1.3):
            yield env.timeout(t - env.now)
            seen.append((t, router.pick(Request(0, t, 1, 1))))
            if t == 0.3:
                views[0].num_outstanding = 9  # replica 0 gets busy after the first snapshot

    env.process(probe())
    env.run()
    # before any snapshot arrives every view reads 0 (a tie: replica 0); the t=0 snapshot
    # (0 vs 5) arrives at 0.25; the t=1 one (9 vs 5) only at 1.25
    assert seen == [(0.1, 0), (0.3, 0), (1.1, 0), (1.3, 1)]


def test_publishing_needs_a_period_for_a_delay() -> None:
    with pytest.raises(ValueError, match="a delay needs a period > 0"):
        Router(simpy.Environment(), [], "random", RouterState(np.random.default_rng(0)), delay_s=1)


def _sessions(num_sessions: int = 40) -> WorkloadConfig:
    w = WorkloadConfig(kind="sessions", output=LengthConfig("uniform", low=20, high=120))
    w.sessions.num_sessions, w.sessions.session_rate_per_s = num_sessions, 4.0
    w.sessions.think_time_s, w.sessions.num_system_prompts = 2.0, 4
    return w


def test_kv_aware_beats_round_robin_where_prefixes_repeat() -> None:
    def run(policy: str):  # type: ignore[no-untyped-def]
        cfg = small_config(
            cluster=ClusterConfig(3, "H100-SXM", 1),
            workload=_sessions(),
            technique={"prefix_caching": {}},
            router=RouterConfig(policy),
        )
        r = simulate(cfg)
        return cluster_stats(r.requests, r.steps, r.transfers, r.meta), r.requests

    (kv, kv_req), (rr, rr_req) = run("kv_aware"), run("round_robin")
    assert kv["hit_ratio"] > rr["hit_ratio"] + 0.05
    ttft = [(q["first_token_at"] - q["arrival_at"]).median() for q in (kv_req, rr_req)]
    assert ttft[0] < ttft[1]
    assert rr["load_imbalance"] < 1.1  # round-robin balances requests, not cache hits


@pytest.mark.parametrize(
    "router",
    [
        RouterConfig("kv_aware"),
        RouterConfig("least_kv"),
        RouterConfig("least_tokens", publish_period_s=0.3, publish_delay_s=0.05),
        RouterConfig("kv_aware", publish_period_s=0.5),
        RouterConfig("session_affinity"),
        RouterConfig("power_of_two"),
    ],
)
def test_routing_never_depends_on_stretches(router: RouterConfig) -> None:
    """Counters read mid-stretch show what stepping would: frames equal exactly."""

    def run(fast: bool):  # type: ignore[no-untyped-def]
        cfg = small_config(
            cluster=ClusterConfig(3, "H100-SXM", 1),
            workload=_sessions(25),
            technique={"prefix_caching": {}},
            router=router,
            fast_forward=fast,
        )
        return simulate(cfg)

    a, b = run(True), run(False)
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
