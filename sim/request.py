"""A request's static fields, progress and `*_at` timestamps; flows trace -> router -> replica.

While a request decodes, its context is derived from the engine's step counter
(`c0 + g - g0`), so nothing here is touched per token or per step.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

NAN = math.nan


class Request:
    """One inference request. Times are simulated seconds; token counts are integers."""

    __slots__ = (
        "arrival_at",
        "block_keys",
        "c0",
        "cached_tokens",
        "computed",
        "decode_cached_tokens",
        "decode_replica",
        "decoding",
        "finished_at",
        "first_scheduled_at",
        "first_token_at",
        "g0",
        "hash_block_tokens",
        "held_keys",
        "input_tokens",
        "kv_transfer_bytes",
        "kv_transfer_end_at",
        "kv_transfer_start_at",
        "life",
        "num_output_done",
        "num_preemptions",
        "output_tokens",
        "prefill_replica",
        "prefix_hashes",
        "reason",
        "registered",
        "remote_kv",
        "replica",
        "request_id",
        "rho",
        "session_id",
        "status",
        "table_blocks",
    )

    def __init__(
        self,
        request_id: int,
        arrival_at: float,
        input_tokens: int,
        output_tokens: int,
        session_id: int = -1,
        prefix_hashes: tuple[int, ...] | None = None,
        hash_block_tokens: int = 0,
    ) -> None:
        self.request_id = request_id
        self.arrival_at = arrival_at
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.session_id = session_id
        self.prefix_hashes = prefix_hashes  # prefix-chained ids, one per hash block
        self.hash_block_tokens = hash_block_tokens  # tokens per hash id
        self.replica = -1
        self.first_scheduled_at = NAN
        self.first_token_at = NAN
        self.finished_at = NAN
        self.num_output_done = 0  # output tokens committed so far (kept across preemption)
        self.num_preemptions = 0
        self.cached_tokens = 0
        self.status = "pending"
        self.reason = ""
        # engine progress (owned by the scheduler while the request runs)
        self.computed = 0  # tokens whose KV exists
        self.decoding = False
        self.c0 = 0  # context when it joined the decode group
        self.g0 = 0  # the engine's step counter then
        self.life = 0  # decode-group membership stamp (0 = not decoding)
        self.rho: float = 1  # tokens committed per decode step (speculative: its average)
        self.table_blocks = 0  # blocks reserved at admission (full KV reservation)
        # prefix caching (engine block keys, keys it holds references on, blocks indexed)
        self.block_keys: list[Hashable] | None = None
        self.held_keys: list[Hashable] = []
        self.registered = 0
        # disaggregated serving (sim/simulate.py): the pair of replicas and the KV handoff
        self.prefill_replica = -1
        self.decode_replica = -1
        self.remote_kv = False  # queued at a decode replica, its KV still to arrive
        self.decode_cached_tokens = 0  # prompt tokens the decode replica already held
        self.kv_transfer_bytes = 0
        self.kv_transfer_start_at = NAN
        self.kv_transfer_end_at = NAN

    def reject(self, reason: str) -> None:
        """Record that the request will never be served, and why."""
        self.status = "rejected"
        self.reason = reason

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id}, at={self.arrival_at:.3f}, in={self.input_tokens}, "
            f"out={self.output_tokens}, status={self.status})"
        )


REQUEST_COLUMNS = (
    "request_id",
    "replica",
    "arrival_at",
    "first_scheduled_at",
    "first_token_at",
    "finished_at",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "num_preemptions",
    "status",
    "reason",
    "prefill_replica",
    "decode_replica",
    "decode_cached_tokens",
    "kv_transfer_bytes",
    "kv_transfer_start_at",
    "kv_transfer_end_at",
)


def request_rows(requests: list[Request]) -> dict[str, list[object]]:
    """Column lists for the per-request frame, in REQUEST_COLUMNS order."""
    return {col: [getattr(r, col) for r in requests] for col in REQUEST_COLUMNS}
