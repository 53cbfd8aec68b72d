"""Spec for sim.trace: the Trace schema, strict loaders, shipped slices, synthetic workloads."""

from __future__ import annotations

import gzip
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from sim.trace import (
    BUNDLED_FILES,
    LengthDist,
    LengthPairs,
    Trace,
    TraceError,
    arrival_times,
    bundled,
    ideal_hit_ratio,
    load_azure_csv,
    load_length_csv,
    load_mooncake_jsonl,
    load_trace,
    sessions,
    synthetic,
)

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"


def small_trace() -> Trace:
    return Trace.from_arrays(
        [0.0, 1.0, 2.0, 3.0, 4.5],
        [10, 20, 30, 40, 50],
        [1, 2, 3, 4, 5],
        session_id=[0, 0, 1, -1, 1],
        prefix_hashes=[(1,), (1, 2), (1, 2, 8), (3, 4, 5, 9), (1, 2, 6, 7)],
        hash_block_tokens=13,
        source="hand",
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def azure_row(stamp: str, context: object = 100, generated: object = 10) -> str:
    return f"2023-11-16 {stamp},{context},{generated}\r\n"


def mooncake_row(ts: object = 0, inp: object = 600, out: object = 5, ids: object = None) -> str:
    ids = [1, 2] if ids is None else ids
    return (
        f'{{"timestamp": {ts}, "input_length": {inp}, "output_length": {out}, "hash_ids": {ids}}}\n'
    )


# --------------------------------------------------------------------------- schema


def test_trace_arrays_are_read_only_and_len() -> None:
    trace = small_trace()
    assert len(trace) == 5
    with pytest.raises(ValueError):
        trace.arrival_s[0] = 9.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input_tokens": np.array([1, 2], dtype=np.int64)}, "input_tokens"),
        ({"output_tokens": np.array([1, 1, 1], dtype=np.int32)}, "output_tokens"),
        ({"arrival_s": np.array([0.0, 2.0, 1.0])}, "non-decreasing"),
        ({"arrival_s": np.array([-1.0, 2.0, 3.0])}, ">= 0"),
        ({"output_tokens": np.array([1, 0, 1], dtype=np.int64)}, "output_tokens"),
        ({"hash_block_tokens": 16}, "hash_block_tokens"),
        ({"prefix_hashes": ((1,), (2,), (3, 4)), "hash_block_tokens": 16}, "row 2"),
    ],
)
def test_trace_validation_names_the_problem(change: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {
        "arrival_s": np.array([0.0, 1.0, 2.0]),
        "input_tokens": np.array([5, 6, 7], dtype=np.int64),
        "output_tokens": np.array([1, 1, 1], dtype=np.int64),
        "session_id": np.array([-1, -1, -1], dtype=np.int64),
        "prefix_hashes": None,
        "hash_block_tokens": 0,
        "source": "t",
    }
    fields.update(change)
    with pytest.raises(ValueError, match=field):
        Trace(**fields)  # type: ignore[arg-type]


def test_window_keeps_half_open_interval_and_rezeroes() -> None:
    trace = small_trace().window(1.0, 4.5)
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(trace.input_tokens, [20, 30, 40])
    np.testing.assert_array_equal(trace.session_id, [0, 1, -1])
    assert trace.prefix_hashes == ((1, 2), (1, 2, 8), (3, 4, 5, 9))
    assert trace.source == "hand[1s,4.5s)"
    assert len(small_trace().window(4.6, 10.0)) == 0
    empty = small_trace().window(2.5, 2.5)
    assert len(empty) == 0
    np.testing.assert_array_equal(small_trace().window(2.0, math.inf).arrival_s, [0.0, 1.0, 2.5])
    for start, end in ((3.0, 1.0), (math.nan, 1.0), (0.0, math.nan), (-math.inf, 1.0)):
        with pytest.raises(ValueError):
            small_trace().window(start, end)


def test_window_start_between_arrivals_is_start_relative() -> None:
    trace = small_trace().window(0.5, 100.0)
    np.testing.assert_array_equal(trace.arrival_s, [0.5, 1.5, 2.5, 4.0])


def test_scale_rate_divides_arrivals() -> None:
    trace = small_trace()
    fast = trace.scale_rate(2.0)
    np.testing.assert_array_equal(fast.arrival_s, [0.0, 0.5, 1.0, 1.5, 2.25])
    np.testing.assert_array_equal(fast.output_tokens, trace.output_tokens)
    slow = trace.scale_rate(0.5)
    assert slow.summary()["span_s"] == 9.0
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            trace.scale_rate(bad)


def test_scale_rate_halves_span_of_a_real_trace() -> None:
    conv = load_azure_csv(bundled("azure_conv"))
    fast = conv.scale_rate(2.0)
    assert fast.summary()["span_s"] == pytest.approx(conv.summary()["span_s"] / 2, rel=1e-12)
    assert fast.summary()["rate_per_s"] == pytest.approx(2 * conv.summary()["rate_per_s"])


def test_head() -> None:
    trace = small_trace()
    np.testing.assert_array_equal(trace.head(2).input_tokens, [10, 20])
    assert trace.head(2).prefix_hashes == ((1,), (1, 2))
    assert len(trace.head(0)) == 0
    assert len(trace.head(99)) == 5
    with pytest.raises(ValueError):
        trace.head(-1)


def test_clip_context_returns_rejected_rows_with_reasons() -> None:
    kept, rejected = small_trace().clip_context(33)
    np.testing.assert_array_equal(kept.input_tokens, [10, 20, 30])
    np.testing.assert_array_equal(kept.arrival_s, [0.0, 1.0, 2.0])
    assert kept.prefix_hashes == ((1,), (1, 2), (1, 2, 8))
    assert rejected["request_index"].tolist() == [3, 4]
    assert rejected["arrival_s"].tolist() == [3.0, 4.5]
    assert rejected["input_tokens"].tolist() == [40, 50]
    assert rejected["reason"].tolist() == [
        "input_tokens + output_tokens = 44 > max_tokens = 33",
        "input_tokens + output_tokens = 55 > max_tokens = 33",
    ]
    kept_all, none = small_trace().clip_context(1000)
    assert len(kept_all) == 5 and len(none) == 0
    assert list(none.columns) == list(rejected.columns)


def test_to_frame_and_summary() -> None:
    frame = small_trace().to_frame()
    assert list(frame.columns) == [
        "arrival_s",
        "input_tokens",
        "output_tokens",
        "session_id",
        "num_prefix_blocks",
    ]
    assert frame["num_prefix_blocks"].tolist() == [1, 2, 3, 4, 4]
    assert load_azure_csv(bundled("azure_code")).to_frame()["num_prefix_blocks"].sum() == 0
    summary = small_trace().summary()
    assert summary["rows"] == 5
    assert summary["span_s"] == 4.5
    assert summary["rate_per_s"] == pytest.approx(5 / 4.5)
    assert summary["input_mean"] == 30.0
    assert summary["input_p50"] == 30.0
    assert summary["output_p90"] == pytest.approx(4.6)
    assert summary["output_p99"] == pytest.approx(4.96)


# --------------------------------------------------------------------------- shipped slices


@pytest.mark.parametrize(
    ("name", "sha256_prefix"),
    [
        ("azure_conv", "633d22f7f0eccb68"),
        ("azure_code", "fe38271b31c345d5"),
        ("mooncake_synthetic", "bd070915a98fc0ed"),  # of the decompressed original
        ("mooncake_real", "e2bec9bccd21978f"),
        ("sharegpt_lengths", "8f0e623531389a85"),
    ],
)
def test_shipped_files_match_the_data_card(name: str, sha256_prefix: str) -> None:
    path = bundled(name)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    assert hashlib.sha256(data).hexdigest().startswith(sha256_prefix)


def test_bundled_total_size_is_small() -> None:
    total = sum(bundled(name).stat().st_size for name in BUNDLED_FILES)
    assert total < 1_500_000


def test_bundled_unknown_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match="azure_conv, azure_code"):
        bundled("azure")


