"""KV transfer links: transfers (bytes over a path of links, a start time) in, end times out.

A `Link` is one port with a bandwidth and a latency: the egress of a prefill replica's GPUs
or the ingress of a decode replica's, over NVLink inside a scale-up domain or over the
per-GPU NICs (RDMA) across nodes (sim/cluster.py builds them). A transfer crosses a path
(sender port, receiver port): it waits the path's latency (the largest of its links'), then
moves its bytes at the rate the `Network` gives it:

- `fair`: max-min fair sharing (processor sharing generalised to paths). Progressive
  filling: the link with the smallest bandwidth per unfinished transfer splits it equally
  among them; those transfers are fixed at that rate, their bandwidth is taken from the
  other links of their paths, and so on.
- `fifo`: transfers in the order they became ready take what their path has left: the
  first gets its path's bottleneck, a later one only bandwidth the earlier ones leave
  unused (usually none until they end).

Rates are recomputed whenever a transfer starts moving bytes or ends, so a lone transfer
takes `latency + bytes / bandwidth`, and two equal transfers that start together on one
link end together at `latency + 2 * bytes / bandwidth`.

`not_before` models layer-by-layer streaming (link.overlap): a transfer that overlaps the
prefill's last chunk cannot end before the last layer's KV exists and has been sent; its
bytes may be done earlier (they then stop taking bandwidth), but it ends at `not_before`.

Times are exact floats computed from the start times passed in, never read from SimPy's
clock (which only orders events): runs that pass the same times get the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import simpy

FAIRNESS = ("fair", "fifo")
DONE_FRACTION = 1e-12  # bytes left below this share of a transfer count as sent (rounding)


@dataclass(frozen=True)
class Link:
    """One port: `bytes_per_s` shared by the transfers crossing it, `latency_s` per transfer."""

    name: str
    kind: str  # nvlink | rdma
    bytes_per_s: float
    latency_s: float


class Transfer:
    """One KV transfer in flight (mutable: bytes left, current rate)."""

    __slots__ = (
        "end_at",
        "index",
        "links",
        "not_before",
        "num_bytes",
        "on_done",
        "rate",
        "ready_at",
        "remaining",
        "sent_at",
        "start_at",
    )

    def __init__(
        self,
        index: int,
        links: tuple[Link, ...],
        num_bytes: float,
        start_at: float,
        not_before: float,
        on_done: Callable[[Transfer], None],
    ) -> None:
        self.index = index
        self.links = links
        self.num_bytes = num_bytes
        self.start_at = start_at
        self.ready_at = start_at + max(link.latency_s for link in links)
        self.not_before = not_before
        self.on_done = on_done
        self.remaining = float(num_bytes)
        self.rate = 0.0
        self.sent_at = math.nan  # when its last byte arrived
        self.end_at = math.nan


def fair_rates(transfers: Sequence[Transfer]) -> list[float]:
    """Max-min fair rates by progressive filling (ties: the first link met)."""
    cap: dict[Link, float] = {}
    count: dict[Link, int] = {}
    for t in transfers:
        for link in t.links:
            cap[link] = link.bytes_per_s
            count[link] = count.get(link, 0) + 1
    rates = [0.0] * len(transfers)
    open_ = list(range(len(transfers)))
    while open_:
        bottleneck = min((lk for lk in count if count[lk] > 0), key=lambda lk: cap[lk] / count[lk])
        share = cap[bottleneck] / count[bottleneck]
        still = []
        for i in open_:
            links = transfers[i].links
            if bottleneck in links:
                rates[i] = share
                for link in links:
                    cap[link] = max(cap[link] - share, 0.0)
                    count[link] -= 1
            else:
                still.append(i)
        open_ = still
    return rates


def fifo_rates(transfers: Sequence[Transfer]) -> list[float]:
    """Work-conserving FIFO: in ready order, each takes what its path has left."""
    cap: dict[Link, float] = {}
    for t in transfers:
        for link in t.links:
            cap[link] = link.bytes_per_s
    rates = []
    for t in transfers:  # kept in ready order
        rate = min(cap[link] for link in t.links)
        for link in t.links:
            cap[link] -= rate
        rates.append(rate)
    return rates


RATES: dict[str, Callable[[Sequence[Transfer]], list[float]]] = {
    "fair": fair_rates,
    "fifo": fifo_rates,
}


class Network:
    """All links of a cluster and the transfers moving over them."""

    def __init__(self, env: simpy.Environment, fairness: str = "fair") -> None:
        if fairness not in RATES:
            raise ValueError(f"link.fairness={fairness!r}: use one of {', '.join(FAIRNESS)}")
        self.env = env
        self.rates = RATES[fairness]
        self.active: list[Transfer] = []  # moving bytes, in ready order
        self.done: list[Transfer] = []
        self.now = 0.0  # exact time of the last rate change
        self._generation = 0
        self._count = 0

    def start(
        self,
        links: Sequence[Link],
        num_bytes: float,
        start_at: float,
        on_done: Callable[[Transfer], None],
        not_before: float = 0.0,
    ) -> Transfer:
        """Begin a transfer at `start_at` (>= the last event's time); `on_done` at its end."""
        if not links:
            raise ValueError("a transfer needs a path of at least one link")
        t = Transfer(self._count, tuple(links), num_bytes, start_at, not_before, on_done)
        self._count += 1
        self._at(t.ready_at, lambda: self._ready(t))
        return t

    # -- events ----------------------------------------------------------------------------
    def _at(self, when: float, action: Callable[[], None]) -> None:
        event = self.env.timeout(max(when - self.env.now, 0.0))
        event.callbacks.append(lambda _event: action())

    def _advance(self, now: float) -> None:
        dt = now - self.now
        if dt > 0:
            for t in self.active:
                t.remaining -= t.rate * dt
        self.now = max(self.now, now)

    def _ready(self, t: Transfer) -> None:
        self._advance(t.ready_at)
        if t.remaining <= 0:
            self._sent(t, t.ready_at)
        else:
            self.active.append(t)
        self._reschedule()

    def _reschedule(self) -> None:
        """New rates for the active transfers; one timer for the first to finish."""
        self._generation += 1
        if not self.active:
            return
        for t, rate in zip(self.active, self.rates(self.active), strict=True):
            t.rate = rate
        now = self.now
        finish = [now + t.remaining / t.rate if t.rate > 0 else math.inf for t in self.active]
        first = min(finish)
        if first < math.inf:
            ending = [t for t, f in zip(self.active, finish, strict=True) if f == first]
            generation = self._generation
            self._at(first, lambda: self._tick(first, generation, ending))

    def _tick(self, now: float, generation: int, ending: list[Transfer]) -> None:
        if generation != self._generation:
            return  # rates changed since this timer was set
        self._advance(now)
        for t in ending:
            t.remaining = 0.0
        sent = [t for t in self.active if t.remaining <= t.num_bytes * DONE_FRACTION]
        self.active = [t for t in self.active if t.remaining > t.num_bytes * DONE_FRACTION]
        for t in sent:
            t.remaining = 0.0
            self._sent(t, now)
        self._reschedule()

    def _sent(self, t: Transfer, now: float) -> None:
        t.sent_at = now
        if t.not_before > now:
            self._at(t.not_before, lambda: self._finish(t, t.not_before))
        else:
            self._finish(t, now)

    def _finish(self, t: Transfer, now: float) -> None:
        t.end_at = now
        self.done.append(t)
        t.on_done(t)
