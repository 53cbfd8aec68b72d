"""Spec for sim.metrics: hand-computed frames with exact expected values."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sim.metrics import (
    SLO,
    Summary,
    empty_requests,
    empty_steps,
    format_summary,
    itl_samples,
    per_replica,
    request_metrics,
    summarize,
    weighted_percentile,
)

NAN = float("nan")


def make_requests(*rows: dict[str, Any]) -> pd.DataFrame:
    """A requests frame in the simulator's schema; each row overrides a finished default."""
    default: dict[str, Any] = {
        "request_id": 0,
        "replica": 0,
        "arrival_at": 0.0,
        "first_scheduled_at": 0.0,
        "first_token_at": 0.5,
        "finished_at": 1.0,
        "input_tokens": 100,
        "output_tokens": 2,
        "cached_tokens": 0,
        "num_preemptions": 0,
        "status": "finished",
        "reason": "",
    }
    records = [{**default, "request_id": i, **row} for i, row in enumerate(rows)]
    return pd.DataFrame.from_records(records, columns=list(default))


def rejected(**row: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "replica": -1,
        "first_scheduled_at": NAN,
        "first_token_at": NAN,
        "finished_at": NAN,
        "status": "rejected",
        "reason": "prompt+output 140000 tokens exceeds max_model_len 131072",
    }
    return {**base, **row}


def make_steps(*rows: dict[str, Any]) -> pd.DataFrame:
    """A steps frame in the simulator's schema; decode tokens default to decode seqs."""
    default: dict[str, Any] = {
        "replica": 0,
        "start_at": 0.0,
        "duration_s": 0.01,
        "num_seqs": 1,
        "num_tokens": 1,
        "num_prefill_tokens": 0,
        "num_prefill_seqs": 0,
        "num_decode_seqs": 1,
        "num_decode_tokens": None,
        "kv_blocks_used": 1,
        "kv_blocks_total": 10,
        "num_waiting": 0,
        "num_preempted": 0,
    }
    records = [{**default, **row} for row in rows]
    for r in records:
        if r["num_decode_tokens"] is None:
            r["num_decode_tokens"] = r["num_decode_seqs"]
    return pd.DataFrame.from_records(records, columns=list(default)).astype({"replica": "int64"})


# --- per-request metrics -------------------------------------------------------------------


def test_single_request_timeline_by_hand() -> None:
    req = make_requests(
        {
            "arrival_at": 1.0,
            "first_scheduled_at": 1.25,
            "first_token_at": 1.5,
            "finished_at": 2.5,
            "output_tokens": 11,
        }
    )
    m = request_metrics(req).iloc[0]
    assert m["ttft_s"] == 0.5
    assert m["queue_s"] == 0.25
    assert m["e2e_s"] == 1.5
    assert m["tpot_s"] == pytest.approx(0.1, abs=1e-15)
    assert m["output_tps"] == pytest.approx(10.0, abs=1e-12)


def test_one_output_token_has_no_tpot_and_zero_duration_has_no_tps() -> None:
    req = make_requests(
        {"first_token_at": 0.5, "finished_at": 0.5, "output_tokens": 1},
        {"first_token_at": 0.5, "finished_at": 0.5, "output_tokens": 3},
    )
    m = request_metrics(req)
    assert math.isnan(m["tpot_s"].iloc[0]) and math.isnan(m["output_tps"].iloc[0])
    assert m["ttft_s"].iloc[0] == 0.5 and m["e2e_s"].iloc[0] == 0.5
    assert m["tpot_s"].iloc[1] == 0.0 and math.isnan(m["output_tps"].iloc[1])


def test_only_finished_rows_get_values_and_input_is_untouched() -> None:
    req = make_requests({}, rejected(arrival_at=3.0)).assign(prefill_replica=[0, -1])
    before = req.copy()
    m = request_metrics(req)
    pd.testing.assert_frame_equal(req, before)
    assert "prefill_replica" in m.columns
    derived = ["ttft_s", "tpot_s", "e2e_s", "queue_s", "output_tps"]
    assert m.loc[1, derived].isna().all()
    assert m.loc[0, derived].notna().all()


