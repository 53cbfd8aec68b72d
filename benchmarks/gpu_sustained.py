#!/usr/bin/env python3
"""Does a GPU hold its kernel rate under sustained load? GEMM and HBM rates over time.

`benchmarks/gpu_microbench.py` times each kernel for tens of milliseconds, from a cool,
idle card. A serving engine keeps the card busy for minutes, where power and temperature
limits may lower the SM clock. This script runs one prefill-sized GEMM (Llama-3.1-70B's
gate+up projection at TP4: M = 8192 tokens, N = 14336, K = 8192) back to back for
`--seconds` in bf16, then in fp8, then a streaming read, and records every half second
the achieved rate beside the SM clock, power draw, temperature and throttle reasons that
NVML reports. Like gpu_microbench.py it needs only torch (and NVML's Python binding,
nvidia-ml-py, for the clocks; without it the clock columns are blank).

    python benchmarks/gpu_sustained.py --out sustained.csv --seconds 40

Output: one CSV row per sample (columns in `COLUMNS`) and a summary of the first and last
five seconds of each phase. `--smoke` runs a tiny CPU version to check the script.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

COLUMNS = [
    "card", "date", "phase", "t_s", "rate", "unit", "sm_mhz", "mem_mhz", "power_w", "temp_c",
    "throttle",
]  # fmt: skip
M, N, K = 8192, 14336, 8192  # Llama-3.1-70B gate+up per GPU at TP4, one 8k-token prefill chunk


class Nvml:
    """SM clock, power, temperature and throttle reasons; blank when NVML is missing."""

    def __init__(self) -> None:
        self.nv: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML: the rates are still measured
            self.nv = None

    def sample(self) -> dict[str, Any]:
        if self.nv is None:
            return {}
        nv, h = self.nv, self.handle
        reasons = (
            getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or nv.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        return {
            "sm_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
            "mem_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
            "power_w": f"{nv.nvmlDeviceGetPowerUsage(h) / 1000:.1f}",
            "temp_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
            "throttle": f"0x{reasons(h):x}",
        }


def run_phase(
    name: str,
    work: Callable[[], None],
    per_call: float,
    unit: str,
    args: argparse.Namespace,
    nvml: Nvml,
    emit: Callable[[dict[str, Any]], None],
) -> list[tuple[float, float]]:
    """Call `work` back to back for args.seconds; every ~0.5 s emit (time, rate) and NVML."""
    cuda = torch.cuda.is_available() and not args.smoke
    for _ in range(3):
        work()
    if cuda:
        torch.cuda.synchronize()
    samples = []
    start = time.monotonic()
    while (now := time.monotonic()) - start < args.seconds:
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            work()
            calls += 1
            if cuda and calls % 8 == 0:
                torch.cuda.synchronize()  # keep the host at most 8 calls ahead
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        rate = calls * per_call / elapsed
        samples.append((now - start, rate))
        emit({"phase": name, "t_s": f"{now - start:.2f}", "rate": f"{rate:.2f}", "unit": unit}
             | nvml.sample())  # fmt: skip
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each phase")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (checks the script)")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device; run on a GPU machine, or --smoke on a CPU")
        return 2
    device = "cpu" if args.smoke else "cuda"
    m, n, k = (64, 128, 64) if args.smoke else (M, N, K)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, generator=gen, device=device).to(torch.bfloat16)
    w = torch.randn(n, k, generator=gen, device=device).to(torch.bfloat16)
    out = torch.empty(m, n, device=device, dtype=torch.bfloat16)

    def bf16() -> None:
        torch.mm(x, w.t(), out=out)

    phases: list[tuple[str, Callable[[], None], float, str]] = [
        ("gemm_bf16", bf16, 2.0 * m * n * k / 1e12, "TFLOP/s")
    ]
    if not args.smoke:
        xq, wq = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)

        def fp8() -> None:
            torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                             use_fast_accum=True)  # fmt: skip

        phases.append(("gemm_fp8", fp8, 2.0 * m * n * k / 1e12, "TFLOP/s"))
    big = torch.randn((2**28 if not args.smoke else 2**20), generator=gen, device=device)
    big = big.to(torch.bfloat16)  # 512 MiB on a GPU

    def read() -> None:
        torch.sum(big, dtype=torch.float32)

    phases.append(("read", read, big.numel() * 2 / 1e9, "GB/s"))
    nvml = Nvml()
    card = torch.cuda.get_device_name() if not args.smoke else "cpu"
    date = datetime.date.today().isoformat()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = []
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()

        def emit(row: dict[str, Any]) -> None:
            writer.writerow({"card": card, "date": date} | row)
            f.flush()

        print(f"device: {card}; {args.seconds:.0f} s per phase; NVML {'on' if nvml.nv else 'off'}")
        for name, work, per_call, unit in phases:
            samples = run_phase(name, work, per_call, unit, args, nvml, emit)
            first = [r for t, r in samples if t < 5.0] or [samples[0][1]]
            last = [r for t, r in samples if t >= args.seconds - 5.0] or [samples[-1][1]]
            summary.append((name, unit, statistics.median(first), statistics.median(last)))
            print(f"{name}: first 5 s {summary[-1][2]:.1f} {unit}, last 5 s {summary[-1][3]:.1f}",
                  flush=True)  # fmt: skip
    for name, unit, a, b in summary:
        print(f"{name:<10} {a:9.1f} -> {b:9.1f} {unit} ({(b / a - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
