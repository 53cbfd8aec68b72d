"""The SimPy process of one engine: submitted requests in, timed steps and finished requests out.

Each loop iteration schedules one step, asks the step-time model for its seconds, waits
that long on SimPy's clock and commits the tokens. When a step is pure decode and nothing
can change the next one (no admissible arrival, no completion, no block shortage), the
replica plans the whole stretch of identical-shape steps at once and waits once; an
arrival that could be admitted interrupts it at the next step boundary. Stretches give the
same timestamps as stepping (tests/test_replica.py proves it).

Disaggregated serving (the cluster wires it, sim/simulate.py): a prefill replica
(`prefill_only`) hands each prefilled request to `on_finish` with status "prefilled" and
holds its blocks until `release_held`; a decode replica takes handoffs with `receive`,
reports each KV reservation to `on_reserve` (the transfer starts then) and takes the
arrived KV with `activate`. Times passed in (`at`) are exact; a woken engine starts there.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Hashable
from typing import NamedTuple

import numpy as np
import simpy

from sim.kv_cache import KVCache
from sim.plan import ReplicaPlan, max_model_len, memory_plan
from sim.request import Request
from sim.scheduler import Scheduler, StepPlan, Stretch
from sim.step_time import EngineOverhead, StepTimeModel

STEP_COLUMNS = (
    "replica",
    "start_at",
    "duration_s",
    "num_seqs",
    "num_tokens",
    "num_prefill_tokens",
    "num_prefill_seqs",
    "num_decode_seqs",
    "num_decode_tokens",
    "num_output_tokens",
    "kv_blocks_used",
    "kv_blocks_total",
    "num_waiting",
    "num_preempted",
)
FLOAT_COLUMNS = ("start_at", "duration_s")


class StretchRecord(NamedTuple):
    """What one stretch's step rows are expanded from after the run."""

    start_at: float
    durations_s: list[float]
    ends_at: list[float]  # ends of all but the last step (= starts of the next)
    stretch: Stretch
    kv_used0: int  # blocks in use after step 0
    num_waiting: int
    arrivals_at: tuple[float, ...]