def test_unfinished_row_with_timestamps_still_gets_nan() -> None:
    req = make_requests({"status": "rejected", "reason": "aborted"})
    assert request_metrics(req)[["ttft_s", "e2e_s"]].isna().all(axis=None)


# --- ITL -------------------------------------------------------------------------------------


def test_itl_weights_each_decode_step_by_decoding_sequences() -> None:
    steps = make_steps(
        {"duration_s": 0.25, "num_decode_seqs": 3},
        {"duration_s": 0.5, "num_decode_seqs": 1},
        {"duration_s": 2.0, "num_decode_seqs": 0, "num_prefill_seqs": 1},  # prefill only
    )
    values, weights = itl_samples(steps)
    np.testing.assert_array_equal(values, [0.25, 0.5])
    np.testing.assert_array_equal(weights, [3, 1])
    s = summarize(make_requests({}), steps)
    assert s.itl_s.mean == (0.25 * 3 + 0.5) / 4
    assert (s.itl_s.p50, s.itl_s.p90) == (0.25, 0.5)  # cumulative weights 3/4, then 4/4


def test_itl_speculative_decoding_spreads_step_over_committed_tokens() -> None:
    # 2 sequences commit 6 tokens in 0.75 s: each token arrived 0.75 * 2 / 6 = 0.25 s apart.
    steps = make_steps(
        {"duration_s": 0.75, "num_decode_seqs": 2, "num_decode_tokens": 6},
        {"duration_s": 0.5, "num_decode_seqs": 2, "num_decode_tokens": 2},
    )
    values, weights = itl_samples(steps)
    np.testing.assert_array_equal(values, [0.25, 0.5])
    np.testing.assert_array_equal(weights, [6, 2])
    assert summarize(make_requests({}), steps).itl_s.mean == (0.25 * 6 + 0.5 * 2) / 8


def test_itl_without_decode_tokens_column_uses_decode_seqs() -> None:
    steps = make_steps({"duration_s": 0.5, "num_decode_seqs": 4}).drop(columns="num_decode_tokens")
    values, weights = itl_samples(steps)
    np.testing.assert_array_equal(values, [0.5])
    np.testing.assert_array_equal(weights, [4])


# --- percentiles -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 64, 101])
def test_weighted_percentile_with_unit_weights_is_numpy_inverted_cdf(n: int) -> None:
    values = np.random.default_rng(n).normal(size=n)
    qs = np.linspace(0.0, 100.0, 401)
    ours = weighted_percentile(values, np.ones(n), qs)
    np.testing.assert_array_equal(ours, np.percentile(values, qs, method="inverted_cdf"))


def test_weighted_percentile_by_hand() -> None:
    values, weights = [3.0, 1.0, 2.0, NAN], [2.0, 1.0, 1.0, 5.0]  # NaN value ignored
    # sorted 1, 2, 3 with cumulative weights 1, 2, 4 out of 4
    assert weighted_percentile(values, weights, 0.0) == 1.0
    assert weighted_percentile(values, weights, 25.0) == 1.0
    assert weighted_percentile(values, weights, 25.1) == 2.0
    assert weighted_percentile(values, weights, 50.0) == 2.0
    assert weighted_percentile(values, weights, 50.1) == 3.0
    assert weighted_percentile(values, weights, 100.0) == 3.0
    np.testing.assert_array_equal(weighted_percentile(values, weights, [25, 75]), [1.0, 3.0])
    # zero weight means absent
    assert weighted_percentile([1.0, 9.0], [0.0, 1.0], 0.0) == 9.0


def test_weighted_percentile_edges() -> None:
    assert math.isnan(weighted_percentile([], [], 50.0))
    assert np.isnan(weighted_percentile([NAN], [1.0], [50.0, 90.0])).all()
    with pytest.raises(ValueError, match=r"0\.\.100"):
        weighted_percentile([1.0], [1.0], 101.0)


# --- summary ---------------------------------------------------------------------------------


