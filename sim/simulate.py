"""simulate(cfg): a Config in, per-request, per-step and per-transfer frames (plus facts) out.

Builds the workload (a real trace slice or a synthetic one), the replicas and the router,
runs SimPy until every request has finished or been rejected, and returns data. It
writes no files and collects no metrics: `sim.metrics` derives those from the frames.

Disaggregated serving (cluster.topology = xPyD; replicas and links: sim/cluster.py). The
driver carries each request through the handoff; no replica calls the router:
1. arrival: the router (`router.policy`) picks a prefill replica; the request is rejected if
   either pool could never hold it. With `router.decode_at=arrival` the decode replica is
   picked now (`router.decode_policy`), else at the handoff.
2. the prefill replica computes the prompt (skipping its cached prefix blocks) and emits the
   first token at the end of the step that completes it: TTFT is measured there (the prefill
   side streams that token to the client at once). It keeps the prompt's blocks.
3. handoff (at that step's end; with `link.overlap`, at the start of the step running the
   last prompt chunk): the request queues at its decode replica, which admits it in queue
   order by reserving blocks for the prompt less the prefix units it already caches. No
   blocks: it waits (backpressure; the prefill replica still holds its blocks).
4. reserved at time t0: the transfer of the missing tokens' KV (bytes at the prefill side's KV
   format) starts at t0 over the path's links (sim/link.py): alone it ends at
   t0 + latency + bytes / bandwidth; concurrent transfers share links (fair or fifo).
   With `link.overlap` the KV streams layer by layer while the last chunk runs, so the
   transfer ends at the later of its own end and prefill_end + latency + (bytes / layers) /
   bottleneck bandwidth: the last layer's share always follows the prefill.
5. transfer end (and prefill end): the prefill replica frees the blocks (indexed ones stay
   cached), the decode replica indexes the arrived units and, at its next step boundary,
   runs the request as a 1-token decode step with prompt computed and first token emitted.
"""

from __future__ import annotations

import difflib
import gc
import math
import sys
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import simpy
from omegaconf import DictConfig, OmegaConf

from sim.cluster import Cluster, build_cluster, kv_transfer_bytes
from sim.config import Config, LengthConfig, RouterConfig, WorkloadConfig
from sim.link import Transfer
from sim.plan import ReplicaPlan, memory_plan
from sim.replica import STEP_COLUMNS, Replica
from sim.request import Request, request_rows
from sim.router import Router, RouterState
from sim.scheduler import StepPlan
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

TRANSFER_COLUMNS: dict[str, str] = {
    "request_id": "int64",
    "prefill_replica": "int64",
    "decode_replica": "int64",
    "kind": "str",  # nvlink | rdma
    "links": "str",  # the path's link names, ' > '-joined
    "num_bytes": "float64",
    "start_at": "float64",  # decode blocks reserved, transfer begins
    "ready_at": "float64",  # after the path's latency: bytes start to move
    "sent_at": "float64",  # last byte arrived
    "end_at": "float64",  # KV usable at the decode replica (>= sent_at with link.overlap)
}


def empty_transfers() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in TRANSFER_COLUMNS.items()})


@dataclass(frozen=True)
class SimResult:
    requests: pd.DataFrame
    steps: pd.DataFrame
    meta: dict[str, Any]
    transfers: pd.DataFrame = field(default_factory=empty_transfers)  # disaggregated runs


def to_config(cfg: Config | DictConfig) -> Config:
    if isinstance(cfg, Config):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, Config)
    return obj


