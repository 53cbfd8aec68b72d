"""benchmarks/roofline_check.py: servesim's roofline against kernels timed on real GPUs.

The measured tables in hardware_profiles/measured/ bound the GPU profiles' constants: a
fitted efficiency above what the card achieved alone is not physical.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import ModuleType

import pytest

from sim.hardware import load_gpu
from sim.plan import ATTENTION_FRACTION_OF_MATMUL, ATTENTION_PAD_PAIRS_PER_TOKEN
from tests.factories import load_script

ROOT = Path(__file__).resolve().parent.parent
TABLES = sorted((ROOT / "hardware_profiles" / "measured").glob("*.csv"))
MEASURED = [p for p in TABLES if p.stem.count("_") == 1]  # GPU_DATE: gpu_microbench.py
SUSTAINED = [p for p in TABLES if "_sustained_" in p.name]  # gpu_sustained.py


def roofline_check() -> ModuleType:
    return load_script("roofline_check")


def test_measured_tables_are_shipped_for_the_h100_and_h200() -> None:
    names = {p.name for p in MEASURED}
    assert {"H100-SXM_2026-11-27.csv", "H200_2026-11-27.csv"} <= names
    assert {p.name.replace("_sustained", "") for p in SUSTAINED} == names


@pytest.mark.parametrize("table", SUSTAINED, ids=[p.stem for p in SUSTAINED])
def test_matmul_constants_do_not_exceed_the_sustained_gemm_rate(table: Path) -> None:
    """Serving keeps the card busy: the GEMM rate it holds after 35-40 s bounds matmul_frac."""
    rc = roofline_check()
    gpu, held = rc.sustained_fractions(table)
    for dtype in ("bf16", "fp8"):
        assert gpu.efficiency.matmul_frac[dtype] <= held[dtype], (dtype, held[dtype])


def test_sustained_fractions_by_hand(tmp_path: Path) -> None:
    rc = roofline_check()
    table = tmp_path / "s.csv"
    rows = ["card,date,phase,t_s,rate,unit,sm_mhz,mem_mhz,power_w,temp_c,throttle"]
    # bf16: 700 until t = 4, then 600, 620, 640 in the last five seconds (t >= 5 of 10)
    for t, rate in ((0, 700), (4, 700), (5, 600), (7.5, 640), (10, 620)):
        rows.append(f"NVIDIA H100 80GB HBM3,d,gemm_bf16,{t},{rate},TFLOP/s,,,,,")
    rows.append("NVIDIA H100 80GB HBM3,d,read,0,3000,GB/s,,,,,")
    table.write_text("\n".join(rows) + "\n")
    gpu, held = rc.sustained_fractions(table)
    assert gpu.name == "H100-SXM"
    assert held == {
        "bf16": pytest.approx(620e12 / 989.4e12),
        "hbm": pytest.approx(3.0e12 / 3.35e12),
    }


def test_a_partial_table_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc = roofline_check()
    table = ROOT / "hardware_profiles" / "measured" / "H100-SXM_sampling_2026-11-27.csv"
    assert rc.main([str(table)]) == 2
    out = capsys.readouterr().out
    assert "has no attn_prefill, copy, gemm, read rows" in out
    assert "needs a full gpu_microbench.py run" in out


def test_cards_map_to_profiles_by_their_cuda_names() -> None:
    rc = roofline_check()
    assert rc.gpu_for_card("NVIDIA H100 80GB HBM3").name == "H100-SXM"
    assert rc.gpu_for_card("NVIDIA H200").name == "H200"
    with pytest.raises(SystemExit, match="no GPU profile matches card 'Acme X1'; pass --gpu"):
        rc.gpu_for_card("Acme X1")


def _record(**fields: str) -> dict[str, str]:
    base = dict.fromkeys(["kind", "model", "tp", "op", "dtype", "m", "n", "k", "batch"], "")
    base.update(context="", flop="", bytes="")
    base.update(fields)
    return base


def test_gemm_prediction_is_the_dense_term_by_hand() -> None:
    rc = roofline_check()
    gpu = load_gpu("H200")
    # Llama-3.1-8B QKV on one GPU: N = (32 + 2·8)·128 = 6144, K = 4096
    n, k = 6144, 4096
    rate = 989.4e12 * 0.5  # H200 bf16 peak x matmul_frac
    bw = 4.8e12 * 0.865  # H200 HBM x hbm_frac
    pad = 130.1
    for m in (1, 4096):
        rec = _record(kind="gemm", dtype="bf16", m=str(m), n=str(n), k=str(k))
        expected = max(2 * n * k * (m + pad) / rate, n * k * 2 / bw)
        assert rc.predict(gpu, rec) == pytest.approx(expected, rel=1e-12)
    # with pad = 130.1 even m = 1 is compute-bound: 13.34 us of padded GEMM against 12.12 us
    # to stream the 50.3 MB of weights (the card took 15.7 us; see the measured tables)
    one = rc.predict(gpu, _record(kind="gemm", dtype="bf16", m="1", n=str(n), k=str(k)))
    assert one == pytest.approx(2 * n * k * (1 + pad) / rate, rel=1e-12)
    assert one * 1e6 == pytest.approx(13.34, abs=0.01)
    assert n * k * 2 / bw * 1e6 == pytest.approx(12.12, abs=0.01)
    fp8 = _record(kind="gemm", dtype="fp8", m="4096", n=str(n), k=str(k))
    assert rc.predict(gpu, fp8) == pytest.approx(
        2 * n * k * (4096 + pad) / (1978.9e12 * 0.5786), rel=1e-12
    )


def test_attention_and_memory_predictions_by_hand() -> None:
    rc = roofline_check()
    gpu = load_gpu("H100-SXM")
    bw = 3.35e12 * 0.8865
    attn_rate = 989.4e12 * 0.5 * ATTENTION_FRACTION_OF_MATMUL
    # Llama-3.1-70B at TP4: 16 query heads, 2 KV heads, head dim 128
    pair_flops, kv_bytes = 4 * 128 * 16, 4 * 2 * 128
    seq = 16384
    prefill = _record(kind="attn_prefill", model="Llama-3.1-70B", tp="4", batch="1",
                      context=str(seq))  # fmt: skip
    # each query token adds ATTENTION_PAD_PAIRS_PER_TOKEN pairs of work (sim/plan.py)
    pad = ATTENTION_PAD_PAIRS_PER_TOKEN
    expected = max(pair_flops * (seq * (seq + 1) / 2 + pad * seq) / attn_rate, kv_bytes * seq / bw)
    assert rc.predict(gpu, prefill) == pytest.approx(expected, rel=1e-12)
    batch, ctx = 32, 4096
    decode = _record(kind="attn_decode", model="Llama-3.1-70B", tp="4", batch=str(batch),
                     context=str(ctx))  # fmt: skip
    # the KV read plus the step's own new tokens, as the step-time model counts it
    expected = max(
        pair_flops * (batch * ctx + pad * batch) / attn_rate, kv_bytes * (batch * ctx + batch) / bw
    )
    assert rc.predict(gpu, decode) == pytest.approx(expected, rel=1e-12)
    read = _record(kind="read", bytes=str(2**30))
    assert rc.predict(gpu, read) == pytest.approx(2**30 / bw, rel=1e-12)
    assert rc.predict(gpu, _record(kind="launch")) is None


def test_grouped_gemm_prediction_uses_the_expert_tile_rows() -> None:
    rc = roofline_check()
    gpu = load_gpu("H100-SXM")
    rate, bw = 989.4e12 * 0.5, 3.35e12 * 0.8865
    n, k, experts = 1536, 2048, 64  # Qwen3-30B-A3B w13
    for m, rows in ((4, 16.0), (64, 96.0), (256, 384.0), (1024, 1024 + 130.1)):
        rec = _record(kind="grouped_gemm", dtype="bf16", m=str(m), n=str(n), k=str(k),
                      batch=str(experts))  # fmt: skip
        expected = max(2 * n * k * experts * rows / rate, experts * n * k * 2 / bw)
        assert rc.predict(gpu, rec) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("table", MEASURED, ids=[p.stem for p in MEASURED])
def test_every_measured_kernel_is_predicted_except_launches(table: Path) -> None:
    rc = roofline_check()
    with table.open() as f:
        records = list(csv.DictReader(f))
    assert records and not [r for r in records if r["kind"] == "error"]
    _, rows = rc.load(table)
    assert len(rows) == len(records)
    for row in rows:
        if row.kind == "launch":
            assert math.isnan(row.predicted_s)
        else:
            assert row.predicted_s > 0 and math.isfinite(row.ratio), row


@pytest.mark.parametrize("table", MEASURED, ids=[p.stem for p in MEASURED])
def test_profile_constants_do_not_exceed_what_the_card_achieved(table: Path) -> None:
    """The microbenchmarks bound the fitted efficiencies (the physical-plausibility rule)."""
    rc = roofline_check()
    gpu, rows = rc.load(table)
    fig = rc.kernel_figures(gpu, rows)
    eff = gpu.efficiency
    for dtype, measured in fig.gemm_frac.items():
        assert eff.matmul_frac[dtype] <= measured, (dtype, eff.matmul_frac[dtype], measured)
    assert eff.hbm_frac <= fig.read_frac
    # servesim's attention rate (beyond the per-token cost) is below the card's
    serving_attention = gpu.achievable_flops_per_s("bf16") * ATTENTION_FRACTION_OF_MATMUL
    card_attention = fig.attention_over_gemm * fig.gemm_frac["bf16"] * gpu.peak_flops_per_s["bf16"]
    assert serving_attention <= card_attention
    assert 0.5e-6 < fig.launch_us * 1e-6 < eff.layer_floor_s


@pytest.mark.parametrize("table", MEASURED, ids=[p.stem for p in MEASURED])
def test_attention_pad_is_the_measured_one(table: Path) -> None:
    """ATTENTION_PAD_PAIRS_PER_TOKEN is a measurement: each card's fit is within 5 % of it."""
    rc = roofline_check()
    _gpu, rows = rc.load(table)
    pad, _rate, loss = rc.fit_attention(rows)
    assert pad == pytest.approx(ATTENTION_PAD_PAIRS_PER_TOKEN, rel=0.05)
    assert loss < 0.1  # the form fits 1k-16k-token prefills within about 10 %