def test_azure_conv_slice() -> None:
    trace = load_trace(bundled("azure_conv"))
    assert len(trace) == 5985
    assert trace.arrival_s[0] == 0.0
    assert (np.diff(trace.arrival_s) >= 0).all()
    assert (trace.input_tokens[0], trace.output_tokens[0]) == (374, 44)
    assert trace.arrival_s[1] == pytest.approx(4.314579, abs=1e-9)
    assert trace.arrival_s[-1] == pytest.approx(1199.748791, abs=1e-9)
    assert trace.prefix_hashes is None and trace.hash_block_tokens == 0
    assert (trace.session_id == -1).all()


def test_azure_code_slice_has_the_burst() -> None:
    trace = load_trace(bundled("azure_code"))
    assert len(trace) == 3628
    assert (trace.input_tokens[0], trace.output_tokens[0]) == (4808, 10)
    assert trace.arrival_s[1] == pytest.approx(0.052, abs=1e-9)
    assert trace.arrival_s[-1] < 1200.0
    per_second = np.bincount(trace.arrival_s.astype(np.int64))
    assert per_second.max() == 67  # the file's busiest second (t = 862 s)
    assert (np.bincount((trace.arrival_s // 60).astype(np.int64)) == 0).sum() == 5


def test_mooncake_synthetic_full_trace() -> None:
    trace = load_trace(bundled("mooncake_synthetic"))
    assert len(trace) == 3993
    assert trace.hash_block_tokens == 512
    assert trace.summary()["span_s"] == pytest.approx(1022.025)
    assert (trace.input_tokens[0], trace.output_tokens[0]) == (40160, 6)
    assert trace.prefix_hashes is not None
    assert trace.prefix_hashes[0] == tuple(range(79))
    assert ideal_hit_ratio(trace) == pytest.approx(0.640, abs=0.001)


def test_mooncake_real_prefix() -> None:
    trace = load_mooncake_jsonl(bundled("mooncake_real"))
    assert len(trace) == 1000
    assert trace.arrival_s[0] == 0.0
    assert (np.diff(trace.arrival_s) >= 0).all()
    # the record quoted in Mooncake's README, at line 156
    assert trace.arrival_s[155] == pytest.approx(27.482)
    assert (trace.input_tokens[155], trace.output_tokens[155]) == (6955, 52)
    assert trace.prefix_hashes is not None
    assert trace.prefix_hashes[155][-2:] == (2353, 2354)
    assert ideal_hit_ratio(trace) == pytest.approx(0.380, abs=0.001)


def test_sharegpt_lengths_sample() -> None:
    inputs, outputs = load_length_csv(bundled("sharegpt_lengths"))
    assert len(inputs) == len(outputs) == 5000
    assert (inputs[0], outputs[0]) == (290, 905)
    assert inputs.dtype == outputs.dtype == np.int64
    assert outputs.max() <= 1024


# --------------------------------------------------------------------------- loader errors


def test_azure_parses_seven_fractional_digits_exactly(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        AZURE_HEADER + azure_row("18:15:46.0000000") + azure_row("18:15:47.0000001"),
    )
    trace = load_azure_csv(path)
    assert trace.arrival_s[1] == 1.0000001
    assert trace.source == "t.csv"


def test_azure_equal_timestamps_are_allowed_and_no_final_newline_is_fine(tmp_path: Path) -> None:
    text = AZURE_HEADER + azure_row("18:15:46.1000000") + azure_row("18:15:46.1000000")
    path = write(tmp_path, "t.csv", text.rstrip("\r\n"))
    np.testing.assert_array_equal(load_azure_csv(path).arrival_s, [0.0, 0.0])


@pytest.mark.parametrize(
    ("rows", "line", "field", "shown"),
    [
        ([azure_row("18:00:00.0", "abc")], 2, "ContextTokens", "'abc'"),
        ([azure_row("18:00:00.0"), azure_row("18:00:01.0", 5, "-5")], 3, "GeneratedTokens", "-5"),
        ([azure_row("18:00:00.0", 5, 0)], 2, "GeneratedTokens", "'0'"),
        ([azure_row("18:00:00.0", 0, 5)], 2, "ContextTokens", "'0'"),
        ([azure_row("18:00:00.0", "1.5")], 2, "ContextTokens", "'1.5'"),
        ([azure_row("18:00:00.0", "")], 2, "ContextTokens", "''"),
        ([azure_row("18:00:00.0"), "2023-11-16 18:00:01.0,5\r\n"], 3, "GeneratedTokens", "''"),
        ([azure_row("18:00:00.0", "99999999999999999999")], 2, "ContextTokens", "'9999"),
        ([azure_row("18:00:01.0"), azure_row("18:00:00.5")], 3, "TIMESTAMP", "18:00:00.5"),
        ([azure_row("18:00:00.0"), "yesterday,5,5\r\n"], 3, "TIMESTAMP", "'yesterday'"),
        ([azure_row("18:00:00.0"), "\r\n", azure_row("18:00:01.0")], 3, "TIMESTAMP", "''"),
    ],
)
def test_azure_malformed_rows_name_file_line_and_field(
    tmp_path: Path, rows: list[str], line: int, field: str, shown: str
) -> None:
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE_HEADER + "".join(rows))
    with pytest.raises(TraceError) as info:
        load_azure_csv(path)
    message = str(info.value)
    assert message.startswith(f"AzureLLMInferenceTrace_conv.csv line {line}: field '{field}'")
    assert shown in message


def test_azure_error_message_format(tmp_path: Path) -> None:
    rows = [azure_row(f"18:00:{i:02d}.0") for i in range(15)] + [azure_row("18:00:20.0", "abc")]
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE_HEADER + "".join(rows))
    with pytest.raises(TraceError) as info:
        load_azure_csv(path)
    assert str(info.value) == (
        "AzureLLMInferenceTrace_conv.csv line 17: field 'ContextTokens' is 'abc', "
        "expected a positive integer"
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty file"),
        ("TIMESTAMP,ContextTokens\r\n" + "2023-11-16 18:00:00.0,5\r\n", "'GeneratedTokens'"),
        (AZURE_HEADER, "no data rows"),
        (AZURE_HEADER + "2023-11-16 18:00:00.0,5,5,7,8\r\n", "line 2"),
    ],
)
def test_azure_file_level_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, "x.csv", text)
    with pytest.raises(TraceError, match=needle) as info:
        load_azure_csv(path)
    assert "x.csv" in str(info.value)