def _resolve(name: str, key: str) -> Path:
    """A bundled trace name or an existing file; a clear error naming both otherwise."""
    if name in BUNDLED_FILES:
        return bundled(name)
    path = Path(name)
    if not path.is_file():
        close = difflib.get_close_matches(name, list(BUNDLED_FILES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"{key}={name!r} is neither a bundled trace{hint} nor an existing file; bundled: "
            f"{', '.join(BUNDLED_FILES)}, or give a path to a .csv or .jsonl trace"
        )
    return path


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
        trace = load_trace(_resolve(cfg.trace, "workload.trace"))
        if cfg.start_s or cfg.end_s is not None:
            end = float("inf") if cfg.end_s is None else cfg.end_s
            trace = trace.window(cfg.start_s, end)
    elif cfg.kind == "synthetic":
        lengths: dict[str, Any] = (
            {"pairs": LengthPairs.from_csv(_resolve(cfg.lengths_file, "workload.lengths_file"))}
            if cfg.lengths_file
            else {
                "input_dist": _length_dist(cfg.input, "input"),
                "output_dist": _length_dist(cfg.output, "output"),
            }
        )
        trace = synthetic(
            cfg.num_requests,
            rng,
            arrival=cfg.arrival,
            rate_per_s=cfg.rate_per_s,
            gamma_cv=cfg.gamma_cv,
            **lengths,
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
    """Feeds requests to the router: at trace times (open loop) or N in flight (closed).

    In a disaggregated cluster it also carries each request from its prefill replica over a
    KV link to its decode replica (the module docstring gives the steps).
    """

    def __init__(
        self,
        env: simpy.Environment,
        requests: list[Request],
        cluster: Cluster,
        router: RouterConfig,
        rng: np.random.Generator,
        concurrency: int,
    ) -> None:
        if router.decode_at not in ("arrival", "handoff"):
            raise ValueError(f"router.decode_at={router.decode_at!r}: use arrival or handoff")
        self.env = env
        self.requests = requests
        self.cluster = cluster
        self.concurrency = concurrency
        self.in_flight = 0
        self.num_done = 0
        self._slot: simpy.Event | None = None
        self.disaggregated = cluster.disaggregated
        self.front = cluster.prefill or cluster.replicas
        self.router = self._router(self.front, router.policy, router, rng)
        self.decode_router = (
            self._router(cluster.decode, router.decode_policy, router, rng)
            if cluster.decode
            else None
        )
        self.decode_at_arrival = router.decode_at == "arrival"
        self.overlap = cluster.link.overlap
        self.transfers: list[tuple[Request, Transfer]] = []
        self._prefill_end: dict[int, float] = {}  # overlap: end of the last prompt chunk

    def _router(
        self, replicas: list[Replica], policy: str, cfg: RouterConfig, rng: np.random.Generator
    ) -> Router:
        state = RouterState(
            rng,
            load_weight=cfg.load_weight,
            decode_weight=cfg.decode_weight,
            affinity_slack=cfg.affinity_slack,
        )
        return Router(
            self.env,
            replicas,
            policy,
            state,
            period_s=cfg.publish_period_s,
            delay_s=cfg.publish_delay_s,
            running=self._running,
        )

    def _running(self) -> bool:
        """Requests still to serve (and events besides the router's own)."""
        return self.num_done < len(self.requests) and self.env.peek() < math.inf

    def route(self, request: Request) -> None:
        if self.disaggregated:
            self._route_pair(request)
        else:
            self.front[self.router.pick(request)].submit(request)
        if request.status == "rejected":
            self.done(request)

    def done(self, request: Request) -> None:
        self.num_done += 1
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

    # -- disaggregated serving ----------------------------------------------------------------
    def _route_pair(self, request: Request) -> None:
        prefill, decode = self.cluster.prefill, self.cluster.decode
        reason = prefill[0].rejection(request) or decode[0].rejection(request)  # pools alike
        if reason:
            request.reject(reason)
            return
        replica = prefill[self.router.pick(request)]
        request.prefill_replica = replica.index
        if self.decode_at_arrival:
            self._pick_decode(request)
        replica.submit(request)

    def _pick_decode(self, request: Request) -> None:
        assert self.decode_router is not None
        request.decode_replica = self.cluster.decode[self.decode_router.pick(request)].index

    def on_finish(self, request: Request) -> None:
        """A replica finished `request`, or (status 'prefilled') finished its prefill."""
        if request.status == "finished":
            self.done(request)
        elif not self.overlap:
            self._hand_off(request)
        elif request.kv_transfer_end_at == request.kv_transfer_end_at:  # its KV already left
            self._arrived(request, max(request.kv_transfer_end_at, request.first_token_at))

    def on_step_start(self, plan: StepPlan, start_at: float, end_at: float) -> None:
        """link.overlap: hand off the requests whose last prompt chunk runs in this step."""
        for r, q in plan.chunks:
            done = r.num_output_done
            if r.computed + q == r.input_tokens + done and r.output_tokens > done + 1:
                self._prefill_end[r.request_id] = end_at
                self._hand_off(r)

    def _hand_off(self, request: Request) -> None:
        if request.decode_replica < 0:
            self._pick_decode(request)
        self.cluster.replicas[request.decode_replica].receive(request)

    def on_reserve(self, request: Request, at: float) -> None:
        """The decode replica reserved blocks for `request` at `at`: its KV starts to move."""
        cluster = self.cluster
        assert cluster.network is not None
        prefill = cluster.replicas[request.prefill_replica]
        decode = cluster.replicas[request.decode_replica]
        links = cluster.path(prefill, decode)
        num_bytes = kv_transfer_bytes(
            prefill.plan, request.input_tokens, request.decode_cached_tokens
        )
        not_before = 0.0
        if self.overlap:  # the last layer's KV leaves after the prefill's last layer
            bottleneck = min(x.bytes_per_s for x in links)
            layer_s = num_bytes / prefill.plan.model.num_layers / bottleneck
            latency = max(x.latency_s for x in links)
            not_before = self._prefill_end.pop(request.request_id) + latency + layer_s
        request.kv_transfer_bytes = round(num_bytes)
        request.kv_transfer_start_at = at
        transfer = cluster.network.start(
            links, num_bytes, at, lambda t: self._sent(request, t), not_before
        )
        self.transfers.append((request, transfer))

    def _sent(self, request: Request, transfer: Transfer) -> None:
        request.kv_transfer_end_at = transfer.end_at
        if request.status == "prefilled":  # (with overlap it may still be prefilling)
            self._arrived(request, transfer.end_at)

    def _arrived(self, request: Request, at: float) -> None:
        self.cluster.replicas[request.prefill_replica].release_held(request, at)
        self.cluster.replicas[request.decode_replica].activate(request, at)

    def transfer_frame(self) -> pd.DataFrame:
        """One row per KV transfer (TRANSFER_COLUMNS)."""
        pairs = self.transfers
        if not pairs:
            return empty_transfers()
        rows = {
            "request_id": [r.request_id for r, _ in pairs],
            "prefill_replica": [r.prefill_replica for r, _ in pairs],
            "decode_replica": [r.decode_replica for r, _ in pairs],
            "kind": [t.links[0].kind for _, t in pairs],
            "links": [" > ".join(x.name for x in t.links) for _, t in pairs],
            "num_bytes": [t.num_bytes for _, t in pairs],
            "start_at": [t.start_at for _, t in pairs],
            "ready_at": [t.ready_at for _, t in pairs],
            "sent_at": [t.sent_at for _, t in pairs],
            "end_at": [t.end_at for _, t in pairs],
        }
        return pd.DataFrame(rows).astype(TRANSFER_COLUMNS)


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


class DriverHooks:
    """Replica callbacks for the Driver, which is built after the replicas (it needs them):
    pass the bound methods to the replicas, then set `driver`."""

    driver: Driver

    def on_finish(self, request: Request) -> None:
        self.driver.on_finish(request)

    def on_reserve(self, request: Request, at: float) -> None:
        self.driver.on_reserve(request, at)

    def on_step_start(self, plan: StepPlan, start_at: float, end_at: float) -> None:
        self.driver.on_step_start(plan, start_at, end_at)


def simulate(cfg: Config | DictConfig) -> SimResult:
    """Replay the configured workload through the configured cluster."""
    cfg = to_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    trace = build_trace(cfg.workload, rng)
    env = simpy.Environment()
    requests = make_requests(trace)
    closed = cfg.workload.concurrency > 0
    hooks = DriverHooks()
    cluster = build_cluster(env, cfg, hooks.on_finish, hooks.on_reserve, hooks.on_step_start)
    driver = Driver(env, requests, cluster, cfg.router, rng, cfg.workload.concurrency)
    hooks.driver = driver
    env.process(driver.closed_loop() if closed else driver.open_loop())
    _run(env, float(trace.arrival_s[-1]) if not closed else 0.0, cfg.progress)
    check_conservation(requests, cluster.replicas)
    meta = run_meta(cluster)
    meta["workload"] = trace.source
    meta["hash_block_tokens"] = trace.hash_block_tokens
    meta["seed"] = cfg.seed
    return SimResult(
        requests_frame(requests), steps_frame(cluster.replicas), meta, driver.transfer_frame()
    )


def _plan_meta(plan: ReplicaPlan, replicas: int) -> dict[str, Any]:
    mem = memory_plan(plan)
    return {
        "model": plan.model.name,
        "gpu": plan.gpu.name,
        "tp": plan.tp,
        "layout": plan.layout,
        "gpus_per_replica": plan.num_gpus,
        "replicas": replicas,
        "num_gpus": plan.num_gpus * replicas,
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
    }


def run_meta(cluster: Cluster) -> dict[str, Any]:
    """Run facts: an aggregated replica's plan; disaggregated, the decode pool's plan at the
    top level (GPUs and replicas counted over both pools) plus `pools` and `links`."""
    if not cluster.disaggregated:
        meta = _plan_meta(cluster.plans["replica"], len(cluster.replicas))
        meta["topology"] = "aggregated"
        return meta
    pools = {}
    for name, members in (("prefill", cluster.prefill), ("decode", cluster.decode)):
        pools[name] = {
            **_plan_meta(cluster.plans[name], len(members)),
            "indices": [r.index for r in members],
            "nodes": [cluster.placement[r.index][0] for r in members],
        }
    p, d = pools["prefill"], pools["decode"]
    x, y = len(cluster.prefill), len(cluster.decode)
    meta = {k: v for k, v in d.items() if k not in ("indices", "nodes")}
    meta.update(
        topology=f"{x}P{y}D",
        replicas=x + y,
        num_gpus=p["num_gpus"] + d["num_gpus"],
        pools=pools,
        links=[
            {"name": k.name, "kind": k.kind, "bytes_per_s": k.bytes_per_s, "latency_s": k.latency_s}
            for k in cluster.links
        ],
    )
    for key in ("gpu", "layout"):
        if p[key] != d[key]:
            meta[key] = f"{p[key]} (prefill) / {d[key]} (decode)"
    kinds = ", ".join(sorted({k.kind for k in cluster.links})) or "no link used"
    meta["notes"] = [
        f"disaggregated {x}P{y}D: prefill {x} x {p['layout']} {p['gpu']} (replicas "
        f"{p['indices'][0]}-{p['indices'][-1]}), decode {y} x {d['layout']} {d['gpu']}; "
        f"KV ({p['formats']['kv_cache']}) over {kinds}",
        *dict.fromkeys([*p["notes"], *d["notes"]]),
    ]
    return meta


def check_conservation(requests: list[Request], replicas: list[Replica]) -> None:
    """Every request finished with all its tokens or was rejected; every block is free."""
    for r in requests:
        if r.status == "finished":
            if r.num_output_done != r.output_tokens:
                raise RuntimeError(f"{r} finished with {r.num_output_done} tokens")
        elif r.status != "rejected":
            raise RuntimeError(f"{r} neither finished nor rejected")
    for rep in replicas:
        sched = rep.scheduler
        busy = sched.has_work() or sched.held or sched.num_incoming
        if rep.kv.num_free != rep.kv.num_blocks or busy:
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
