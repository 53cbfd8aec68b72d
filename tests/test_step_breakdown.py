"""benchmarks/step_breakdown.py: a step's roofline terms add up to the step, each bound named."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.plan import cost_params
from sim.step_time import Roofline
from tests.factories import load_script, plan

SMALL = Path(__file__).resolve().parent / "data" / "scenarios_small.csv"
script = load_script("step_breakdown")


@pytest.mark.parametrize(
    ("model", "tp", "batch", "context", "prefill"),
    [
        ("Llama-3.1-8B", 1, 1, 100, 0),
        ("Llama-3.1-8B", 2, 64, 2000, 512),  # all-reduces
        ("Qwen3-30B-A3B", 1, 300, 1500, 0),  # experts
        ("DeepSeek-V2-Lite", 1, 16, 4000, 1024),  # MLA: prompt tokens at the prefill form
        ("gpt-oss-20b", 1, 8, 500, 0),  # sliding-window layers
    ],
)
def test_the_terms_add_up_to_the_step(
    model: str, tp: int, batch: int, context: int, prefill: int
) -> None:
    replica = plan(model, tp=tp)
    p = cost_params(replica)
    shape = script.step_shape(batch, context, prefill, replica.model.sliding_window)
    rows = script.breakdown(p, shape)
    total = sum(seconds for _, seconds, _ in rows)
    assert total == pytest.approx(Roofline(p).step_seconds(shape), rel=1e-12)
    assert all(seconds >= -1e-15 for _, seconds, _ in rows)
    names = [name for name, _, _ in rows]
    assert ("experts" in names) == bool(p.num_experts)
    # the sliding-window layers attend a window of each context (gpt-oss-20b: 128 tokens)
    assert shape.attn_pairs_window == (
        batch * min(context + 1, 128) if replica.model.sliding_window else 0
    )


def test_the_bound_follows_the_batch() -> None:
    # one sequence streams the weights (memory); 4096 prompt tokens compute them
    p = cost_params(plan())
    small = dict((n, w) for n, _, w in script.breakdown(p, script.step_shape(1, 100, 0, 0)))
    big = dict((n, w) for n, _, w in script.breakdown(p, script.step_shape(0, 0, 4096, 0)))
    assert small["dense GEMMs"] == "memory" and big["dense GEMMs"] == "compute"
    assert small["attention"] == "memory" and big["attention"] == "compute"


def test_the_command_prints_a_row_and_names_an_ambiguous_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [str(SMALL), "trtllm_l31_8b_h100tp1_128_128", "--batch", "64", "--context", "200"]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert "Llama-3.1-8B on H100-SXM, tp=1" in out and "dense GEMMs" in out
    assert script.main([str(SMALL), "trtllm", "--batch", "1", "--context", "1"]) == 2
    assert "names" in capsys.readouterr().err
