"""The engine loop: exact single-request timelines, chunking, stretches equal stepping."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sim.plan import memory_plan
from sim.request import Request
from tests.factories import LinearStepModel, plan, run_requests


def test_single_request_timeline_by_hand() -> None:
    # a step costs 10 ms + 0.01 ms per token: prefill of 1000 tokens = 20 ms, decode = 10.01 ms
    model = LinearStepModel(0.010, 0.00001)
    r = Request(0, 0.5, input_tokens=1000, output_tokens=5)
    replica = run_requests(plan(), model, [r])
    prefill = 0.010 + 0.00001 * 1000
    decode = 0.010 + 0.00001 * 1
    t = 0.5 + prefill
    assert r.first_token_at == t  # TTFT = the prefill step
    for _ in range(4):  # E2E = prefill + (n - 1) decode steps
        t = t + decode
    assert r.finished_at == t
    assert r.first_scheduled_at == 0.5
    assert r.status == "finished" and r.num_output_done == 5
    steps = pd.DataFrame(replica.step_columns())
    assert list(steps["num_tokens"]) == [1000, 1, 1, 1, 1]
    assert list(steps["num_prefill_tokens"]) == [1000, 0, 0, 0, 0]
    assert replica.kv.num_free == replica.kv.num_blocks


def test_chunked_prefill_splits_a_long_prompt_at_the_budget() -> None:
    model = LinearStepModel(0.001, 0.0)
    r = Request(0, 0.0, input_tokens=2500, output_tokens=2)
    replica = run_requests(plan(max_num_batched_tokens=1024, max_num_seqs=8), model, [r])
    steps = pd.DataFrame(replica.step_columns())
    assert list(steps["num_tokens"]) == [1024, 1024, 452, 1]
    # the first token comes with the step that finishes the prompt (the third)
    assert r.first_token_at == ((0.001 + 0.001) + 0.001)
    assert r.finished_at == r.first_token_at + 0.001


def test_single_request_output_of_one_token_finishes_at_prefill() -> None:
    r = Request(0, 0.0, input_tokens=64, output_tokens=1)
    run_requests(plan(), LinearStepModel(0.004), [r])
    assert r.first_token_at == r.finished_at == 0.004


def test_decode_first_then_admission_and_token_budget() -> None:
    # two requests arrive together; budget 100 tokens: request 0's 60 + 40 of request 1
    a = Request(0, 0.0, input_tokens=60, output_tokens=3)
    b = Request(1, 0.0, input_tokens=70, output_tokens=3)
    replica = run_requests(
        plan(max_num_batched_tokens=100, max_num_seqs=4), LinearStepModel(0.01), [a, b]
    )
    steps = pd.DataFrame(replica.step_columns())
    # step 1: a=60, b=40; step 2: a decodes (1) first, then b's remaining 30
    assert list(steps["num_tokens"][:2]) == [100, 31]
    assert list(steps["num_decode_seqs"][:2]) == [0, 1]
    assert a.first_token_at == 0.01 and b.first_token_at == 0.01 + 0.01


def test_max_num_seqs_queues_the_rest() -> None:
    reqs = [Request(i, 0.0, input_tokens=10, output_tokens=4) for i in range(3)]
    run_requests(plan(max_num_seqs=2), LinearStepModel(0.01), reqs)
    # the third waits until one of the first two finishes (after 4 steps)
    assert reqs[2].first_scheduled_at == pytest.approx(0.04)
    assert reqs[0].finished_at == pytest.approx(0.04)


def test_preemption_recomputes_and_frees_every_block() -> None:
    # 8 blocks of 16 tokens = 128 tokens; two requests of 48 + 60 outputs cannot both finish
    p = plan(block_size=16, max_num_seqs=4)
    reqs = [Request(0, 0.0, 48, 60), Request(1, 0.0, 48, 60)]
    replica = run_with_blocks(p, reqs, num_blocks=8)
    assert sum(r.num_preemptions for r in reqs) >= 1
    assert all(r.status == "finished" and r.num_output_done == 60 for r in reqs)
    assert replica.kv.num_free == replica.kv.num_blocks == 8
    steps = pd.DataFrame(replica.step_columns())
    assert steps["num_preempted"].sum() == sum(r.num_preemptions for r in reqs)
    assert steps["kv_blocks_used"].max() <= 8


def run_with_blocks(p, reqs, num_blocks: int, window_blocks=None):  # type: ignore[no-untyped-def]
    import simpy

    from sim.kv_cache import KVCache
    from sim.replica import Replica
    from sim.scheduler import Scheduler

    env = simpy.Environment()
    replica = Replica(env, 0, p, LinearStepModel(0.01))
    replica.kv = KVCache(num_blocks, p.engine.block_size)
    replica.scheduler = Scheduler(p.engine, replica.kv, window_blocks=window_blocks)
    for r in reqs:
        replica.submit(r)
    env.run()
    return replica


@pytest.mark.parametrize("model", ["Llama-3.1-8B", "gpt-oss-120b", "Qwen3-30B-A3B"])
def test_stretches_give_exactly_the_numbers_of_stepping(model: str) -> None:
    from sim.simulate import simulate
    from tests.factories import small_config

    def run(fast: bool):  # type: ignore[no-untyped-def]
        return simulate(small_config(model=type(small_config().model)(model), fast_forward=fast))

    a, b = run(True), run(False)
    assert len(a.steps) > 300
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)


@pytest.mark.parametrize("technique", [{}, {"prefix_caching": {}}])
def test_stretches_equal_stepping_under_preemption(technique: dict[str, object]) -> None:
    from sim.config import EngineConfig
    from sim.simulate import simulate
    from tests.factories import small_config

    engine = EngineConfig(gpu_memory_utilization=0.26, max_num_seqs=256)

    def run(fast: bool):  # type: ignore[no-untyped-def]
        return simulate(small_config(engine=engine, technique=technique, fast_forward=fast))

    a, b = run(True), run(False)
    assert a.requests["num_preemptions"].sum() > 0
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)


def test_an_arrival_cuts_a_stretch_at_the_next_step_boundary() -> None:
    # request 0 decodes alone in 10 ms steps; request 1 arrives at 25 ms, mid step 3
    model = LinearStepModel(0.010)
    a = Request(0, 0.0, input_tokens=10, output_tokens=50)
    b = Request(1, 0.025, input_tokens=10, output_tokens=2)
    run_requests(plan(), model, [a, b])
    assert b.first_scheduled_at == pytest.approx(0.030)
    assert b.first_token_at == pytest.approx(0.040)
    assert math.isclose(a.finished_at, 0.5, rel_tol=1e-12)


def test_stretches_equal_stepping_with_engine_cpu_costs() -> None:
    """CPU per step and per request in flight, overlapped or added: same numbers."""
    from sim.config import EngineConfig
    from sim.simulate import simulate
    from tests.factories import small_config

    for overlap in (False, True):
        engine = EngineConfig(
            step_overhead_s=0.002,
            inflight_overhead_s=3e-5,
            overlap_scheduling=overlap,
            request_overhead_s=0.02,
        )
        a = simulate(small_config(engine=engine, fast_forward=True))
        b = simulate(small_config(engine=engine, fast_forward=False))
        pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
        pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
        # the front end delays every request's first scheduling by 20 ms
        req = a.requests
        assert ((req["first_scheduled_at"] - req["arrival_at"]) >= 0.02 - 1e-12).all()


def test_overlapped_cpu_hides_under_gpu_time() -> None:
    model = LinearStepModel(0.010)
    from sim.step_time import EngineOverhead

    added, hidden = EngineOverhead(0.004, 0.0, False), EngineOverhead(0.004, 0.0, True)
    assert added.step_seconds(0.010, 0.004) == 0.014
    assert hidden.step_seconds(0.010, 0.004) == 0.010
    assert hidden.step_seconds(0.002, 0.004) == 0.004  # CPU-bound steps take the CPU time
    assert model.token_seconds(1, 1) == 0.010


def test_sliding_window_layers_hold_a_window_of_blocks_per_sequence() -> None:
    # gpt-oss-120b: 18 full and 18 sliding layers with the same KV shape, window 128: a
    # sequence holds its full layers' blocks plus (128 + 16) / 16 = 9 blocks of the same
    # page size for its sliding layers (vLLM's hybrid KV manager)
    p = plan("gpt-oss-120b", tp=2)
    assert memory_plan(p).window_blocks_per_seq == 9
    assert memory_plan(plan()).window_blocks_per_seq == 0  # Llama: no sliding layers
    # 24 blocks: one 64-token prompt (4 blocks) + 9 fits twice (26 > 24 does not)
    reqs = [Request(i, 0.0, input_tokens=64, output_tokens=3) for i in range(2)]
    replica = run_with_blocks(p, reqs, num_blocks=24, window_blocks=lambda n: 9)
    steps = pd.DataFrame(replica.step_columns())
    assert steps["kv_blocks_used"].iloc[0] == 4 + 9  # the second waits for the first
    assert reqs[1].first_scheduled_at == reqs[0].finished_at
    assert replica.kv.num_free == replica.kv.num_blocks == 24


def test_a_sequence_shorter_than_the_window_holds_blocks_for_its_own_length() -> None:
    # vLLM's hybrid KV manager gives sliding layers blocks as tokens arrive, up to the window:
    # a 64 + 3 token sequence of gpt-oss-120b needs ceil((67 + 16) / 16) = 6 window blocks,
    # not the 9 of a full 128-token window; so on 24 blocks both sequences run at once:
    # 2 x (4 prompt blocks + 6) = 20 <= 24
    p = plan("gpt-oss-120b", tp=2)
    mem = memory_plan(p)
    assert (mem.window_blocks(67), mem.window_blocks(128), mem.window_blocks(10**6)) == (6, 9, 9)
    # Gemma-2-9B (21 sliding layers of the full layers' shape, window 4096): a 500-token
    # sequence holds ceil(516 / 16) = 33 window blocks, not ceil(4112 / 16) = 257
    gemma = memory_plan(plan("Gemma-2-9B"))
    assert (gemma.window_blocks(500), gemma.window_blocks_per_seq) == (33, 257)
    reqs = [Request(i, 0.0, input_tokens=64, output_tokens=3) for i in range(2)]
    replica = run_with_blocks(p, reqs, num_blocks=24, window_blocks=mem.window_blocks)
    steps = pd.DataFrame(replica.step_columns())
    assert steps["kv_blocks_used"].iloc[0] == 2 * (4 + 6)
    assert reqs[1].first_scheduled_at == reqs[0].first_scheduled_at == 0.0
    assert replica.kv.num_free == replica.kv.num_blocks == 24


@pytest.mark.parametrize(
    ("prompt", "first_token_at"),
    [
        # 10 prompt + 1 decode token < 0.5 x 100: held 3 steps (0.02-0.05), runs 0.05-0.06
        (10, 0.06),
        # 60 + 1 >= 50: the batch is full enough, no wait: runs 0.02-0.03
        (60, 0.03),
    ],
)
def test_batch_waiting_holds_prompts_back_while_others_decode(
    prompt: int, first_token_at: float
) -> None:
    # TensorRT-LLM batch_wait_timeout_iters 3, batch_wait_max_tokens_ratio 0.5; 10 ms steps.
    # A prefills alone at 0-0.01 (nobody decodes, nothing is held), then decodes; B arrives
    # at 0.015, during A's second step
    p = plan(
        max_num_batched_tokens=100, max_num_seqs=8, batch_wait_steps=3, batch_wait_tokens_ratio=0.5
    )
    a = Request(0, 0.0, input_tokens=20, output_tokens=10)
    b = Request(1, 0.015, input_tokens=prompt, output_tokens=2)
    replica = run_requests(p, LinearStepModel(0.01), [a, b])
    assert a.first_token_at == pytest.approx(0.01)
    assert b.first_scheduled_at == pytest.approx(first_token_at - 0.01)
    assert b.first_token_at == pytest.approx(first_token_at)
    assert a.finished_at == pytest.approx(0.10)  # A's 9 decode steps never wait
    steps = pd.DataFrame(replica.step_columns())
    assert steps["num_prefill_tokens"].sum() == 20 + prompt
    assert replica.kv.num_free == replica.kv.num_blocks


def test_cpu_cost_counts_running_and_at_most_max_num_seqs_waiting() -> None:
    # 10 ms of GPU a step and 1 ms of CPU per request in flight; two sequences at most. Six
    # one-token requests arrive together: each step runs two, and of the four (then two,
    # then no) waiting only two count: steps of 10 + (2 + 2) = 14, 14, then 10 + 2 = 12 ms
    p = plan(max_num_seqs=2, inflight_overhead_s=0.001)
    reqs = [Request(i, 0.0, input_tokens=10, output_tokens=1) for i in range(6)]
    run_requests(p, LinearStepModel(0.01), reqs)
    done = [r.finished_at for r in reqs]
    assert done == pytest.approx([0.014, 0.014, 0.028, 0.028, 0.040, 0.040])


@pytest.mark.parametrize(("block_steps", "b_first_token_at"), [(1, 0.03), (4, 0.06)])
def test_multi_step_blocks_admit_only_when_a_block_ends(
    block_steps: int, b_first_token_at: float
) -> None:
    # vLLM v0 --num-scheduler-steps; 10 ms steps. A prefills alone at 0-0.01, then its
    # decode steps run in blocks: 0.01-0.05 is one block of 4. B arrives at 0.015: with
    # blocks of 4 it waits for 0.05 and prefills at 0.05-0.06; every step it would start at
    # 0.02 (the plain engine: first token at 0.03)
    p = plan(max_num_batched_tokens=100, max_num_seqs=8, num_scheduler_steps=block_steps)
    a = Request(0, 0.0, input_tokens=20, output_tokens=10)
    b = Request(1, 0.015, input_tokens=10, output_tokens=2)
    replica = run_requests(p, LinearStepModel(0.01), [a, b])
    assert b.first_scheduled_at == pytest.approx(b_first_token_at - 0.01)
    assert b.first_token_at == pytest.approx(b_first_token_at)
    assert a.finished_at == pytest.approx(0.10)  # A's decode steps never wait
    assert replica.kv.num_free == replica.kv.num_blocks


def test_multi_step_pays_the_cpu_cost_once_a_block() -> None:
    # 10 ms of GPU and 4 ms of CPU a step (not overlapped); blocks of 4 decode steps pay the
    # CPU once: a decode step lasts 10 + 4/4 = 11 ms, the prefill step 14 ms
    p = plan(num_scheduler_steps=4, step_overhead_s=0.004)
    r = Request(0, 0.0, input_tokens=20, output_tokens=9)
    run_requests(p, LinearStepModel(0.01), [r])
    assert r.first_token_at == pytest.approx(0.014)
    assert r.finished_at == pytest.approx(0.014 + 8 * 0.011)


def test_stretches_equal_stepping_with_multi_step_blocks() -> None:
    from sim.config import EngineConfig
    from sim.simulate import simulate
    from tests.factories import small_config

    engine = EngineConfig(num_scheduler_steps=10, step_overhead_s=0.002, inflight_overhead_s=1e-5)
    plain = simulate(
        small_config(
            engine=EngineConfig(step_overhead_s=0.002, inflight_overhead_s=1e-5), fast_forward=True
        )
    )
    a = simulate(small_config(engine=engine, fast_forward=True))
    b = simulate(small_config(engine=engine, fast_forward=False))
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    # arrivals wait for a block's end: later first tokens; decode steps pay a tenth of the CPU
    ttft = a.requests["first_token_at"] - a.requests["arrival_at"]
    plain_ttft = plain.requests["first_token_at"] - plain.requests["arrival_at"]
    assert ttft.mean() > plain_ttft.mean()
    pure = a.steps[(a.steps["num_prefill_tokens"] == 0)]
    plain_pure = plain.steps[(plain.steps["num_prefill_tokens"] == 0)]
    assert pure["duration_s"].median() < plain_pure["duration_s"].median()


def test_stretches_equal_stepping_with_batch_waiting() -> None:
    from sim.config import EngineConfig
    from sim.simulate import simulate
    from tests.factories import small_config

    engine = EngineConfig(batch_wait_steps=40, batch_wait_tokens_ratio=0.8, max_num_seqs=256)
    plain = simulate(small_config(engine=EngineConfig(max_num_seqs=256), fast_forward=True))
    a = simulate(small_config(engine=engine, fast_forward=True))
    b = simulate(small_config(engine=engine, fast_forward=False))
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    # prompts wait for a fuller batch: fewer prefill steps, later first tokens
    prefills = (a.steps["num_prefill_tokens"] > 0).sum()
    assert prefills < (plain.steps["num_prefill_tokens"] > 0).sum()
    ttft = a.requests["first_token_at"] - a.requests["arrival_at"]
    plain_ttft = plain.requests["first_token_at"] - plain.requests["arrival_at"]
    assert ttft.mean() > plain_ttft.mean()


def test_unchunked_prompt_longer_than_the_budget_is_rejected_with_the_fix() -> None:
    # without chunked prefill a 150-token prompt can never fit a 100-token step: rejected at
    # submission (it used to wait forever); the 50-token one runs: prefill, then one decode
    p = plan(enable_chunked_prefill=False, max_num_batched_tokens=100, max_num_seqs=4)
    long, short = Request(0, 0.0, 150, 2), Request(1, 0.0, 50, 2)
    run_requests(p, LinearStepModel(0.01), [long, short])
    assert long.status == "rejected"
    assert long.reason == (
        "prompt 150 tokens exceeds engine.max_num_batched_tokens 100 with chunked prefill off; "
        "set engine.enable_chunked_prefill=true or raise engine.max_num_batched_tokens"
    )
    assert short.status == "finished"
    assert (short.first_token_at, short.finished_at) == (pytest.approx(0.01), pytest.approx(0.02))


def test_unchunked_recompute_longer_than_the_budget_runs_alone() -> None:
    # budget 62, 8 blocks of 16. a prefills (60) in step 1; b (60) joins in step 2; when a's
    # context needs a 5th block (step 6) b is preempted with 4 tokens out: its recompute of
    # 64 tokens can never fit 62, so it runs alone once a has finished, then decodes
    p = plan(enable_chunked_prefill=False, max_num_batched_tokens=62, max_num_seqs=4)
    a, b = Request(0, 0.0, 60, 40), Request(1, 0.0, 60, 40)
    replica = run_with_blocks(p, [a, b], num_blocks=8)
    assert a.status == b.status == "finished"
    assert (a.num_preemptions, b.num_preemptions) == (0, 1)
    steps = pd.DataFrame(replica.step_columns())
    recompute = steps[steps["num_prefill_tokens"] == 64]
    assert len(recompute) == 1
    assert recompute["num_seqs"].iloc[0] == 1
    assert recompute["start_at"].iloc[0] == pytest.approx(a.finished_at)
    assert replica.kv.num_free == 8


@pytest.mark.parametrize(("prefix_caching", "recomputed"), [(False, 64), (True, 48)])
def test_a_preempted_request_keeps_its_cached_blocks(prefix_caching: bool, recomputed: int) -> None:
    # unchunked budget 100, 8 blocks of 16. a prefills 60 (step 1); b prefills 60 (step 2);
    # at step 6 a's context needs a 5th block: b (63 computed, 4 tokens out) is preempted.
    # With prefix caching its 3 full blocks stay cached, released tail first; a's 6th and
    # 7th blocks evict two of them, so when a finishes only b's first block is left: b
    # recomputes 64 - 16 = 48 tokens instead of all 64
    import simpy

    from sim.kv_cache import KVCache
    from sim.replica import Replica
    from sim.scheduler import Scheduler

    p = plan(enable_chunked_prefill=False, max_num_batched_tokens=100, max_num_seqs=4)
    env = simpy.Environment()
    replica = Replica(env, 0, p, LinearStepModel(0.01))
    replica.kv = KVCache(8, p.engine.block_size, prefix_caching)
    replica.scheduler = Scheduler(p.engine, replica.kv)
    a, b = Request(0, 0.0, 60, 40), Request(1, 0.0, 60, 40)
    for r in (a, b):
        replica.submit(r)
    env.run()
    assert a.status == b.status == "finished"
    assert (a.num_preemptions, b.num_preemptions, b.cached_tokens) == (0, 1, 0)
    steps = pd.DataFrame(replica.step_columns())
    prefills = steps.loc[steps["num_prefill_tokens"] > 0, "num_prefill_tokens"].tolist()
    assert prefills == [60, 60, recomputed]
    assert replica.kv.num_free == 8


def test_a_request_whose_blocks_can_never_fit_is_rejected() -> None:
    # 8 blocks of 16 (128 tokens) and 3 sliding-window blocks a sequence: 100 + 10 tokens
    # fit the token count but need ceil(109 / 16) + 3 = 10 blocks (it used to wait forever);
    # 40 + 10 need 4 + 3 = 7 and run
    p = plan(max_num_batched_tokens=256)
    big, small = Request(0, 0.0, 100, 10), Request(1, 0.0, 40, 10)
    replica = run_with_blocks(p, [big, small], num_blocks=8, window_blocks=lambda n: 3)
    assert big.status == "rejected"
    assert big.reason == (
        "prompt+output 110 tokens need 10 KV blocks here (sliding-window layers, reservation "
        "and draft lookahead included) and one replica has 8"
    )
    assert small.status == "finished"
    assert replica.kv.num_free == 8