def goodput_fixture() -> pd.DataFrame:
    """Five requests around SLO(ttft_s=0.5, tpot_s=0.125); run spans 0.0 .. 4.0 s."""
    return make_requests(
        # on both boundaries (inclusive): good
        {"arrival_at": 0.0, "first_token_at": 0.5, "finished_at": 1.5, "output_tokens": 9},
        # TTFT over: bad
        {"arrival_at": 0.0, "first_token_at": 0.75, "finished_at": 4.0, "output_tokens": 2},
        # TPOT over (0.25): bad
        {"arrival_at": 1.0, "first_token_at": 1.25, "finished_at": 1.75, "output_tokens": 3},
        # one output token, TPOT undefined: good on TTFT alone
        {"arrival_at": 2.0, "first_token_at": 2.5, "finished_at": 2.5, "output_tokens": 1},
        rejected(arrival_at=3.0, output_tokens=7, num_preemptions=0),
    )


def test_goodput_counts_slo_boundaries_inclusively() -> None:
    s = summarize(goodput_fixture(), empty_steps(), {"num_gpus": 3}, SLO(ttft_s=0.5, tpot_s=0.125))
    assert s.duration_s == 4.0
    assert s.goodput_requests_per_s == 2 / 4.0
    assert s.goodput_fraction == 2 / 5
    loose = summarize(goodput_fixture(), empty_steps(), {}, SLO(ttft_s=0.75, tpot_s=3.25))
    assert loose.goodput_fraction == 4 / 5


def test_summary_counts_and_throughput() -> None:
    req = goodput_fixture()
    req.loc[0, "num_preemptions"] = 2
    s = summarize(req, empty_steps(), {"num_gpus": 3, "replicas": 1}, SLO())
    assert (s.num_requests, s.num_finished, s.num_rejected, s.num_preemptions) == (5, 4, 1, 2)
    assert s.requests_per_s == 4 / 4.0
    assert s.output_tok_per_s == (9 + 2 + 3 + 1) / 4.0
    assert s.total_tok_per_s == (9 + 2 + 3 + 1 + 4 * 100) / 4.0
    assert s.output_tok_per_s_per_gpu == 15 / 4.0 / 3
    assert s.num_gpus == 3
    # inverted-CDF percentiles of TTFT {0.25, 0.5, 0.5, 0.75}
    assert (s.ttft_s.mean, s.ttft_s.p50, s.ttft_s.p90, s.ttft_s.p99) == (0.5, 0.5, 0.75, 0.75)
    assert s.tpot_s.p50 == 0.25  # TPOTs {0.125, 0.25, 3.25}; the 1-token request has none
    assert math.isnan(s.itl_s.mean)  # no steps


def test_per_gpu_throughput_is_nan_without_num_gpus() -> None:
    s = summarize(goodput_fixture(), empty_steps(), {}, SLO())
    assert s.num_gpus is None and math.isnan(s.output_tok_per_s_per_gpu)


