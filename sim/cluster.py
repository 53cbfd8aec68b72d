"""Builds the topology from config: Config in, replica plans, Replica processes and links out.

Aggregated serving: `cluster.replicas` identical replicas, each one model instance on
`cluster.tp` x `cluster.dp_attention` x `cluster.pp` GPUs of type `cluster.gpu` (layout:
sim/plan.py), with the techniques applied in listed order.

Disaggregated serving (`cluster.topology`: `xPyD`, e.g. 1P1D or 2P4D, or `disaggregated` with
`cluster.prefill.replicas` / `cluster.decode.replicas`): x prefill replicas (indices 0..x-1)
and y decode replicas (x..x+y-1). Each pool inherits cluster.gpu / tp / pp / ep /
dp_attention unless its `PoolConfig` sets them, and its techniques are the top-level ones
with the pool's entries replacing those of the same name (null removes one), so pools can be
heterogeneous (prefill on B200, decode on H200; FP8 KV on one side only changes that side's
memory, the bytes sent are in the sender's format).

Placement: nodes are scale-up domains of `scaleup_domain_gpus` GPUs of one type (8 for HGX
H100/B200, 72 for GB200 NVL72). `packed` fills them in order, prefill replicas first;
`separate` starts the decode pool on a fresh node; a pool's `nodes` list names each
replica's node explicitly. A replica larger than a node spans whole nodes of its own.

KV links (sim/link.py): a transfer from prefill replica p to decode replica d goes over
NVLink when both sit in one node, else over the GPUs' NICs (RDMA). Each replica has one
port per kind (prefill: egress, decode: ingress) of n_gpus x per-GPU bandwidth (every GPU
sends its own KV shard over its own link): `link.nvlink_gb_s` or the profile's scale-up
bandwidth, `link.rdma_gb_s` or the profile's NIC line rate; a transfer's path is (p's
egress, d's ingress) with the kind's latency. Bytes moved (`kv_transfer_bytes`): the KV of
the prompt tokens the decode replica does not already cache, at the sender's KV format: full-
attention layers for every such token, sliding-window layers for at most the window. KV
replicated over TP ranks (MLA, tp > kv heads) is counted once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from sim.config import ClusterConfig, Config, EngineConfig, LinkConfig, PoolConfig
from sim.hardware import GPUSpec, ModelSpec, load_gpu, load_model
from sim.link import Link, Network
from sim.plan import (
    KV_RESERVATIONS,
    MXFP4_MOE_LAYOUTS,
    SAMPLING_MODES,
    EngineSpec,
    PlanError,
    ReplicaPlan,
    cost_params,
    draft_cost_params,
    fmt,
    memory_plan,
    validate_layout,
)
from sim.replica import Replica
from sim.request import Request
from sim.scheduler import StepPlan
from sim.step_time import Roofline
from sim.techniques import apply_techniques


def engine_spec(cfg: EngineConfig) -> EngineSpec:
    spec = EngineSpec(**dataclasses.asdict(cfg))  # the same fields, frozen
    choices = {
        "kv_memory_basis": ("total", "free"),
        "kv_reservation": KV_RESERVATIONS,
        "mxfp4_moe_layout": MXFP4_MOE_LAYOUTS,
        "sampling": SAMPLING_MODES,
    }
    for key, allowed in choices.items():
        if getattr(spec, key) not in allowed:
            raise PlanError(f"engine.{key}={getattr(spec, key)!r}: use {' or '.join(allowed)}")
    checks = {
        "max_num_batched_tokens": spec.max_num_batched_tokens >= 1,
        "max_num_seqs": spec.max_num_seqs >= 1,
        "block_size": spec.block_size >= 1,
        "gpu_memory_utilization": 0 < spec.gpu_memory_utilization <= 1,
        "max_model_len": spec.max_model_len >= 0,
        "step_overhead_s": spec.step_overhead_s >= 0,
        "inflight_overhead_s": spec.inflight_overhead_s >= 0,
        "request_overhead_s": spec.request_overhead_s >= 0,
        "batch_wait_steps": spec.batch_wait_steps >= 0,
        "batch_wait_tokens_ratio": 0 <= spec.batch_wait_tokens_ratio <= 1,
        "num_scheduler_steps": spec.num_scheduler_steps >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise PlanError(f"engine.{key}={getattr(spec, key)} is out of range")
    return spec


def build_plan(cfg: Config) -> ReplicaPlan:
    """One replica's plan: profiles, checkpoint formats, layout, then techniques in order."""
    model = load_model(cfg.model.name)
    gpu = load_gpu(cfg.cluster.gpu)
    return layout_plan(model, gpu, engine_spec(cfg.engine), cfg.cluster, cfg.technique)


