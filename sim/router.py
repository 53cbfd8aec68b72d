"""Routing policies: a request and the replicas' published counters in, a replica index out.

Policies are plain functions in `POLICIES`; the little state some need (a round-robin
counter, the seeded RNG, sticky sessions, cost weights) lives in `RouterState`, passed
explicitly. Adding a policy is one function plus one dict line. A router reads counters
and, for KV-aware routing, each replica's prefix index; it never calls into an engine.

Policies (ties go to the lowest index):
- round_robin: the next replica in turn; random: a uniformly random one (seeded).
- least_outstanding: fewest requests queued, running or receiving KV.
- least_tokens: least work left: prompt tokens still to prefill + decode tokens left.
- least_kv: lowest KV-block usage (then fewest outstanding).
- power_of_two: of two distinct random replicas, the one with fewer outstanding.
- session_affinity: the replica that served the request's session before, unless it has
  more than `affinity_slack` requests above the least loaded; else (and for a session's
  first request) the least loaded, which becomes the session's replica.
- kv_aware: the lowest cost, with cached_i the request's leading prompt tokens already in
  replica i's prefix cache:
      cost_i = (prompt - cached_i) + load_weight x (prefill_left_i + decode_weight x decode_left_i)
  Ties (typically idle replicas and a prefix cached nowhere) go round-robin among the tied
  replicas, so new prefixes spread over every replica's cache rather than piling on one.

kv_aware's cost estimates the prefill work in front of the request's first token (its own
uncached prompt plus the prompts queued there) plus a small share for decode work (which
slows each step a little and holds KV); `load_weight` = 0 routes on cache hits alone,
a large one is least-loaded routing. Defaults (router.load_weight = 1, decode_weight = 0.1)
are judgement, not fits.

What the router sees (`Router`): by default the replicas' live counters. With
`router.publish_period_s` > 0 each replica publishes a snapshot of its counters and prefix
index every period, which reaches the router `publish_delay_s` later; between snapshots the
router routes on the old view (and does not count its own decisions), so herding onto the
replica that looked idle, and cache hits missed or imagined, can be studied.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import simpy

from sim.request import Request


class ReplicaView(Protocol):
    """The cheap counters a router may read (live on a Replica, or a `Snapshot`)."""

    @property
    def num_outstanding(self) -> int: ...

    @property
    def kv_usage(self) -> float: ...

    @property
    def prefill_tokens_left(self) -> int: ...

    @property
    def decode_tokens_left(self) -> int: ...

    def cached_prefix_tokens(self, request: Request) -> int: ...


class Publisher(ReplicaView, Protocol):
    """What a snapshot is taken from: the view plus the prefix index (a Replica)."""

    def prefix_keys(self, request: Request) -> list[Hashable]: ...

    def cached_units(self) -> tuple[frozenset[Hashable], int]: ...


@dataclass
class RouterState:
    rng: np.random.Generator
    counter: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    sessions: dict[int, int] = field(default_factory=dict)  # session id -> sticky replica
    load_weight: float = 1.0  # kv_aware
    decode_weight: float = 0.1  # kv_aware
    affinity_slack: int = 8  # session_affinity


Policy = Callable[[Sequence[ReplicaView], Request, RouterState], int]


def _argmin(values: Sequence[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)


def round_robin(replicas: Sequence[ReplicaView], request: Request, state: RouterState) -> int:
    i = state.counter % len(replicas)
    state.counter += 1
    return i


def random_choice(replicas: Sequence[ReplicaView], request: Request, state: RouterState) -> int:
    return int(state.rng.integers(len(replicas)))


def least_outstanding(replicas: Sequence[ReplicaView], request: Request, state: RouterState) -> int:
    """Fewest waiting + running requests; ties go to the lowest index."""
    loads = [r.num_outstanding for r in replicas]
    return loads.index(min(loads))


def least_tokens(replicas: Sequence[ReplicaView], request: Request, state: RouterState) -> int:
    """Fewest prompt tokens still to prefill plus decode tokens still to generate."""
    return _argmin([r.prefill_tokens_left + r.decode_tokens_left for r in replicas])


def least_kv(replicas: Sequence[ReplicaView], request: Request, state: RouterState) -> int:
    """Lowest KV-block usage; ties by fewest outstanding requests, then lowest index."""
    keys = [(r.kv_usage, r.num_outstanding) for r in replicas]
    return min(range(len(keys)), key=keys.__getitem__)


def power_of_two(replicas: Sequence[ReplicaView], request: Request, state: RouterState) -> int:
    """Two distinct replicas at random; the one with fewer outstanding (the first on a tie)."""
    if len(replicas) == 1:
        return 0
    a, b = (int(x) for x in state.rng.choice(len(replicas), size=2, replace=False))
    return b if replicas[b].num_outstanding < replicas[a].num_outstanding else a


def session_affinity(replicas: Sequence[ReplicaView], request: Request, state: RouterState) -> int:
    """Sticky by session id; falls back to the least loaded when the sticky one is overloaded."""
    loads = [r.num_outstanding for r in replicas]
    least = loads.index(min(loads))
    sid = request.session_id
    if sid < 0:
        return least
    sticky = state.sessions.get(sid)
    if sticky is not None and loads[sticky] <= loads[least] + state.affinity_slack:
        return sticky
    state.sessions[sid] = least
    return least


def kv_aware(replicas: Sequence[ReplicaView], request: Request, state: RouterState) -> int:
    """Lowest `(prompt - cached) + load_weight x (prefill_left + decode_weight x decode_left)`."""
    w, wd = state.load_weight, state.decode_weight
    prompt = request.input_tokens + request.num_output_done
    costs = [
        prompt
        - r.cached_prefix_tokens(request)
        + w * (r.prefill_tokens_left + wd * r.decode_tokens_left)
        for r in replicas
    ]
    best = min(costs)
    tied = [i for i, c in enumerate(costs) if c == best]
    if len(tied) == 1:
        return tied[0]
    state.counter += 1  # spread new prefixes over idle replicas (and their caches) in turn
    return tied[(state.counter - 1) % len(tied)]


POLICIES: dict[str, Policy] = {
    "round_robin": round_robin,
    "random": random_choice,
    "least_outstanding": least_outstanding,
    "least_tokens": least_tokens,
    "least_kv": least_kv,
    "power_of_two": power_of_two,
    "session_affinity": session_affinity,
    "kv_aware": kv_aware,
}


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown router.policy {name!r}: use one of {', '.join(POLICIES)}")
    return POLICIES[name]


SnapshotValues = tuple[int, float, int, int, frozenset[Hashable], int]


class Snapshot:
    """A replica's counters and prefix index as last published."""

    __slots__ = (
        "cached",
        "decode_tokens_left",
        "kv_usage",
        "num_outstanding",
        "prefill_tokens_left",
        "source",
        "unit_tokens",
    )

    def __init__(self, source: Publisher) -> None:
        self.source = source
        self.num_outstanding = 0
        self.kv_usage = 0.0
        self.prefill_tokens_left = 0
        self.decode_tokens_left = 0
        self.cached: frozenset[Hashable] = frozenset()
        self.unit_tokens = 1

    def take(self, with_prefix: bool) -> SnapshotValues:
        s = self.source
        cached, unit = s.cached_units() if with_prefix else (frozenset(), 1)
        counters = (s.num_outstanding, s.kv_usage, s.prefill_tokens_left, s.decode_tokens_left)
        return (*counters, cached, unit)

    def apply(self, values: SnapshotValues) -> None:
        (
            self.num_outstanding,
            self.kv_usage,
            self.prefill_tokens_left,
            self.decode_tokens_left,
            self.cached,
            self.unit_tokens,
        ) = values

    def cached_prefix_tokens(self, request: Request) -> int:
        """Leading prompt units in the published index (at least one prompt token computed)."""
        keys = self.source.prefix_keys(request)
        limit = (request.input_tokens + request.num_output_done - 1) // self.unit_tokens
        hits = 0
        for key in keys[:limit]:
            if key not in self.cached:
                break
            hits += 1
        return hits * self.unit_tokens


