"""Routing policies: a request and the replicas' load counters in, a replica index out.

Policies are plain functions in `POLICIES`; the little state some need (a round-robin
counter, the seeded RNG) lives in `RouterState`, passed explicitly. Adding a policy is one
function plus one dict line. A router reads counters only; it never calls into an engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sim.request import Request


class ReplicaView(Protocol):
    """The cheap counters a router may read."""

    @property
    def num_outstanding(self) -> int: ...

    @property
    def kv_usage(self) -> float: ...


@dataclass
class RouterState:
    rng: np.random.Generator
    counter: int = 0
    extra: dict[str, object] = field(default_factory=dict)


Policy = Callable[[Sequence[ReplicaView], Request, RouterState], int]


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


POLICIES: dict[str, Policy] = {
    "round_robin": round_robin,
    "random": random_choice,
    "least_outstanding": least_outstanding,
}


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown router.policy {name!r}: use one of {', '.join(POLICIES)}")
    return POLICIES[name]
