"""Compare servesim's roofline with kernels timed on a real GPU.

    python benchmarks/roofline_check.py hardware_profiles/measured/H100-SXM_2026-11-27.csv
    python benchmarks/roofline_check.py hardware_profiles/measured/H200_2026-11-27.csv

The table comes from `benchmarks/gpu_microbench.py`. For every measured kernel the script
asks servesim's own step-time code (`sim.step_time.Roofline` over a `CostParams` holding just
that kernel) what it predicts with the GPU profile's fitted constants, and prints, per kind
and token range, the median of measured / predicted. It then prints what the card itself
achieved as fractions of the datasheet (`kernel_figures`) beside the profile's constants.

The fitted constants are serving efficiencies: they also carry what the roofline leaves out
(unfused element-wise kernels, launch gaps, the engine's kernels at serving shapes), so a
kernel measured alone runs faster than the roofline predicts. The microbenchmarks bound
them: a profile's constant above what the card achieves alone is not physical
(`tests/test_roofline_check.py` checks this for every measured card).

`--out FILE.csv` writes every row with its prediction. `--fit` also fits the roofline's
GEMM form, max(2·N·K·(M + pad) / R, W / BW), to the measured GEMMs alone (R as a fraction
of peak, pad in tokens), to show what kernel-level constants would be.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.hardware import GPUSpec, ProfileError, load_gpu, load_model
from sim.plan import (
    ATTENTION_FRACTION_OF_MATMUL,
    ATTENTION_PAD_PAIRS_PER_TOKEN,
    CostParams,
    EngineSpec,
    ReplicaPlan,
    cost_params,
)
from sim.step_time import Roofline, StepShape, decode_shape, expert_gemm_rows

STEP_MODEL = "Llama-3.1-8B"  # the whole-forward rows of gpu_microbench.py
NEEDED_KINDS = frozenset({"gemm", "read", "copy", "attn_prefill"})  # what kernel_figures reads
TOKEN_RANGES = [(1, 16), (17, 256), (257, 2048), (2049, 10**9)]  # GEMM rows grouped by M
LARGE_GEMM_TOKENS = 1024  # GEMMs this tall are compute-bound on every card we measure
LARGE_WEIGHT_BYTES = 256 * 2**20  # M=1 GEMMs this large stream weights at full bandwidth


@dataclass(frozen=True)
class Row:
    """One measured kernel and servesim's prediction for it."""

    kind: str
    model: str
    tp: int
    op: str
    dtype: str
    m: int
    n: int
    k: int
    batch: int
    context: int
    flop: float
    bytes: float
    measured_s: float
    predicted_s: float

    @property
    def ratio(self) -> float:
        """measured / predicted: > 1 when the card is slower than the roofline says."""
        return self.measured_s / self.predicted_s


def gpu_for_card(card: str) -> GPUSpec:
    """The GPU profile of a card as CUDA names it ('NVIDIA H100 80GB HBM3' -> H100-SXM)."""
    words = card.replace("NVIDIA", "").split()
    for name in (card, " ".join(words), "-".join(words), words[0] if words else card):
        try:
            return load_gpu(name)
        except ProfileError:
            continue
    raise SystemExit(f"error: no GPU profile matches card {card!r}; pass --gpu NAME")


def _int(text: str) -> int:
    return int(text) if text else 0


def _float(text: str) -> float:
    return float(text) if text else 0.0


def _kernel(**fields: float) -> Roofline:
    """A Roofline over CostParams holding one kernel's constants (all others zero)."""
    base = {name: 0.0 for name in CostParams.__dataclass_fields__}
    base.update(num_experts=0, experts_per_token=0, window_tokens=0, allreduce_count=0)
    base.update(pp_stages=1, expert_load_factor=1.0)
    base.update(fields)
    return Roofline(CostParams(**base))  # type: ignore[arg-type]