def layout_plan(
    model: ModelSpec,
    gpu: GPUSpec,
    engine: EngineSpec,
    cluster: ClusterConfig,
    technique: Mapping[str, Any],
) -> ReplicaPlan:
    """`build_plan` from loaded profiles (the planner evaluates many layouts this way)."""
    base = model.checkpoint_dtype
    plan = ReplicaPlan(
        model=model,
        gpu=gpu,
        engine=engine,
        tp=cluster.tp,
        pp=cluster.pp,
        ep=cluster.ep,
        dp_attention=cluster.dp_attention,
        ep_skew=cluster.ep_skew,
        weight_format=base,
        expert_format=model.expert_dtype,
        activation_format=base,
        kv_format=base,
    )
    validate_layout(plan)
    plan = apply_techniques(plan, technique)
    memory_plan(plan)  # fail early if it does not fit
    cost_params(plan)
    return plan


def build_replicas(
    env: simpy.Environment,
    cfg: Config,
    plan: ReplicaPlan,
    on_finish: Callable[[Request], None] | None = None,
) -> list[Replica]:
    if cfg.cluster.replicas < 1:
        raise PlanError(f"cluster.replicas must be >= 1, got {cfg.cluster.replicas}")
    model = Roofline(cost_params(plan))
    draft_params = draft_cost_params(plan)
    draft = Roofline(draft_params) if draft_params is not None else None
    max_steps = 4096 if cfg.fast_forward else 1
    return [
        Replica(
            env,
            i,
            plan,
            model,
            max_stretch_steps=max_steps,
            on_finish=on_finish,
            draft_model=draft,
            rng=np.random.default_rng([cfg.seed, i]),  # per-replica stream (speculation)
        )
        for i in range(cfg.cluster.replicas)
    ]


# -- disaggregated topologies ---------------------------------------------------------------

TOPOLOGY_PATTERN = re.compile(r"(\d+)P(\d+)D", re.IGNORECASE)
PLACEMENTS = ("packed", "separate")


def parse_topology(text: str) -> tuple[int, int] | None:
    """'aggregated' -> None; 'xPyD' -> (x, y) with x, y >= 1 ('2P4D' -> (2, 4))."""
    t = text.strip()
    if t.lower() == "aggregated":
        return None
    m = TOPOLOGY_PATTERN.fullmatch(t)
    if m is None or int(m[1]) < 1 or int(m[2]) < 1:
        raise PlanError(
            f"cluster.topology={text!r}: use aggregated, xPyD with x, y >= 1 prefill and "
            f"decode replicas (1P1D, 2P4D), or disaggregated with cluster.prefill.replicas "
            f"and cluster.decode.replicas"
        )
    return int(m[1]), int(m[2])


def pool_sizes(cluster: ClusterConfig) -> tuple[int, int] | None:
    """(prefill, decode) replica counts, or None for aggregated serving."""
    if cluster.topology.strip().lower() == "disaggregated":
        x, y = cluster.prefill.replicas, cluster.decode.replicas
        if x < 1 or y < 1:
            raise PlanError(
                f"cluster.topology=disaggregated needs cluster.prefill.replicas and "
                f"cluster.decode.replicas >= 1, got {x} and {y}"
            )
        return x, y
    sizes = parse_topology(cluster.topology)
    if sizes is None:
        return None
    for name, pool, n in (
        ("prefill", cluster.prefill, sizes[0]),
        ("decode", cluster.decode, sizes[1]),
    ):
        if pool.replicas not in (0, n):
            raise PlanError(
                f"cluster.{name}.replicas={pool.replicas} contradicts "
                f"cluster.topology={cluster.topology} ({n})"
            )
    return sizes


