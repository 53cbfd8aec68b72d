"""`servesim plan`: minimum GPUs, layouts with reasons, step times from the same roofline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.cluster import layout_plan
from sim.config import ClusterConfig
from sim.hardware import load_gpu, load_model
from sim.plan import cost_params
from sim.planner import (
    Layout,
    Precision,
    Target,
    candidate_layouts,
    decode_step_seconds,
    evaluate,
    load_engine,
    main,
    minimum_gpus,
    parse_precision,
    plan_rows,
    prefill_seconds,
)
from sim.step_time import EngineOverhead, Roofline, StepShape

ROOT = Path(__file__).resolve().parent.parent


def test_candidate_layouts_cover_tp_pp_ep_and_attention_dp() -> None:
    dense = candidate_layouts(load_model("Llama-3.1-70B"), 8)
    assert [x.label for x in dense] == ["tp1-pp8", "tp2-pp4", "tp4-pp2", "tp8"]
    moe = {x.label for x in candidate_layouts(load_model("DeepSeek-V3"), 8)}
    assert {"tp8", "tp8-ep8", "tp4-pp2", "tp1-dp8-ep8", "tp2-dp4-ep8"} <= moe
    assert all(x.num_gpus == 8 for x in candidate_layouts(load_model("DeepSeek-V3"), 8))


def test_precisions_parse_presets_and_triples() -> None:
    assert parse_precision("fp8").formats == ("fp8", "fp8", "fp8")
    assert parse_precision("checkpoint").formats is None
    assert parse_precision("NVFP4/fp8/fp8").formats == ("nvfp4", "fp8", "fp8")
    with pytest.raises(ValueError, match="weights/activations/kv"):
        parse_precision("fp8/fp8")


def test_a_row_uses_the_simulators_plan_and_roofline() -> None:
    model, gpu, engine = load_model("Llama-3.1-70B"), load_gpu("h100"), load_engine("vllm")
    target = Target(concurrency=32, context_tokens=3000, prompt_tokens=2048)
    row = evaluate(model, gpu, engine, Precision("fp8", ("fp8", "fp8", "fp8")), Layout(4), target)
    plan = layout_plan(model, gpu, engine, ClusterConfig(1, "H100-SXM", 4), {"quantization": {}})
    roofline = Roofline(cost_params(plan))
    cpu = EngineOverhead.of(plan.engine)  # the engine preset's CPU time, as a replica adds it
    assert row.feasible and row.reason == ""
    decode = roofline.step_seconds(StepShape(32, 32, 32 * 3001, 32 * 3000))
    prefill = roofline.step_seconds(StepShape(2048, 1, 2048 * 2049 // 2, 0))
    assert row.decode_step_s == cpu.step_seconds(decode, cpu.cpu_seconds(32))
    assert row.prefill_s == cpu.step_seconds(prefill, cpu.cpu_seconds(1))
    assert row.kv_needed_tokens == 32 * 3008  # whole 16-token blocks
    assert decode_step_seconds(roofline, 32, 3000, cpu) == row.decode_step_s


def test_prefill_is_chunked_at_the_token_budget() -> None:
    plan = layout_plan(
        load_model("Llama-3.1-8B"), load_gpu("h100"), load_engine("vllm"), ClusterConfig(), {}
    )
    r = Roofline(cost_params(plan))
    two = r.step_seconds(StepShape(8192, 0, 8192 * 8193 // 2, 0)) + r.step_seconds(
        StepShape(1808, 1, 10000 * 10001 // 2 - 8192 * 8193 // 2, 8192)
    )
    assert prefill_seconds(r, 10_000, 8192) == two


def test_infeasible_layouts_say_why() -> None:
    model, engine = load_model("Llama-3.1-405B"), load_engine("vllm")
    rows = plan_rows(
        model, [load_gpu("h100")], [Precision("bf16", ("bf16",) * 3)], Target(), engine, [8, 16]
    )
    reasons = {r.layout.label: r.reason for r in rows if not r.feasible}
    assert "does not fit on H100-SXM with tp=8" in reasons["tp8"]
    assert "exceeds H100-SXM's scale-up domain" in reasons["tp16"]
    assert minimum_gpus(rows, "H100-SXM", "bf16") == 16
    big = Target(concurrency=900, context_tokens=32_768)
    kv = evaluate(model, load_gpu("h100"), engine, Precision("fp8", ("fp8",) * 3), Layout(8), big)
    assert not kv.feasible and "KV cache holds" in kv.reason
    fp4 = evaluate(
        model,
        load_gpu("h100"),
        engine,
        Precision("nvfp4", ("nvfp4", "nvfp4", "fp8")),
        Layout(8),
        Target(),
    )
    assert "no fp4 tensor-core rate" in fp4.reason


def test_minimum_gpus_fall_with_precision_and_memory() -> None:
    model, engine = load_model("Llama-3.1-405B"), load_engine("vllm")
    gpus = [load_gpu(g) for g in ("h100", "h200", "b200")]
    precisions = [parse_precision("bf16"), parse_precision("fp8")]
    rows = plan_rows(model, gpus, precisions, Target(), engine, [1, 2, 4, 8, 16, 32])
    found = {(g.name, p.name): minimum_gpus(rows, g.name, p.name) for g in gpus for p in precisions}
    assert found == {
        ("H100-SXM", "bf16"): 16,
        ("H100-SXM", "fp8"): 8,
        ("H200", "bf16"): 8,
        ("H200", "fp8"): 4,
        ("B200", "bf16"): 8,
        ("B200", "fp8"): 4,
    }


def test_main_prints_the_report_and_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "DeepSeek-V3", "--gpu", "h200", "--precision", "checkpoint"]) == 0
    out = capsys.readouterr().out
    assert "minimum GPUs" in out and "tp1-dp8-ep8" in out and "tok/s" in out
    assert main(["--model", "no-such-model"]) == 2
    assert "servesim plan: error:" in capsys.readouterr().out
    assert main(["--model", "Llama-3.1-8B", "--precision", "fp7"]) == 2
    assert main(["--model", "Llama-3.1-8B", "--concurrency", "0"]) == 2
    assert main(["--nonsense"]) == 2


def test_servesim_plan_subcommand() -> None:
    cmd = [sys.executable, "-m", "sim", "plan", "--model", "llama-3.1-8b", "--gpu", "h100"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Llama-3.1-8B" in done.stdout and "minimum GPUs" in done.stdout
