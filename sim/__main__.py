"""Thin entry point: `servesim [overrides]` (Hydra) runs a simulation and writes its outputs.

Writes into Hydra's output folder: requests.parquet, steps.parquet, summary.json,
summary.txt and PNG plots; prints the summary and where the files are.
Sub-commands that are not simulations (`servesim validate ...`, `servesim plan ...`)
dispatch before Hydra parses the command line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sim.config import CONFIG_GROUPS_DIR, override_error, register_configs
from sim.hardware import ProfileError
from sim.metrics import SLO, cluster_stats, format_cluster, format_summary, summarize
from sim.plan import PlanError
from sim.simulate import SimResult, simulate, to_config
from sim.techniques import TechniqueError
from sim.trace import TraceError

USER_ERRORS = (ProfileError, PlanError, TraceError, TechniqueError, ValueError)


def write_outputs(result: SimResult, out_dir: Path, slo: SLO, plots: bool) -> str:
    """Write frames, summary and plots into out_dir; return the printed summary text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result.requests.to_parquet(out_dir / "requests.parquet", index=False)
    result.steps.to_parquet(out_dir / "steps.parquet", index=False)
    if len(result.transfers):  # disaggregated: one row per KV transfer
        result.transfers.to_parquet(out_dir / "transfers.parquet", index=False)
    summary = summarize(result.requests, result.steps, result.meta, slo)
    cluster = cluster_stats(result.requests, result.steps, result.transfers, result.meta)
    text = describe(result.meta) + "\n" + format_summary(summary) + "\n" + format_cluster(cluster)
    payload: dict[str, Any] = {
        "meta": result.meta,
        "summary": summary.to_dict(),
        "cluster": cluster,
    }
    (out_dir / "summary.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out_dir / "summary.txt").write_text(text + "\n")
    if plots:
        from sim.plots import write_plots

        write_plots(result.requests, result.steps, out_dir)
    return text


def describe(meta: dict[str, Any]) -> str:
    f = meta["formats"]
    lines = [
        f"{meta['model']} on {meta['replicas']} x {meta['layout']} {meta['gpu']} "
        f"({meta['num_gpus']} GPUs, engine {meta['engine']}); "
        f"weights {f['weights']}, activations {f['activations']}, KV {f['kv_cache']}",
        f"workload: {meta['workload']}",
        f"KV cache per replica: {meta['kv_capacity_tokens_per_replica']:,} tokens; "
        f"weights {meta['weight_gb_per_gpu']:.1f} GB per GPU",
    ]
    lines += [f"note: {n}" for n in meta["notes"]]
    return "\n".join(lines)


EXPERIMENTS_DIR = str(CONFIG_GROUPS_DIR)


@hydra.main(version_base=None, config_path=EXPERIMENTS_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        config = to_config(cfg)
        result = simulate(config)
    except USER_ERRORS as err:
        print(f"servesim: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    slo = SLO(config.slo.ttft_s, config.slo.tpot_s)
    text = write_outputs(result, out_dir, slo, config.write_plots)
    print(text)
    print(f"outputs written to {out_dir}")


def cli() -> None:
    """Console-script entry: sub-commands first, else a Hydra run.

    A reader that stops early (`servesim validate FILE | head`) ends the run quietly, as
    Unix tools do, instead of with a traceback about the closed pipe.
    """
    try:
        _dispatch()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        raise SystemExit(1) from None


def _dispatch() -> None:
    if sys.argv[1:2] == ["validate"]:
        from sim.validate import main as validate_main

        raise SystemExit(validate_main(sys.argv[2:]))
    if sys.argv[1:2] == ["plan"]:
        from sim.planner import main as plan_main

        raise SystemExit(plan_main(sys.argv[2:]))
    for arg in sys.argv[1:]:  # a mistyped key: our message, before Hydra's
        problem = override_error(arg)
        if problem:
            print(f"servesim: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    register_configs()
    main()


if __name__ == "__main__":
    cli()
