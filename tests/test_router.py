"""Routing policies pick replicas from load counters only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from sim.request import Request
from sim.router import POLICIES, RouterState, get_policy


@dataclass
class View:
    num_outstanding: int
    kv_usage: float = 0.0


def pick(name: str, loads: list[int], n: int = 1, seed: int = 0) -> list[int]:
    state = RouterState(np.random.default_rng(seed))
    views = [View(x) for x in loads]
    return [get_policy(name)(views, Request(i, 0.0, 1, 1), state) for i in range(n)]


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
    assert set(POLICIES) >= {"round_robin", "random", "least_outstanding"}
