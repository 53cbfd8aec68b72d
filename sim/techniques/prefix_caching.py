"""Prefix caching: requests whose leading prompt blocks are cached skip their prefill.

Changes: admission (cached leading blocks are shared, not recomputed: prefill tokens and
TTFT drop; at least the last prompt token is always computed), KV memory (shared blocks
are held once; a finished request's indexed blocks stay cached until evicted, least
recently used first). Sharing needs requests with prefix hash ids (Mooncake traces, the
synthetic session generator); a request without them shares nothing, but when it is
preempted its full blocks stay cached under keys of its own (as vLLM hashes every full
block), so readmission recomputes only the blocks evicted meanwhile. It interacts through
the shared memory model: a smaller KV format (technique quantization, kv_cache=fp8) means
more blocks, so more cached prefixes fit. `unbounded: true` gives every replica an
effectively infinite KV pool, for measuring a trace's ideal hit ratio.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sim.plan import ReplicaPlan
from sim.techniques.base import Technique

UNBOUNDED_BLOCKS = 1 << 40


@dataclass
class PrefixCachingConfig:
    unbounded: bool = False


def apply(plan: ReplicaPlan, p: PrefixCachingConfig) -> ReplicaPlan:
    note = "prefix caching: block-hash index over full prompt blocks, LRU eviction"
    return dataclasses.replace(
        plan,
        prefix_caching=True,
        kv_blocks_override=UNBOUNDED_BLOCKS if p.unbounded else plan.kv_blocks_override,
        notes=(*plan.notes, note + (" (unbounded KV pool)" if p.unbounded else "")),
    )


CHANGES = (
    "admission: cached leading prompt blocks are shared, not recomputed (prefill tokens, TTFT); "
    "KV memory: shared blocks held once, released ones cached until LRU eviction"
)

TECHNIQUE = Technique("prefix_caching", PrefixCachingConfig, apply, CHANGES)