def test_kernel_figures_by_hand() -> None:
    rc = roofline_check()
    gpu = load_gpu("H100-SXM")

    def row(kind: str, *, m: int = 0, dtype: str = "bf16", flop: float = 0.0,
            nbytes: float = 0.0, t: float = 1e-3, context: int = 0) -> object:  # fmt: skip
        return rc.Row(kind, "", 1, "", dtype, m, 0, 0, 1, context, flop, nbytes, t, 1.0)

    rows = [
        row("gemm", m=4096, flop=600e9),  # 600 TFLOP/s
        row("gemm", m=1024, flop=700e9),  # 700
        row("gemm", m=2048, flop=800e9),  # 800: median of the three is 700
        row("gemm", m=16, flop=900e9),  # too short for the median, but the best
        row("gemm", m=1, nbytes=3.0e9),  # an M = 1 GEMM over >= 256 MiB of weights: a stream
        row("read", nbytes=2.9e9),  # 2.9 TB/s: slower than the GEMM stream above
        row("copy", nbytes=2.5e9),
        # causal prefills made by t = F·(pairs + 500·S) / 630 TFLOP/s
        *[
            row(
                "attn_prefill",
                flop=4096 * s * (s + 1) / 2,
                context=s,
                t=4096 * (s * (s + 1) / 2 + 500 * s) / 630e12,
            )
            for s in (1024, 4096, 16384)
        ],
        row("launch", t=1.5e-6),
        row("launch", t=2.5e-6),
    ]
    fig = rc.kernel_figures(gpu, rows)
    assert fig.gemm_frac == {"bf16": pytest.approx(700e12 / 989.4e12)}
    assert fig.gemm_best_frac == {"bf16": pytest.approx(900e12 / 989.4e12)}
    # the m = 1 GEMM moved 3.0 GB in 1 ms: 3.0e9 bytes >= 256 MiB, so it counts as a stream
    assert fig.read_frac == pytest.approx(3.0e12 / 3.35e12)
    assert fig.copy_frac == pytest.approx(2.5e12 / 3.35e12)
    assert fig.attention_pad_pairs == 500.0
    assert fig.attention_over_gemm == pytest.approx(630 / 700)
    assert fig.launch_us == pytest.approx(1.5)


