"""Paged KV blocks of one replica: allocations in, free-block counts out.

Blocks are counted, not materialised: a running request holds ceil(computed / block_size)
blocks (the scheduler keeps that count per slot); this pool only knows how many are free.
Prefix caching (a hash index over full blocks with reference counts and LRU eviction)
extends this class without changing the scheduler's calls.
"""

from __future__ import annotations


class KVCache:
    """A pool of `num_blocks` KV blocks of `block_size` tokens each."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"KV cache needs >= 1 block of >= 1 token, got {num_blocks}x{block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_free = num_blocks

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def allocate(self, num: int) -> None:
        """Take `num` free blocks; the scheduler checks `num_free` first."""
        if num > self.num_free:
            raise RuntimeError(f"KV allocation of {num} blocks with only {self.num_free} free")
        self.num_free -= num

    def free(self, num: int) -> None:
        self.num_free += num
        if self.num_free > self.num_blocks:
            raise RuntimeError("freed more KV blocks than were allocated")
