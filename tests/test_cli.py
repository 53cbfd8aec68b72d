"""The Hydra entry point: every config composes, typos are clear errors, runs write files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from sim.__main__ import EXPERIMENTS_DIR
from sim.config import Config, override_error, register_configs
from sim.simulate import to_config

GROUPS = ["hardware", "model", "cluster", "engine", "router", "workload", "technique"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(EXPERIMENTS_DIR) / group).glob("*.yaml"))


def compose_with(overrides: list[str]) -> Config:
    register_configs()
    with initialize_config_dir(config_dir=EXPERIMENTS_DIR, version_base=None):
        return to_config(compose("config", overrides=overrides))


@pytest.mark.parametrize(
    "override",
    [f"{g}={o}" if g != "technique" else f"{g}=[{o}]" for g in GROUPS for o in options(g)],
)
def test_every_config_option_composes(override: str) -> None:
    cfg = compose_with([override])
    assert isinstance(cfg, Config)


def test_default_config_is_the_bundled_trace_on_a_cluster() -> None:
    cfg = compose_with([])
    assert cfg.workload.kind == "trace" and cfg.workload.trace == "azure_conv"
    assert cfg.cluster.replicas >= 1 and cfg.technique == {}


def test_technique_list_keeps_the_listed_order_and_values() -> None:
    cfg = compose_with(["technique=[quantization]", "technique.quantization.kv_cache=bf16"])
    assert list(cfg.technique) == ["quantization"]
    assert cfg.technique["quantization"]["kv_cache"] == "bf16"


def test_a_typo_in_a_key_is_hydras_error() -> None:
    with pytest.raises(ConfigCompositionException, match="replica"):
        compose_with(["cluster.replica=2"])


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("engine.max_num_seq=3", "did you mean 'engine.max_num_seqs'?"),
        ("enigne.max_num_seqs=3", "did you mean 'engine'?"),
        ("workload.sessions.num_sesions=3", "did you mean 'workload.sessions.num_sessions'?"),
        ("engine.max_num_seqs.x=3", "engine.max_num_seqs is a value, not a section"),
    ],
)
def test_a_mistyped_key_names_the_closest_one(arg: str, message: str) -> None:
    assert message in override_error(arg)


@pytest.mark.parametrize(
    "arg",
    [
        "engine=trtllm",  # a config group
        "experiment=fp8_vs_bf16",
        "technique=[quantization]",
        "technique.quantization.weights=fp8",  # free-form: checked by the technique
        "engine.max_num_seqs=64,128",  # a sweep
        "cluster.prefill.nodes=[0,1]",
        "+foo=1",
        "hydra.run.dir=/tmp/x",
        "-m",
    ],
)
def test_known_keys_and_hydras_own_syntax_pass(arg: str) -> None:
    assert override_error(arg) == ""


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sim", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_run_writes_frames_summary_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("workload.end_s=60", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"outputs written to {out}" in proc.stdout
    assert "TTFT (ms)" in proc.stdout
    for name in ["requests.parquet", "steps.parquet", "summary.json", "ttft_tpot_tps_cdf.png"]:
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["num_gpus"] == 8


def test_cli_multirun_sweeps_every_combination(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "cluster.replicas=1,2",
        "workload.rate_scale=1,2",
        "workload.end_s=30",
        "write_plots=false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p.parent for p in sweep.glob("*/requests.parquet"))
    assert len(runs) == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cluster.gpu=H900", "servesim: error: unknown gpu 'H900'"),
        ("cluster.tp=3", "servesim: error: cluster.tp=3 does not divide"),
        (
            "cluster.replica=2",
            "servesim: error: unknown config key 'cluster.replica'; did you mean "
            "'cluster.replicas'?",
        ),
    ],
)
def test_cli_errors_are_clear_and_without_our_traceback(
    override: str, message: str, tmp_path: Path
) -> None:
    proc = run_cli(override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "sim/" not in proc.stderr  # no frames from our code
