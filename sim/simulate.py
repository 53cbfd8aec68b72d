"""simulate(cfg): a Config in, per-request and per-step frames (plus run facts) out.

Builds the workload (a real trace slice or a synthetic one), the replicas and the router,
runs SimPy until every request has finished or been rejected, and returns data. It
writes no files and collects no metrics: `sim.metrics` derives those from the frames.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import simpy
from omegaconf import DictConfig, OmegaConf

from sim.cluster import build_plan, build_replicas
from sim.config import Config, LengthConfig, WorkloadConfig
from sim.plan import memory_plan
from sim.replica import STEP_COLUMNS, Replica
from sim.request import Request, request_rows
from sim.router import RouterState, get_policy
from sim.trace import (
    BUNDLED_FILES,
    LengthDist,
    LengthPairs,
    Trace,
    bundled,
    load_trace,
    sessions,
    synthetic,
)


@dataclass(frozen=True)
class SimResult:
    requests: pd.DataFrame
    steps: pd.DataFrame
    meta: dict[str, Any]


def to_config(cfg: Config | DictConfig) -> Config:
    if isinstance(cfg, Config):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, Config)
    return obj


def _resolve(name: str) -> Path:
    return bundled(name) if name in BUNDLED_FILES else Path(name)


def _length_dist(cfg: LengthConfig, what: str) -> LengthDist:
    if cfg.kind == "fixed":
        return LengthDist.fixed(cfg.value)
    if cfg.kind == "uniform":
        return LengthDist.uniform(cfg.low, cfg.high)
    raise ValueError(
        f"workload.{what}.kind={cfg.kind!r}: use fixed or uniform here, or set "
        f"workload.lengths_file for empirical (input, output) pairs"
    )


def build_trace(cfg: WorkloadConfig, rng: np.random.Generator) -> Trace:
    """The workload as a Trace: a (windowed, rate-scaled) file, or a synthetic draw."""
    if cfg.kind == "trace":
        trace = load_trace(_resolve(cfg.trace))
        if cfg.start_s or cfg.end_s is not None:
            end = float("inf") if cfg.end_s is None else cfg.end_s
            trace = trace.window(cfg.start_s, end)
    elif cfg.kind == "synthetic":
        if cfg.lengths_file:
            pairs = LengthPairs.from_csv(_resolve(cfg.lengths_file))
            trace = synthetic(
                cfg.num_requests,
                rng,
                arrival=cfg.arrival,
                rate_per_s=cfg.rate_per_s,
                gamma_cv=cfg.gamma_cv,
                pairs=pairs,
            )
        else:
            trace = synthetic(
                cfg.num_requests,
                rng,
                arrival=cfg.arrival,
                rate_per_s=cfg.rate_per_s,
                gamma_cv=cfg.gamma_cv,
                input_dist=_length_dist(cfg.input, "input"),
                output_dist=_length_dist(cfg.output, "output"),
            )
    elif cfg.kind == "sessions":
        sc = cfg.sessions
        trace = sessions(
            sc.num_sessions,
            _length_dist(sc.turns, "sessions.turns"),
            rng,
            system_prompt_tokens=sc.system_prompt_tokens,
            num_system_prompts=sc.num_system_prompts,
            user_tokens=_length_dist(sc.user_tokens, "sessions.user_tokens"),
            output_tokens=_length_dist(cfg.output, "output"),
            think_time_s=sc.think_time_s,
            session_rate_per_s=sc.session_rate_per_s,
            hash_block_tokens=sc.hash_block_tokens,
            stable_prefix_first=sc.stable_prefix_first,
        )
    else:
        raise ValueError(f"workload.kind={cfg.kind!r}: use trace, synthetic or sessions")
    if cfg.rate_scale != 1.0:
        trace = trace.scale_rate(cfg.rate_scale)
    if cfg.max_requests is not None:
        trace = trace.head(cfg.max_requests)
    if len(trace) == 0:
        raise ValueError(f"the workload is empty ({trace.source}); widen the time window")
    return trace


def make_requests(trace: Trace) -> list[Request]:
    hashes = trace.prefix_hashes
    return [
        Request(
            i,
            float(trace.arrival_s[i]),
            int(trace.input_tokens[i]),
            int(trace.output_tokens[i]),
            int(trace.session_id[i]),
            hashes[i] if hashes is not None else None,
            trace.hash_block_tokens,
        )
        for i in range(len(trace))
    ]


class Driver:
    """Feeds requests to the router: at trace times (open loop) or N in flight (closed)."""

    def __init__(
        self,
        env: simpy.Environment,
        requests: list[Request],
        replicas: list[Replica],
        policy_name: str,
        rng: np.random.Generator,
        concurrency: int,
    ) -> None:
        self.env = env
        self.requests = requests
        self.replicas = replicas
        self.policy = get_policy(policy_name)
        self.state = RouterState(rng)
        self.concurrency = concurrency
        self.in_flight = 0
        self._slot: simpy.Event | None = None

    def route(self, request: Request) -> None:
        index = self.policy(self.replicas, request, self.state)
        self.replicas[index].submit(request)
        if request.status == "rejected":
            self.done(request)

    def done(self, request: Request) -> None:
        self.in_flight -= 1
        if self._slot is not None and not self._slot.triggered:
            self._slot.succeed()

    def open_loop(self) -> Generator[simpy.Event, None, None]:
        env = self.env
        for request in self.requests:
            wait = request.arrival_at - env.now
            if wait > 0:
                yield env.timeout(wait)
            self.in_flight += 1
            self.route(request)

    def closed_loop(self) -> Generator[simpy.Event, None, None]:
        env = self.env
        for request in self.requests:
            while self.in_flight >= self.concurrency:
                self._slot = env.event()
                yield self._slot
                self._slot = None
            request.arrival_at = env.now
            self.in_flight += 1
            self.route(request)


def _run(env: simpy.Environment, horizon_s: float, progress: bool) -> None:
    """Run to the end. The cyclic garbage collector is paused meanwhile: the run allocates
    many long-lived objects and no cycles, and its scans would grow with the request count."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        _run_to_end(env, horizon_s, progress)
    finally:
        if enabled:
            gc.enable()