def test_gemv_fit_recovers_fixed_latency_and_stream_rate() -> None:
    rc = roofline_check()
    rows = []
    for nbytes in (8e6, 33e6, 50e6, 235e6, 470e6, 2.1e9):
        t = 4e-6 + nbytes / (0.85 * 3.35e12)  # 4 us per kernel, weights at 85 % of 3.35 TB/s
        rows.append(rc.Row("gemm", "", 1, "", "bf16", 1, 0, 0, 1, 0, 0.0, nbytes, t, t))
    rows.append(rc.Row("gemm", "", 1, "", "fp8", 1, 0, 0, 1, 0, 0.0, 1e9, 1.0, 1.0))  # not bf16
    fixed, frac = rc.fit_gemv(rows, 3.35e12)
    assert fixed == pytest.approx(4e-6, rel=1e-9)
    assert frac == pytest.approx(0.85, rel=1e-9)
    assert all(math.isnan(v) for v in rc.fit_gemv(rows[:1], 3.35e12))


def test_gemm_fit_recovers_the_constants_that_made_the_data() -> None:
    rc = roofline_check()
    gpu = load_gpu("H100-SXM")
    peak, bw = 989.4e12, gpu.achievable_hbm_bw_bytes_per_s
    rows = []
    for n, k in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)):
        for m in (1, 16, 64, 256, 1024, 4096, 16384):
            t = max(2 * n * k * (m + 40) / (0.7 * peak), n * k * 2 / bw)
            rows.append(rc.Row("gemm", "", 1, "", "bf16", m, n, k, 1, 0, 0.0, 0.0, t, t))
    frac, pad, loss = rc.fit_gemm(rows, gpu, "bf16")
    assert frac == pytest.approx(0.7, abs=1e-9)
    assert pad == 40.0
    assert loss == pytest.approx(0.0, abs=1e-9)