def test_mooncake_last_line_without_newline_and_output_one(tmp_path: Path) -> None:
    text = mooncake_row(1000, 512, 1, [0]) + mooncake_row(3500, 513, 7, [0, 9]).rstrip("\n")
    trace = load_mooncake_jsonl(write(tmp_path, "m.jsonl", text))
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 2.5])
    np.testing.assert_array_equal(trace.output_tokens, [1, 7])
    assert trace.prefix_hashes == ((0,), (0, 9))
    assert trace.hash_block_tokens == 512


def test_mooncake_gzip_reads_like_plain(tmp_path: Path) -> None:
    text = mooncake_row(0) + mooncake_row(10)
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    trace = load_trace(tmp_path / "m.jsonl.gz")
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 0.01])


@pytest.mark.parametrize(
    ("lines", "line", "needle"),
    [
        ([mooncake_row(), "{not json\n"], 2, "not valid JSON"),
        ([mooncake_row(), "\n", mooncake_row()], 2, "not valid JSON"),
        (['{"timestamp": 0, "input_length": 600, "output_length": 5}\n'], 1, "'hash_ids'"),
        ([mooncake_row(ids=[1, 2, 3])], 1, "field 'hash_ids' has 3 ids, expected"),
        ([mooncake_row(ids='"ab"')], 1, "field 'hash_ids' is 'ab'"),
        ([mooncake_row(ids='[1, "x"]')], 1, "field 'hash_ids' is [1, 'x']"),
        ([mooncake_row(inp='"600"')], 1, "field 'input_length' is '600'"),
        ([mooncake_row(inp=0, ids=[])], 1, "field 'input_length' is 0"),
        ([mooncake_row(), mooncake_row(out=0)], 2, "field 'output_length' is 0"),
        ([mooncake_row(out=2.5)], 1, "field 'output_length' is 2.5"),
        ([mooncake_row(ts=1.5)], 1, "field 'timestamp' is 1.5"),
        ([mooncake_row(ts="true")], 1, "field 'timestamp' is True"),
        ([mooncake_row(ts=5), mooncake_row(ts=4)], 2, "field 'timestamp' is 4"),
        (['{"input_length": 600, "output_length": 5, "hash_ids": [1, 2]}\n'], 1, "'timestamp'"),
        (["[1, 2]\n"], 1, "expected a JSON object"),
    ],
)
def test_mooncake_malformed_lines_name_file_line_and_field(
    tmp_path: Path, lines: list[str], line: int, needle: str
) -> None:
    path = write(tmp_path, "trace.jsonl", "".join(lines))
    with pytest.raises(TraceError) as info:
        load_mooncake_jsonl(path)
    message = str(info.value)
    assert message.startswith(f"trace.jsonl line {line}: ")
    assert needle in message


