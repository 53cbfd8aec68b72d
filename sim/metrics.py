"""Run frames in (requests, steps, meta), derived metrics out: TTFT, TPOT, ITL, E2E, TPS, goodput.

Everything here is computed after the run from the timestamps on each request and the one row
per engine step that `simulate()` returns; nothing in the core collects metrics. All functions
are vectorised over rows and tolerate extra columns, empty frames and all-rejected runs (NaN
statistics, zero throughput).

Percentiles use one rule everywhere, the inverted CDF (no interpolation): the p-th percentile
is the smallest sample whose cumulative weight reaches p% of the total weight. With unit
weights this equals ``np.percentile(values, p, method="inverted_cdf")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import pandas as pd

REQUEST_COLUMNS: dict[str, str] = {
    "request_id": "int64",
    "replica": "int64",
    "arrival_at": "float64",
    "first_scheduled_at": "float64",
    "first_token_at": "float64",
    "finished_at": "float64",
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cached_tokens": "int64",
    "num_preemptions": "int64",
    "status": "str",
    "reason": "str",
    # disaggregated serving (-1 / 0 / NaN when aggregated)
    "prefill_replica": "int64",
    "decode_replica": "int64",
    "decode_cached_tokens": "int64",
    "kv_transfer_bytes": "int64",
    "kv_transfer_start_at": "float64",
    "kv_transfer_end_at": "float64",
}
STEP_COLUMNS: dict[str, str] = {
    "replica": "int64",
    "start_at": "float64",
    "duration_s": "float64",
    "num_seqs": "int64",
    "num_tokens": "int64",
    "num_prefill_tokens": "int64",
    "num_prefill_seqs": "int64",
    "num_decode_seqs": "int64",
    "num_decode_tokens": "int64",
    "num_output_tokens": "int64",
    "kv_blocks_used": "int64",
    "kv_blocks_total": "int64",
    "num_waiting": "int64",
    "num_preempted": "int64",
}
# Per-request latency/speed columns derived by `request_metrics`, in report order.
REQUEST_METRICS: tuple[str, ...] = ("ttft_s", "tpot_s", "e2e_s", "queue_s", "output_tps")
# Statistics reported by `summarize`: the request metrics plus step-derived ITL.
STAT_METRICS: tuple[str, ...] = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s", "output_tps")
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


def empty_requests() -> pd.DataFrame:
    """A requests frame with the contract's columns and dtypes and no rows."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in REQUEST_COLUMNS.items()})


def empty_steps() -> pd.DataFrame:
    """A steps frame with the contract's columns and dtypes and no rows."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in STEP_COLUMNS.items()})


def ensure_columns(frame: pd.DataFrame, schema: Mapping[str, str]) -> pd.DataFrame:
    """`frame` with any missing `schema` column added (NaN / 0 / ''); extra columns kept."""
    missing = [c for c in schema if c not in frame.columns]
    if not missing:
        return frame
    out = frame.copy()
    for c in missing:
        kind = schema[c]
        fill: Any = np.nan if kind == "float64" else ("" if kind == "str" else 0)
        out[c] = pd.Series(fill, index=out.index, dtype=kind)
    return out


def with_request_metrics(requests: pd.DataFrame) -> pd.DataFrame:
    """`requests` itself if it already has the derived metric columns, else `request_metrics`."""
    if all(c in requests.columns for c in REQUEST_METRICS):
        return requests
    return request_metrics(requests)


def _float(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame[column].to_numpy(dtype=np.float64, na_value=np.nan)


def _finished_mask(requests: pd.DataFrame) -> np.ndarray:
    if "status" in requests.columns:
        return (requests["status"] == "finished").to_numpy(dtype=bool)
    return requests["finished_at"].notna().to_numpy(dtype=bool)


def request_metrics(requests: pd.DataFrame) -> pd.DataFrame:
    """Copy of `requests` with ttft_s, e2e_s, queue_s, tpot_s, output_tps (NaN unless finished).

    tpot_s = (finished_at - first_token_at) / (output_tokens - 1), NaN for one output token;
    output_tps is its inverse, the request's decode speed (NaN for one token or zero duration).
    """
    req = ensure_columns(requests, REQUEST_COLUMNS).copy()
    done = _finished_mask(req)
    arrival = _float(req, "arrival_at")
    first_token = _float(req, "first_token_at")
    finished = _float(req, "finished_at")
    decode_tokens = _float(req, "output_tokens") - 1.0
    decode_s = finished - first_token
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(decode_tokens > 0, decode_s / decode_tokens, np.nan)
        tps = np.where((decode_tokens > 0) & (decode_s > 0), decode_tokens / decode_s, np.nan)
    derived = {
        "ttft_s": first_token - arrival,
        "e2e_s": finished - arrival,
        "queue_s": _float(req, "first_scheduled_at") - arrival,
        "tpot_s": tpot,
        "output_tps": tps,
    }
    for name, values in derived.items():
        req[name] = np.where(done, values, np.nan)
    return req


def itl_samples(steps: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Inter-token latency samples (values_s, weights), one per step that decoded.

    Every decoding sequence receives its next token(s) at the end of the step. A step that
    commits num_decode_tokens tokens over num_decode_seqs sequences gives each token an ITL of
    duration_s * num_decode_seqs / num_decode_tokens, with weight num_decode_tokens. Without
    speculative decoding (tokens == seqs) this is duration_s with weight num_decode_seqs.
    """
    st = ensure_columns(steps, STEP_COLUMNS)
    seqs = _float(st, "num_decode_seqs")
    tokens = _float(st, "num_decode_tokens") if "num_decode_tokens" in steps.columns else seqs
    keep = (seqs > 0) & (tokens > 0)
    values = _float(st, "duration_s")[keep] * seqs[keep] / tokens[keep]
    return values, tokens[keep]


