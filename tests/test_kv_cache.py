"""KV pool and prefix index: counts, reference counts, LRU eviction by release order."""

from __future__ import annotations

import pytest

from sim.kv_cache import KVCache


def test_allocate_and_free_count_blocks() -> None:
    kv = KVCache(10, 16)
    kv.allocate(7)
    assert (kv.num_free, kv.num_used) == (3, 7)
    with pytest.raises(RuntimeError, match="only 3 free"):
        kv.allocate(4)
    kv.free(7)
    assert kv.num_free == 10
    with pytest.raises(RuntimeError, match="freed more"):
        kv.free(1)


def test_indexed_blocks_are_shared_and_cached_after_release() -> None:
    kv = KVCache(10, 16, prefix_caching=True)
    kv.allocate(3)  # a request computes three blocks and indexes them
    for key in "abc":
        assert kv.register(key)
    assert not kv.register("a")  # an equal block is already indexed
    assert kv.match(["a", "b", "x", "c"], limit=4) == (2, 0)  # leading run only
    kv.acquire(["a", "b"])  # a second request shares two of them
    kv.release(["a", "b", "c"])  # the first finishes: c is unused now, a and b are not
    assert list(kv.evictable) == ["c"]
    assert kv.num_free == 7 + 1 and kv.num_used == 2
    kv.release(["a", "b"])  # released last-first: b becomes evictable before a
    assert list(kv.evictable) == ["c", "b", "a"]
    assert kv.match(["a", "b", "c"], limit=3) == (3, 3)
    assert kv.match(["a", "b", "c"], limit=1) == (1, 1)


def test_allocation_evicts_least_recently_released_first() -> None:
    kv = KVCache(4, 16, prefix_caching=True)
    kv.allocate(4)
    for key in "abcd":
        kv.register(key)
    kv.release(["a", "b"])  # b, a evictable (b first)
    kv.release(["c", "d"])  # then d, c
    assert kv.num_free == 4 and kv.free_blocks == 0
    kv.allocate(3)
    assert list(kv.evictable) == ["c"] and kv.num_evictions == 3
    assert kv.match(["a"], 1) == (0, 0) and kv.match(["c"], 1) == (1, 1)


def test_units_of_several_blocks_evict_whole() -> None:
    kv = KVCache(64, 16, prefix_caching=True)
    kv.unit_blocks = 32  # a 512-token hash block
    kv.allocate(64)
    kv.register(1)
    kv.register(2)
    kv.release([1, 2])
    assert kv.num_free == 64
    kv.allocate(1)  # evicts one whole unit, the rest is free
    assert kv.free_blocks == 31 and list(kv.evictable) == [1]