def test_mooncake_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"e\.jsonl: empty file"):
        load_mooncake_jsonl(write(tmp_path, "e.jsonl", ""))


def test_length_csv_errors(tmp_path: Path) -> None:
    good = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n5,7,12,0.7\n"
    inputs, outputs = load_length_csv(write(tmp_path, "ok.csv", good))
    assert (inputs.tolist(), outputs.tolist()) == ([5], [7])
    with pytest.raises(TraceError, match="'num_decode_tokens'"):
        load_length_csv(write(tmp_path, "a.csv", "num_prefill_tokens\n5\n"))
    bad = good + "5,x,12,0.7\n"
    with pytest.raises(TraceError, match=r"b\.csv line 3: field 'num_decode_tokens' is 'x'"):
        load_length_csv(write(tmp_path, "b.csv", bad))
    with pytest.raises(TraceError, match="empty file"):
        load_length_csv(write(tmp_path, "c.csv", ""))


def test_load_trace_dispatch(tmp_path: Path) -> None:
    azure = write(tmp_path, "a.csv", AZURE_HEADER + azure_row("18:00:00.0"))
    assert len(load_trace(azure)) == 1
    assert load_trace(write(tmp_path, "m.jsonl", mooncake_row())).hash_block_tokens == 512
    with pytest.raises(TraceError, match="length distribution"):
        load_trace(bundled("sharegpt_lengths"))
    with pytest.raises(TraceError, match="not a known trace format"):
        load_trace(write(tmp_path, "o.csv", "a,b\n1,2\n"))
    with pytest.raises(TraceError, match="unknown trace format"):
        load_trace(write(tmp_path, "t.parquet", ""))


