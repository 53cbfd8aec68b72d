"""`servesim validate`: scenario rows in, predicted-vs-measured rows and a summary line out.

tests/data/scenarios_small.csv holds rows copied verbatim from the shared reference files
(one per mode, several metrics, H100/A100/B200) plus `fixture_*` rows written for these tests
(their values are arbitrary). Runs use few requests (MAX_REQUESTS) to stay fast.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sim.validate as validate
from sim.config import ClusterConfig
from sim.hardware import load_gpu, load_model
from sim.step_time import prefill_shapes
from sim.trace import bundled, ideal_hit_ratio, load_trace
from sim.validate import (
    Lengths,
    Result,
    Row,
    ScenarioError,
    Setup,
    Unexpressible,
    linear_percentile,
    parse_row,
    read_scenarios,
    summary_line,
    validate_file,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests" / "data" / "scenarios_small.csv"
MAX_REQUESTS = 50
LAST_LINE = re.compile(
    r"^median_ape=\d+\.\d% p90_ape=\d+\.\d% max_ape=\d+\.\d% rows=\d+ skipped=\d+$"
)


@pytest.fixture(scope="module")
def counted_run() -> Iterator[tuple[list[Result], list[str], int]]:
    """The small file validated once, with simulate() wrapped to count its calls."""
    calls: list[Any] = []
    real = validate.simulate

    def counting(cfg: Any) -> Any:
        calls.append(cfg)
        return real(cfg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(validate, "simulate", counting)
        lines: list[str] = []
        results = validate_file(SMALL, MAX_REQUESTS, echo=lines.append)
    yield results, lines, len(calls)


def by_id(results: list[Result]) -> dict[str, Result]:
    return {r.id: r for r in results}


def header() -> list[str]:
    with SMALL.open(newline="") as handle:
        return next(csv.reader(handle))


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    columns = columns or header()
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def small_rows() -> list[dict[str, str]]:
    with SMALL.open(newline="") as handle:
        return list(csv.DictReader(handle))


def row(**cells: str) -> Row:
    base = {c: "" for c in header()}
    base.update(simulatable="yes", value="1", spec_method="none")
    base.update(cells)
    return parse_row(2, base, "test.csv")


# --------------------------------------------------------------------------- the small file


def test_small_file_keeps_the_exact_header() -> None:
    ref = "id,source,kind,model,hardware,num_gpus,tp,pp,ep,dp,weight_dtype,activation_dtype,"
    assert SMALL.read_text().splitlines()[0].startswith(ref)
    assert tuple(header()) == validate.COLUMNS


def test_every_row_has_an_outcome_and_a_printed_line(counted_run: Any) -> None:
    results, lines, _ = counted_run
    assert len(results) == len(lines) == len(small_rows())
    statuses = {r.status for r in results}
    assert statuses == {"ok", "skipped", "not-simulatable"}
    for r in results:
        assert r.id in lines[results.index(r)]
        if r.status == "ok":
            assert r.predicted is not None and np.isfinite(r.predicted) and r.predicted > 0


def test_one_simulation_per_setup(counted_run: Any) -> None:
    results, _, calls = counted_run
    ok = [r for r in results if r.status == "ok"]
    # The DP8 x EP8 DeepSeek row runs once the cluster config has ep and dp_attention.
    dp_ep = by_id(results)["trtllm_r1_b200x8_maxtput"].status == "ok"
    assert len(ok) == 25 + dp_ep
    # 8 serving setups (the 5 rows of the qwen3-8b c4 run, the 5 of the qwen3-30b run, the
    # 3 of the deepseek run and the 2 sglang poisson rows each share one), the ratio row's
    # own and baseline runs, the two trace rows (Azure and the Mooncake hit-ratio replay);
    # single_batch rows use the step model only.
    assert calls == 12 + dp_ep
    groups = {r.group for r in results if r.id.startswith("lat_gps_qwen3-8b")}
    assert groups == {"lat_gps_qwen3-8b_h100tp1_vllm0110_sharegpt_c4"}


def test_unexpressible_rows_are_skipped_with_their_reason_and_counted(counted_run: Any) -> None:
    results, lines, _ = counted_run
    got = by_id(results)
    assert got["fixture_unknown_hardware"].status == "skipped"
    assert "unknown hardware 'tpu-v5'" in got["fixture_unknown_hardware"].reason
    assert "unknown model 'opt-175b'" in got["fixture_unknown_model"].reason
    # the Mooncake hit-ratio row (model and hardware blank) replays the bundled trace's first
    # MAX_REQUESTS requests with an unbounded prefix cache: their own ideal block hit ratio,
    # less the blocks the always-recomputed last prompt token keeps (none here)
    hit = got["mooncake_synth_trace_hit"]
    assert hit.status == "ok" and hit.predicted is not None
    trace = load_trace(bundled("mooncake_synthetic")).head(MAX_REQUESTS)
    assert hit.predicted == pytest.approx(ideal_hit_ratio(trace), abs=0.005)
    skipped = [r for r in results if r.status == "skipped"]
    assert summary_line(results).endswith(f"skipped={len(skipped)}")
    assert any("skipped: unknown model 'opt-175b'" in line for line in lines)


def test_not_simulatable_rows_are_listed_but_not_counted(counted_run: Any) -> None:
    results, lines, _ = counted_run
    got = by_id(results)["fixture_not_simulatable"]
    assert got.status == "not-simulatable" and got.reason == "fixture: listed but not counted"
    assert any("not simulatable (file): fixture: listed" in line for line in lines)
    ok = sum(r.status == "ok" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    assert summary_line(results).endswith(f"rows={ok} skipped={skipped}")


def test_ratio_and_trace_rows_are_predicted(counted_run: Any) -> None:
    got = by_id(counted_run[0])
    ratio = got["fixture_fp8_vs_bf16_ratio"]
    assert ratio.status == "ok" and ratio.predicted is not None and ratio.predicted > 1.0
    assert got["fixture_azure_trace"].status == "ok"


def test_single_batch_rows_use_the_step_model(counted_run: Any) -> None:
    got = by_id(counted_run[0])
    prefill = got["splitwise_l2_70b_h100tp8_prefill2048"]
    decode = got["splitwise_l2_70b_h100tp8_decode_bs8"]
    assert prefill.status == decode.status == "ok"
    assert prefill.predicted is not None and decode.predicted is not None
    assert prefill.predicted > decode.predicted > 0
    assert "engine 'other' -> vllm preset" in prefill.reason


def test_report_figures_and_summary(counted_run: Any, tmp_path: Path) -> None:
    from sim.fidelity import distribution_table, write_report

    frame = validate.results_frame(counted_run[0])
    assert list(frame.columns[:7]) == list(validate.REPORT_COLUMNS)
    table = distribution_table(frame)
    run = table[table["group"] == "lat_gps_qwen3-8b_h100tp1_vllm0110_sharegpt_c4"]
    assert set(run["stat"]) == {"mean", "p99", "p99/mean"}
    written = write_report({"small": frame}, tmp_path)
    names = {p.name for p in written}
    assert {"scatter.png", "error_by_family.png", "distribution.png", "summary.md"} <= names
    assert "fixture_unknown_model" in (tmp_path / "summary.md").read_text()


# --------------------------------------------------------------------------- summary line


def test_signed_error_and_the_summary_line() -> None:
    def result(measured: float, predicted: float) -> Result:
        return Result("r", 2, "output_tok_s", measured, predicted, "ok")

    assert result(100.0, 80.0).error_pct == pytest.approx(-20.0)
    assert result(50.0, 75.0).error_pct == pytest.approx(50.0)
    rows = [result(100, 80), result(100, 110), result(100, 150)]
    rows.append(Result("s", 3, "hit_ratio", 0.6, None, "skipped", "no prefix caching"))
    rows.append(Result("n", 4, "other", 1.0, None, "not-simulatable", "microbenchmark"))
    line = summary_line(rows)
    assert LAST_LINE.match(line)
    # |errors| 20, 10, 50: median 20, linear p90 44, max 50
    assert line == "median_ape=20.0% p90_ape=44.0% max_ape=50.0% rows=3 skipped=1"


def test_cli_subprocess_prints_the_summary_last(tmp_path: Path) -> None:
    out = tmp_path / "report.csv"
    cmd = [sys.executable, "-m", "sim", "validate", str(SMALL), "--max-requests", "20"]
    done = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert LAST_LINE.match(last), last
    with out.open(newline="") as handle:
        report = list(csv.DictReader(handle))
    assert len(report) == len(small_rows())
    assert list(report[0]) == list(validate.REPORT_COLUMNS)


# --------------------------------------------------------------------------- malformed files


def test_non_numeric_request_rate_names_row_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = small_rows()[:3]
    rows[2]["request_rate"] = "fast"
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(ScenarioError) as err:
        read_scenarios(path)
    message = str(err.value)
    assert "line 4" in message and f"id {rows[2]['id']}" in message
    assert "'request_rate'" in message and "'fast'" in message
    assert validate.main([str(path)]) == 2
    captured = capsys.readouterr()
    assert "request_rate" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("num_requests", "-5", "'num_requests' is '-5'"),
        ("tp", "0", "'tp' is '0'"),
        ("concurrency", "2.5", "a whole number"),
        ("mode", "streaming", "'mode' is 'streaming'"),
        ("simulatable", "maybe", "'simulatable'"),
        ("input_len", "0", "'input_len' is '0', expected a number >= 1"),
        ("output_len", "0.5", "'output_len' is '0.5', expected a number >= 1"),
    ],
)
def test_bad_values_are_errors(tmp_path: Path, column: str, value: str, expected: str) -> None:
    rows = small_rows()[:2]
    rows[1][column] = value
    with pytest.raises(ScenarioError, match=re.escape(expected)):
        read_scenarios(write_csv(tmp_path / "bad.csv", rows))


def test_missing_column_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    columns = [c for c in header() if c != "metric"]
    path = write_csv(tmp_path / "short.csv", small_rows()[:2], columns)
    assert validate.main([str(path)]) == 2
    assert "metric" in capsys.readouterr().err


def test_a_simulator_bug_is_reported_on_the_row_and_fails_the_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(cfg: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(validate, "simulate", broken)
    rows = [r for r in small_rows() if r["id"] == "trtllm_l31_8b_h100tp1_128_128"]
    assert validate.main([str(write_csv(tmp_path / "one.csv", rows))]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert "RuntimeError: boom" in out[0] and out[-1].endswith("rows=0 skipped=1")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    assert validate.main([str(tmp_path / "nope.csv")]) == 2


# --------------------------------------------------------------------------- mapping rules


def test_vllm_gpu_class_batch_defaults() -> None:
    h100 = load_gpu("h100")
    assert validate.vllm_batch_defaults(h100) == (8192, 1024)
    assert validate.vllm_batch_defaults(load_gpu("b200")) == (8192, 1024)
    assert validate.vllm_batch_defaults(load_gpu("a100")) == (2048, 256)  # the A100 exception
    small = dataclasses.replace(h100, name="L40S", aliases=(), hbm_bytes=48e9)
    assert validate.vllm_batch_defaults(small) == (2048, 256)  # < 70 GiB
    name, batch, note = validate.engine_of(row(engine="other"), load_gpu("a100"))
    assert (name, batch) == ("vllm", (2048, 256)) and "other" in note
    assert validate.engine_of(row(engine="trtllm"), h100)[:2] == ("trtllm", None)
    # other spellings of the presets' engines, said in the printed line
    for written, preset in [("TensorRT-LLM", "trtllm"), ("trtllm-serve", "trtllm"),
                            ("SGLang 0.5.3", "sglang"), ("vLLM v0.11.0", "vllm")]:  # fmt: skip
        name, _, note = validate.engine_of(row(engine=written), h100)
        assert name == preset and f"read as {preset}" in note
    assert validate.engine_of(row(engine="lmdeploy"), h100)[0] == "vllm"  # no preset of its own


def test_sharegpt_rescaling_matches_the_row_means() -> None:
    values = np.array([2, 10, 100, 1000, 5000])
    scaled = validate.rescale(values, 100.0)
    assert scaled.dtype == np.int64 and scaled.min() >= 1
    assert abs(scaled.mean() - 100.0) < 1.0
    assert (validate.rescale(values, None) == values).all()
    lengths = Lengths("sharegpt", means=(217.39, 201.42))
    setup = Setup("Qwen3-8B", "H100-SXM", 1, 1, (), "vllm", None, (), "offline", 0.0, 0, 1000)
    drawn = validate.sharegpt_requests(
        dataclasses.replace(setup, lengths=lengths), np.random.default_rng(0)
    )
    assert abs(drawn["input_tokens"].mean() - 217.39) < 0.5
    assert abs(drawn["output_tokens"].mean() - 201.42) < 0.5
    assert drawn["input_tokens"].min() >= 1 and (drawn["arrival_s"] == 0).all()
    # first-turn completions are skewed: the median request's output is ~0.6 of the mean
    # (gamma shape 0.75: median/mean 0.606), not the bundled conversations' 0.95
    ratio = drawn["output_tokens"].median() / drawn["output_tokens"].mean()
    assert 0.55 < ratio < 0.66
    assert drawn["output_tokens"].min() >= 1


def test_length_rules() -> None:
    got, note = validate.lengths_of(
        row(length_dist="random_range_ratio_0.8", input_len="921.5", output_len="1024")
    )
    assert got == Lengths("uniform", (819, 1024), (910, 1138)) and note == ""
    got, note = validate.lengths_of(row(length_dist="fixed", input_len="2041.69", output_len="9"))
    assert got == Lengths("fixed", (2042, 2042), (9, 9))
    got, note = validate.lengths_of(row(length_dist="mt-bench", input_len="80", output_len="200"))
    assert got.kind == "fixed" and "unknown" in note
    with pytest.raises(Unexpressible, match="mt-bench"):
        validate.lengths_of(row(length_dist="mt-bench"))
    got, note = validate.lengths_of(row(length_dist="ShareGPT", output_len="194.36"))
    assert got.means == (220.0, 194.36) and "benchmark-dataset mean input" in note


def test_precision_rules() -> None:
    h100, a100, b200 = load_gpu("h100"), load_gpu("a100"), load_gpu("b200")
    gpt_oss, llama = load_model("gpt-oss-120b"), load_model("llama-3.1-8b")

    def prec(model: Any, gpu: Any, **cells: str) -> dict[str, str]:
        r = row(**cells)
        return dict(validate.precision_of(r, model, gpu, validate.engine_of(r, gpu)[0]))

    native = prec(gpt_oss, h100, weight_dtype="mxfp4")
    assert native == {
        "weights": "bf16",
        "experts": "mxfp4",
        "activations": "bf16",
        "kv_cache": "bf16",
    }
    assert prec(gpt_oss, b200, weight_dtype="mxfp4")["activations"] == "bf16"
    assert prec(llama, b200, weight_dtype="nvfp4")["activations"] == "nvfp4"
    assert prec(llama, h100, weight_dtype="nvfp4")["activations"] == "bf16"  # no FP4 on Hopper
    assert prec(llama, a100, weight_dtype="fp8")["activations"] == "bf16"  # no FP8 on A100
    assert prec(llama, h100, weight_dtype="int4")["activations"] == "bf16"  # weight-only
    assert prec(llama, h100, weight_dtype="fp8", kv_dtype="fp8")["kv_cache"] == "fp8"
    assert prec(load_model("deepseek-r1"), b200)["kv_cache"] == "bf16"  # FP8 checkpoint, auto KV


def test_layout_rules() -> None:
    assert validate.layout_of(row(num_gpus="8", tp="2")).replicas == 4
    assert validate.layout_of(row(num_gpus="8", tp="1", dp="8")).replicas == 8
    assert validate.layout_of(row(num_gpus="4")).tp == 4  # tp blank: one replica on all GPUs
    with pytest.raises(Unexpressible, match="data-parallel attention"):
        validate.layout_of(row(num_gpus="8", tp="8", dp="8"))
    with pytest.raises(Unexpressible, match="ep = tp x dp"):
        validate.layout_of(row(num_gpus="8", tp="1", dp="8", ep="4"))
    fields = {f.name for f in dataclasses.fields(ClusterConfig)}
    if {"ep", "dp_attention"} <= fields:
        dp_ep = validate.layout_of(row(num_gpus="8", tp="1", dp="8", ep="8"))
        assert dp_ep.replicas == 1 and dict(dp_ep.extra) == {"pp": 1, "ep": 8, "dp_attention": 8}
    with pytest.raises(Unexpressible, match="multiple"):
        validate.layout_of(row(num_gpus="6", tp="4"))
    if "pp" not in {f.name for f in dataclasses.fields(ClusterConfig)}:
        with pytest.raises(Unexpressible, match="pp=2"):
            validate.layout_of(row(num_gpus="8", tp="4", pp="2"))


def test_speculative_rows_take_their_acceptance_from_the_data() -> None:
    spec = validate.speculative_technique
    assert spec(row(spec_method="none")) == {}
    with pytest.raises(Unexpressible, match="no acceptance length for this setup"):
        spec(row(spec_method="eagle3", spec_k="3"))
    with pytest.raises(Unexpressible, match="does not name the draft model"):
        spec(row(spec_method="draft", spec_k="3"))
    with pytest.raises(Unexpressible, match="needs spec_k"):
        spec(row(spec_method="mtp"))
    # k = 3 drafts at a = 0.5 commit 1 + 0.5 + 0.25 + 0.125 = 1.875 tokens a step
    assert validate.per_token_acceptance(1.875, 3) == pytest.approx(0.5, abs=1e-12)
    assert (validate.per_token_acceptance(1.0, 3), validate.per_token_acceptance(4.0, 3)) == (0, 1)
    # an accept_len row of the same setup (another mode, not simulatable: an input) sets it;
    # a number in the notes wins; two different values for one setup set nothing
    cells = {"model": "llama-3.1-8b", "spec_method": "eagle3", "spec_k": "3", "concurrency": "1"}
    serving = row(id="s", mode="concurrency", metric="output_tok_s", **cells)
    ratio = row(id="r", mode="ratio", metric="speedup_x", **cells)
    stated = row(id="a", metric="accept_len", value="1.875", simulatable="no", **cells)
    noted = row(id="n", mode="concurrency", notes="acceptance length: 2.5 on MT-bench", **cells)
    other = row(id="o", mode="concurrency", metric="output_tok_s", **{**cells, "spec_k": "4"})
    out = validate.attach_acceptance([serving, ratio, stated, noted, other])
    assert [r.accept_len for r in out] == [1.875, 1.875, None, 2.5, None]
    assert spec(out[0]) == {"method": "eagle", "num_tokens": 3, "acceptance": pytest.approx(0.5)}
    twice = row(id="b", metric="accept_len", value="2.0", simulatable="no", **cells)
    assert validate.attach_acceptance([serving, stated, twice])[0].accept_len is None
    with pytest.raises(Unexpressible, match="outside"):
        spec(dataclasses.replace(serving, accept_len=4.5))


def test_speculative_rows_are_simulated_and_pay_off_at_batch_one(tmp_path: Path) -> None:
    cells = {c: "" for c in header()}
    cells.update(
        source="x", kind="measured", model="llama-3.1-8b", hardware="h100", num_gpus="1",
        tp="1", weight_dtype="bf16", activation_dtype="bf16", engine="vllm",
        mode="concurrency", concurrency="1", num_requests="20", input_len="200",
        output_len="128", length_dist="fixed", spec_method="eagle3", spec_k="3",
        simulatable="yes", metric="output_tok_s", value="300",
    )  # fmt: skip
    rows = [
        {**cells, "id": "spec"},
        {**cells, "id": "spec_al", "metric": "accept_len", "value": "3.0", "simulatable": "no"},
        {**cells, "id": "plain", "spec_method": "none", "spec_k": ""},
        {**cells, "id": "gain", "mode": "ratio", "metric": "speedup_x", "value": "2",
         "baseline": "without speculative decoding"},
    ]  # fmt: skip
    path = write_csv(tmp_path / "spec.csv", rows)
    results = {r.id: r for r in validate.validate_file(path)}
    assert all(r.status == "ok" for r in results.values() if r.id != "spec_al")
    spec, plain, gain = results["spec"], results["plain"], results["gain"]
    assert spec.predicted is not None and plain.predicted is not None
    # 3 tokens a step for one verify pass plus three one-layer drafts: faster at batch 1
    assert 1.5 < spec.predicted / plain.predicted < 3.0
    assert gain.predicted == pytest.approx(spec.predicted / plain.predicted, rel=0.05)


def test_baseline_parsing() -> None:
    overrides, quantity = validate.parse_baseline("kv_dtype=fp8;quantity=tpot_mean_ms")
    assert overrides == {"kv_dtype": "fp8"} and quantity == "tpot_mean_ms"
    assert validate.parse_baseline("vLLM without speculative decoding at the same QPS") == (
        {"spec_method": "none", "spec_k": ""},
        "output_tok_s",
    )
    assert validate.parse_baseline("same engine without EAGLE3 (TTFT)")[1] == "ttft_mean_ms"
    with pytest.raises(Unexpressible, match="not expressible"):
        validate.parse_baseline("non-split baseline cluster")


def test_linear_percentile_matches_numpy_on_repeated_values() -> None:
    rng = np.random.default_rng(1)
    values = rng.random(30)
    weights = rng.integers(1, 6, size=30)
    expanded = np.repeat(values, weights)
    for q in (0, 10, 50, 90, 99, 100):
        assert linear_percentile(values, q, weights) == pytest.approx(np.percentile(expanded, q))
        assert linear_percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert np.isnan(linear_percentile(np.array([]), 50))


def test_prefill_is_split_by_the_token_budget() -> None:
    engine = validate.engine_config(
        Setup("Llama-3.1-8B", "A100-SXM-80GB", 1, 1, (), "vllm", (2048, 256), (), "single_batch")
    )
    cap = (engine.max_num_batched_tokens, engine.max_num_seqs, engine.enable_chunked_prefill)
    shapes = [s for s, seqs in prefill_shapes(1, 5000, *cap)]
    assert [seqs for s, seqs in prefill_shapes(1, 5000, *cap)] == [1, 1, 1]
    assert [s.num_tokens for s in shapes] == [2048, 2048, 904]
    assert [s.num_samples for s in shapes] == [0, 0, 1]
    assert sum(s.attn_pairs for s in shapes) == 5000 * 5001 // 2
    assert [s.kv_read_tokens for s in shapes] == [0, 2048, 4096]
    two = [s for s, _ in prefill_shapes(2, 1500, *cap)]
    assert [s.num_tokens for s in two] == [2048, 952]
    decode = [s for s, _ in validate.decode_shapes(300, 512, engine, 0)]
    assert [s.num_tokens for s in decode] == [256, 44]
    assert decode[0].attn_pairs == 256 * 513 and decode[0].kv_read_tokens == 256 * 512


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ({"mode": "poisson", "input_len": "100", "output_len": "100"}, "request_rate"),
        ({"mode": "offline", "input_len": "100", "output_len": ""}, "input_len/output_len"),
        ({"mode": "trace", "trace": "missing.jsonl", "metric": "ttft_p50_ms"}, "missing.jsonl"),
        ({"mode": "single_batch", "metric": "output_tok_s"}, "not produced in mode"),
        ({"mode": "offline", "metric": "accept_len"}, "an input (it sets the acceptance"),
        ({"mode": "offline", "hardware": "a100;h100"}, "several hardware"),
        ({"mode": "offline", "spec_method": "eagle3"}, "spec_method=eagle3"),
        ({"mode": "ratio", "metric": "speedup_x", "baseline": "a different cluster"}, "baseline"),
        ({"mode": ""}, "mode is blank"),
    ],
)
def test_rows_missing_what_their_mode_needs_are_skipped(
    tmp_path: Path, cells: dict[str, str], reason: str
) -> None:
    base = {"model": "llama-3.1-8b", "hardware": "h100", "num_gpus": "1", "tp": "1"}
    base.update(metric="output_tok_s", length_dist="fixed", output_len="10")
    harness = validate.Harness(tmp_path, max_requests=5)
    with pytest.raises(Unexpressible, match=re.escape(reason)):
        harness.predict(row(**{**base, **cells}))
    assert harness.num_simulations == 0


# --------------------------------------------------------------------------- --set / --only


def test_engine_settings_parse_typed_or_fail_with_the_fix() -> None:
    parse = validate.parse_engine_setting
    assert parse("engine.batch_wait_steps=40") == ("batch_wait_steps", 40)
    assert parse("engine.batch_wait_tokens_ratio=0.8") == ("batch_wait_tokens_ratio", 0.8)
    assert parse("engine.overlap_scheduling=True") == ("overlap_scheduling", True)
    assert parse("engine.kv_memory_basis=free") == ("kv_memory_basis", "free")
    with pytest.raises(ValueError, match="KEY one of name, max_num_batched_tokens"):
        parse("engine.batch_wait=40")
    with pytest.raises(ValueError, match=re.escape("expected engine.KEY=VALUE")):
        parse("batch_wait_steps=40")
    with pytest.raises(ValueError, match=re.escape("batch_wait_steps takes a whole number, not")):
        parse("engine.batch_wait_steps=soon")
    with pytest.raises(ValueError, match="takes true or false"):
        parse("engine.overlap_scheduling=yes")


def test_profile_names_read_other_spellings_and_say_so() -> None:
    names = validate.profile_names
    assert names("model", "nvidia/llama-3.3-70b-instruct-fp8") == [
        "nvidia/llama-3.3-70b-instruct-fp8",
        "llama-3.3-70b-instruct-fp8",
        "llama-3.3-70b",
    ]
    assert names("model", "qwen2.5-72b-instruct-gptq-int4")[-1] == "qwen2.5-72b"
    # Llama's old "meta-" prefix; variant and date suffixes (same architecture)
    assert names("model", "meta-llama/meta-llama-3.1-8b-instruct")[1:] == [
        "llama-3.1-8b-instruct",
        "llama-3.1-8b",
    ]
    assert names("model", "qwen/qwen3-235b-a22b-thinking-2507")[-1] == "qwen3-235b-a22b"
    for written, name in [
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "Llama-3.1-8B"),
        ("Qwen/Qwen3-30B-A3B-Instruct-2507", "Qwen3-30B-A3B"),
        ("meta-llama/Llama-2-13b-chat-hf", "Llama-2-13B"),
        ("Qwen/QwQ-32B", "Qwen2.5-32B"),
        ("deepseek-ai/DeepSeek-V3.1", "DeepSeek-V3"),
    ]:
        assert validate._profile(row(model=written), "model", load_model)[0].name == name
    assert names("hardware", "nvidia h100 sxm") == [
        "nvidia h100 sxm",
        "nvidia-h100-sxm",
        "h100-sxm",
    ]
    model, note = validate._profile(
        row(model="nvidia/Llama-3.3-70B-Instruct-FP8"), "model", load_model
    )
    assert model.name == "Llama-3.1-70B"
    assert note == "model 'nvidia/llama-3.3-70b-instruct-fp8' read as Llama-3.1-70B"
    gpu, note = validate._profile(row(hardware="NVIDIA H100_SXM5"), "hardware", load_gpu)
    assert gpu.name == "H100-SXM" and "read as H100-SXM" in note
    assert validate._profile(row(hardware="h100"), "hardware", load_gpu)[1] == ""  # as written
    # CUDA device names and marketing names: memory technology, product line and platform
    # words dropped, the memory size kept (it tells A100 40 GB from 80 GB)
    for written, name in [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA A100-SXM4-40GB", "A100-SXM-40GB"),
        ("AMD Instinct MI300X", "MI300X"),
        ("B200 HGX", "B200"),
        ("H200 141GB HBM3e", "H200"),
    ]:
        assert validate._profile(row(hardware=written), "hardware", load_gpu)[0].name == name
    with pytest.raises(validate.Unexpressible, match="unknown model 'llama-9-1b-fp8'"):
        validate._profile(row(model="llama-9-1b-fp8"), "model", load_model)


def test_server_flags_stated_in_the_notes_set_engine_fields() -> None:
    notes = "vLLM v0.6.0 with num-scheduler-steps 10; serve: `... --num-scheduler-steps 10`"
    assert validate.stated_flags(row(notes=notes), "vllm") == (("num_scheduler_steps", 10),)
    assert validate.stated_flags(row(notes="--num_scheduler_steps=8"), "vllm") == (
        ("num_scheduler_steps", 8),
    )
    assert validate.stated_flags(row(notes=notes), "sglang") == ()  # a vLLM flag only
    assert validate.stated_flags(row(notes="vLLM 0.6.0"), "vllm") == ()


def test_set_applies_to_every_row_and_only_filters_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [r for r in small_rows() if r["id"].startswith("lat_gps_qwen3-8b_h100tp1_vllm0110")]
    path = write_csv(tmp_path / "c4.csv", rows)
    plain = by_id(validate_file(path, MAX_REQUESTS, only="ttft_mean"))
    assert list(plain) == ["lat_gps_qwen3-8b_h100tp1_vllm0110_sharegpt_c4__ttft_mean_ms"]
    # a front end 0.5 s slower than the preset's (request_overhead_s) adds 0.5 s to TTFT
    preset = dict(validate._preset("vllm"))["request_overhead_s"]
    slow = by_id(
        validate_file(
            path,
            MAX_REQUESTS,
            engine_set=(("request_overhead_s", preset + 0.5),),
            only="ttft_mean",
        )
    )
    (key,) = plain
    before, after = plain[key].predicted, slow[key].predicted
    assert before is not None and after is not None
    assert after - before == pytest.approx(500.0, abs=1.0)
    with pytest.raises(SystemExit) as exit_:  # argparse: usage and the message, status 2
        validate.main([str(path), "--only", "ttft_mean", "--set", "engine.nope=1"])
    assert exit_.value.code == 2
    assert "--set 'engine.nope=1': expected engine.KEY=VALUE" in capsys.readouterr().err


def test_every_latency_statistic_the_clients_print_is_produced() -> None:
    # the format's metrics plus the p90/p95 percentiles, E2E in ms and ITL's mean and tail:
    # each defined from the same samples as the clients (numpy's linear percentiles over
    # finished requests; ITL over every token gap, the per-step samples weighted by tokens)
    from sim.metrics import itl_samples, request_metrics
    from sim.simulate import simulate
    from tests.factories import small_config

    run = simulate(small_config())
    out = validate.serving_metrics(run.requests, run.steps, num_gpus=1)
    fin = request_metrics(run.requests)
    fin = fin[fin["status"] == "finished"]
    for q in (50, 90, 95, 99):
        assert out[f"ttft_p{q}_ms"] == pytest.approx(np.percentile(fin["ttft_s"], q) * 1e3)
        assert out[f"e2e_p{q}_ms"] == pytest.approx(out[f"e2e_p{q}_s"] * 1e3)
    tpot = fin["tpot_s"].dropna()
    assert out["tpot_p95_ms"] == pytest.approx(np.percentile(tpot, 95) * 1e3)
    assert out["e2e_mean_ms"] == pytest.approx(fin["e2e_s"].mean() * 1e3)
    values, weights = itl_samples(run.steps)
    assert out["itl_mean_ms"] == pytest.approx((values * weights).sum() / weights.sum() * 1e3)
    assert out["itl_p50_ms"] <= out["itl_p90_ms"] <= out["itl_p95_ms"] <= out["itl_p99_ms"]
    assert set(validate.SERVING_METRICS) <= set(out)


def test_median_is_read_as_p50() -> None:
    assert row(metric="TTFT_median_ms").key("metric") == "ttft_p50_ms"
    assert row(metric="e2e_median_s").key("metric") == "e2e_p50_s"
    assert row(metric="output_tok_s").key("metric") == "output_tok_s"


def test_a_trace_not_beside_the_file_is_found_among_the_bundled_ones(tmp_path: Path) -> None:
    from sim.trace import TRACES_DIR

    beside = tmp_path / "mine.jsonl"
    beside.write_text("")
    assert validate.find_trace("mine.jsonl", tmp_path) == beside.resolve()
    # the written relative path does not exist here: its last components are looked up
    # under the bundled traces (and the shared data's), gzipped or not
    found = validate.find_trace("../elsewhere/mooncake_trace_1000.jsonl", tmp_path)
    assert found == (TRACES_DIR / "mooncake_trace_1000.jsonl").resolve()
    gz = validate.find_trace("x/mooncake_synthetic_trace.jsonl", tmp_path)
    assert gz == (TRACES_DIR / "mooncake_synthetic_trace.jsonl.gz").resolve()
    assert validate.find_trace("nowhere/none.jsonl", tmp_path) is None
    assert validate.find_trace("", tmp_path) is None
    cells = {"mode": "trace", "metric": "hit_ratio", "trace": "../x/mooncake_trace_1000.jsonl"}
    setup, notes = validate.setup_of(row(**cells), tmp_path, 50)
    assert setup.trace == str(found) and any("not beside the file" in n for n in notes)


def test_activations_the_gpu_cannot_compute_in_run_weight_only_on_vllm_and_sglang() -> None:
    # an FP8 (W8A8) checkpoint on an A100: vLLM and SGLang run it with FP8 weights and bf16
    # math (Marlin); TensorRT-LLM does not, so its row stays unexpressible
    cells = {"model": "llama-3.1-8b", "hardware": "a100", "num_gpus": "1", "tp": "1"}
    fp8 = {"weight_dtype": "fp8", "activation_dtype": "fp8", "mode": "offline"}
    fields, notes = validate.cluster_of(row(engine="vllm", **cells, **fp8))
    assert dict(fields["quantization"])["weights"] == "fp8"
    assert dict(fields["quantization"])["activations"] == "bf16"
    assert any("no fp8 compute: vllm runs the weights weight-only" in n for n in notes)
    fields, notes = validate.cluster_of(row(engine="trtllm", **cells, **fp8))
    assert dict(fields["quantization"])["activations"] == "fp8" and not any(
        "weight-only" in n for n in notes
    )
    h100 = {**cells, "hardware": "h100"}
    fields, _ = validate.cluster_of(row(engine="sglang", **h100, **fp8))
    assert dict(fields["quantization"])["activations"] == "fp8"  # the H100 computes in FP8
