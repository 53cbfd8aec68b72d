"""Builds the topology from config: Config in, replica plans and Replica processes out.

Aggregated serving: `cluster.replicas` identical replicas, each one model instance on
`cluster.tp` x `cluster.dp_attention` x `cluster.pp` GPUs of type `cluster.gpu` (layout:
sim/plan.py), with the techniques applied in listed order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import simpy

from sim.config import ClusterConfig, Config, EngineConfig
from sim.hardware import GPUSpec, ModelSpec, load_gpu, load_model
from sim.plan import (
    EngineSpec,
    PlanError,
    ReplicaPlan,
    cost_params,
    draft_cost_params,
    memory_plan,
    validate_layout,
)
from sim.replica import Replica
from sim.request import Request
from sim.step_time import Roofline
from sim.techniques import apply_techniques


def engine_spec(cfg: EngineConfig) -> EngineSpec:
    spec = EngineSpec(
        name=cfg.name,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        max_num_seqs=cfg.max_num_seqs,
        block_size=cfg.block_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        enable_chunked_prefill=cfg.enable_chunked_prefill,
        max_model_len=cfg.max_model_len,
        step_overhead_s=cfg.step_overhead_s,
        seq_overhead_s=cfg.seq_overhead_s,
        overlap_scheduling=cfg.overlap_scheduling,
        request_overhead_s=cfg.request_overhead_s,
        runtime_reserve_bytes=cfg.runtime_reserve_bytes,
        kv_reservation=cfg.kv_reservation,
    )
    checks = {
        "max_num_batched_tokens": spec.max_num_batched_tokens >= 1,
        "max_num_seqs": spec.max_num_seqs >= 1,
        "block_size": spec.block_size >= 1,
        "gpu_memory_utilization": 0 < spec.gpu_memory_utilization <= 1,
        "max_model_len": spec.max_model_len >= 0,
        "step_overhead_s": spec.step_overhead_s >= 0,
        "seq_overhead_s": spec.seq_overhead_s >= 0,
        "request_overhead_s": spec.request_overhead_s >= 0,
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