def predict(gpu: GPUSpec, rec: dict[str, str]) -> float | None:
    """servesim's seconds for one measured row; None for kinds it has no formula for."""
    kind = rec["kind"]
    bw = gpu.achievable_hbm_bw_bytes_per_s
    m, n, k = _int(rec["m"]), _int(rec["n"]), _int(rec["k"])
    if kind in ("copy", "read"):
        return _float(rec["bytes"]) / bw
    if kind in ("gemm", "grouped_gemm"):
        rate_key = rec["dtype"]
        width = 1.0 if rate_key == "fp8" else 2.0
        experts = _int(rec["batch"]) if kind == "grouped_gemm" else 1
        rate = gpu.achievable_flops_per_s(rate_key)
        pad = gpu.efficiency.gemm_pad_tokens
        if kind == "grouped_gemm":
            # the step model's MoE expert term for exactly E experts with m tokens each (it
            # counts the experts T routed tokens touch in expectation; the benchmark runs E)
            rows = expert_gemm_rows(m, pad)
            return max(2.0 * n * k * experts * rows / rate, experts * (n * k * width) / bw)
        roof = _kernel(
            gemm_flops_per_token=2.0 * n * k,
            gemm_weight_bytes=n * k * width,
            gemm_rate_flops_per_s=rate,
            hbm_bytes_per_s=bw,
            gemm_pad_tokens=pad,
        )
        return roof.stage_seconds(m, 0)
    if kind in ("attn_prefill", "attn_decode"):
        model = load_model(rec["model"])
        tp = _int(rec["tp"]) or 1
        q_heads = model.num_heads // tp
        kv_heads = max(1, model.num_kv_heads // tp)
        roof = _kernel(
            attn_flops_per_pair=4.0 * model.head_dim * q_heads,
            kv_bytes_per_token=4.0 * kv_heads * model.head_dim,
            attn_rate_flops_per_s=gpu.achievable_flops_per_s("bf16") * ATTENTION_FRACTION_OF_MATMUL,
            attn_pad_pairs_per_token=ATTENTION_PAD_PAIRS_PER_TOKEN,
            hbm_bytes_per_s=bw,
        )
        batch, context = _int(rec["batch"]), _int(rec["context"])
        if kind == "attn_prefill":
            return roof.attention_seconds(context, context * (context + 1) / 2, 0.0, 0, 0)
        return roof.attention_seconds(batch, batch * context, batch * context, 0, 0)
    if kind in ("decode_step", "prefill_step"):
        plan = ReplicaPlan(model=load_model(rec["model"]), gpu=gpu, engine=EngineSpec(), tp=1)
        roof = Roofline(cost_params(plan))
        batch, context = _int(rec["batch"]), _int(rec["context"])
        if kind == "decode_step":
            shape = decode_shape(batch, context)
        else:
            pairs = m * (m + 1) // 2
            shape = StepShape(m, 1, pairs, 0, 0, 0, pairs, m)
        return roof.step_seconds(shape)
    return None


def load(path: Path, gpu: GPUSpec | None = None) -> tuple[GPUSpec, list[Row]]:
    """Read a gpu_microbench.py table; predict every row servesim has a formula for (the
    others, kernel launches, get NaN)."""
    with path.open(newline="") as f:
        records = [r for r in csv.DictReader(f) if r["kind"] not in ("", "error")]
    if not records:
        raise SystemExit(f"error: {path} holds no measurements")
    gpu = gpu or gpu_for_card(records[0]["card"])
    rows = []
    for rec in records:
        predicted = predict(gpu, rec)
        rows.append(
            Row(
                kind=rec["kind"],
                model=rec["model"],
                tp=_int(rec["tp"]),
                op=rec["op"],
                dtype=rec["dtype"],
                m=_int(rec["m"]),
                n=_int(rec["n"]),
                k=_int(rec["k"]),
                batch=_int(rec["batch"]),
                context=_int(rec["context"]),
                flop=_float(rec["flop"]),
                bytes=_float(rec["bytes"]),
                measured_s=float(rec["time_us"]) * 1e-6,
                predicted_s=math.nan if predicted is None else predicted,
            )
        )
    return gpu, rows


@dataclass(frozen=True)
class KernelFigures:
    """What the card achieved alone, as fractions of its datasheet."""

    gemm_frac: dict[str, float]  # median FLOP/s of GEMMs with M >= 1024, over peak
    gemm_best_frac: dict[str, float]  # the fastest GEMM, over peak
    read_frac: float  # fastest streaming read (sum, or an M=1 GEMM over >= 256 MB), over peak
    copy_frac: float  # fastest device-to-device copy (read + write), over peak
    attention_pad_pairs: float  # fitted per-query-token cost of causal prefill (fit_attention)
    attention_over_gemm: float  # its fitted FLOP/s beyond that cost, over the bf16 GEMM median
    launch_us: float  # shortest kernel inside a CUDA graph
    gemv_fixed_us: float  # bf16 M = 1 GEMMs: fixed latency of each (fit_gemv)
    gemv_read_frac: float  # ... and the fraction of peak HBM their weights stream at


def kernel_figures(gpu: GPUSpec, rows: Iterable[Row]) -> KernelFigures:
    rows = list(rows)
    peak_bw = gpu.hbm_bw_bytes_per_s

    def rate(r: Row) -> float:
        return r.flop / r.measured_s

    gemm_frac, best = {}, {}
    for dtype in sorted({r.dtype for r in rows if r.kind == "gemm"}):
        gemms = [r for r in rows if r.kind == "gemm" and r.dtype == dtype]
        large = [rate(r) for r in gemms if r.m >= LARGE_GEMM_TOKENS]
        peak = gpu.peak_flops_per_s[dtype]
        gemm_frac[dtype] = statistics.median(large) / peak
        best[dtype] = max(rate(r) for r in gemms) / peak
    streams = [r for r in rows if r.kind == "read"]
    streams += [r for r in rows if r.kind == "gemm" and r.m == 1 and r.bytes >= LARGE_WEIGHT_BYTES]
    read_frac = max(r.bytes / r.measured_s for r in streams) / peak_bw
    copies = [r for r in rows if r.kind == "copy"]
    copy_frac = max(r.bytes / r.measured_s for r in copies) / peak_bw
    attn_pad, attn_rate, _ = fit_attention(rows)
    gemv_fixed, gemv_frac = fit_gemv(rows, peak_bw)
    launches = [r.measured_s for r in rows if r.kind == "launch"]
    launch = min(launches) if launches else math.nan
    gemm_rate_bf16 = gemm_frac.get("bf16", math.nan) * gpu.peak_flops_per_s["bf16"]
    return KernelFigures(
        gemm_frac=gemm_frac,
        gemm_best_frac=best,
        read_frac=read_frac,
        copy_frac=copy_frac,
        gemv_fixed_us=gemv_fixed * 1e6,
        gemv_read_frac=gemv_frac,
        attention_pad_pairs=attn_pad,
        attention_over_gemm=attn_rate / gemm_rate_bf16,
        launch_us=launch * 1e6,
    )


SUSTAINED_TAIL_S = 5.0  # a sustained phase's rate: the median of its last 5 seconds


def sustained_fractions(path: Path, gpu: GPUSpec | None = None) -> tuple[GPUSpec, dict[str, float]]:
    """Fractions of the datasheet a card held at the end of each gpu_sustained.py phase.

    Keys: 'bf16' and 'fp8' (GEMM FLOP/s over the dtype's peak) and 'hbm' (streaming read over
    peak HBM bandwidth), each the median sample of the phase's last SUSTAINED_TAIL_S seconds.
    """
    with path.open(newline="") as f:
        records = list(csv.DictReader(f))
    if not records:
        raise SystemExit(f"error: {path} holds no samples")
    gpu = gpu or gpu_for_card(records[0]["card"])
    out = {}
    for phase, key in (("gemm_bf16", "bf16"), ("gemm_fp8", "fp8"), ("read", "hbm")):
        samples = [r for r in records if r["phase"] == phase]
        if not samples:
            continue
        end = max(float(r["t_s"]) for r in samples)
        tail = [float(r["rate"]) for r in samples if float(r["t_s"]) >= end - SUSTAINED_TAIL_S]
        rate = statistics.median(tail)
        if key == "hbm":
            out[key] = rate * 1e9 / gpu.hbm_bw_bytes_per_s
        else:
            out[key] = rate * 1e12 / gpu.peak_flops_per_s[key]
    return gpu, out


def fit_gemv(rows: Iterable[Row], peak_bytes_per_s: float) -> tuple[float, float]:
    """(fixed seconds, fraction of peak HBM) of t = fixed + W / (fraction · peak) over the
    bf16 M = 1 GEMMs, least squares on relative error: each GEMM's fixed latency (launch
    ramp, tail, the last wave) beside its weight stream, the kernel-level view of the
    profiles' layer floor and HBM fraction."""
    gemv = [r for r in rows if r.kind == "gemm" and r.m == 1 and r.dtype == "bf16"]
    if len({r.bytes for r in gemv}) < 2:  # two unknowns need two weight sizes
        return math.nan, math.nan
    weights = np.array([r.bytes for r in gemv])
    t = np.array([r.measured_s for r in gemv])
    design = np.vstack([np.ones_like(weights), weights]).T / t[:, None]
    (fixed, per_byte), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    return float(fixed), float(1.0 / per_byte / peak_bytes_per_s)


def fit_attention(rows: Iterable[Row]) -> tuple[float, float, float]:
    """(pad pairs per query token, FLOP/s, mean |log error|) of causal prefill attention.

    Form: t = F_pair·(pairs + pad·T) / R over the `attn_prefill` rows (T = S tokens,
    pairs = S(S + 1)/2). Grid search of pad from 0 to 3000 in steps of 1; for each pad, R is
    the geometric mean that zeroes the mean log error; loss is the mean absolute log error.
    """
    prefill = [r for r in rows if r.kind == "attn_prefill"]
    tokens = np.array([float(r.context) for r in prefill])
    pairs = tokens * (tokens + 1) / 2
    per_pair = np.array([r.flop for r in prefill]) / pairs
    measured = np.log(np.array([r.measured_s for r in prefill]))
    best = (math.inf, 0.0, 0.0)
    for pad in np.arange(0.0, 3001.0, 1.0):
        work = np.log(per_pair * (pairs + pad * tokens))
        log_rate = float(np.mean(work - measured))
        loss = float(np.mean(np.abs(work - log_rate - measured)))
        if loss < best[0]:
            best = (loss, float(pad), math.exp(log_rate))
    return best[1], best[2], best[0]


def fit_gemm(rows: Iterable[Row], gpu: GPUSpec, dtype: str) -> tuple[float, float, float]:
    """Kernel-level (R fraction, pad tokens, mean |log error|) for the roofline's GEMM form.

    Grid search: R from 0.30 to 0.95 of peak in steps of 0.005, pad from 0 to 300 tokens in
    steps of 1, HBM at the profile's fraction; loss is the mean absolute log error.
    """
    gemms = [r for r in rows if r.kind == "gemm" and r.dtype == dtype]
    width = 1.0 if dtype == "fp8" else 2.0
    flop_per_tok = np.array([2.0 * r.n * r.k for r in gemms])
    m = np.array([float(r.m) for r in gemms])
    mem = np.array([r.n * r.k * width for r in gemms]) / gpu.achievable_hbm_bw_bytes_per_s
    measured = np.log(np.array([r.measured_s for r in gemms]))
    fracs = np.arange(0.30, 0.9501, 0.005)
    pads = np.arange(0.0, 301.0, 1.0)
    peak = gpu.peak_flops_per_s[dtype]
    best = (math.inf, 0.0, 0.0)
    for frac in fracs:
        compute = flop_per_tok[None, :] * (m[None, :] + pads[:, None]) / (frac * peak)
        pred = np.maximum(compute, mem[None, :])
        loss = np.mean(np.abs(np.log(pred) - measured[None, :]), axis=1)
        i = int(np.argmin(loss))
        if loss[i] < best[0]:
            best = (float(loss[i]), float(frac), float(pads[i]))
    return best[1], best[2], best[0]


def ratio_table(rows: list[Row]) -> list[tuple[str, str, str, int, float, float, float]]:
    """(kind, dtype, range, rows, min, median, max) of measured / predicted."""
    out = []
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if math.isnan(r.predicted_s):
            continue
        if r.kind in ("gemm", "grouped_gemm"):
            lo, hi = next((lo, hi) for lo, hi in TOKEN_RANGES if lo <= r.m <= hi)
            label = f"M {lo}-{hi}" if hi < 10**9 else f"M >= {lo}"
        elif r.kind == "attn_decode":
            label = f"batch {r.batch}"
        else:
            label = "all"
        groups.setdefault((r.kind, r.dtype, label), []).append(r.ratio)
    for (kind, dtype, label), ratios in groups.items():
        out.append(
            (kind, dtype, label, len(ratios), min(ratios), statistics.median(ratios), max(ratios))
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", type=Path, help="CSV written by benchmarks/gpu_microbench.py")
    parser.add_argument("--gpu", default="", help="GPU profile (default: from the card name)")
    parser.add_argument("--out", type=Path, help="write every row with its prediction here")
    parser.add_argument("--fit", action="store_true", help="fit kernel-level GEMM constants")
    parser.add_argument(
        "--sustained", type=Path, help="also a gpu_sustained.py table of the same card"
    )
    args = parser.parse_args(argv)
    if not args.table.is_file():
        print(f"error: {args.table} is not a file; pass a table from gpu_microbench.py")
        return 2
    gpu, rows = load(args.table, load_gpu(args.gpu) if args.gpu else None)
    missing = sorted(NEEDED_KINDS - {r.kind for r in rows})
    if missing:
        print(
            f"error: {args.table} has no {', '.join(missing)} rows; roofline_check needs a full "
            "gpu_microbench.py run (an --only run, such as sampling, cannot be compared)"
        )
        return 2
    eff = gpu.efficiency
    predicted = sum(not math.isnan(r.predicted_s) for r in rows)
    print(f"{args.table.name}: {len(rows)} kernels ({predicted} predicted) on profile {gpu.name}")
    print("\nmeasured / predicted by servesim's roofline (> 1: the card is slower)")
    print(
        f"{'kind':<13} {'dtype':<5} {'range':<14} {'rows':>4} {'min':>6} {'median':>6} {'max':>6}"
    )
    for kind, dtype, label, n, lo, med, hi in ratio_table(rows):
        print(f"{kind:<13} {dtype:<5} {label:<14} {n:>4} {lo:>6.2f} {med:>6.2f} {hi:>6.2f}")
    fig = kernel_figures(gpu, rows)
    print("\nthe card alone vs the profile's constants (fractions of the datasheet)")
    for dtype, frac in fig.gemm_frac.items():
        print(
            f"  {dtype} GEMM, M >= {LARGE_GEMM_TOKENS}: median {frac:.3f}, best "
            f"{fig.gemm_best_frac[dtype]:.3f}; profile matmul_frac {eff.matmul_frac[dtype]:.4f}"
        )
    print(f"  streaming read: best {fig.read_frac:.3f}; profile hbm_frac {eff.hbm_frac:.4f}")
    print(f"  device-to-device copy: best {fig.copy_frac:.3f}")
    print(
        f"  causal prefill attention: {fig.attention_pad_pairs:.0f} pairs per query token, then "
        f"{fig.attention_over_gemm:.3f} of the bf16 GEMM rate; servesim "
        f"{ATTENTION_PAD_PAIRS_PER_TOKEN:.0f}, {ATTENTION_FRACTION_OF_MATMUL:.4f}"
    )
    print(
        f"  bf16 M = 1 GEMMs: {fig.gemv_fixed_us:.2f} us each + weights at "
        f"{fig.gemv_read_frac:.3f} of peak HBM"
    )
    print(
        f"  shortest kernel in a CUDA graph: {fig.launch_us:.2f} us; "
        f"profile layer_floor {eff.layer_floor_s * 1e6:.2f} us per layer"
    )
    if args.sustained:
        _, held = sustained_fractions(args.sustained, gpu)
        print(f"\nheld at the end of each sustained phase ({args.sustained.name})")
        for key, frac in held.items():
            profile = eff.hbm_frac if key == "hbm" else eff.matmul_frac[key]
            print(f"  {key}: {frac:.3f} of the datasheet; profile {profile:.4f}")
    if args.fit:
        print("\nkernel-level fit of max(2·N·K·(M + pad) / R, W / BW) to the GEMMs alone")
        for dtype in fig.gemm_frac:
            frac, pad, loss = fit_gemm(rows, gpu, dtype)
            print(
                f"  {dtype}: R = {frac:.3f} of peak, pad = {pad:.0f} tokens, mean |log error| "
                f"{loss:.3f}; profile {eff.matmul_frac[dtype]:.4f}, {eff.gemm_pad_tokens:.1f}"
            )
    if args.out:
        with args.out.open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(
                [
                    "kind",
                    "model",
                    "tp",
                    "op",
                    "dtype",
                    "m",
                    "n",
                    "k",
                    "batch",
                    "context",
                    "measured_us",
                    "predicted_us",
                    "ratio",
                ]
            )
            for r in rows:
                writer.writerow(
                    [
                        r.kind,
                        r.model,
                        r.tp,
                        r.op,
                        r.dtype,
                        r.m,
                        r.n,
                        r.k,
                        r.batch,
                        r.context,
                        f"{r.measured_s * 1e6:.3f}",
                        f"{r.predicted_s * 1e6:.3f}",
                        f"{r.ratio:.4f}",
                    ]
                )
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