def _run_to_end(env: simpy.Environment, horizon_s: float, progress: bool) -> None:
    show = progress and sys.stderr.isatty() and horizon_s > 0
    if not show:
        env.run()
        return
    from tqdm import tqdm

    with tqdm(total=round(horizon_s, 1), unit="sim s", desc="simulating", leave=False) as bar:
        chunk = horizon_s / 100
        t = 0.0
        while env.peek() != float("inf"):
            t += chunk
            env.run(until=t)
            bar.n = round(min(env.now, horizon_s), 1)
            bar.refresh()


def simulate(cfg: Config | DictConfig) -> SimResult:
    """Replay the configured workload through the configured cluster."""
    cfg = to_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    trace = build_trace(cfg.workload, rng)
    plan = build_plan(cfg)
    env = simpy.Environment()
    requests = make_requests(trace)
    closed = cfg.workload.concurrency > 0
    driver_box: list[Driver] = []

    def on_finish(request: Request) -> None:
        driver_box[0].done(request)

    replicas = build_replicas(env, cfg, plan, on_finish)
    driver = Driver(env, requests, replicas, cfg.router.policy, rng, cfg.workload.concurrency)
    driver_box.append(driver)
    env.process(driver.closed_loop() if closed else driver.open_loop())
    _run(env, float(trace.arrival_s[-1]) if not closed else 0.0, cfg.progress)
    check_conservation(requests, replicas)
    mem = memory_plan(plan)
    meta = {
        "model": plan.model.name,
        "gpu": plan.gpu.name,
        "tp": plan.tp,
        "layout": plan.layout,
        "gpus_per_replica": plan.num_gpus,
        "replicas": len(replicas),
        "num_gpus": plan.num_gpus * len(replicas),
        "engine": plan.engine.name,
        "formats": {
            "weights": plan.weight_format,
            "experts": plan.expert_format,
            "activations": plan.activation_format,
            "kv_cache": plan.kv_format,
        },
        "kv_blocks_per_replica": mem.num_blocks,
        "kv_capacity_tokens_per_replica": mem.kv_capacity_tokens,
        "weight_gb_per_gpu": mem.weight_bytes_per_gpu / 1e9,
        "notes": list(plan.notes),
        "workload": trace.source,
        "seed": cfg.seed,
    }
    return SimResult(requests_frame(requests), steps_frame(replicas), meta)


def check_conservation(requests: list[Request], replicas: list[Replica]) -> None:
    """Every request finished with all its tokens or was rejected; every block is free."""
    for r in requests:
        if r.status == "finished":
            if r.num_output_done != r.output_tokens:
                raise RuntimeError(f"{r} finished with {r.num_output_done} tokens")
        elif r.status != "rejected":
            raise RuntimeError(f"{r} neither finished nor rejected")
    for rep in replicas:
        if rep.kv.num_free != rep.kv.num_blocks or rep.scheduler.has_work():
            raise RuntimeError(f"replica {rep.index} ended with blocks held or work queued")


def requests_frame(requests: list[Request]) -> pd.DataFrame:
    frame = pd.DataFrame(request_rows(requests))
    ints = ["request_id", "replica", "input_tokens", "output_tokens", "cached_tokens"]
    ints.append("num_preemptions")
    return frame.astype({c: "int64" for c in ints})


def steps_frame(replicas: list[Replica]) -> pd.DataFrame:
    """All replicas' steps, ordered by start time (then replica)."""
    parts = [r.step_columns() for r in replicas]
    cols = {c: np.concatenate([p[c] for p in parts]) for c in STEP_COLUMNS}
    order = np.lexsort((cols["replica"], cols["start_at"]))
    return pd.DataFrame({c: v[order] for c, v in cols.items()})
