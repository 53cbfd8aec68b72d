"""KV links: hand-computed transfer times, fair share vs FIFO, paths of two links, overlap."""

from __future__ import annotations

import pytest
import simpy

from sim.link import Link, Network, Transfer

GB = 1e9


def run(fairness: str, jobs: list[tuple[tuple[Link, ...], float, float, float]]) -> list[Transfer]:
    """Start each (links, bytes, start_at, not_before) at its time; run; the transfers."""
    env = simpy.Environment()
    net = Network(env, fairness)
    done: list[Transfer] = []
    out: list[Transfer] = []

    def feed():  # type: ignore[no-untyped-def]
        for links, num_bytes, start_at, not_before in sorted(jobs, key=lambda j: j[2]):
            if start_at > env.now:
                yield env.timeout(start_at - env.now)
            out.append(net.start(links, num_bytes, start_at, done.append, not_before))

    env.process(feed())
    env.run()
    assert sorted(t.index for t in done) == list(range(len(jobs)))  # each ends exactly once
    return out


def test_a_lone_transfer_takes_latency_plus_bytes_over_bandwidth() -> None:
    link = Link("l", "rdma", 50 * GB, 1e-4)
    (t,) = run("fair", [((link,), 2 * GB, 1.0, 0.0)])
    assert t.ready_at == pytest.approx(1.0 + 1e-4, abs=1e-15)
    assert t.end_at == pytest.approx(1.0 + 1e-4 + 2 / 50, rel=1e-12)


def test_two_concurrent_transfers_share_a_link_fairly() -> None:
    link = Link("l", "rdma", 10 * GB, 0.001)
    a, b = run("fair", [((link,), 1 * GB, 0.0, 0.0), ((link,), 1 * GB, 0.0, 0.0)])
    # both move at 5 GB/s: latency + 2 x bytes / bandwidth
    assert a.end_at == pytest.approx(0.001 + 2 * 0.1, rel=1e-12)
    assert b.end_at == pytest.approx(a.end_at, rel=1e-12)


def test_fair_share_recomputes_rates_when_a_transfer_joins() -> None:
    link = Link("l", "nvlink", 1 * GB, 0.0)
    # A alone for 0.5 s (half done), then A and B at 0.5 GB/s each: both end at 1.5 s
    a, b = run("fair", [((link,), 1 * GB, 0.0, 0.0), ((link,), 0.5 * GB, 0.5, 0.0)])
    assert a.end_at == pytest.approx(1.5, rel=1e-12)
    assert b.end_at == pytest.approx(1.5, rel=1e-12)


def test_fifo_serves_in_order() -> None:
    link = Link("l", "nvlink", 1 * GB, 0.0)
    a, b = run("fifo", [((link,), 1 * GB, 0.0, 0.0), ((link,), 0.5 * GB, 0.5, 0.0)])
    assert a.end_at == pytest.approx(1.0, rel=1e-12)  # A keeps the whole link
    assert b.end_at == pytest.approx(1.5, rel=1e-12)  # B waits for it, then runs alone


def test_max_min_fairness_over_paths() -> None:
    # A crosses a fast and a slow link, B only the fast one: A is held to the slow link's
    # 0.5 GB/s and B gets the fast link's remaining 1.5 GB/s (not the equal split of 1.0)
    fast, slow = Link("fast", "rdma", 2 * GB, 0.0), Link("slow", "rdma", 0.5 * GB, 0.0)
    a, b = run("fair", [((fast, slow), 1 * GB, 0.0, 0.0), ((fast,), 3 * GB, 0.0, 0.0)])
    assert a.end_at == pytest.approx(2.0, rel=1e-12)
    # B: 1.5 GB/s for 2 s (3 GB) -> done at 2.0 as well
    assert b.end_at == pytest.approx(2.0, rel=1e-12)


def test_not_before_holds_the_end_until_the_last_layer() -> None:
    link = Link("l", "rdma", 10 * GB, 0.0)
    (t,) = run("fair", [((link,), 1 * GB, 0.0, 0.35)])
    assert t.sent_at == pytest.approx(0.1, rel=1e-12)  # bytes done early ...
    assert t.end_at == 0.35  # ... but the KV is usable only after the prefill's last layer


def test_zero_bytes_cost_the_latency_and_bad_fairness_is_an_error() -> None:
    link = Link("l", "rdma", 10 * GB, 0.002)
    (t,) = run("fifo", [((link,), 0.0, 0.5, 0.0)])
    assert t.end_at == pytest.approx(0.502, rel=1e-12)
    with pytest.raises(ValueError, match=r"link\.fairness='round_robin': use one of fair, fifo"):
        Network(simpy.Environment(), "round_robin")