# --------------------------------------------------------------------------- synthetic


def poisson_trace(seed: int, num: int = 200) -> Trace:
    return synthetic(
        num,
        np.random.default_rng(seed),
        rate_per_s=4.0,
        input_dist=LengthDist.uniform(10, 2000),
        output_dist=LengthDist.lognormal(150, 1.0),
    )


def test_synthetic_is_deterministic_per_seed() -> None:
    a, b, c = poisson_trace(7), poisson_trace(7), poisson_trace(8)
    for field in ("arrival_s", "input_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert not np.array_equal(getattr(a, field), getattr(c, field))
    assert a.arrival_s[0] == 0.0
    assert (np.diff(a.arrival_s) >= 0).all()
    assert (a.session_id == -1).all() and a.prefix_hashes is None


def test_poisson_mean_rate() -> None:
    trace = synthetic(
        20_000,
        np.random.default_rng(1),
        arrival="poisson",
        rate_per_s=5.0,
        input_dist=LengthDist.fixed(100),
        output_dist=LengthDist.fixed(10),
    )
    gaps = np.diff(trace.arrival_s)
    assert gaps.mean() == pytest.approx(0.2, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_mean_and_cv(cv: float) -> None:
    arrival = arrival_times(
        20_000, np.random.default_rng(2), arrival="gamma", rate_per_s=10.0, gamma_cv=cv
    )
    gaps = np.diff(arrival)
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


@pytest.mark.parametrize("kind", ["burst", "offline"])
def test_burst_and_offline_arrive_at_zero(kind: str) -> None:
    trace = synthetic(
        50,
        np.random.default_rng(0),
        arrival=kind,
        input_dist=LengthDist.fixed(5),
        output_dist=LengthDist.fixed(3),
    )
    assert (trace.arrival_s == 0.0).all()


def fixed_lengths(
    num: int, *, arrival: str = "poisson", rate_per_s: float | None = 1.0, gamma_cv: float = 1.0
) -> Trace:
    return synthetic(
        num,
        np.random.default_rng(0),
        arrival=arrival,
        rate_per_s=rate_per_s,
        gamma_cv=gamma_cv,
        input_dist=LengthDist.fixed(5),
        output_dist=LengthDist.fixed(5),
    )


def test_synthetic_parameter_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rate_per_s"):
        fixed_lengths(10, rate_per_s=0.0)
    with pytest.raises(ValueError, match="rate_per_s"):
        fixed_lengths(10, rate_per_s=None)
    with pytest.raises(ValueError, match="unknown arrival"):
        fixed_lengths(10, arrival="weibull")
    with pytest.raises(ValueError, match="gamma_cv"):
        fixed_lengths(10, arrival="gamma", gamma_cv=0.0)
    with pytest.raises(ValueError, match="num_requests"):
        fixed_lengths(0)
    with pytest.raises(ValueError, match="pairs"):
        synthetic(10, rng, rate_per_s=1.0, input_dist=LengthDist.fixed(5))
    pairs = LengthPairs(np.array([1], dtype=np.int64), np.array([1], dtype=np.int64))
    with pytest.raises(ValueError, match="not both"):
        synthetic(10, rng, rate_per_s=1.0, pairs=pairs, input_dist=LengthDist.fixed(5))
    with pytest.raises(ValueError, match="low <= high"):
        LengthDist.uniform(10, 5)
    with pytest.raises(ValueError, match="low <= high"):
        LengthDist.fixed(0)
    with pytest.raises(ValueError, match="unknown LengthDist kind"):
        LengthDist("zipf")
    with pytest.raises(ValueError, match="empirical"):
        LengthDist.empirical([])
    with pytest.raises(ValueError, match="integers"):
        LengthDist.empirical(np.array([1.5, 2.0]))


def test_length_dists() -> None:
    rng = np.random.default_rng(3)
    assert set(LengthDist.uniform(3, 5).sample(2000, rng).tolist()) == {3, 4, 5}
    assert set(LengthDist.fixed(7).sample(10, rng).tolist()) == {7}
    assert set(LengthDist.empirical([2, 9]).sample(500, rng).tolist()) == {2, 9}
    normal = LengthDist.normal(10, 20).sample(5000, rng)
    assert normal.min() >= 1 and normal.dtype == np.int64
    lognormal = LengthDist.lognormal(300, 0.5).sample(20_000, rng)
    assert np.median(lognormal) == pytest.approx(300, rel=0.03)


def test_empirical_pairs_stay_paired() -> None:
    inputs = np.arange(1, 1001, dtype=np.int64)
    pairs = LengthPairs(inputs, inputs * 7)
    trace = synthetic(5000, np.random.default_rng(4), rate_per_s=2.0, pairs=pairs)
    np.testing.assert_array_equal(trace.output_tokens, trace.input_tokens * 7)
    assert len(np.unique(trace.input_tokens)) > 900


def test_sharegpt_pairs_come_from_the_file() -> None:
    pairs = LengthPairs.from_csv(bundled("sharegpt_lengths"))
    trace = synthetic(2000, np.random.default_rng(5), rate_per_s=2.0, pairs=pairs)
    known = set(zip(pairs.input_tokens.tolist(), pairs.output_tokens.tolist(), strict=True))
    sampled = zip(trace.input_tokens.tolist(), trace.output_tokens.tolist(), strict=True)
    assert all(pair in known for pair in sampled)
    conv = LengthPairs.from_trace(load_azure_csv(bundled("azure_conv")))
    assert len(conv.input_tokens) == 5985


# --------------------------------------------------------------------------- sessions


def chat(seed: int = 0, *, stable: bool = True, think_s: float = 10.0, **kw: object) -> Trace:
    params: dict[str, object] = {
        "system_prompt_tokens": 64,
        "num_system_prompts": 2,
        "user_tokens": LengthDist.fixed(32),
        "output_tokens": LengthDist.fixed(48),
        "think_time_s": think_s,
        "session_rate_per_s": 1.0,
        "hash_block_tokens": 16,
        "stable_prefix_first": stable,
    }
    params.update(kw)
    return sessions(20, LengthDist.fixed(3), np.random.default_rng(seed), **params)  # type: ignore[arg-type]


def turns_of(trace: Trace, session: int) -> list[int]:
    return np.flatnonzero(trace.session_id == session).tolist()


def test_sessions_lengths_and_ids() -> None:
    trace = chat()
    assert len(trace) == 60
    assert sorted(set(trace.session_id.tolist())) == list(range(20))
    assert (np.diff(trace.arrival_s) >= 0).all() and trace.arrival_s[0] == 0.0
    rows = turns_of(trace, 5)
    # system prompt + history (user + reply per earlier turn) + new user message
    assert trace.input_tokens[rows].tolist() == [64 + 32, 64 + 80 + 32, 64 + 160 + 32]
    assert trace.output_tokens[rows].tolist() == [48, 48, 48]
    assert trace.hash_block_tokens == 16


def test_sessions_hashes_are_prefix_chained() -> None:
    trace = chat()
    assert trace.prefix_hashes is not None
    first, second, third = (trace.prefix_hashes[i] for i in turns_of(trace, 3))
    assert second[: len(first)] == first  # every block of turn 1 is a full block
    assert third[: len(second)] == second
    assert len(set(first + second + third)) == len(third)
    # all sessions start with one of the two system prompts: 4 blocks of 16 tokens
    system_prefixes = {hashes[:4] for hashes in trace.prefix_hashes}
    assert len(system_prefixes) == 2
    assert all(0 <= h < 2**63 for hashes in trace.prefix_hashes for h in hashes)


def test_sessions_partial_last_block_is_not_shared() -> None:
    trace = chat(user_tokens=LengthDist.fixed(30))  # 64 + 30 = 94 tokens: 5 full + 1 partial
    assert trace.prefix_hashes is not None
    first, second = (trace.prefix_hashes[i] for i in turns_of(trace, 0)[:2])
    assert len(first) == 6
    assert second[:5] == first[:5]
    assert second[5] != first[5]


def test_sessions_think_time_zero_sends_turns_together() -> None:
    trace = chat(think_s=0.0)
    for session in range(20):
        assert len(set(trace.arrival_s[turns_of(trace, session)].tolist())) == 1


def test_sessions_deterministic_and_golden() -> None:
    a, b = chat(seed=11), chat(seed=11)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.session_id, b.session_id)
    assert a.prefix_hashes == b.prefix_hashes
    assert not np.array_equal(a.arrival_s, chat(seed=12).arrival_s)


def test_sessions_hash_ids_are_pinned() -> None:
    # ids come from a fixed integer mixing, not Python's salted hash(): same in every process
    trace = chat(seed=11, num_system_prompts=1)
    assert trace.prefix_hashes is not None
    assert trace.prefix_hashes[0][:2] == (7342874890794403198, 2310954545968354742)


def test_prompt_layout_changes_the_ideal_hit_ratio() -> None:
    stable, unstable = chat(stable=True), chat(stable=False)
    np.testing.assert_array_equal(stable.input_tokens, unstable.input_tokens)
    assert ideal_hit_ratio(unstable) == 0.0
    # 20 sessions x (6 + 11 + 16) blocks = 660; distinct: 12 per session (turn 1's 2 blocks
    # after the 4 system-prompt blocks, then 5 new per later turn) + 4 per system prompt (2)
    assert ideal_hit_ratio(stable) == pytest.approx(1 - (20 * 12 + 2 * 4) / 660)


def test_sessions_parameter_errors() -> None:
    with pytest.raises(ValueError, match="num_sessions"):
        sessions(
            0,
            LengthDist.fixed(1),
            np.random.default_rng(0),
            system_prompt_tokens=1,
            num_system_prompts=1,
            user_tokens=LengthDist.fixed(1),
            output_tokens=LengthDist.fixed(1),
            think_time_s=1.0,
            session_rate_per_s=1.0,
        )
    with pytest.raises(ValueError, match="rate_per_s"):
        chat(session_rate_per_s=0.0)
    with pytest.raises(ValueError, match="think_time_s"):
        chat(think_s=-1.0)


# --------------------------------------------------------------------------- hit ratio


def test_ideal_hit_ratio_by_hand() -> None:
    # 9 entries, 6 distinct ids: the 3 repeats are 1, 2 (row 2) and 1 (row 3)
    trace = Trace.from_arrays(
        [0, 1, 2, 3],
        [48, 48, 32, 1],
        [1, 1, 1, 1],
        prefix_hashes=[(1, 2, 3), (1, 2, 4), (1, 5), (6,)],
        hash_block_tokens=16,
    )
    assert ideal_hit_ratio(trace) == pytest.approx(3 / 9)
    assert ideal_hit_ratio(trace.head(1)) == 0.0
    with pytest.raises(ValueError, match="no prefix hashes"):
        ideal_hit_ratio(poisson_trace(0))