class Replica:
    """One model instance (a TP group of GPUs) running a continuous-batching engine."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        plan: ReplicaPlan,
        step_model: StepTimeModel,
        *,
        max_stretch_steps: int = 4096,
        on_finish: Callable[[Request], None] | None = None,
        draft_model: StepTimeModel | None = None,
        rng: np.random.Generator | None = None,
        prefill_only: bool = False,
        on_reserve: Callable[[Request, float], None] | None = None,
        on_step_start: Callable[[StepPlan, float, float], None] | None = None,
    ) -> None:
        self.env = env
        self.index = index
        self.plan = plan
        self.memory = memory_plan(plan)
        self.max_len = max_model_len(plan)
        self.kv = KVCache(self.memory.num_blocks, self.memory.block_size, plan.prefix_caching)
        self.scheduler = Scheduler(
            plan.engine,
            self.kv,
            plan.model.sliding_window,
            plan.speculation,
            rng,
            prefill_only,
            self.memory.window_blocks,
        )
        self.step_model = step_model
        self.overhead = EngineOverhead.of(plan.engine)
        self.draft_model = draft_model  # speculative drafting cost (None: free or none)
        self._draft_s: dict[int, float] = {}
        self._block_cpu_s = 0.0  # multi-step: CPU seconds of each decode step of the block
        self.max_stretch_steps = max(1, max_stretch_steps)
        self.on_finish = on_finish
        self.prefill_only = prefill_only
        self.on_reserve = on_reserve  # (request, time): its KV blocks are reserved here
        self.on_step_start = on_step_start  # (plan, start, end) of every single step
        self.clock = 0.0  # end of the last step (SimPy's clock may differ by rounding)
        self.rows: list[tuple[float | int, ...]] = []
        self.stretch_rows: list[StretchRecord] = []
        self._wake: simpy.Event | None = None
        self._interruptible = False
        self._cut_for_ready = False  # an arrived KV could join the running stretch
        self._cut_at = 0.0
        self._arriving = 0  # submitted, still in the front end (request_overhead_s)
        self._arriving_tokens = 0
        self._live: tuple[Stretch, list[float]] | None = None  # the stretch running now
        self._in_stretch = False
        self._stretch_arrivals: list[float] = []
        self.process = env.process(self._run())

    # -- what the router sees ---------------------------------------------------------------
    @property
    def num_outstanding(self) -> int:
        """Requests queued, running, receiving KV, or still in the front end."""
        return self.scheduler.num_outstanding + self._arriving

    # During a stretch the engine has not yet committed the steps that have run (their blocks
    # are allocated, and LRU cached units evicted, when it ends); these counters add what
    # stepping would show by now, so routing never depends on fast_forward.
    @property
    def kv_usage(self) -> float:
        """Blocks in use, plus those queued handoffs will reserve, over all blocks."""
        extra = self._progress()[1] if self._live is not None else 0
        queued = -(-self.scheduler.remote_queued_tokens // self.kv.block_size)
        return (self.kv.num_used + extra + queued) / self.kv.num_blocks

    @property
    def prefill_tokens_left(self) -> int:
        return self.scheduler.prefill_left + self._arriving_tokens

    @property
    def decode_tokens_left(self) -> int:
        sched = self.scheduler
        steps = self._progress()[0] if self._live is not None else 0
        return sched.decode_left - sched.n_dec * steps

    def prefix_keys(self, request: Request) -> list[Hashable]:
        return self.scheduler.prefix_keys(request)

    def cached_prefix_tokens(self, request: Request) -> int:
        """Leading prompt tokens in the prefix cache, as admission would count them."""
        keys = self.scheduler.prefix_keys(request)
        if not keys:
            return 0
        per = self.kv.block_size * self.kv.unit_blocks
        limit = (request.input_tokens + request.num_output_done - 1) // per
        refs, gone = self.kv.refs, self._evicted_by_now()
        hits = 0
        for key in keys[:limit]:
            if key not in refs or key in gone:
                break
            hits += 1
        return hits * per

    def cached_units(self) -> tuple[frozenset[Hashable], int]:
        """The prefix index's units and tokens per unit (for published snapshots)."""
        units = frozenset(self.kv.refs) - self._evicted_by_now()
        return units, self.kv.block_size * self.kv.unit_blocks

    def _progress(self) -> tuple[int, int]:
        """Steps of the running stretch done by now, and blocks the steps so far add."""
        assert self._live is not None
        stretch, ends = self._live
        step = min(bisect.bisect_right(ends, self.env.now), stretch.num_steps - 1)
        return step, stretch.extra_blocks(step + 1)

    def _evicted_by_now(self) -> frozenset[Hashable]:
        if self._live is None:
            return frozenset()
        short = self._progress()[1] - self.kv.free_blocks
        if short <= 0:
            return frozenset()
        return frozenset(itertools.islice(self.kv.evictable, -(-short // self.kv.unit_blocks)))

    def rejection(self, request: Request) -> str:
        """Why this replica could never serve `request` ('' if it can)."""
        total = request.input_tokens + request.output_tokens
        if total > self.max_len:
            return (
                f"prompt+output {total} tokens exceeds max_model_len {self.max_len} of "
                f"{self.plan.model.name}"
            )
        engine = self.plan.engine
        receives_kv = self.on_reserve is not None  # a decode replica never computes the prompt
        if not engine.enable_chunked_prefill and not receives_kv:
            budget = engine.max_num_batched_tokens
            if request.input_tokens > budget:
                return (
                    f"prompt {request.input_tokens} tokens exceeds "
                    f"engine.max_num_batched_tokens {budget} with chunked prefill off; set "
                    f"engine.enable_chunked_prefill=true or raise engine.max_num_batched_tokens"
                )
        if self.prefill_only:  # holds the prompt only
            total = request.input_tokens + 1
        if total > self.memory.kv_capacity_tokens:
            return (
                f"prompt+output {total} tokens exceeds the KV cache of one replica "
                f"({self.memory.kv_capacity_tokens} tokens)"
            )
        blocks, have = self.scheduler.blocks_at_most(request), self.scheduler.kv.num_blocks
        if blocks > have:
            return (
                f"prompt+output {request.input_tokens + request.output_tokens} tokens need "
                f"{blocks} KV blocks here (sliding-window layers, reservation and draft "
                f"lookahead included) and one replica has {have}"
            )
        return ""

    def submit(self, request: Request) -> None:
        """Take a request (after the engine's front-end delay, if any, it joins the queue)."""
        reason = self.rejection(request)
        if reason:
            request.reject(reason)
            return
        request.replica = self.index
        delay = self.plan.engine.request_overhead_s
        if delay > 0:  # the router counts it (and its uncached prompt) from now on
            tokens = request.input_tokens - self.cached_prefix_tokens(request)
            self._arriving += 1
            self._arriving_tokens += tokens
            self.env.timeout(delay).callbacks.append(lambda _e: self._arrive(request, tokens))
        else:
            self._enqueue(request)

    def _arrive(self, request: Request, tokens: int) -> None:
        self._arriving -= 1
        self._arriving_tokens -= tokens
        self._enqueue(request)

    def _enqueue(self, request: Request) -> None:
        """Queue a request; wake the engine or cut a decode stretch if it could join."""
        self.scheduler.add(request)
        if self._wake is not None:
            if not self._wake.triggered:
                self._wake.succeed()
        elif self._interruptible:
            self._cut(self.env.now)
        elif self._in_stretch:
            self._stretch_arrivals.append(self.env.now)

    def _cut(self, at: float) -> None:
        """End the running stretch with the step in progress at `at` (once per stretch)."""
        self._interruptible = self._cut_for_ready = False
        self._cut_at = at
        self.process.interrupt()

    def _wake_at(self, at: float) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed(at)

    # -- disaggregated serving ----------------------------------------------------------------
    def receive(self, request: Request) -> None:
        """A prefilled request whose KV will come from a prefill replica (queued as usual)."""
        request.remote_kv = True
        request.replica = self.index
        self._enqueue(request)

    def activate(self, request: Request, at: float) -> None:
        """The KV of a reserved request arrived at `at`: it decodes from the next step."""
        self.scheduler.activate(request)
        if self._wake is not None:
            self._wake_at(at)
        elif self._cut_for_ready:
            self._cut(at)

    def release_held(self, request: Request, at: float) -> None:
        """A prefilled request's KV has left (at `at`): free its blocks here."""
        self.scheduler.release_held(request)
        if self.scheduler.waiting:  # its blocks may admit a queued request
            self._wake_at(at)

    # -- the engine loop ----------------------------------------------------------------------
    def _run(self):  # type: ignore[no-untyped-def]
        env, sched, model = self.env, self.scheduler, self.step_model
        while True:
            if not sched.has_work():
                yield from self._sleep()
            plan = sched.schedule(self.clock)
            if sched.reserved:
                self._reserved()
            if not plan.num_decode_seqs and not plan.chunks and not plan.num_preempted:
                yield from self._sleep()  # queued requests wait for blocks held elsewhere
                continue
            shape = plan.shape
            fixed_s = model.token_seconds(shape.num_tokens, shape.num_samples)
            if self.draft_model is not None and plan.num_decode_seqs:
                fixed_s += self._drafting_s(plan.num_decode_seqs)
            cpu_s = self.overhead.cpu_seconds(plan.num_seqs, plan.num_waiting)
            if sched.block_opened:  # multi-step: the block's CPU, paid once, set now
                self._block_cpu_s = cpu_s / sched.block_steps
            if plan.pure_decode and sched.block_steps > 1:
                cpu_s = self._block_cpu_s
            if plan.pure_decode and self.max_stretch_steps > 1:
                yield from self._stretch(plan, fixed_s, cpu_s)
                continue
            gpu_s = fixed_s + model.attention_seconds(
                shape.num_tokens,
                shape.attn_pairs,
                shape.kv_read_tokens,
                shape.attn_pairs_window,
                shape.kv_read_tokens_window,
                shape.prefill_pairs,
                shape.prefill_tokens,
            )
            duration = self.overhead.step_seconds(gpu_s, cpu_s)
            start = self.clock
            end = start + duration
            if self.on_step_start is not None:
                self.on_step_start(plan, start, end)
            yield env.timeout(max(end - env.now, 0.0))
            self.clock = end
            self._record_step(plan, start, duration)
            self._finish(sched.commit_step(plan, end))

    def _stretch(self, plan: StepPlan, fixed_s: float, cpu_s: float):  # type: ignore[no-untyped-def]
        env, sched = self.env, self.scheduler
        stretch = sched.plan_stretch(plan, self.max_stretch_steps)
        durations, ends = self._timeline(stretch, fixed_s, cpu_s)
        steps = stretch.num_steps
        # with a CPU cost per request in flight, any arrival changes the next step's time
        # (not within a multi-step block: its CPU cost was set when it was scheduled)
        self._interruptible = steps > 1 and (
            sched.interruptible() or (self.overhead.inflight_s > 0 and sched.block_steps == 1)
        )
        self._cut_for_ready = (  # (only a decode replica of a disaggregated pair receives)
            self.on_reserve is not None
            and steps > 1
            and len(sched.running) < sched.engine.max_num_seqs
        )
        self._in_stretch = True
        self._live = (stretch, ends)
        self._stretch_arrivals = []
        try:
            yield env.timeout(max(float(ends[-1]) - env.now, 0.0))
        except simpy.Interrupt:
            # finish the step in progress, then stop
            steps = min(bisect.bisect_right(ends, self._cut_at) + 1, steps)
            yield env.timeout(max(float(ends[steps - 1]) - env.now, 0.0))
        self._interruptible = self._cut_for_ready = False
        self._in_stretch = False
        self._live = None
        start = self.clock
        self.clock = float(ends[steps - 1])
        self._record_stretch(plan, stretch, steps, start, durations, ends)
        self._finish(sched.commit_stretch(stretch, steps, float(ends[0]), self.clock))

    def _sleep(self):  # type: ignore[no-untyped-def]
        """Wait for an arrival, an arrived KV or freed blocks; start at their time."""
        self._wake = self.env.event()
        at = yield self._wake
        self._wake = None
        self.clock = self.env.now if at is None else max(at, self.clock)

    def _reserved(self) -> None:
        """Report the KV reservations the last schedule made (their transfers start now)."""
        reserved, self.scheduler.reserved = self.scheduler.reserved, []
        if self.on_reserve is not None:
            for request in reserved:
                self.on_reserve(request, self.clock)

    def _drafting_s(self, num_seqs: int) -> float:
        """k sequential draft passes over the decoding sequences (memoised by batch size)."""
        cached = self._draft_s.get(num_seqs)
        if cached is None:
            assert self.draft_model is not None and self.plan.speculation is not None
            k = self.plan.speculation.num_draft_tokens
            cached = k * self.draft_model.token_seconds(num_seqs, num_seqs)
            self._draft_s[num_seqs] = cached
        return cached

    def _timeline(
        self, stretch: Stretch, fixed_s: float, cpu_s: float
    ) -> tuple[list[float], list[float]]:
        """Per-step durations and end times; t_k = (((clock + d0) + d1) + ...) as stepping."""
        st = stretch
        n, v, g0 = st.num_seqs, st.verify, st.g0
        tokens, extra = n * v, n * v * (v + 1) // 2
        contexts = [st.k_dec + st.r_dec * (g0 + s) for s in range(st.num_steps)]
        if st.pairs_w is None or st.read_w is None:
            gpu = self.step_model.decode_seconds(fixed_s, tokens, contexts, v, extra)
        else:
            attention = self.step_model.attention_seconds
            gpu = [
                fixed_s + attention(tokens, v * x + extra, x, pw, rw)
                for x, pw, rw in zip(contexts, st.pairs_w, st.read_w, strict=True)
            ]
        if cpu_s or self.overhead.overlap:  # the same composition as a single step
            combine = self.overhead.step_seconds
            durations = [combine(g, cpu_s) for g in gpu]
        else:
            durations = gpu
        ends = list(itertools.accumulate(durations, initial=self.clock))
        del ends[0]
        return durations, ends

    def _finish(self, finished: list[Request]) -> None:
        if self.on_finish is not None:
            for request in finished:
                self.on_finish(request)

    # -- step rows (data for metrics; nothing is aggregated here) -----------------------------
    def _record_step(self, plan: StepPlan, start: float, duration: float) -> None:
        self.rows.append(
            (
                self.index,
                start,
                duration,
                plan.num_seqs,
                plan.shape.num_tokens,
                plan.num_prefill_tokens,
                len(plan.chunks),
                plan.num_decode_seqs,
                plan.num_decode_tokens,
                plan.shape.num_samples
                - plan.num_decode_seqs * self.scheduler.verify
                + plan.num_decode_tokens,
                self.kv.num_used,
                self.kv.num_blocks,
                plan.num_waiting,
                plan.num_preempted,
            )
        )

    def _record_stretch(
        self,
        plan: StepPlan,
        stretch: Stretch,
        steps: int,
        start: float,
        durations: list[float],
        ends: list[float],
    ) -> None:
        """Keep what the stretch's rows need; `step_columns` expands them at the end."""
        self.stretch_rows.append(
            StretchRecord(
                start_at=start,
                durations_s=durations[:steps],
                ends_at=ends[: steps - 1],
                stretch=stretch,
                kv_used0=self.kv.num_used,
                num_waiting=plan.num_waiting,
                arrivals_at=tuple(self._stretch_arrivals),
            )
        )

    def _expand_stretches(self) -> dict[str, np.ndarray] | None:
        records = self.stretch_rows
        if not records:
            return None
        chain = itertools.chain.from_iterable
        lengths = np.asarray([len(r.durations_s) for r in records])
        total = int(lengths.sum())
        durations = np.fromiter(chain(r.durations_s for r in records), np.float64, total)
        starts = np.fromiter(chain([r.start_at, *r.ends_at] for r in records), np.float64, total)
        offsets = np.cumsum(lengths) - lengths
        first = np.repeat(offsets, lengths)
        s = np.arange(total) - first  # step index within its stretch
        n = np.repeat([r.stretch.num_seqs for r in records], lengths)
        # blocks added by steps 1..s: the phase table of each stretch, summed per stretch
        bs = records[0].stretch.block_size
        phases = np.asarray([r.stretch.phase for r in records], dtype=np.int64)
        g0 = np.repeat([r.stretch.g0 for r in records], lengths)
        added = phases[np.repeat(np.arange(len(records)), lengths), (-(g0 + s)) % bs]
        added[s == 0] = 0
        cum = np.cumsum(added)
        extra = cum - (cum[first] - added[first])
        kv_used = np.repeat([r.kv_used0 for r in records], lengths) + extra
        waiting = np.repeat([r.num_waiting for r in records], lengths)
        for r, lo, length in zip(records, offsets, lengths, strict=True):
            if r.arrivals_at:
                seg = starts[lo : lo + length]
                waiting[lo : lo + length] += np.searchsorted(r.arrivals_at, seg, side="right")
        zeros = np.zeros(total, dtype=np.int64)
        verify = np.repeat([r.stretch.verify for r in records], lengths)
        # tokens committed per step: the group's expected count, rounded so it adds up
        e0 = np.repeat([r.stretch.emitted0 for r in records], lengths)
        rate = np.repeat([r.stretch.r_dec for r in records], lengths)
        tokens = (np.round(e0 + rate * (s + 1)) - np.round(e0 + rate * s)).astype(np.int64)
        return {
            "replica": np.full(total, self.index, dtype=np.int64),
            "start_at": starts,
            "duration_s": durations,
            "num_seqs": n,
            "num_tokens": n * verify,
            "num_prefill_tokens": zeros,
            "num_prefill_seqs": zeros,
            "num_decode_seqs": n,
            "num_decode_tokens": tokens,
            "num_output_tokens": tokens,
            "kv_blocks_used": kv_used,
            "kv_blocks_total": np.full(total, self.kv.num_blocks, dtype=np.int64),
            "num_waiting": waiting,
            "num_preempted": zeros,
        }

    def step_columns(self) -> dict[str, np.ndarray]:
        """All step rows of this replica as columns, in time order."""
        parts = []
        if self.rows:
            table = np.asarray(self.rows, dtype=np.float64)  # exact: counts are far below 2**53
            cols = {c: table[:, i] for i, c in enumerate(STEP_COLUMNS)}
            parts.append(
                {c: v if c in FLOAT_COLUMNS else v.astype(np.int64) for c, v in cols.items()}
            )
        stretches = self._expand_stretches()
        if stretches is not None:
            parts.append(stretches)
        if not parts:
            return {c: np.zeros(0) for c in STEP_COLUMNS}
        cols = {c: np.concatenate([p[c] for p in parts]) for c in STEP_COLUMNS}
        order = np.argsort(cols["start_at"], kind="stable")
        return {c: v[order] for c, v in cols.items()}