def pool_technique(base: Mapping[str, Any], pool: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level techniques with the pool's entries replacing (null: removing) theirs."""
    merged = dict(base)
    for name, params in pool.items():
        if params is None:
            merged.pop(name, None)
        else:
            merged[name] = params
    return merged


def pool_plan(cfg: Config, pool: PoolConfig) -> ReplicaPlan:
    """One replica's plan in a pool: the cluster's layout with the pool's overrides."""
    c = cfg.cluster
    layout = dataclasses.replace(
        c,
        gpu=pool.gpu or c.gpu,
        tp=pool.tp or c.tp,
        pp=pool.pp or c.pp,
        ep=pool.ep or c.ep,
        dp_attention=pool.dp_attention or c.dp_attention,
    )
    model = load_model(cfg.model.name)
    gpu = load_gpu(layout.gpu)
    technique = pool_technique(cfg.technique, pool.technique)
    return layout_plan(model, gpu, engine_spec(cfg.engine), layout, technique)


def kv_transfer_bytes(plan: ReplicaPlan, tokens: int, cached_tokens: int = 0) -> float:
    """KV bytes of `tokens` prompt tokens of which the receiver caches the first
    `cached_tokens`: full-attention layers for each missing token, sliding-window layers for
    the missing ones inside the window (the last `sliding_window` tokens)."""
    m = plan.model
    b = fmt(plan.kv_format).bytes_per_element
    missing = max(tokens - cached_tokens, 0)
    window = min(missing, m.sliding_window) if m.sliding_window else 0
    return m.kv_bytes_per_token(b) * missing + m.kv_bytes_per_token_sliding(b) * window


def place(
    plans: list[ReplicaPlan], counts: list[int], placement: str, nodes: list[list[int]]
) -> list[tuple[int, bool]]:
    """(node, spans several nodes) of each replica, pools in order (see the docstring)."""
    if placement not in PLACEMENTS:
        raise PlanError(f"cluster.placement={placement!r}: use one of {', '.join(PLACEMENTS)}")
    out: list[tuple[int, bool]] = []
    used: dict[int, tuple[str, int]] = {}  # node -> (GPU type, GPUs taken)
    for pool, (plan, count, explicit) in enumerate(zip(plans, counts, nodes, strict=True)):
        gpus, domain, kind = plan.num_gpus, plan.gpu.scaleup_domain_gpus, plan.gpu.name
        if explicit and len(explicit) != count:
            raise PlanError(f"a pool's nodes list has {len(explicit)} entries for {count} replicas")
        spans = gpus > domain  # takes whole nodes of its own
        for i in range(count):
            fresh = pool > 0 and i == 0 and placement == "separate"
            node = explicit[i] if explicit else _next_node(used, kind, gpus, domain, fresh)
            kind_used, taken = used.get(node, (kind, 0))
            if kind_used != kind or (taken and spans) or taken + gpus > max(domain, gpus):
                raise PlanError(
                    f"node {node} cannot hold a {gpus}-GPU {kind} replica (it has {taken} "
                    f"{kind_used} GPUs of {domain} in its scale-up domain)"
                )
            for extra in range(-(-gpus // domain) if spans else 1):
                used[node + extra] = (kind, domain if spans else taken + gpus)
            out.append((node, spans))
    return out


def _next_node(
    used: dict[int, tuple[str, int]], kind: str, gpus: int, domain: int, fresh: bool
) -> int:
    """Packed placement: the last node if the replica fits there, else a new one."""
    last = max(used, default=-1)
    if last < 0 or fresh:
        return last + 1
    kind_used, taken = used[last]
    return last if kind_used == kind and taken + gpus <= domain else last + 1


@dataclass
class Cluster:
    """The replicas of one run; `prefill`/`decode` are empty for aggregated serving."""

    replicas: list[Replica]
    prefill: list[Replica]
    decode: list[Replica]
    plans: dict[str, ReplicaPlan]  # "replica" (aggregated) or "prefill" and "decode"
    placement: list[tuple[int, bool]]  # (node, spans nodes) per replica
    network: Network | None
    link: LinkConfig

    @property
    def disaggregated(self) -> bool:
        return bool(self.prefill)

    def path(self, prefill: Replica, decode: Replica) -> tuple[Link, Link]:
        """The links a transfer from `prefill` to `decode` crosses (made on first use)."""
        (pn, ps), (dn, ds) = self.placement[prefill.index], self.placement[decode.index]
        kind = "nvlink" if pn == dn and not (ps or ds) else "rdma"
        return self._port(prefill, "out", kind), self._port(decode, "in", kind)

    def _port(self, replica: Replica, side: str, kind: str) -> Link:
        key = (replica.index, side, kind)
        ports = self._ports
        if key not in ports:
            gpu, cfg = replica.plan.gpu, self.link
            if kind == "nvlink":
                per_gpu = cfg.nvlink_gb_s * 1e9 or gpu.scaleup_bw_bytes_per_s
                latency = cfg.nvlink_latency_s
            else:
                per_gpu = cfg.rdma_gb_s * 1e9 or gpu.nic_bw_bytes_per_s
                latency = cfg.rdma_latency_s
            name = f"{kind}-{side}-{replica.index}"
            ports[key] = Link(name, kind, per_gpu * replica.plan.num_gpus, latency)
        return ports[key]

    @property
    def links(self) -> list[Link]:
        return list(self._ports.values())

    def __post_init__(self) -> None:
        self._ports: dict[tuple[int, str, str], Link] = {}


def _replica_factory(env: simpy.Environment, cfg: Config) -> Callable[..., Replica]:
    max_steps = 4096 if cfg.fast_forward else 1

    def make(index: int, plan: ReplicaPlan, **hooks: Any) -> Replica:
        draft_params = draft_cost_params(plan)
        return Replica(
            env,
            index,
            plan,
            Roofline(cost_params(plan)),
            max_stretch_steps=max_steps,
            draft_model=Roofline(draft_params) if draft_params is not None else None,
            rng=np.random.default_rng([cfg.seed, index]),  # per-replica stream (speculation)
            **hooks,
        )

    return make


def build_cluster(
    env: simpy.Environment,
    cfg: Config,
    on_finish: Callable[[Request], None] | None = None,
    on_reserve: Callable[[Request, float], None] | None = None,
    on_step_start: Callable[[StepPlan, float, float], None] | None = None,
) -> Cluster:
    """Aggregated replicas, or prefill and decode pools with their KV links."""
    sizes = pool_sizes(cfg.cluster)
    if sizes is None:
        plan = build_plan(cfg)
        replicas = build_replicas(env, cfg, plan, on_finish)
        spots = [(i, False) for i in range(len(replicas))]
        return Cluster(replicas, [], [], {"replica": plan}, spots, None, cfg.link)
    x, y = sizes
    c = cfg.cluster
    plans = {"prefill": pool_plan(cfg, c.prefill), "decode": pool_plan(cfg, c.decode)}
    placement = place(
        [plans["prefill"], plans["decode"]], [x, y], c.placement, [c.prefill.nodes, c.decode.nodes]
    )
    make = _replica_factory(env, cfg)
    step_hook = on_step_start if cfg.link.overlap else None
    prefill = [
        make(i, plans["prefill"], on_finish=on_finish, prefill_only=True, on_step_start=step_hook)
        for i in range(x)
    ]
    decode = [
        make(x + j, plans["decode"], on_finish=on_finish, on_reserve=on_reserve) for j in range(y)
    ]
    network = Network(env, cfg.link.fairness)
    return Cluster(prefill + decode, prefill, decode, plans, placement, network, cfg.link)
