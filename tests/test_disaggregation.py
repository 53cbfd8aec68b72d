"""xPyD disaggregation: topology parsing, pools and placement, the P->D handoff by hand,
only-missing-blocks accounting, backpressure, conservation, stretches = stepping, and the
direction of the named experiments on small cases."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import simpy

from sim.cluster import (
    Cluster,
    kv_transfer_bytes,
    parse_topology,
    pool_plan,
    pool_sizes,
    pool_technique,
)
from sim.config import (
    ClusterConfig,
    Config,
    EngineConfig,
    LinkConfig,
    ModelConfig,
    PoolConfig,
    RouterConfig,
    WorkloadConfig,
)
from sim.kv_cache import KVCache
from sim.link import Network
from sim.metrics import SLO, Summary, cluster_stats, summarize
from sim.plan import PlanError, ReplicaPlan
from sim.replica import Replica
from sim.request import Request
from sim.scheduler import Scheduler
from sim.simulate import Driver, DriverHooks, SimResult, simulate
from tests.factories import LinearStepModel, plan, small_config

KV_8B = 32 * 8 * 128 * 2 * 2  # Llama-3.1-8B bf16 KV bytes per token (all layers, K and V)

# -- topology notation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sizes"),
    [("2P4D", (2, 4)), ("1p1d", (1, 1)), (" 3P1D ", (3, 1)), ("12P30D", (12, 30))],
)
def test_xpyd_notation(text: str, sizes: tuple[int, int]) -> None:
    assert parse_topology(text) == sizes
    assert parse_topology("aggregated") is None


@pytest.mark.parametrize("text", ["0P1D", "2P0D", "P4D", "2P", "2X4D", "2P4D1", "", "disagg"])
def test_bad_topology_strings_are_clear_errors(text: str) -> None:
    with pytest.raises(PlanError, match="use aggregated, xPyD with x, y >= 1"):
        parse_topology(text)


def test_explicit_pools_and_contradictions() -> None:
    c = ClusterConfig(topology="disaggregated", prefill=PoolConfig(2), decode=PoolConfig(3))
    assert pool_sizes(c) == (2, 3)
    with pytest.raises(PlanError, match=r"prefill.replicas and cluster.decode.replicas >= 1"):
        pool_sizes(ClusterConfig(topology="disaggregated"))
    with pytest.raises(PlanError, match=r"cluster\.decode\.replicas=3 contradicts"):
        pool_sizes(ClusterConfig(topology="1P2D", decode=PoolConfig(3)))
    assert pool_sizes(ClusterConfig()) is None  # aggregated is the default


def test_a_bad_topology_fails_the_run_with_its_message() -> None:
    with pytest.raises(PlanError, match=r"cluster\.topology='2PD'"):
        simulate(small_config(cluster=ClusterConfig(topology="2PD")))


# -- pools, placement, links -------------------------------------------------------------------


def test_heterogeneous_pools_and_pool_techniques() -> None:
    cfg = small_config(
        cluster=ClusterConfig(
            1,
            "H100-SXM",
            1,
            topology="1P2D",
            prefill=PoolConfig(gpu="B200"),
            decode=PoolConfig(gpu="H200", tp=2, technique={"quantization": {"kv_cache": "fp8"}}),
        ),
        technique={"prefix_caching": {}},
    )
    p, d = pool_plan(cfg, cfg.cluster.prefill), pool_plan(cfg, cfg.cluster.decode)
    assert (p.gpu.name, p.tp, p.kv_format, p.prefix_caching) == ("B200", 1, "bf16", True)
    assert (d.gpu.name, d.tp, d.kv_format, d.prefix_caching) == ("H200", 2, "fp8", True)
    assert pool_technique({"a": 1, "b": 2}, {"b": None, "c": 3}) == {"a": 1, "c": 3}
    cfg.workload.num_requests = 40
    result = simulate(cfg)
    assert result.meta["num_gpus"] == 1 + 2 * 2 and result.meta["replicas"] == 3
    assert result.meta["gpu"] == "B200 (prefill) / H200 (decode)"
    assert {x["kind"] for x in result.meta["links"]} == {"rdma"}  # one GPU type per node
    assert set(result.transfers["kind"]) == {"rdma"}


@pytest.mark.parametrize(
    ("gpu", "tp", "topology", "placement", "kinds"),
    [
        ("H100-SXM", 4, "1P1D", "packed", {"nvlink"}),  # 4 + 4 GPUs: one HGX node
        ("H100-SXM", 4, "1P1D", "separate", {"rdma"}),
        ("H100-SXM", 4, "2P2D", "packed", {"nvlink", "rdma"}),  # node 0: P0 P1, node 1: D0 D1
        ("GB200", 4, "2P4D", "packed", {"nvlink"}),  # 24 GPUs inside one NVL72 domain
    ],
)
def test_placement_decides_nvlink_or_rdma(
    gpu: str, tp: int, topology: str, placement: str, kinds: set[str]
) -> None:
    cfg = small_config(cluster=ClusterConfig(1, gpu, tp, topology=topology, placement=placement))
    cfg.workload.num_requests = 60
    result = simulate(cfg)
    assert set(result.transfers["kind"]) <= kinds
    assert {x["kind"] for x in result.meta["links"]} <= kinds
    if placement == "packed" and topology == "2P2D":  # decode replicas sit on node 1
        assert result.meta["pools"]["decode"]["nodes"] == [1, 1]
        assert set(result.transfers["kind"]) == {"rdma"}


def test_explicit_nodes_and_their_errors() -> None:
    base = ClusterConfig(1, "H100-SXM", 4, topology="1P1D")
    cfg = small_config(cluster=dataclasses.replace(base, decode=PoolConfig(nodes=[0])))
    cfg.workload.num_requests = 20
    assert set(simulate(cfg).transfers["kind"]) == {"nvlink"}
    crowded = dataclasses.replace(
        base, prefill=PoolConfig(tp=8, nodes=[0]), decode=PoolConfig(nodes=[0])
    )
    with pytest.raises(PlanError, match="node 0 cannot hold a 4-GPU H100-SXM replica"):
        simulate(small_config(cluster=crowded))
    with pytest.raises(PlanError, match="nodes list has 2 entries for 1 replicas"):
        simulate(small_config(cluster=dataclasses.replace(base, decode=PoolConfig(nodes=[0, 1]))))


def test_transfer_bytes_count_only_the_missing_tokens() -> None:
    p = plan()  # Llama-3.1-8B, bf16 KV
    assert kv_transfer_bytes(p, 1000) == 1000 * KV_8B
    assert kv_transfer_bytes(p, 1000, 992) == 8 * KV_8B
    fp8 = dataclasses.replace(p, kv_format="fp8")
    assert kv_transfer_bytes(fp8, 1000) == 1000 * KV_8B / 2
    gpt = plan("gpt-oss-120b")  # half its layers slide over a 128-token window
    m = gpt.model
    full, sliding = m.kv_bytes_per_token(2.0), m.kv_bytes_per_token_sliding(2.0)
    assert sliding > 0
    assert kv_transfer_bytes(gpt, 1000, 900) == 100 * full + 100 * sliding
    assert kv_transfer_bytes(gpt, 1000, 0) == 1000 * full + 128 * sliding


# -- the handoff, by hand ----------------------------------------------------------------------


def pair(
    requests: list[Request],
    link: LinkConfig,
    *,
    prefix_caching: bool = False,
    decode_blocks: int = 0,
    budget: int = 8192,
    probe: Callable[[simpy.Environment, list[Replica]], object] | None = None,
) -> tuple[Replica, Replica, Driver]:
    """1P1D on separate nodes: prefill steps 10 ms + 10 us/token, decode steps 5 ms."""
    env = simpy.Environment()
    p = dataclasses.replace(plan(max_num_batched_tokens=budget), prefix_caching=prefix_caching)
    hooks = DriverHooks()
    prefill = Replica(
        env, 0, p, LinearStepModel(0.010, 1e-5), prefill_only=True, on_finish=hooks.on_finish,
        on_step_start=hooks.on_step_start if link.overlap else None,
    )  # fmt: skip
    decode = Replica(
        env, 1, p, LinearStepModel(0.005), on_finish=hooks.on_finish, on_reserve=hooks.on_reserve
    )
    if decode_blocks:
        decode.kv = KVCache(decode_blocks, 16, prefix_caching)
        decode.scheduler = Scheduler(p.engine, decode.kv)
    plans: dict[str, ReplicaPlan] = {"prefill": p, "decode": p}
    cluster = Cluster(
        [prefill, decode], [prefill], [decode], plans, [(0, False), (1, False)],
        Network(env, link.fairness), link,
    )  # fmt: skip
    driver = Driver(env, requests, cluster, RouterConfig(), np.random.default_rng(0), 0)
    hooks.driver = driver
    env.process(driver.open_loop())
    if probe is not None:
        env.process(probe(env, [prefill, decode]))  # type: ignore[arg-type]
    env.run()
    for replica in (prefill, decode):
        assert replica.kv.num_free == replica.kv.num_blocks  # every block freed, both sides
        assert not replica.scheduler.held and not replica.scheduler.num_incoming
    return prefill, decode, driver


FAST_LINK = LinkConfig(rdma_gb_s=100.0, rdma_latency_s=1e-4)  # 100 GB/s per GPU (TP1)


def test_single_request_handoff_timeline_by_hand() -> None:
    r = Request(0, 0.5, input_tokens=1000, output_tokens=5)
    pair([r], FAST_LINK)
    prefill_end = 0.5 + (0.010 + 1e-5 * 1000)
    assert r.first_token_at == prefill_end  # TTFT: the prefill replica emits the first token
    assert r.kv_transfer_start_at == prefill_end  # the idle decode replica reserves at once
    transfer_end = prefill_end + (1e-4 + 1000 * KV_8B / 100e9)
    assert r.kv_transfer_end_at == pytest.approx(transfer_end, rel=1e-12)
    t = r.kv_transfer_end_at
    for _ in range(4):  # then 4 one-token decode steps of 5 ms
        t += 0.005
    assert r.finished_at == t
    assert (r.prefill_replica, r.decode_replica, r.replica) == (0, 1, 1)
    assert r.kv_transfer_bytes == 1000 * KV_8B and r.status == "finished"


def test_one_token_requests_never_leave_the_prefill_replica() -> None:
    r = Request(0, 0.0, 64, 1)
    _, _, driver = pair([r], FAST_LINK)
    assert r.finished_at == r.first_token_at == 0.010 + 64e-5
    assert not driver.transfers and np.isnan(r.kv_transfer_start_at)


def test_layer_by_layer_overlap_ends_one_layer_after_the_prefill() -> None:
    def run(overlap: bool) -> Request:
        r = Request(0, 0.0, input_tokens=2500, output_tokens=3)
        pair([r], dataclasses.replace(FAST_LINK, overlap=overlap), budget=1024)
        return r

    plain, streamed = run(False), run(True)
    steps = [0.010 + 1e-5 * q for q in (1024, 1024, 452)]
    last_start = steps[0] + steps[1]
    prefill_end = last_start + steps[2]
    assert plain.first_token_at == streamed.first_token_at == prefill_end
    size_s = 2500 * KV_8B / 100e9
    assert plain.kv_transfer_start_at == prefill_end
    assert plain.kv_transfer_end_at == pytest.approx(prefill_end + 1e-4 + size_s, rel=1e-12)
    # streamed: starts with the last chunk; the bytes are sent by then except the last layer
    assert streamed.kv_transfer_start_at == last_start
    layer_s = size_s / 32
    assert streamed.kv_transfer_end_at == pytest.approx(prefill_end + 1e-4 + layer_s, rel=1e-12)
    assert streamed.finished_at < plain.finished_at


def test_only_missing_blocks_move_when_the_decode_side_caches_the_prefix() -> None:
    ids = tuple(range(100, 163))  # 63 hash blocks of 16 tokens
    a = Request(0, 0.0, 1000, 4, prefix_hashes=ids, hash_block_tokens=16)
    b = Request(1, 1.0, 1000, 4, prefix_hashes=ids, hash_block_tokens=16)
    c = Request(2, 2.0, 1000, 4, prefix_hashes=(*ids[:10], *range(900, 953)), hash_block_tokens=16)
    pair([a, b, c], FAST_LINK, prefix_caching=True)
    assert (a.decode_cached_tokens, a.kv_transfer_bytes) == (0, 1000 * KV_8B)
    # the decode replica indexed a's 62 full blocks: only the last 8 tokens move
    assert (b.decode_cached_tokens, b.kv_transfer_bytes) == (992, 8 * KV_8B)
    assert b.cached_tokens == 992  # and the prefill replica computed just the last block
    assert (c.decode_cached_tokens, c.kv_transfer_bytes) == (160, 840 * KV_8B)


def test_backpressure_waits_for_decode_blocks_while_prefill_holds_its_own() -> None:
    reqs = [Request(i, 0.0, 1000, 20) for i in range(2)]  # 63 blocks each; decode holds 70
    seen: list[tuple[int, int]] = []

    def probe(env: simpy.Environment, replicas: list[Replica]):  # type: ignore[no-untyped-def]
        yield env.timeout(0.05)  # both prefilled (one 2000-token step), one transfer done
        prefill, decode = replicas
        seen.append((len(prefill.scheduler.held), prefill.kv.num_used))
        seen.append((decode.scheduler.num_incoming + len(decode.scheduler.running), 0))

    pair(reqs, FAST_LINK, decode_blocks=70, probe=probe)
    first, second = sorted(reqs, key=lambda r: r.kv_transfer_start_at)
    assert first.first_token_at == second.first_token_at
    assert second.kv_transfer_start_at >= first.finished_at  # it waited for free blocks
    assert seen[0] == (1, 63)  # the waiting request's blocks stay on the prefill side
    assert seen[1][0] == 1  # the decode side runs one and queues the other


# -- whole runs -----------------------------------------------------------------------------


def test_conservation_across_the_handoff() -> None:
    cfg = small_config(cluster=ClusterConfig(1, "H100-SXM", 1, topology="2P2D"))
    cfg.workload.output = dataclasses.replace(cfg.workload.output, low=1)
    result = simulate(cfg)  # raises if a block is still held or a request unfinished
    req, steps, xfer = result.requests, result.steps, result.transfers
    assert (req["status"] == "finished").all()
    moved = req[req["output_tokens"] > 1]
    # exactly one transfer per request that decodes, none for one-token outputs
    assert sorted(xfer["request_id"]) == sorted(moved["request_id"])
    assert req.loc[req["output_tokens"] == 1, "kv_transfer_bytes"].eq(0).all()
    assert set(moved["prefill_replica"]) <= {0, 1} and set(moved["decode_replica"]) <= {2, 3}
    # prefill replicas never decode, decode replicas never prefill (nothing preempted)
    assert steps.loc[steps["replica"] < 2, "num_decode_seqs"].sum() == 0
    assert steps.loc[steps["replica"] >= 2, "num_prefill_tokens"].sum() == 0
    assert steps["num_prefill_tokens"].sum() == req["input_tokens"].sum()
    assert steps["num_output_tokens"].sum() == req["output_tokens"].sum()
    assert (moved["kv_transfer_bytes"] == moved["input_tokens"] * KV_8B).all()
    order = ["first_token_at", "kv_transfer_start_at", "kv_transfer_end_at", "finished_at"]
    assert (moved[order].diff(axis=1).iloc[:, 1:] >= 0).all(axis=None)
    stats = cluster_stats(req, steps, xfer, result.meta)
    assert stats["transfers"] == len(moved)
    assert stats["kv_gb_moved"] == pytest.approx(moved["kv_transfer_bytes"].sum() / 1e9)
    assert 0 < stats["link_util_max"] < 1 and 0 < stats["decode_util"] <= 1


def _tight() -> dict[str, object]:
    engine = EngineConfig(gpu_memory_utilization=0.25)
    return {"cluster": ClusterConfig(1, "H100-SXM", 1, topology="2P1D"), "engine": engine}


@pytest.mark.parametrize(
    "overrides",
    [
        {"cluster": ClusterConfig(1, "H100-SXM", 1, topology="2P2D")},
        {
            "cluster": ClusterConfig(1, "H100-SXM", 1, topology="1P2D"),
            "link": LinkConfig(overlap=True),
        },
        {
            "cluster": ClusterConfig(1, "H100-SXM", 1, topology="2P2D", placement="separate"),
            "link": LinkConfig(fairness="fifo", rdma_gb_s=2.0),
            "router": RouterConfig(
                "least_tokens", decode_policy="round_robin", decode_at="arrival"
            ),
        },
        _tight(),  # decode-side backpressure and preemption
        {**_tight(), "engine": EngineConfig(gpu_memory_utilization=0.25, kv_reservation="full")},
        {
            "cluster": ClusterConfig(1, "H100-SXM", 1, topology="2P2D"),
            "technique": {"prefix_caching": {}},
            "router": RouterConfig("kv_aware", publish_period_s=0.2, publish_delay_s=0.05),
            "link": LinkConfig(overlap=True),
        },
    ],
)
def test_disaggregated_stretches_give_exactly_the_numbers_of_stepping(
    overrides: dict[str, object],
) -> None:
    def run(fast: bool) -> SimResult:
        cfg = small_config(**overrides, fast_forward=fast)
        cfg.workload.output = dataclasses.replace(cfg.workload.output, low=100, high=900)
        if "technique" in overrides:
            cfg.workload.kind = "sessions"
            cfg.workload.sessions.num_sessions, cfg.workload.sessions.think_time_s = 40, 2.0
        return simulate(cfg)

    a, b = run(True), run(False)
    assert len(a.steps) > 1000 and len(a.transfers) > 100
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    pd.testing.assert_frame_equal(a.transfers, b.transfers, check_exact=True)
    engine = overrides.get("engine")
    if isinstance(engine, EngineConfig) and engine.kv_reservation == "incremental":
        assert a.requests["num_preemptions"].sum() > 0  # the decode side ran out of blocks
        waited = a.requests["kv_transfer_start_at"] - a.requests["first_token_at"]
        assert waited.max() > 1.0  # backpressure held prefilled requests


# -- the named experiments' directions, on small cases -----------------------------------------


def _azure(model: str, cluster: ClusterConfig, rate: float, **kw: object) -> Config:
    workload = WorkloadConfig(kind="trace", trace="azure_conv", end_s=300, rate_scale=rate)
    return small_config(model=ModelConfig(model), cluster=cluster, workload=workload, **kw)


def _summary(cfg: Config, slo: SLO) -> tuple[Summary, dict[str, float]]:
    r = simulate(cfg)
    return summarize(r.requests, r.steps, r.meta, slo), cluster_stats(
        r.requests, r.steps, r.transfers, r.meta
    )


def test_crossover_disaggregation_costs_at_low_load_and_wins_at_high_load() -> None:
    slo = SLO(1.0, 0.015)
    cl = ClusterConfig(4, "H100-SXM", 1, placement="separate")
    pd2 = dataclasses.replace(cl, topology="2P2D")
    (agg_lo, _), (dis_lo, _) = (_summary(_azure("Llama-3.1-8B", c, 4), slo) for c in (cl, pd2))
    (agg_hi, _), (dis_hi, _) = (_summary(_azure("Llama-3.1-8B", c, 16), slo) for c in (cl, pd2))
    # low load: nothing to gain (all within SLO) and half the replicas per phase cost TTFT
    assert agg_lo.goodput_fraction >= 0.99 and dis_lo.goodput_fraction >= 0.99
    assert dis_lo.ttft_s.p99 > agg_lo.ttft_s.p99
    # high load: prefill chunks stretch aggregated decode steps; the decode pool stays clean
    assert dis_hi.itl_s.p99 < 0.5 * agg_hi.itl_s.p99
    assert dis_hi.tpot_s.p99 < agg_hi.tpot_s.p99
    assert dis_hi.goodput_fraction > agg_hi.goodput_fraction + 0.05


def test_xpyd_ratio_balanced_pools_serve_the_most() -> None:
    slo = SLO(1.0, 0.015)
    runs = {
        t: _summary(_azure("Llama-3.1-8B", ClusterConfig(4, "H100-SXM", 1, topology=t), 16), slo)[0]
        for t in ("1P3D", "2P2D", "3P1D")
    }
    good = {t: s.goodput_fraction for t, s in runs.items()}
    assert good["2P2D"] > max(good["1P3D"], good["3P1D"])
    # too few prefill replicas: TTFT; too few decode replicas: TPOT
    assert runs["1P3D"].ttft_s.p99 == max(s.ttft_s.p99 for s in runs.values())
    assert runs["3P1D"].tpot_s.p99 == max(s.tpot_s.p99 for s in runs.values())


def test_fp8_kv_halves_transfer_time_and_doubles_decode_capacity() -> None:
    def run(kv: str, rate: float) -> tuple[Summary, dict[str, float], int]:
        quant = {"weights": "bf16", "activations": "bf16", "kv_cache": kv}
        cl = ClusterConfig(1, "H100-SXM", 4, topology="3P1D", placement="separate")
        cfg = _azure("Llama-3.1-70B", cl, rate, technique={"quantization": quant})
        r = simulate(cfg)
        s = summarize(r.requests, r.steps, r.meta)
        capacity = r.meta["pools"]["decode"]["kv_capacity_tokens_per_replica"]
        return s, cluster_stats(r.requests, r.steps, r.transfers, r.meta), capacity

    (_, bf_lo, cap_bf), (_, fp_lo, cap_fp) = run("bf16", 4), run("fp8", 4)
    assert cap_fp > 1.9 * cap_bf
    assert 0.4 < fp_lo["transfer_p50_ms"] / bf_lo["transfer_p50_ms"] < 0.6
    assert fp_lo["kv_gb_moved"] == pytest.approx(bf_lo["kv_gb_moved"] / 2, rel=0.02)
    (bf_hi, _, _), (fp_hi, _, _) = run("bf16", 8), run("fp8", 8)
    assert fp_hi.tpot_s.p99 < bf_hi.tpot_s.p99


def test_the_cluster_experiments_compose() -> None:
    from experiments.run_experiment import variants
    from tests.test_cli import compose_with

    assert [v.label for v in variants("pd_crossover")][:2] == [
        "aggregated rate_scale=2",
        "aggregated rate_scale=4",
    ]
    assert len(variants("kv_routing")) == 18 and len(variants("xpyd_ratio")) == 8
    assert "fp8_kv rate_scale=8" in [v.label for v in variants("fp8_kv_disagg")]
    cfg = compose_with(["+experiment=fp8_kv_disagg"])
    assert (cfg.cluster.topology, cfg.cluster.tp, cfg.cluster.placement) == ("3P1D", 4, "separate")
    cfg = compose_with(["+experiment=kv_routing", "workload=sessions", "router=kv_aware"])
    assert cfg.workload.kind == "sessions" and cfg.workload.sessions.session_rate_per_s == 10.0
    assert list(cfg.technique) == ["quantization", "prefix_caching"]
    for option in ("aggregated", "1p1d", "1p3d", "2p2d", "3p1d", "2p4d", "b200p_h200d"):
        assert compose_with([f"topology={option}"]).cluster.topology.lower() in (option, "2p4d")
    cfg = compose_with(["cluster.topology=2P4D", "link.fairness=fifo", "link.overlap=true"])
    assert pool_sizes(cfg.cluster) == (2, 4) and cfg.link.fairness == "fifo"
