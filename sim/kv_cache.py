"""Paged KV blocks of one replica: allocations and prefix lookups in, free-block counts out.

Blocks are counted, not materialised. A running request holds ceil(computed / block_size)
blocks; the scheduler tracks that count. This pool knows how many are free and, with
prefix caching, an index of full prompt blocks by prefix key:

- a key names a block *and everything before it* (keys come from a trace's prefix-chained
  hash ids), so the longest cached prefix of a prompt is its leading run of known keys;
- each indexed block has a reference count (requests using it); at zero it stays cached
  but evictable, in LRU order of simulated time (least recently released first; a
  request releases its blocks last-first, as vLLM does, so shared heads outlive tails);
- `num_free` counts truly free plus evictable blocks: allocation takes free blocks first,
  then evicts the least recently used cached ones.

The index works in units of `unit_blocks` blocks: a trace whose hash ids cover 512 tokens
with 16-token blocks is cached, matched and evicted 32 blocks at a time (its ids say
nothing finer), which keeps lookups per request proportional to hash ids, not blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence


class KVCache:
    """A pool of `num_blocks` KV blocks of `block_size` tokens, with an optional prefix index."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"KV cache needs >= 1 block of >= 1 token, got {num_blocks}x{block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.free_blocks = num_blocks  # neither in use nor cached
        self.unit_blocks = 1  # blocks per index entry (set from the trace's hash granularity)
        self.refs: dict[Hashable, int] = {}  # indexed units -> requests using them
        self.evictable: OrderedDict[Hashable, None] = OrderedDict()  # refs == 0, LRU first
        self.num_evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take: free ones plus evictable cached ones."""
        return self.free_blocks + len(self.evictable) * self.unit_blocks

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def allocate(self, num: int) -> None:
        """Take `num` blocks, evicting least recently used cached blocks if needed."""
        if num > self.num_free:
            raise RuntimeError(f"KV allocation of {num} blocks with only {self.num_free} free")
        while self.free_blocks < num:
            key, _ = self.evictable.popitem(last=False)
            del self.refs[key]
            self.free_blocks += self.unit_blocks
            self.num_evictions += 1
        self.free_blocks -= num

    def free(self, num: int) -> None:
        self.free_blocks += num
        if self.num_free > self.num_blocks:
            raise RuntimeError("freed more KV blocks than were allocated")

    # -- prefix index ----------------------------------------------------------------------
    def match(self, keys: Sequence[Hashable], limit: int) -> tuple[int, int]:
        """(leading units cached, how many of those are evictable) among the first `limit`."""
        refs = self.refs
        hits = idle = 0
        for key in keys[:limit]:
            count = refs.get(key)
            if count is None:
                break
            hits += 1
            idle += count == 0
        return hits, idle

    def acquire(self, keys: Sequence[Hashable]) -> None:
        """Start using cached units (evictable ones become in use)."""
        refs, evictable = self.refs, self.evictable
        for key in keys:
            if refs[key] == 0:
                del evictable[key]
            refs[key] += 1

    def register(self, key: Hashable) -> bool:
        """Index a unit its owner just computed; False if an equal unit is already indexed
        (the owner's copy then stays private and is freed, not cached, on release)."""
        if key in self.refs:
            return False
        self.refs[key] = 1
        return True

    def release(self, keys: Sequence[Hashable]) -> None:
        """Stop using indexed units, last first; unused ones become evictable (MRU end)."""
        refs, evictable = self.refs, self.evictable
        for key in reversed(keys):
            refs[key] -= 1
            if refs[key] == 0:
                evictable[key] = None
