"""benchmarks/unfitted_stats.py: statistics quoted in notes become scenario rows."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.factories import load_script

HEADER = ["id", "model", "metric", "value", "simulatable", "notes"]


def test_quoted_statistics_in_both_printed_forms() -> None:
    stats = load_script("unfitted_stats").quoted_statistics
    printed = "Mean TTFT (ms) 59.01; Median TTFT (ms) 60.38; P99 ITL (ms) 8.17"
    assert stats(printed) == {"ttft_mean_ms": 59.01, "ttft_p50_ms": 60.38, "itl_p99_ms": 8.17}
    condensed = "TPOT mean/median/p99 13.18/13.17/13.80 ms (ITL lines cut)"
    assert stats(condensed) == {"tpot_mean_ms": 13.18, "tpot_p50_ms": 13.17, "tpot_p99_ms": 13.8}


def test_only_statistics_that_are_not_rows_of_the_run_are_derived(tmp_path: Path) -> None:
    notes = "Median TTFT (ms) 60.38; Mean TPOT (ms) 7.28; P99 ITL (ms) 8.17"
    rows = [
        ["run_a__ttft_mean_ms", "m", "ttft_mean_ms", "59", "yes", notes],
        ["run_a__tpot_mean_ms", "m", "tpot_mean_ms", "7.28", "yes", notes],
        ["run_b__ttft_mean_ms", "m", "ttft_mean_ms", "1", "no", notes],  # not simulatable
    ]
    path = tmp_path / "lat.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([HEADER, *rows])
    header, derived = load_script("unfitted_stats").derived_rows(path)
    assert header == HEADER
    assert [(r["id"], r["metric"], r["value"]) for r in derived] == [
        ("run_a__itl_p99_ms", "itl_p99_ms", "8.17"),
        ("run_a__ttft_p50_ms", "ttft_p50_ms", "60.38"),
    ]