def kv_fixture() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replica 0 steps for 1 s at 2/8 blocks then 3 s at 6/8; replica 1 for 2 s at 1/4."""
    steps = make_steps(
        {"replica": 0, "start_at": 0.0, "duration_s": 1.0, "kv_blocks_used": 2,
         "kv_blocks_total": 8, "num_seqs": 2, "num_waiting": 0},
        {"replica": 0, "start_at": 1.0, "duration_s": 3.0, "kv_blocks_used": 6,
         "kv_blocks_total": 8, "num_seqs": 4, "num_waiting": 4, "num_preempted": 1},
        {"replica": 1, "start_at": 5.0, "duration_s": 2.0, "kv_blocks_used": 1,
         "kv_blocks_total": 4, "num_seqs": 1, "num_waiting": 0},
    )  # fmt: skip
    requests = make_requests(
        {"replica": 0, "arrival_at": 0.0, "finished_at": 8.0, "num_preemptions": 1},
        {"replica": 1, "arrival_at": 5.0, "finished_at": 7.0},
        {"replica": 2, "arrival_at": 5.0, "finished_at": 7.0},  # served, no steps recorded
        rejected(arrival_at=1.0),
    )
    return steps, requests


def test_per_replica_time_weighted_kv_usage_and_batch_size_by_hand() -> None:
    steps, requests = kv_fixture()
    table = per_replica(steps, requests)
    assert list(table.index) == [0, 1, 2]  # -1 (never served) excluded
    r0, r1, r2 = (table.loc[i] for i in (0, 1, 2))
    assert r0["mean_kv_usage"] == (0.25 * 1.0 + 0.75 * 3.0) / 4.0  # 0.625
    assert r0["max_kv_usage"] == 0.75
    assert r0["mean_batch_size"] == (2 * 1.0 + 4 * 3.0) / 4.0
    assert r0["mean_num_waiting"] == (0 * 1.0 + 4 * 3.0) / 4.0
    assert r0["busy_s"] == 4.0 and r0["busy_frac"] == 4.0 / 8.0
    assert (r0["num_steps"], r0["num_requests"], r0["num_preemptions"]) == (2, 1, 1)
    assert r1["mean_kv_usage"] == 0.25 and r1["busy_frac"] == 2.0 / 8.0
    assert r2["num_steps"] == 0 and r2["busy_frac"] == 0.0 and math.isnan(r2["mean_kv_usage"])
    s = summarize(requests, steps, {"num_gpus": 3})
    assert [r.replica for r in s.per_replica] == [0, 1, 2]
    assert s.per_replica[0].mean_kv_usage == 0.625


@pytest.mark.parametrize(
    "requests,steps",
    [
        (empty_requests(), empty_steps()),
        (pd.DataFrame(), pd.DataFrame()),
    ],
    ids=["typed-empty", "no-columns"],
)
def test_summary_of_empty_run(requests: pd.DataFrame, steps: pd.DataFrame) -> None:
    s = summarize(requests, steps, {"num_gpus": 8}, SLO())
    assert (s.num_requests, s.num_finished, s.num_rejected, s.num_preemptions) == (0, 0, 0, 0)
    assert math.isnan(s.duration_s) and math.isnan(s.ttft_s.p99) and math.isnan(s.itl_s.mean)
    assert s.requests_per_s == s.output_tok_per_s == s.goodput_requests_per_s == 0.0
    assert math.isnan(s.goodput_fraction)
    assert s.per_replica == ()
    assert "requests 0" in format_summary(s)


def test_summary_of_all_rejected_run() -> None:
    req = make_requests(rejected(arrival_at=0.0), rejected(arrival_at=1.0))
    steps = make_steps({"num_decode_seqs": 0})  # a replica that stepped idle-ish once
    s = summarize(req, steps, {"num_gpus": 2}, SLO())
    assert (s.num_requests, s.num_finished, s.num_rejected) == (2, 0, 2)
    assert s.requests_per_s == s.output_tok_per_s == s.total_tok_per_s == 0.0
    assert s.output_tok_per_s_per_gpu == 0.0
    assert s.goodput_requests_per_s == 0.0 and s.goodput_fraction == 0.0
    assert math.isnan(s.ttft_s.mean) and math.isnan(s.e2e_s.p50)
    assert math.isnan(s.per_replica[0].busy_frac)  # no run duration to divide by
    text = format_summary(s)
    assert "rejected 2" in text and "TTFT (ms)" in text


def test_format_summary_reports_latencies_in_ms() -> None:
    s = summarize(goodput_fixture(), empty_steps(), {"num_gpus": 3}, SLO(0.5, 0.125))
    text = format_summary(s)
    ttft_row = next(line for line in text.splitlines() if line.startswith("TTFT (ms)"))
    assert ttft_row.split()[2:] == ["500.0", "500.0", "750.0", "750.0"]
    assert "throughput: 1.000 req/s, 3.8 output tok/s" in text
    assert "goodput:    0.500 req/s, 40.0% of requests" in text
    assert "TTFT <= 500 ms and TPOT <= 125 ms" in text


def test_summary_exports() -> None:
    steps, requests = kv_fixture()
    s = summarize(requests, steps, {"num_gpus": 3})
    assert isinstance(s, Summary)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["slo"] == {"ttft_s": 2.0, "tpot_s": 0.1}
    assert d["per_replica"][0]["mean_kv_usage"] == 0.625
    row = s.to_frame()
    assert len(row) == 1
    assert {"ttft_s_p99", "itl_s_mean", "goodput_fraction", "slo_tpot_s"} <= set(row.columns)
    assert list(s.stats_frame().columns) == ["mean", "p50", "p90", "p99"]
