"""Continuous batching (vLLM-v1-like): waiting and running requests in, one step's batch out.

Each step, running requests first, in admission order, each get the tokens they still need
(1 when decoding, the rest of the prompt when prefilling) until the token budget
(`max_num_batched_tokens`) runs out; chunked prefill cuts a prompt at the budget (without it
a prompt waits until it fits whole, and a replica rejects prompts longer than the budget at
submission; a recompute after preemption that exceeds it runs alone). KV blocks
are allocated for the tokens scheduled; when they run out, the most recently admitted
request is preempted (blocks freed, recomputed later from scratch; with prefix caching its
full blocks stay cached, and only those evicted meanwhile are recomputed). If nobody was
preempted, waiting requests are admitted first-come-first-served while sequences
(`max_num_seqs`), budget and blocks allow.

Decoding requests are kept as a group with O(1) aggregates instead of per-sequence loops.
Every decoding request advances every step, so with a step counter `g` its context is
`c0 + rho·(g - g0)` (rho = 1 token a step; with speculative decoding, its own average
tokens a step); the group keeps Σ(c0 - rho·g0) and Σ rho (so Σ context = K + R·g), a heap
of finishing steps, and a histogram of `(c0 - g0) mod block_size` (a request needs a new
block exactly when its context is a multiple of the block size). A stretch of pure-decode
steps is then planned in O(1) (`plan_stretch`).

Speculative decoding (plan.speculation): each decode step verifies k + 1 tokens per
sequence and commits 1 + (drafts accepted). When a request starts decoding, the number of
steps it needs for its remaining tokens is drawn once from the acceptance model (seeded;
or set to the expected value), which fixes its finish step and its rate rho; per-step
token counts in the step rows are the group's expected tokens, rounded so they add up.
KV reservation: `incremental` allocates blocks as tokens are computed and preempts when
they run out (vLLM); `full` reserves prompt + whole output (+ k lookahead) at admission
and never preempts (TensorRT-LLM's GUARANTEED_NO_EVICT; also used with speculation).
Batch waiting (TensorRT-LLM's batch_wait_timeout_iters / batch_wait_max_tokens_ratio,
`engine.batch_wait_steps` / `batch_wait_tokens_ratio`): while requests decode, a step that
would start prompts holds them back unless their prompt tokens plus the decode tokens reach
ratio x token budget or they were held `batch_wait_steps` steps in a row (the counter resets
when prompts run); without decoding requests nothing is held.

Disaggregated serving adds three hooks (the cluster drives them, sim/simulate.py):
- `prefill_only`: a prefill replica's requests end with their prompt (the first token);
  the blocks are not freed but held (`held`) until `release_held`, when their KV has left.
- a request queued with `remote_kv` (its KV will arrive from a prefill replica) is admitted
  in queue order by reserving blocks for its prompt, less the leading prefix units this
  replica already caches (only the missing ones are sent); it then waits outside the
  running set (`num_incoming`; listed in `reserved` for the replica to start the transfer).
  No free blocks: it waits in the queue, and the prefill side keeps its blocks (backpressure).
- `activate`: its KV has arrived; at the next step it joins the decode group with its
  prompt computed and first token emitted (`ready`, while `max_num_seqs` allows).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Hashable
from typing import NamedTuple

import numpy as np

from sim.kv_cache import KVCache
from sim.plan import EngineSpec, Speculation
from sim.request import Request
from sim.step_time import StepShape, window_sum

I64 = np.int64


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class StepPlan(NamedTuple):
    """One step's batch: the decode group plus prefill chunks (request, tokens).

    (NamedTuples, not frozen dataclasses, for the per-step values: they are as immutable
    and several times cheaper to create.)
    """

    shape: StepShape
    chunks: tuple[tuple[Request, int], ...]  # prefilling requests and their tokens
    num_decode_seqs: int
    num_decode_tokens: int  # tokens the decode group commits this step
    num_prefill_tokens: int
    num_preempted: int
    num_admitted: int
    num_waiting: int  # queue length after admission
    pure_decode: bool  # only the decode group runs; nothing admitted or preempted

    @property
    def num_seqs(self) -> int:
        return self.num_decode_seqs + len(self.chunks)


class Stretch(NamedTuple):
    """`num_steps` pure-decode steps planned at once.

    Step s (0-based) runs at step counter g0 + s: the group's context is
    k_dec + r_dec·(g0 + s) (the KV tokens read), it verifies `verify` tokens per sequence
    (T = S = n·verify) and attends verify·context + pairs_extra pairs. `phase` (the decode
    group by (c0 - g0) mod block size, fixed during the stretch) says how many blocks each
    step adds under incremental reservation.
    """

    num_steps: int
    num_seqs: int
    k_dec: float
    r_dec: float
    g0: int  # step counter at step 0
    verify: int
    block_size: int
    phase: tuple[int, ...]
    incremental: bool
    emitted0: float  # decode tokens emitted before step 0 (expected, for the rows)
    pairs_w: tuple[int, ...] | None = None  # per step, sliding-window models only
    read_w: tuple[int, ...] | None = None

    def extra_blocks(self, steps: int) -> int:
        """Blocks steps 1 .. steps-1 add (step 0's were allocated when it was scheduled)."""
        if not self.incremental:
            return 0
        bs, g0, phase = self.block_size, self.g0, self.phase
        full, rest = divmod(steps - 1, bs)
        first = full * bs + 1
        return full * self.num_seqs + sum(phase[-(g0 + t) % bs] for t in range(first, first + rest))


class Scheduler:
    """Waiting queue, running requests (decode group + prefill list) and the KV pool."""

    def __init__(
        self,
        engine: EngineSpec,
        kv: KVCache,
        window_tokens: int = 0,
        speculation: Speculation | None = None,
        rng: np.random.Generator | None = None,
        prefill_only: bool = False,
        window_blocks: Callable[[int], int] | None = None,
    ) -> None:
        verify = 1 + (speculation.num_draft_tokens if speculation else 0)
        if engine.max_num_batched_tokens < engine.max_num_seqs * verify:
            raise ValueError(
                f"engine.max_num_batched_tokens ({engine.max_num_batched_tokens}) must be >= "
                f"engine.max_num_seqs ({engine.max_num_seqs}) x {verify} tokens verified per "
                f"sequence, as vLLM requires"
            )
        self.engine = engine
        self.kv = kv
        self.bs = kv.block_size
        self.window = window_tokens
        # blocks a sequence of n tokens (prompt + output) holds for its sliding-window layers
        # (MemoryPlan.window_blocks); none without sliding layers
        self.window_blocks = window_blocks or (lambda seq_tokens: 0)
        self.spec = speculation
        self.verify = verify
        self.lookahead = verify - 1
        self.incremental = engine.kv_reservation == "incremental" and speculation is None
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.emitted: float = 0  # decode tokens committed so far (expected with speculation)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order (preemption takes the last)
        self.prefilling: list[Request] = []  # running requests still computing their prompt
        self.g = 0  # steps taken
        self.n_dec = 0  # decoding requests
        self.k_dec: float = 0  # Σ (c0 - rho·g0) over decoding requests
        self.r_dec: float = 0  # Σ rho (tokens a step) over decoding requests
        self.phase = [0] * self.bs  # decoding requests by (c0 - g0) mod bs
        self.ends: list[tuple[int, int, Request]] = []  # (end step, life, request) heap
        self.young: list[Request] = []  # decoding requests with context < window
        self.lives = 0  # stamps decode-group memberships (lazy heap deletion)
        self.end_sum = 0  # Σ finishing step over the decode group (decode steps left)
        self.prefill_left = 0  # prompt tokens queued or prefilling, still to compute
        # disaggregated serving (see the module docstring)
        self.prefill_only = prefill_only
        self.held: dict[int, tuple[list[Hashable], int]] = {}  # request id -> (keys, blocks)
        self.reserved: list[Request] = []  # KV reservations made by the last schedule()
        self.num_incoming = 0  # reserved, KV in transit or ready
        # request id -> (prefix keys acquired, blocks reserved); applied when it joins (the
        # request's own fields still belong to its prefill replica until then)
        self.incoming: dict[int, tuple[list[Hashable], int]] = {}
        self.remote_queued_tokens = 0  # prompt tokens of queued requests whose KV will come
        self.ready: deque[Request] = deque()  # KV arrived, to join the decode group
        # batch waiting: steps in a row that held prompts back; did the last schedule() hold
        self.batch_waiting = engine.batch_wait_steps > 0 and engine.batch_wait_tokens_ratio > 0
        self.wait_count = 0
        self.holding = False
        # multi-step scheduling: decode steps left in the current block (admission waits for 0)
        self.block_steps = engine.num_scheduler_steps
        self.block_left = 0
        self.block_opened = False  # did the last schedule() open a block

    # -- counters the router reads ---------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_outstanding(self) -> int:
        return len(self.running) + len(self.waiting) + self.num_incoming

    @property
    def decode_left(self) -> int:
        """Decode steps the decode group still has to run, summed over its requests."""
        return self.end_sum - self.n_dec * self.g

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting) or bool(self.ready)

    def add(self, request: Request) -> None:
        self.waiting.append(request)
        if request.remote_kv:
            self.remote_queued_tokens += request.input_tokens
        else:
            self.prefill_left += request.input_tokens + request.num_output_done

    def prefix_keys(self, r: Request) -> list[Hashable]:
        """The prompt's prefix keys here ([] without prefix caching or hash ids)."""
        if self.kv.prefix_caching and r.prefix_hashes:
            return self._block_keys(r)
        return []

    # -- decode group bookkeeping ------------------------------------------------------------
    def _context(self, r: Request) -> float:
        """Tokens whose KV exists for a running request, at the current step counter."""
        if r.decoding:
            return r.c0 + r.rho * (self.g - r.g0)
        return r.computed

    def _decode_steps(self, tokens: int) -> int:
        """Steps a request needs to emit `tokens` more tokens."""
        spec = self.spec
        if spec is None:
            return tokens
        if not spec.sampled:
            return max(1, math.ceil(tokens / spec.expected_tokens))
        # tokens a step = 1 + #{m : u < P(at least m drafts kept)}, one uniform per step
        survival = np.asarray(spec.survival)
        draws = max(16, int(tokens / spec.expected_tokens * 1.5) + 8)
        total, steps = 0, 0
        while True:
            per_step = 1 + (self.rng.random(draws)[:, None] < survival[None, :]).sum(axis=1)
            cum = total + np.cumsum(per_step)
            hit = int(np.searchsorted(cum, tokens, side="left"))
            if hit < draws:
                return steps + hit + 1
            total, steps = int(cum[-1]), steps + draws

    def _join_decode(self, r: Request, out_left: int) -> None:
        steps = self._decode_steps(out_left)
        r.decoding = True
        r.c0, r.g0 = r.computed, self.g
        r.rho = 1 if self.spec is None else out_left / steps
        self.lives += 1
        r.life = self.lives
        self.n_dec += 1
        self.k_dec += r.c0 - r.rho * r.g0
        self.r_dec += r.rho
        if self.incremental:
            self.phase[(r.c0 - r.g0) % self.bs] += 1
        heapq.heappush(self.ends, (self.g + steps, r.life, r))
        self.end_sum += self.g + steps
        if self.window and r.c0 < self.window:
            self.young.append(r)

    def _leave_decode(self, r: Request) -> None:
        r.computed = round(self._context(r))
        r.decoding = False
        r.life = 0  # its heap entry is now stale
        self.n_dec -= 1
        self.k_dec -= r.c0 - r.rho * r.g0
        self.r_dec -= r.rho
        if not self.n_dec:
            self.k_dec = self.r_dec = 0  # no float drift across busy periods
        if self.incremental:
            self.phase[(r.c0 - r.g0) % self.bs] -= 1
        if r in self.young:
            self.young.remove(r)

    # -- admission and preemption -------------------------------------------------------------
    def _admit(self, r: Request, now: float, cached_tokens: int) -> None:
        r.computed = cached_tokens
        self.running.append(r)
        self.prefilling.append(r)
        if r.first_scheduled_at != r.first_scheduled_at:  # NaN: first admission
            r.first_scheduled_at = now

    def _preempt_last(self) -> None:
        """Free the most recently admitted request's blocks; it recomputes from scratch."""
        r = self.running.pop()
        left = 0  # prompt tokens it still had to compute
        if r.decoding:
            end = self._end_step(r)
            self._leave_decode(r)
            self.end_sum -= end
            r.num_output_done = r.output_tokens - (end - self.g)
        else:
            self.prefilling.remove(r)
            left = r.input_tokens + r.num_output_done - r.computed
        self.prefill_left += r.input_tokens + r.num_output_done - left
        if self.kv.prefix_caching and not r.prefix_hashes and self.kv.unit_blocks == 1:
            self._keep_own_blocks(r)
        self._release(r)
        r.computed = 0
        r.num_preemptions += 1
        self.waiting.appendleft(r)

    def _keep_own_blocks(self, r: Request) -> None:
        """Index a preempted request's full blocks under keys of its own (a prompt without
        hash ids shares nothing, but with prefix caching its blocks stay cached after the
        preemption, as vLLM's hash of every full block keeps them): released tail first,
        they are evicted tail first, and readmission recomputes only what was evicted. (A
        run's requests carry hash ids all or none, as the trace loaders and the session
        generator make them, so these one-block keys never share a pool with coarser ones.)"""
        keys = r.block_keys or []
        full = r.computed // self.bs
        for j in range(len(keys), full):
            keys.append(("own", r.request_id, j))
        r.block_keys = keys
        self._register(r)

    def _window_blocks(self, r: Request) -> int:
        return self.window_blocks(r.input_tokens + r.output_tokens)

    def _reserved_table(self, r: Request) -> int:
        """Table blocks of a full reservation: the whole sequence, plus room to verify k
        drafts."""
        return ceil_div(r.input_tokens + r.output_tokens + self.lookahead, self.bs)

    def blocks_at_most(self, r: Request) -> int:
        """The most KV blocks this scheduler holds for `r` at once: its table (reserved
        whole; or, allocated as it goes, the computed prompt on a prefill replica, else every
        token but the last, whose KV is never computed) plus its sliding-window blocks."""
        if not self.incremental:
            table = self._reserved_table(r)
        elif self.prefill_only:
            table = ceil_div(r.input_tokens, self.bs)
        else:
            table = ceil_div(max(r.input_tokens + r.output_tokens - 1, r.input_tokens), self.bs)
        return table + self._window_blocks(r)

    def _release(self, r: Request) -> None:
        """Give back a request's blocks: indexed units stay cached, the rest are freed."""
        held = r.held_keys
        if held:
            self.kv.release(held)
            r.held_keys = []
        r.registered = 0
        table = ceil_div(r.computed, self.bs) if self.incremental else r.table_blocks
        r.table_blocks = 0
        self.kv.free(table + self._window_blocks(r) - len(held) * self.kv.unit_blocks)

    def _hold(self, r: Request) -> None:
        """Keep a prefilled request's blocks (prefill_only) until `release_held`."""
        table = ceil_div(r.computed, self.bs) if self.incremental else r.table_blocks
        self.held[r.request_id] = (r.held_keys, table + self._window_blocks(r))
        r.held_keys = []
        r.registered = 0
        r.table_blocks = 0

    def release_held(self, r: Request) -> None:
        """Free the blocks of a prefilled request whose KV has left (indexed ones stay cached)."""
        keys, table = self.held.pop(r.request_id)
        if keys:
            self.kv.release(keys)
        self.kv.free(table - len(keys) * self.kv.unit_blocks)

    def _reserve(self, r: Request) -> bool:
        """Blocks for a request whose KV will arrive (the queue head); False if they run out.

        Every full prompt unit this replica already caches is reused (the whole prompt's
        KV arrives, so unlike a prefill nothing has to be recomputed); the rest is sent.
        """
        bs, kv = self.bs, self.kv
        hits = idle = 0
        keys = self.prefix_keys(r)
        if keys:
            hits, idle = kv.match(keys, r.input_tokens // (bs * kv.unit_blocks))
        table = ceil_div(r.input_tokens, bs) if self.incremental else self._reserved_table(r)
        blocks = table + self._window_blocks(r) - hits * kv.unit_blocks
        if blocks + idle * kv.unit_blocks > kv.num_free:
            return False
        self.waiting.popleft()
        self.remote_queued_tokens -= r.input_tokens
        if hits:
            kv.acquire(keys[:hits])
        self.incoming[r.request_id] = (keys[:hits], table)
        r.decode_cached_tokens = min(hits * kv.unit_blocks * bs, r.input_tokens)
        kv.allocate(blocks)
        self.num_incoming += 1
        self.reserved.append(r)
        return True

    def activate(self, r: Request) -> None:
        """The KV of a reserved request has arrived: it joins at the next step."""
        self.ready.append(r)

    def _join_ready(self) -> None:
        """Arrived requests join the decode group (prompt computed, first token emitted)."""
        while self.ready and len(self.running) < self.engine.max_num_seqs:
            r = self.ready.popleft()
            self.num_incoming -= 1
            keys, table = self.incoming.pop(r.request_id)
            r.held_keys, r.registered = keys, len(keys)
            r.computed, r.table_blocks = r.input_tokens, table
            r.remote_kv = False
            self.running.append(r)
            if self.kv.prefix_caching and r.block_keys:
                self._register(r)  # index the prompt units that arrived
            self._join_decode(r, r.output_tokens - r.num_output_done)

    def _block_keys(self, r: Request) -> list[Hashable]:
        """Prefix keys of the prompt's full cache units.

        With hash blocks of H tokens a multiple of the engine block size B, a unit is one
        hash block (H/B engine blocks) and its key is the hash id, which names the whole
        prefix up to it. Otherwise a unit is one engine block, named by the hash id covering
        its last token together with its index. (The keys are kept on the request; the
        unit is set on every cache that uses them: a router or another replica of a
        disaggregated pair may have computed them first.)
        """
        per, bs, kv = r.hash_block_tokens, self.bs, self.kv
        unit = per // bs if per >= bs and per % bs == 0 else 1
        if kv.unit_blocks != unit:
            if kv.refs:
                raise ValueError("requests with different prefix-hash granularities")
            kv.unit_blocks = unit
        if r.block_keys is None:
            ids = r.prefix_hashes or ()
            if unit > 1:
                r.block_keys = list(ids[: r.input_tokens // per])
            else:
                full = min(r.input_tokens // bs, len(ids) * per // bs)
                r.block_keys = [(ids[((j + 1) * bs - 1) // per], j) for j in range(full)]
        return r.block_keys

    def _end_step(self, r: Request) -> int:
        for end, life, _ in self.ends:
            if life == r.life:
                return end
        raise RuntimeError(f"{r} missing from the finish heap")

    def _register(self, r: Request) -> None:
        """Index the prompt blocks a prefill chunk completed (prefix caching)."""
        keys = r.block_keys or []
        full = min(r.computed // (self.bs * self.kv.unit_blocks), len(keys))
        kv = self.kv
        for j in range(r.registered, full):
            if kv.register(keys[j]):
                r.held_keys.append(keys[j])
        r.registered = max(r.registered, full)

    # -- one step ----------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        """Decide this step's batch, allocating KV blocks (and preempting if needed)."""
        e, bs, kv = self.engine, self.bs, self.kv
        if self.ready:
            self._join_ready()
        self.holding = self.batch_waiting and self._hold_prompts()
        preempted = 0
        while True:
            budget = e.max_num_batched_tokens - self.n_dec * self.verify
            need_blocks = self.phase[-self.g % bs] if self.n_dec and self.incremental else 0
            chunks: list[tuple[Request, int]] = []
            for r in () if self.holding else self.prefilling:
                q = min(r.input_tokens + r.num_output_done - r.computed, budget)
                if q <= 0:
                    continue
                chunks.append((r, q))
                budget -= q
                if self.incremental:
                    need_blocks += ceil_div(r.computed + q, bs) - ceil_div(r.computed, bs)
            if need_blocks <= kv.num_free or not self.running:
                break
            self._preempt_last()
            preempted += 1
        kv.allocate(need_blocks)
        admitted = 0
        in_block = self.block_left > 0 and self.n_dec > 0
        if not preempted and self.waiting and not self.holding and not in_block:
            admitted = self._admit_waiting(budget, now, chunks)
        self.block_opened = self.block_steps > 1 and self.n_dec > 0 and not in_block
        if self.block_opened:
            self.block_left = self.block_steps  # this step opens a block of decode steps
        return self._plan(chunks, preempted, admitted)

    def _hold_prompts(self) -> bool:
        """Batch waiting: hold this step's prompts back? (counts the held steps)

        The prompts this step would start: the rest of those prefilling, then queued ones in
        order while the token budget and `max_num_seqs` allow (each counted whole, as
        TensorRT-LLM counts a context request's tokens).
        """
        e = self.engine
        if not self.n_dec or not (self.prefilling or self.waiting):
            return False
        budget = e.max_num_batched_tokens - self.n_dec * self.verify
        tokens = sum(r.input_tokens + r.num_output_done - r.computed for r in self.prefilling)
        prompts = len(self.prefilling)
        seats = e.max_num_seqs - len(self.running)
        for r in self.waiting:
            if tokens >= budget or seats <= 0:
                break
            if not r.remote_kv:  # (a KV transfer to receive is not a prompt)
                tokens += r.input_tokens + r.num_output_done
                prompts += 1
                seats -= 1
        if not prompts:
            return False
        # TensorRT-LLM stops waiting at count >= timeout or tokens >= ratio x budget (so
        # either limit at 0 turns waiting off)
        full = tokens + self.n_dec * self.verify >= e.batch_wait_tokens_ratio * (
            e.max_num_batched_tokens
        )
        if full or self.wait_count >= e.batch_wait_steps:
            self.wait_count = 0
            return False
        self.wait_count += 1
        return True

    def _admit_waiting(self, budget: int, now: float, chunks: list[tuple[Request, int]]) -> int:
        e, bs, kv = self.engine, self.bs, self.kv
        admitted = 0
        while self.waiting and budget > 0 and len(self.running) < e.max_num_seqs:
            r = self.waiting[0]
            if r.remote_kv:
                if not self._reserve(r):
                    break
                continue
            tokens = r.input_tokens + r.num_output_done
            hits = idle = 0
            if kv.prefix_caching and (r.prefix_hashes or r.block_keys):
                # at least the last prompt token is computed, to produce the next token
                keys = self._block_keys(r)
                hits, idle = kv.match(keys, (tokens - 1) // (bs * kv.unit_blocks))
            cached = hits * kv.unit_blocks * bs
            todo = tokens - cached
            q = min(todo, budget)
            if not e.enable_chunked_prefill and todo > budget:
                # unchunked, it waits for room; one that can never fit the budget (recomputing
                # a prompt and its output after preemption) runs alone when nothing else runs
                if todo <= e.max_num_batched_tokens or self.running or chunks:
                    break
                q = todo
            table = ceil_div(cached + q, bs) if self.incremental else self._reserved_table(r)
            blocks = table + self._window_blocks(r) - hits * kv.unit_blocks
            if blocks + idle * kv.unit_blocks > kv.num_free:
                break
            self.waiting.popleft()
            if hits:
                kv.acquire(keys[:hits])
                r.held_keys = keys[:hits]
                r.registered = hits
            if r.first_scheduled_at != r.first_scheduled_at:  # NaN: first admission
                r.cached_tokens = cached
            self._admit(r, now, cached)
            self.prefill_left -= cached
            r.table_blocks = table
            kv.allocate(blocks)
            chunks.append((r, q))
            budget -= q
            admitted += 1
        return admitted

    def _plan(self, chunks: list[tuple[Request, int]], preempted: int, admitted: int) -> StepPlan:
        n, v = self.n_dec, self.verify
        ctx = self.k_dec + self.r_dec * self.g  # Σ context of the decode group
        pairs, read = v * ctx + n * v * (v + 1) // 2, ctx
        decode_tokens = round(self.emitted + self.r_dec) - round(self.emitted)
        prefill_tokens = samples = prefill_pairs = 0
        for r, q in chunks:
            c = r.computed
            prefill_pairs += q * c + q * (q + 1) // 2
            read += c
            prefill_tokens += q
            samples += c + q == r.input_tokens + r.num_output_done
        pairs_w = read_w = 0
        if self.window:
            pairs_w, read_w = self._window_counts(chunks)
        shape = StepShape(
            n * v + prefill_tokens,
            n * v + samples,
            pairs + prefill_pairs,
            read,
            pairs_w,
            read_w,
            prefill_pairs,
            prefill_tokens,
        )
        pure = not chunks and not preempted and n > 0
        return StepPlan(
            shape,
            tuple(chunks),
            n,
            decode_tokens,
            prefill_tokens,
            preempted,
            admitted,
            len(self.waiting),
            pure,
        )

    def _window_counts(self, chunks: list[tuple[Request, int]]) -> tuple[int, int]:
        """Σ attended context and KV read with every token's context capped at the window."""
        w, n = self.window, self.n_dec
        young_ctx = [round(self._context(r)) for r in self.young]
        read_w = w * (n - len(young_ctx)) + sum(young_ctx)
        pairs_w = w * (n - len(young_ctx)) + sum(min(c + 1, w) for c in young_ctx)

        for r, q in chunks:
            pairs_w += window_sum(r.computed + q, w) - window_sum(r.computed, w)
            read_w += min(r.computed, w)
        return pairs_w, read_w

    # -- stretches of pure decode ------------------------------------------------------------
    def interruptible(self) -> bool:
        """Could a request arriving now be admitted before the running set changes?

        After a pure-decode step, admission ran and took nobody (or the queue was empty);
        during a stretch the batch is fixed and free blocks only shrink, so a blocked queue
        stays blocked. Only an arrival into an empty queue with room to spare can matter.
        """
        if self.holding:  # an arrival may fill the batch that held prompts wait for
            return True
        if self.block_steps > 1:  # admission waits for the block's end, where stretches stop
            return False
        return not self.waiting and len(self.running) < self.engine.max_num_seqs

    def next_finish_step(self) -> int:
        """The step counter at which the first decoding request finishes (none: -1)."""
        ends = self.ends
        while ends and ends[0][1] != ends[0][2].life:  # drop entries of preempted requests
            heapq.heappop(ends)
        return ends[0][0] if ends else -1

    def plan_stretch(self, plan: StepPlan, max_steps: int) -> Stretch:
        """Extend a pure-decode step into as many identical steps as nothing interrupts.

        Call right after `schedule` returned `plan` (step 0's blocks are allocated). The
        stretch stops at the first completion (the step emitting someone's last token) and
        before KV blocks would run out.
        """
        n, bs = self.n_dec, self.bs
        steps = max(1, min(self.next_finish_step() - self.g, max_steps))
        if self.holding:  # held prompts start at the step whose count reaches the limit
            steps = min(steps, self.engine.batch_wait_steps - self.wait_count + 1)
        if self.block_left:  # a multi-step block ends where the scheduler runs again
            steps = min(steps, self.block_left)
        stretch = Stretch(
            steps,
            n,
            self.k_dec,
            self.r_dec,
            self.g,
            self.verify,
            bs,
            tuple(self.phase),
            self.incremental,
            self.emitted,
        )
        free = self.kv.num_free
        if self.incremental and n * ceil_div(steps - 1, bs) > free:  # find the last step that fits
            lo, hi = 1, steps  # extra_blocks(lo) <= free always (step 0 is allocated)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if stretch.extra_blocks(mid) <= free else (lo, mid - 1)
            stretch = stretch._replace(num_steps=lo)
        if self.window:
            pairs_w, read_w = self._window_stretch(np.arange(stretch.num_steps, dtype=I64))
            stretch = stretch._replace(
                pairs_w=tuple(pairs_w.tolist()), read_w=tuple(read_w.tolist())
            )
        return stretch

    def _window_stretch(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per step: Σ min(c_j + s + 1, w) (pairs) and Σ min(c_j + s, w) (read)."""
        w, n = self.window, self.n_dec
        young = np.asarray([round(self._context(r)) for r in self.young], dtype=I64)
        old = w * (n - young.size)
        if not young.size:
            full = np.full(s.size, old, dtype=I64)
            return full + 0, full
        grid = young[None, :] + s[:, None]
        read_w = old + np.minimum(grid, w).sum(axis=1)
        pairs_w = old + np.minimum(grid + 1, w).sum(axis=1)
        return pairs_w, read_w

    # -- commit ------------------------------------------------------------------------------
    def commit_step(self, plan: StepPlan, end_at: float) -> list[Request]:
        """Apply one step's tokens at `end_at`; returns the requests that finished."""
        return self._advance(1, end_at, end_at, plan.chunks)

    def commit_stretch(
        self, stretch: Stretch, steps: int, first_end_at: float, end_at: float
    ) -> list[Request]:
        """Apply the first `steps` steps of a stretch (step 0 was planned by `schedule`)."""
        self.kv.allocate(stretch.extra_blocks(steps))
        if self.holding:  # steps 1.. of the stretch held the prompts too
            self.wait_count += steps - 1
        return self._advance(steps, first_end_at, end_at, ())

    def _advance(
        self,
        steps: int,
        first_end_at: float,
        end_at: float,
        chunks: tuple[tuple[Request, int], ...],
    ) -> list[Request]:
        self.emitted = (
            self.emitted + self.r_dec if steps == 1 else self.emitted + self.r_dec * steps
        )
        self.g += steps
        if self.block_left:
            self.block_left = max(self.block_left - steps, 0)
        finished: list[Request] = []
        while 0 <= self.next_finish_step() <= self.g:
            end, _, r = heapq.heappop(self.ends)
            self._leave_decode(r)
            self.end_sum -= end
            r.num_output_done = r.output_tokens
            finished.append(r)
        if self.window and self.young:
            self.young = [r for r in self.young if self._context(r) < self.window]
        handed: list[Request] = []
        for r, q in chunks:
            r.computed += q
            self.prefill_left -= q
            if r.block_keys and self.kv.prefix_caching:  # (keys may come from another pool)
                self._register(r)
            if r.computed < r.input_tokens + r.num_output_done:
                continue
            self.prefilling.remove(r)
            r.num_output_done += 1
            if r.first_token_at != r.first_token_at:  # NaN: its first token
                r.first_token_at = first_end_at
            out_left = r.output_tokens - r.num_output_done
            if out_left <= 0:
                finished.append(r)
            elif self.prefill_only:
                handed.append(r)
            else:
                self._join_decode(r, out_left)
        for r in finished:
            self._release(r)
            self.running.remove(r)
            r.finished_at = end_at
            r.status = "finished"
        for r in handed:  # its decode runs elsewhere; the blocks stay until the KV has left
            self._hold(r)
            self.running.remove(r)
            r.status = "prefilled"
            finished.append(r)
        return finished
