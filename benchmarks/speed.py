"""Simulator speed on the reference workload; prints figures (not part of the test suite).

Reference workload: Poisson 4 req/s, prompt uniform in [512, 2048], output uniform in
[128, 256], Llama-2-70B on one H100-SXM TP=4 replica (BF16), the vLLM engine preset (the
command line's default, with its calibrated CPU costs). Each size runs
in a fresh process so its peak memory (max RSS) is its own.

    python benchmarks/speed.py            # 10^4 and 10^5 requests
    python benchmarks/speed.py 1000 20000 # other sizes
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time

from sim.config import (
    ClusterConfig,
    Config,
    LengthConfig,
    ModelConfig,
    WorkloadConfig,
    engine_preset,
)
from sim.simulate import simulate


def reference_config(num_requests: int) -> Config:
    return Config(
        model=ModelConfig("Llama-2-70B"),
        cluster=ClusterConfig(replicas=1, gpu="H100-SXM", tp=4),
        workload=WorkloadConfig(
            kind="synthetic",
            num_requests=num_requests,
            arrival="poisson",
            rate_per_s=4.0,
            input=LengthConfig("uniform", low=512, high=2048),
            output=LengthConfig("uniform", low=128, high=256),
        ),
        engine=engine_preset("vllm"),
        progress=False,
        write_plots=False,
    )


def measure(num_requests: int) -> dict[str, float]:
    cfg = reference_config(num_requests)
    start = time.perf_counter()
    result = simulate(cfg)
    wall_s = time.perf_counter() - start
    steps = len(result.steps)
    return {
        "requests": num_requests,
        "wall_s": wall_s,
        "requests_per_wall_s": num_requests / wall_s,
        "steps": steps,
        "steps_per_wall_s": steps / wall_s,
        "simulated_s": float(result.requests["finished_at"].max()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--one":
        print(json.dumps(measure(int(argv[1]))))
        return
    sizes = [int(a) for a in argv] or [10_000, 100_000]
    print(
        f"servesim speed: {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}"
    )
    print(
        f"{'requests':>10} {'wall s':>8} {'req/wall-s':>11} {'steps':>10} "
        f"{'steps/wall-s':>13} {'peak RSS MB':>12}"
    )
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True
        )
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{m['requests']:>10,} {m['wall_s']:>8.2f} {m['requests_per_wall_s']:>11,.0f} "
            f"{m['steps']:>10,} {m['steps_per_wall_s']:>13,.0f} {m['peak_rss_mb']:>12,.0f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