class Router:
    """One policy over one pool of replicas, reading live counters or published snapshots."""

    def __init__(
        self,
        env: simpy.Environment,
        replicas: Sequence[Publisher],
        policy: str,
        state: RouterState,
        *,
        period_s: float = 0.0,
        delay_s: float = 0.0,
        running: Callable[[], bool] = lambda: True,
    ) -> None:
        if period_s < 0 or delay_s < 0 or (delay_s > 0 and period_s == 0):
            raise ValueError(
                f"router.publish_period_s={period_s}, publish_delay_s={delay_s}: both must be "
                f">= 0, and a delay needs a period > 0 (0 = the router reads live counters)"
            )
        self.policy = get_policy(policy)
        self.state = state
        self.replicas = replicas
        self.views: Sequence[ReplicaView]
        if period_s > 0:
            snapshots = [Snapshot(r) for r in replicas]
            self.views = snapshots
            with_prefix = self.policy is kv_aware
            env.process(self._publish(env, snapshots, period_s, delay_s, with_prefix, running))
        else:
            self.views = replicas  # a Replica is its own live view

    def pick(self, request: Request) -> int:
        return self.policy(self.views, request, self.state)

    @staticmethod
    def _publish(
        env: simpy.Environment,
        snapshots: list[Snapshot],
        period_s: float,
        delay_s: float,
        with_prefix: bool,
        running: Callable[[], bool],
    ) -> Generator[simpy.Event, None, None]:
        """Every period: take each replica's snapshot; it reaches the router delay_s later."""
        while running():
            for snap in snapshots:
                values = snap.take(with_prefix)
                if delay_s > 0:
                    env.timeout(delay_s).callbacks.append(_deliver(snap, values))
                else:
                    snap.apply(values)
            yield env.timeout(period_s)


def _deliver(snap: Snapshot, values: SnapshotValues) -> Callable[[simpy.Event], None]:
    return lambda _event: snap.apply(values)