@overload
def weighted_percentile(values: Any, weights: Any, q: float) -> float: ...
@overload
def weighted_percentile(
    values: Any, weights: Any, q: Sequence[float] | np.ndarray
) -> np.ndarray: ...
def weighted_percentile(
    values: Any, weights: Any, q: float | Sequence[float] | np.ndarray
) -> float | np.ndarray:
    """Weighted percentile(s), q in 0..100, by the inverted-CDF rule (no interpolation).

    Returns the smallest value v whose cumulative weight (values sorted ascending) reaches
    q/100 of the total weight; q=0 gives the minimum, q=100 the maximum. NaN values and
    non-positive weights are ignored; no samples gives NaN. With unit weights this equals
    ``np.percentile(values, q, method="inverted_cdf")`` exactly.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), v.shape).ravel()
    qs = np.asarray(q, dtype=np.float64)
    if np.any((qs < 0) | (qs > 100)):
        raise ValueError(f"percentile q must lie in 0..100, got {q!r}")
    keep = ~np.isnan(v) & (w > 0)
    v, w = v[keep], w[keep]
    if v.size == 0:
        result = np.full(qs.shape, np.nan)
    else:
        order = np.argsort(v, kind="stable")
        v, cum = v[order], np.cumsum(w[order])
        idx = np.searchsorted(cum, (qs / 100.0) * cum[-1], side="left")
        result = v[np.minimum(idx, v.size - 1)]
    return float(result) if result.ndim == 0 else result


@dataclass(frozen=True)
class SLO:
    """Service-level objectives a request must meet to count towards goodput (inclusive)."""

    ttft_s: float = 2.0
    tpot_s: float = 0.1


@dataclass(frozen=True)
class Stats:
    """Mean and inverted-CDF percentiles of one metric (NaN when there are no samples)."""

    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Any, weights: Any = 1.0) -> Stats:
        v = np.asarray(values, dtype=np.float64).ravel()
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), v.shape)
        keep = ~np.isnan(v) & (w > 0)
        total = float(w[keep].sum())
        mean = float((v[keep] * w[keep]).sum() / total) if total > 0 else float("nan")
        p50, p90, p99 = weighted_percentile(v, w, PERCENTILES)
        return cls(mean, float(p50), float(p90), float(p99))


@dataclass(frozen=True)
class ReplicaStats:
    """One replica's load over a run; see `per_replica` for the definitions."""

    replica: int
    num_requests: int
    num_finished: int
    num_steps: int
    num_preemptions: int
    busy_s: float
    busy_frac: float
    mean_kv_usage: float
    max_kv_usage: float
    mean_batch_size: float
    mean_num_waiting: float


