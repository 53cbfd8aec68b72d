"""Small factories for tests: plans, replicas on a fresh SimPy environment, requests."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import simpy

from sim.config import ClusterConfig, Config, LengthConfig, ModelConfig, WorkloadConfig
from sim.hardware import load_gpu, load_model
from sim.plan import EngineSpec, ReplicaPlan
from sim.replica import Replica
from sim.request import Request


def plan(
    model: str = "Llama-3.1-8B",
    gpu: str = "H100-SXM",
    tp: int = 1,
    **engine: object,
) -> ReplicaPlan:
    spec = dataclasses.replace(EngineSpec(step_overhead_s=0.0), **engine)  # type: ignore[arg-type]
    m = load_model(model)
    return ReplicaPlan(
        load_model(model),
        load_gpu(gpu),
        spec,
        tp=tp,
        weight_format=m.checkpoint_dtype,
        expert_format=m.expert_dtype,
        activation_format=m.checkpoint_dtype,
        kv_format=m.checkpoint_dtype,
    )


class LinearStepModel:
    """A step takes a + b·T seconds (T = tokens in the step); attention is free."""

    def __init__(self, a: float, b: float = 0.0) -> None:
        self.a, self.b = a, b

    def token_seconds(self, num_tokens: int, num_samples: int) -> float:
        return self.a + self.b * num_tokens

    def attention_seconds(self, num_tokens, pairs, read, pairs_w, read_w, pp=0, pt=0):  # type: ignore[no-untyped-def]
        return 0.0 * pairs

    def decode_seconds(self, fixed_s, num_tokens, contexts, verify, pairs_extra):  # type: ignore[no-untyped-def]
        return [fixed_s + 0.0 * (verify * x + pairs_extra) for x in contexts]


def run_requests(
    replica_plan: ReplicaPlan,
    model: object,
    requests: Sequence[Request],
    *,
    max_stretch_steps: int = 4096,
) -> Replica:
    """Submit each request at its arrival time to one replica and run to completion."""
    env = simpy.Environment()
    replica = Replica(env, 0, replica_plan, model, max_stretch_steps=max_stretch_steps)  # type: ignore[arg-type]

    def feed():  # type: ignore[no-untyped-def]
        for r in sorted(requests, key=lambda r: r.arrival_at):
            if r.arrival_at > env.now:
                yield env.timeout(r.arrival_at - env.now)
            replica.submit(r)

    env.process(feed())
    env.run()
    return replica


def small_config(**overrides: object) -> Config:
    """Llama-3.1-8B on one H100, a short synthetic workload, no progress bar."""
    workload = WorkloadConfig(
        kind="synthetic",
        num_requests=200,
        arrival="poisson",
        rate_per_s=20.0,
        input=LengthConfig("uniform", low=100, high=2000),
        output=LengthConfig("uniform", low=1, high=300),
    )
    cfg = Config(
        model=ModelConfig("Llama-3.1-8B"),
        cluster=ClusterConfig(replicas=1, gpu="H100-SXM", tp=1),
        workload=workload,
        progress=False,
        write_plots=False,
    )
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


def load_script(name: str) -> ModuleType:
    """A script of benchmarks/ (not a package) imported as a module, for its functions."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses of the script look their module up here
    spec.loader.exec_module(module)
    return module