@dataclass(frozen=True)
class Summary:
    """Headline numbers of one run. `to_dict()` is JSON-ready; `to_frame()` is one flat row."""

    num_requests: int
    num_finished: int
    num_rejected: int
    num_preemptions: int
    duration_s: float
    ttft_s: Stats
    tpot_s: Stats
    itl_s: Stats
    e2e_s: Stats
    queue_s: Stats
    output_tps: Stats
    requests_per_s: float
    output_tok_per_s: float
    total_tok_per_s: float
    output_tok_per_s_per_gpu: float
    goodput_requests_per_s: float
    goodput_fraction: float
    num_gpus: int | None
    slo: SLO
    per_replica: tuple[ReplicaStats, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (stats and SLO as dicts, per_replica as a list of dicts)."""
        return dataclasses.asdict(self)

    def stats_frame(self) -> pd.DataFrame:
        """Latency/speed statistics: one row per metric, columns mean, p50, p90, p99."""
        rows = {m: dataclasses.asdict(getattr(self, m)) for m in STAT_METRICS}
        return pd.DataFrame.from_dict(rows, orient="index")

    def to_frame(self) -> pd.DataFrame:
        """One row with flat columns (e.g. ttft_s_p99, slo_ttft_s), for comparing runs."""
        flat: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if key == "per_replica":
                continue
            if isinstance(value, dict):
                prefix = "slo_" if key == "slo" else f"{key}_"
                flat.update({f"{prefix}{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return pd.DataFrame([flat])


def run_duration_s(requests: pd.DataFrame) -> float:
    """max(finished_at) - min(arrival_at) over finished requests; NaN when none finished."""
    req = ensure_columns(requests, REQUEST_COLUMNS)
    done = _finished_mask(req)
    if not done.any():
        return float("nan")
    return float(
        np.nanmax(_float(req, "finished_at")[done]) - np.nanmin(_float(req, "arrival_at")[done])
    )


def per_replica(
    steps: pd.DataFrame, requests: pd.DataFrame, duration_s: float | None = None
) -> pd.DataFrame:
    """Per-replica load, indexed by replica (replicas seen in either frame; -1 excluded).

    num_requests / num_finished / num_preemptions count the requests served there; num_steps
    and busy_s (sum of step durations) come from the steps; busy_frac = busy_s / duration_s
    (the run duration, `run_duration_s` by default). mean_kv_usage (kv_blocks_used /
    kv_blocks_total), mean_batch_size (num_seqs) and mean_num_waiting are time-weighted by
    step duration, i.e. averages over the time the replica was stepping; max_kv_usage is the
    peak. Means are NaN for a replica without steps.
    """
    st = ensure_columns(steps, STEP_COLUMNS)
    req = ensure_columns(requests, REQUEST_COLUMNS)
    if duration_s is None:
        duration_s = run_duration_s(req)
    dur = _float(st, "duration_s")
    with np.errstate(divide="ignore", invalid="ignore"):
        kv = _float(st, "kv_blocks_used") / _float(st, "kv_blocks_total")
    kv = np.where(np.isfinite(kv), kv, np.nan)
    weighted = pd.DataFrame(
        {
            "replica": st["replica"].to_numpy(dtype=np.int64),
            "busy_s": dur,
            "kv_w": kv * dur,
            "kv_t": np.where(np.isnan(kv), 0.0, dur),
            "batch_w": _float(st, "num_seqs") * dur,
            "wait_w": _float(st, "num_waiting") * dur,
            "kv": kv,
        }
    )
    g = weighted.groupby("replica")
    by_step = pd.DataFrame(
        {
            "num_steps": g.size(),
            "busy_s": g["busy_s"].sum(),
            "kv_w": g["kv_w"].sum(),
            "kv_t": g["kv_t"].sum(),
            "batch_w": g["batch_w"].sum(),
            "wait_w": g["wait_w"].sum(),
            "max_kv_usage": g["kv"].max(),
        }
    )
    served = pd.DataFrame(
        {
            "replica": req["replica"].to_numpy(dtype=np.int64),
            "finished": _finished_mask(req),
            "preempt": req["num_preemptions"].to_numpy(dtype=np.int64),
        }
    )
    gr = served.loc[served["replica"] >= 0].groupby("replica")
    by_req = pd.DataFrame(
        {
            "num_requests": gr.size(),
            "num_finished": gr["finished"].sum(),
            "num_preemptions": gr["preempt"].sum(),
        }
    )
    out = by_step.join(by_req, how="outer")
    out.index = out.index.astype(np.int64)
    out.index.name = "replica"
    for c in ("num_requests", "num_finished", "num_preemptions", "num_steps"):
        out[c] = out[c].fillna(0).astype(np.int64)
    out["busy_s"] = out["busy_s"].fillna(0.0).astype(np.float64)
    busy = out["busy_s"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["busy_frac"] = busy / duration_s if duration_s and duration_s > 0 else np.nan
        out["mean_kv_usage"] = out["kv_w"].to_numpy(np.float64) / out["kv_t"].to_numpy(np.float64)
        out["mean_batch_size"] = out["batch_w"].to_numpy(np.float64) / busy
        out["mean_num_waiting"] = out["wait_w"].to_numpy(np.float64) / busy
    for c in ("mean_kv_usage", "mean_batch_size", "mean_num_waiting"):
        out[c] = out[c].where(np.isfinite(out[c]), np.nan)
    columns = [f.name for f in dataclasses.fields(ReplicaStats) if f.name != "replica"]
    return out[columns].astype({"max_kv_usage": np.float64})


def summarize(
    requests: pd.DataFrame,
    steps: pd.DataFrame,
    meta: Mapping[str, Any] | None = None,
    slo: SLO | None = None,
) -> Summary:
    """Headline numbers of a run (see the module docstring for the percentile rule).

    duration_s spans the finished requests (first arrival to last finish); throughputs count
    finished requests and their tokens over it (zero when nothing finished). Goodput counts
    finished requests with ttft_s <= slo.ttft_s and (tpot_s <= slo.tpot_s or tpot_s NaN);
    goodput_fraction divides by all requests, rejected ones included. Per-GPU throughput uses
    meta["num_gpus"] (NaN when absent).
    """
    meta = meta or {}
    slo = slo or SLO()
    req = request_metrics(requests)
    done = _finished_mask(req)
    num_requests, num_finished = len(req), int(done.sum())
    num_rejected = int((req["status"] == "rejected").sum()) if "status" in requests else 0
    duration_s = run_duration_s(req)
    fin = req.loc[done]

    def rate(amount: float) -> float:
        return amount / duration_s if num_finished and duration_s > 0 else 0.0

    output_tokens = float(fin["output_tokens"].sum())
    total_tokens = output_tokens + float(fin["input_tokens"].sum())
    ttft, tpot = _float(fin, "ttft_s"), _float(fin, "tpot_s")
    good = int(((ttft <= slo.ttft_s) & ((tpot <= slo.tpot_s) | np.isnan(tpot))).sum())
    num_gpus = int(meta["num_gpus"]) if meta.get("num_gpus") else None
    itl_values, itl_weights = itl_samples(steps)
    replicas = per_replica(steps, req, duration_s)
    return Summary(
        num_requests=num_requests,
        num_finished=num_finished,
        num_rejected=num_rejected,
        num_preemptions=int(req["num_preemptions"].sum()),
        duration_s=duration_s,
        ttft_s=Stats.of(ttft),
        tpot_s=Stats.of(tpot),
        itl_s=Stats.of(itl_values, itl_weights),
        e2e_s=Stats.of(_float(fin, "e2e_s")),
        queue_s=Stats.of(_float(fin, "queue_s")),
        output_tps=Stats.of(_float(fin, "output_tps")),
        requests_per_s=rate(num_finished),
        output_tok_per_s=rate(output_tokens),
        total_tok_per_s=rate(total_tokens),
        output_tok_per_s_per_gpu=rate(output_tokens) / num_gpus if num_gpus else float("nan"),
        goodput_requests_per_s=rate(good),
        goodput_fraction=good / num_requests if num_requests else float("nan"),
        num_gpus=num_gpus,
        slo=slo,
        per_replica=tuple(  # one per replica, not per request
            ReplicaStats(**{str(k): v for k, v in row.items()})
            for row in replicas.reset_index().to_dict("records")
        ),
    )


_STAT_ROWS: tuple[tuple[str, str, float], ...] = (
    ("ttft_s", "TTFT (ms)", 1e3),
    ("tpot_s", "TPOT (ms)", 1e3),
    ("itl_s", "ITL (ms)", 1e3),
    ("e2e_s", "E2E (ms)", 1e3),
    ("queue_s", "queue (ms)", 1e3),
    ("output_tps", "output TPS (tok/s)", 1.0),
)


def _num(x: float, width: int = 10, digits: int = 1) -> str:
    return f"{'-':>{width}}" if not np.isfinite(x) else f"{x:>{width},.{digits}f}"


def format_summary(summary: Summary) -> str:
    """Readable fixed-width report: counts, latency table (ms), throughput, goodput, replicas."""
    s = summary
    lines = [
        f"requests {s.num_requests:,}  finished {s.num_finished:,}  rejected {s.num_rejected:,}"
        f"  preemptions {s.num_preemptions:,}  duration {_num(s.duration_s, 0, 3).strip()} s",
        "",
        f"{'metric':<20}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}",
    ]
    for name, label, scale in _STAT_ROWS:
        st: Stats = getattr(s, name)
        cells = "".join(_num(v * scale) for v in (st.mean, st.p50, st.p90, st.p99))
        lines.append(f"{label:<20}{cells}")
    per_gpu = (
        f", {s.output_tok_per_s_per_gpu:,.1f} output tok/s/GPU ({s.num_gpus} GPUs)"
        if s.num_gpus
        else ""
    )
    lines += [
        "",
        f"throughput: {s.requests_per_s:,.3f} req/s, {s.output_tok_per_s:,.1f} output tok/s, "
        f"{s.total_tok_per_s:,.1f} total tok/s{per_gpu}",
        f"goodput:    {s.goodput_requests_per_s:,.3f} req/s, "
        f"{_num(100 * s.goodput_fraction, 0).strip()}% of requests meet "
        f"TTFT <= {s.slo.ttft_s * 1e3:g} ms and TPOT <= {s.slo.tpot_s * 1e3:g} ms",
    ]
    if s.per_replica:
        lines += [
            "",
            f"{'replica':>7}{'requests':>10}{'steps':>10}{'busy %':>8}{'KV %':>8}"
            f"{'batch':>8}{'waiting':>9}{'preempt':>9}",
        ]
        lines += [
            f"{r.replica:>7}{r.num_requests:>10,}{r.num_steps:>10,}"
            f"{_num(100 * r.busy_frac, 8)}{_num(100 * r.mean_kv_usage, 8)}"
            f"{_num(r.mean_batch_size, 8)}{_num(r.mean_num_waiting, 9)}{r.num_preemptions:>9,}"
            for r in s.per_replica
        ]
    return "\n".join(lines)


# -- cluster-level serving: routing and disaggregation ---------------------------------------


def prefix_hit_ratio(requests: pd.DataFrame) -> float:
    """Prompt tokens served from a prefix cache over all prompt tokens, finished requests
    (the prefill side's hits; NaN when nothing finished)."""
    req = ensure_columns(requests, REQUEST_COLUMNS)
    fin = req.loc[_finished_mask(req)]
    total = float(fin["input_tokens"].sum())
    return float(fin["cached_tokens"].sum()) / total if total > 0 else float("nan")


def load_imbalance(steps: pd.DataFrame, replicas: Sequence[int]) -> float:
    """max / mean of the tokens each of `replicas` computed (1 = balanced; NaN when idle)."""
    st = ensure_columns(steps, STEP_COLUMNS)
    work = st.groupby("replica")["num_tokens"].sum().reindex(list(replicas), fill_value=0)
    mean = float(work.mean()) if len(work) else 0.0
    return float(work.max()) / mean if mean > 0 else float("nan")


def pool_of(meta: Mapping[str, Any]) -> dict[str, list[int]]:
    """Replica indices by pool: {'prefill': [...], 'decode': [...]} or {'replicas': [...]}."""
    pools = meta.get("pools")
    if pools:
        return {name: list(p["indices"]) for name, p in pools.items()}
    return {"replicas": list(range(int(meta.get("replicas", 1))))}


def link_utilisation(
    transfers: pd.DataFrame, links: Sequence[Mapping[str, Any]], duration_s: float
) -> pd.DataFrame:
    """Per link: transfers, bytes moved, and utilisation = bytes / (bandwidth x duration_s)."""
    rows = []
    paths = transfers["links"].astype(str).str.split(" > ") if len(transfers) else pd.Series([])
    num_bytes = transfers["num_bytes"].to_numpy(np.float64) if len(transfers) else np.zeros(0)
    for link in links:
        use = np.asarray([link["name"] in p for p in paths], dtype=bool)
        moved = float(num_bytes[use].sum()) if use.size else 0.0
        util = moved / (link["bytes_per_s"] * duration_s) if duration_s > 0 else float("nan")
        rows.append(
            {
                "link": link["name"],
                "kind": link["kind"],
                "transfers": int(use.sum()),
                "bytes": moved,
                "utilisation": util,
            }
        )
    return pd.DataFrame(rows, columns=["link", "kind", "transfers", "bytes", "utilisation"])


def cluster_stats(
    requests: pd.DataFrame,
    steps: pd.DataFrame,
    transfers: pd.DataFrame | None,
    meta: Mapping[str, Any],
) -> dict[str, float]:
    """Flat cluster-level numbers of a run.

    hit_ratio (`prefix_hit_ratio`), load_imbalance over the routed pool (prefill pool when
    disaggregated; `load_imbalance`), per pool `<pool>_util` = busy seconds / (replicas x run
    duration); disaggregated runs add decode_imbalance, transfer count, kv_gb_moved, transfer
    time (end - start: latency, sharing, layer-wise overlap) mean / p50 / p99 in ms, and the
    busiest link's utilisation (`link_utilisation`).
    """
    duration = run_duration_s(requests)
    pools = pool_of(meta)
    front = pools.get("prefill", pools.get("replicas", []))
    busy = ensure_columns(steps, STEP_COLUMNS).groupby("replica")["duration_s"].sum()
    out: dict[str, float] = {
        "hit_ratio": prefix_hit_ratio(requests),
        "load_imbalance": load_imbalance(steps, front),
    }
    for name, members in pools.items():
        total = float(busy.reindex(members, fill_value=0.0).sum())
        out[f"{name}_util"] = total / (len(members) * duration) if duration > 0 else float("nan")
    if "decode" in pools:
        out["decode_imbalance"] = load_imbalance(steps, pools["decode"])
        t = transfers if transfers is not None else pd.DataFrame()
        seconds = (t["end_at"] - t["start_at"]).to_numpy(np.float64) if len(t) else np.zeros(0)
        st = Stats.of(seconds)
        links = link_utilisation(t, meta.get("links", []), duration) if len(t) else None
        out.update(
            transfers=float(len(t)),
            kv_gb_moved=float(t["num_bytes"].sum()) / 1e9 if len(t) else 0.0,
            transfer_mean_ms=st.mean * 1e3,
            transfer_p50_ms=st.p50 * 1e3,
            transfer_p99_ms=st.p99 * 1e3,
            link_util_max=float(links["utilisation"].max()) if links is not None else 0.0,
        )
    return out


def format_cluster(stats: Mapping[str, float]) -> str:
    """One or two lines of `cluster_stats` for the run report."""
    utils = ", ".join(
        f"{k[:-5]} {100 * v:.1f}%"
        for k, v in stats.items()
        if k.endswith("_util") and k != "link_util_max"
    )
    lines = [
        f"cluster: prefix hit ratio {_num(stats['hit_ratio'], 0, 3).strip()}, load imbalance "
        f"(max/mean tokens) {_num(stats['load_imbalance'], 0, 2).strip()}, busy {utils}"
    ]
    if "transfers" in stats:
        lines.append(
            f"KV transfers: {int(stats['transfers']):,}, {stats['kv_gb_moved']:,.2f} GB moved, "
            f"time p50 {_num(stats['transfer_p50_ms'], 0, 2).strip()} ms, p99 "
            f"{_num(stats['transfer_p99_ms'], 0, 2).strip()} ms; busiest link "
            f"{100 * stats['link_util_max']:.1f}% utilised"
        )
    return "\n".join(lines)
