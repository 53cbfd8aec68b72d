"""Scenario CSV in, predicted-vs-measured rows out: `servesim validate FILE.csv`.

Reads published serving results in the scenario format of
`../shared/reference/calibration_scenarios.csv` (one row per setup and metric; the columns are
described in that folder's README), simulates every row marked `simulatable=yes` and prints,
per row, the measured value, the prediction and the signed error (pred - meas) / meas. The
last line is always

    median_ape=<x>% p90_ape=<y>% max_ape=<z>% rows=<n> skipped=<m>

over the absolute percentage errors of the `n` rows compared; `m` counts the `simulatable=yes`
rows that could not be expressed (each printed with its reason). `simulatable=no` rows are
listed with the file's `why_not` and not counted. A malformed file (missing column, a
non-numeric or negative number, a count, layout size or length below 1, an unknown mode) is
one error line naming the file line, the row id and the column, exit status 2. An
unexpected exception inside the simulator skips the rows of that setup with the error as
the reason and makes the exit status 1.

Rows that describe the same setup (every column but id, metric, value and the free-text
columns) share one simulation; in the latency file these are the rows whose ids share the
prefix before `__` (one benchmark run). Each setup is simulated once with seed 0.

Mapping of a row onto a `Config` (every choice here, nothing per row):

- **Modes.** `offline`: every request arrives at t=0; `num_requests` from the row, else
  max(1000, 2 x the engine's max_num_seqs) (at least two full batches, so the steady state
  outweighs the ramp-down). `poisson`: seeded Poisson arrivals at `request_rate`,
  `num_requests` from the row, else 1000. `concurrency`: closed loop with `concurrency`
  requests in flight, `num_requests` from the row, else max(10 x concurrency, 100).
  A blank concurrency falls back to batch_size.
  `trace`: the `trace` file (path relative to the CSV's folder) replayed at its own times,
  the first `num_requests` requests if given. `--max-requests N` caps all of these.
  `single_batch`: no queue; the step-time model alone. prefill_step_ms is one prefill of
  `batch_size` prompts of `input_len` tokens (a prompt's token i attends i+1 tokens), split
  into steps by the engine's token budget and sequence cap (chunked prefill) and summed;
  decode_step_ms is one decode step of `batch_size` sequences at context `input_len` (split
  the same way if the batch exceeds the caps); a batch whose KV does not fit the replica is
  skipped. `ratio`: the row's quantity over its
  `baseline`'s (see below).
- **Lengths.** `fixed` (or blank with both lengths given): input_len / output_len rounded
  to integers. `sharegpt` (any case): `num_requests` prompt lengths drawn without
  replacement (with, past 5000) from the bundled ShareGPT sample (`sharegpt_lengths`) and
  output lengths from a gamma distribution of shape 0.75 (`SHAREGPT_OUTPUT_GAMMA_SHAPE`,
  below); each column is multiplied by (row mean / drawn mean), rounded and floored at 1, so
  the drawn requests' means equal the row's `input_len` / `output_len` (to rounding); a blank
  length gets the benchmark's dataset mean (`SHAREGPT_BENCH_MEANS`, said in the printed
  line). The bundled sample is the 8k-filtered, Llama-2-tokenized ShareGPT set of whole
  conversations (means about 2282 / 435 tokens, far longer than `vllm bench serve`'s
  first-turn prompts), so it gives the prompts' shape only; its outputs are nearly
  symmetric (median 0.95 of the mean), while the benchmarks' first-turn completions are
  skewed (median about 0.6 of the mean, see the constant). The requests are replayed as a
  trace file in a temporary folder (deleted after the run), with the mode's arrival times.
  `random_range_ratio_R`: uniform integers in [L.2R/(1+R), L.2/(1+R)] (rounded) whose mean
  is the row's L (sglang and older vllm `random` datasets with range ratio R draw
  U[R.L0, L0]; newer vllm draws
  U[L0(1-R), L0(1+R)], the same mean with a wider spread). Any other dataset name: fixed at
  the row's means when both are given (said in the printed line), else the row is skipped.
- **Names.** model and hardware match a profile's name or alias (case-insensitive); failing
  that, the model without its organisation and checkpoint-format suffixes
  (`nvidia/Llama-3.3-70B-Instruct-FP8` -> `llama-3.3-70b-instruct`) and the hardware with
  spaces as hyphens and no vendor prefix (`NVIDIA H100 SXM` -> `h100-sxm`), said in the
  printed line (`profile_names`). The dtype columns, not the suffix, set the precision.
- **Precision.** weight_dtype, activation_dtype and kv_dtype become
  `technique={"quantization": {...}}`. Blank weights: the checkpoint's format. A weight format
  equal to the model's expert format on a mixed checkpoint (gpt-oss: MXFP4 experts, BF16
  rest) names that checkpoint: dense weights stay at the checkpoint format. Blank activations:
  the dense weights' format, or the 16-bit checkpoint format (bf16 if the checkpoint is not
  16-bit) when that format has no tensor-core rate on the GPU (weight-only INT4; FP8 on A100;
  FP4 on Hopper). Blank KV: the checkpoint format if 16-bit, else bf16 (engines' `auto` uses
  the model's torch dtype).
- **Engine.** trtllm / vllm / sglang load `experiments/engine/<name>.yaml`; `other`, blank or
  an unknown name load the vllm preset (said in the printed line). The vllm preset then takes
  vLLM's own GPU-class batch defaults (`vllm_batch_defaults`). A server flag the row's notes
  state is honoured where the engine model has it (`STATED_FLAGS`: vLLM v0's
  `--num-scheduler-steps N`, multi-step scheduling, becomes engine.num_scheduler_steps=N,
  said in the printed line). Nothing else is tuned per row.
- **Prefix caching** is on for every row (the engines' default: vLLM v1
  enable_prefix_caching, SGLang's radix cache, TensorRT-LLM's KV block reuse); prompts without
  hash ids share nothing, but a preempted request keeps its cached blocks.
- **Layout.** tp blank: num_gpus / (pp.dp); num_gpus blank: tp.pp.dp. pp and ep go to
  `ClusterConfig.pp` / `.ep` (a row needing a field the config lacks is skipped). dp > 1 with
  ep > 1 (experts spread over the dp ranks, ep = tp.dp) is attention data parallelism inside one
  instance: `cluster.dp_attention = dp`. dp > 1 without ep reads as dp replicas when
  num_gpus = tp.pp.dp (with tp = 1: one replica per GPU, skipped if the model does not fit one
  GPU), and is skipped otherwise (attention DP inside one TP group). Replicas = num_gpus /
  (tp.pp.dp_attention), behind round-robin routing.
- **Metrics.** As the benchmark clients compute them (`vllm bench serve`,
  `sglang.bench_serving`): TTFT/TPOT/E2E statistics over finished requests with numpy's default
  linear-interpolation percentiles (TPOT over requests with more than one output token);
  ITL (itl_mean_ms, itl_p50/p90/p95/p99_ms) over every inter-token gap (the per-step ITL
  samples weighted by tokens, same linear rule); the p90/p95 percentiles and E2E in ms that
  the clients also print are accepted beside the format's own list; throughputs are finished
  tokens or requests / (last finish - first arrival);
  `_per_gpu` divides by the GPUs of all replicas. Rejected requests (longer than the context
  or the KV cache) are left out and counted in the printed line.
- **Speculative rows** (eagle, eagle2, eagle3, mtp, ngram with spec_k drafts) take their
  acceptance length, the mean tokens a verification step commits, from the data: "acceptance
  length X" in their notes, else the file's accept_len row of the same setup (every setup
  column equal but the mode; simulatable or not, it is an input). It becomes the per-draft
  acceptance a with 1 + a + ... + a^k = X; EAGLE and MTP heads cost about one target layer a
  draft. Without one, or with spec_method=draft (no draft model in the format), the row is
  skipped with the reason; accept_len rows themselves are inputs, not predicted.
- **Not yet expressible** (skipped with the reason; each is one place to change): the
  metrics in `UNSUPPORTED_METRICS`, pp/ep layouts without the cluster fields (`layout_of`).
- **Ratio rows.** `baseline` written as `column=value;...` (optionally `quantity=<metric>`)
  overrides those columns; free text saying "without speculative decoding / MTP / EAGLE"
  means spec_method=none; anything else is skipped. The quantity is `quantity`, else TTFT,
  TPOT or E2E latency when the text names one, else output_tok_s; the traffic is poisson at
  request_rate, a closed loop at concurrency (or batch_size), else offline. speedup_x is
  quantity / baseline quantity (baseline / row for latencies).

`--out` writes one CSV row per scenario row; `--plot DIR` writes the figures and summary of
`sim.fidelity` (also behind `benchmarks/fidelity.py`). `--set engine.KEY=VALUE` (repeatable)
sets one engine field for every row, after the preset and the batch defaults: for a
benchmark's server flags that the format cannot carry (e.g. TensorRT-LLM's batch waiting),
never per row. `--only TEXT` keeps the rows whose id contains TEXT.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.cluster import build_plan
from sim.config import (
    ENGINE_PRESETS_DIR,
    ClusterConfig,
    Config,
    EngineConfig,
    LengthConfig,
    ModelConfig,
    RouterConfig,
    WorkloadConfig,
    engine_preset,
)
from sim.dtypes import get_format
from sim.hardware import GPUSpec, ModelSpec, load_gpu, load_model
from sim.metrics import itl_samples, request_metrics
from sim.plan import Speculation, cost_params, memory_plan
from sim.simulate import simulate
from sim.step_time import EngineOverhead, Roofline, StepShape, decode_shape, prefill_shapes
from sim.trace import TRACES_DIR, LengthPairs, arrival_times, bundled

COLUMNS: tuple[str, ...] = (
    "id", "source", "kind", "model", "hardware", "num_gpus", "tp", "pp", "ep", "dp",
    "weight_dtype", "activation_dtype", "kv_dtype", "engine", "mode", "request_rate",
    "concurrency", "num_requests", "input_len", "output_len", "length_dist", "trace",
    "batch_size", "spec_method", "spec_k", "metric", "value", "baseline", "slo",
    "simulatable", "why_not", "notes",
)  # fmt: skip
# Columns that do not describe the setup: rows differing only here share one simulation.
NON_SETUP_COLUMNS = frozenset(
    {"id", "source", "kind", "metric", "value", "slo", "why_not", "notes"}
)
INT_COLUMNS = (
    *("num_gpus", "tp", "pp", "ep", "dp", "concurrency", "num_requests", "batch_size", "spec_k"),
)
FLOAT_COLUMNS = ("request_rate", "input_len", "output_len", "value")
# (a request has at least one prompt token and one output token)
AT_LEAST_ONE = frozenset(
    {"num_gpus", "tp", "pp", "ep", "dp", "batch_size", "input_len", "output_len"}
)
MODES = ("offline", "poisson", "concurrency", "single_batch", "ratio", "trace")
SERVING_MODES = ("offline", "poisson", "concurrency", "trace")
# the file format's per-request latency metrics, plus the other percentiles and units the
# benchmark clients print (p90/p95, E2E in ms), so a file that names them is not skipped
PERCENTILES = (50, 90, 95, 99)
PERCENTILE_METRICS: dict[str, tuple[str, float, float]] = {  # metric -> (column, q, scale)
    **{f"ttft_p{q}_ms": ("ttft_s", q, 1e3) for q in PERCENTILES},
    **{f"tpot_p{q}_ms": ("tpot_s", q, 1e3) for q in PERCENTILES},
    **{f"e2e_p{q}_s": ("e2e_s", q, 1.0) for q in PERCENTILES},
    **{f"e2e_p{q}_ms": ("e2e_s", q, 1e3) for q in PERCENTILES},
}
MEAN_METRICS: dict[str, tuple[str, float]] = {
    "ttft_mean_ms": ("ttft_s", 1e3),
    "tpot_mean_ms": ("tpot_s", 1e3),
    "e2e_mean_s": ("e2e_s", 1.0),
    "e2e_mean_ms": ("e2e_s", 1e3),
}
# inter-token latency over every gap between two streamed tokens (per-step samples weighted)
ITL_METRICS: dict[str, float | None] = {
    "itl_mean_ms": None,
    **{f"itl_p{q}_ms": float(q) for q in PERCENTILES},
}
# "ttft_median_ms" is ttft_p50_ms (the clients print "Median TTFT")
METRIC_SPELLINGS = re.compile(r"^(ttft|tpot|itl|e2e)_median_")
THROUGHPUT_METRICS = ("output_tok_s", "output_tok_s_per_gpu", "total_tok_s", "requests_per_s")
SERVING_METRICS = (*PERCENTILE_METRICS, *MEAN_METRICS, *ITL_METRICS, *THROUGHPUT_METRICS)
STEP_METRICS = ("prefill_step_ms", "decode_step_ms")
# Metrics the file format allows that the validator does not produce yet. Prefix caching and
# speculative decoding are being added to the simulator: once mapped, drop the line here.
HIT_METRICS = ("hit_ratio", "hit_ratio_tokens")
# A hit-ratio row may leave model and hardware blank: with an unbounded cache the ratio
# depends on the trace alone (and the rule that a prompt's last token is always computed),
# so any engine replays it; this one is documented, not tuned.
HIT_RATIO_DEFAULT = ("Llama-3.1-8B", "B200")
UNSUPPORTED_METRICS: dict[str, str] = {
    "accept_len": "acceptance length: an input (it sets the acceptance of the same setup's "
    "speculative rows), not predicted",
    "other": "metric 'other' is free text, not a quantity the simulator produces",
}
LOWER_IS_BETTER_PREFIXES = ("ttft", "tpot", "itl", "e2e", "prefill_step", "decode_step")
ENGINE_PRESETS = ("vllm", "sglang", "trtllm")
ENGINE_DIR = ENGINE_PRESETS_DIR  # calibrate.py points it at its working copies
SHAREGPT_SAMPLE = "sharegpt_lengths"
# Serving benchmarks (vllm bench serve, sglang.bench_serving) sample the first turn of
# ShareGPT_V3_unfiltered_cleaned_split: 217-233 prompt and 196-221 output tokens per request
# in the printed results quoted in latency_calibration_scenarios.csv (GPUStack runs), and
# ~194 output tokens in SGLang's own v0.3 runs. A row naming the dataset without a mean
# gets these dataset means; the bundled ShareGPT pairs (whole conversations, ~10x longer)
# give the shape only.
SHAREGPT_BENCH_MEANS = (220.0, 200.0)
# Output lengths of those first-turn completions are skewed: SGLang's v0.3 ShareGPT runs
# (calibration_scenarios.csv, 70B on 4 H100s at 4 and 8 req/s, SGLang and vLLM) print
# median E2E, TTFT and TPOT from which the median request's output is
# (E2E - TTFT) / TPOT + 1 = 119, 117 and 122 tokens against a ~194-token mean: median/mean
# 0.61. A gamma distribution with that median/mean has shape 0.75 (median/mean 0.606,
# p99/mean 5.3); the bundled conversation sample's outputs (median/mean 0.95) would make
# every median-request latency ~60 % too long.
SHAREGPT_OUTPUT_GAMMA_SHAPE = 0.75
SEED = 0
SIMULATOR_ERROR = "simulator error, please report"


class ScenarioError(ValueError):
    """The scenario file is malformed; the message names the line, row id and column."""


class Unexpressible(Exception):
    """A simulatable row this simulator cannot express; the message is the reason."""


# --------------------------------------------------------------------------- reading rows


@dataclass(frozen=True, eq=False)
class Row:
    """One scenario row: stripped text cells plus the parsed numeric columns."""

    line: int  # 1-based line of the file where the record starts
    cells: Mapping[str, str]
    numbers: Mapping[str, float | None]
    # mean tokens a verification step commits (speculative rows; `attach_acceptance`)
    accept_len: float | None = None
    accept_from: str = ""  # where accept_len was read

    def text(self, column: str) -> str:
        return self.cells.get(column, "").strip()

    def key(self, column: str) -> str:
        return self.text(column).lower()

    def num(self, column: str) -> float | None:
        return self.numbers.get(column)

    def count(self, column: str, default: int | None = None) -> int | None:
        value = self.numbers.get(column)
        return default if value is None else int(value)

    @property
    def id(self) -> str:
        return self.text("id")

    @property
    def setup_key(self) -> tuple[str, ...]:
        return tuple(self.key(c) for c in COLUMNS if c not in NON_SETUP_COLUMNS)

    def changed(self, **cells: str) -> Row:
        """This row with some cells replaced (re-checked like a file row)."""
        row = parse_row(self.line, {**self.cells, **cells}, "baseline")
        return dataclasses.replace(row, accept_len=self.accept_len, accept_from=self.accept_from)


def _bad(
    where: str, line: int, row_id: str, column: str, value: str, expected: str
) -> ScenarioError:
    shown = value if len(value) <= 40 else value[:37] + "..."
    return ScenarioError(
        f"{where} line {line} (id {row_id or '?'}): column {column!r} is {shown!r}, "
        f"expected {expected}"
    )


def parse_row(line: int, cells: Mapping[str, str], where: str) -> Row:
    """Check one record's numeric columns and mode; ScenarioError names line, id and column."""
    row_id = cells.get("id", "").strip()
    numbers: dict[str, float | None] = {}
    for column in (*INT_COLUMNS, *FLOAT_COLUMNS):
        text = cells.get(column, "").strip()
        if not text:
            numbers[column] = None
            continue
        try:
            value = float(text)
        except ValueError:
            raise _bad(where, line, row_id, column, text, "a number") from None
        integer = column in INT_COLUMNS
        if math.isnan(value) or (math.isinf(value) and column != "request_rate"):
            raise _bad(where, line, row_id, column, text, "a finite number")
        if integer and value != int(value):
            raise _bad(where, line, row_id, column, text, "a whole number")
        if value < 0 or (column in AT_LEAST_ONE and value < 1):
            floor = 1 if column in AT_LEAST_ONE else 0
            raise _bad(where, line, row_id, column, text, f"a number >= {floor}")
        numbers[column] = value
    mode = cells.get("mode", "").strip().lower()
    if mode and mode not in MODES:
        raise _bad(where, line, row_id, "mode", mode, f"one of {', '.join(MODES)} (or blank)")
    flag = cells.get("simulatable", "").strip().lower()
    if flag not in ("yes", "no"):
        raise _bad(where, line, row_id, "simulatable", flag, "yes or no")
    if flag == "yes" and numbers["value"] is None:
        raise _bad(where, line, row_id, "value", "", "the measured number")
    metric = cells.get("metric", "").strip().lower()
    return Row(line, {**cells, "metric": METRIC_SPELLINGS.sub(r"\1_p50_", metric)}, numbers)


def read_scenarios(path: Path) -> list[Row]:
    """All rows of a scenario CSV, checked (ScenarioError on the first problem)."""
    if not path.is_file():
        raise ScenarioError(f"{path}: no such file")
    rows: list[Row] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ScenarioError(
                f"{path.name} line 1: header lacks column(s) {', '.join(missing)} "
                f"(the scenario format has {', '.join(COLUMNS)})"
            )
        start = reader.line_num + 1
        for record in reader:
            if any(cell.strip() for cell in record):
                if len(record) != len(header):
                    raise ScenarioError(
                        f"{path.name} line {start}: {len(record)} fields, header has {len(header)}"
                    )
                rows.append(parse_row(start, dict(zip(header, record, strict=True)), path.name))
            start = reader.line_num + 1
    return rows


# --------------------------------------------------------------------------- row -> setup


@dataclass(frozen=True)
class Lengths:
    """How a setup draws request lengths: fixed / uniform bounds, or ShareGPT rescaled."""

    kind: str  # fixed | uniform | sharegpt
    input: tuple[int, int] = (1, 1)  # fixed: (v, v); uniform: (low, high)
    output: tuple[int, int] = (1, 1)
    means: tuple[float | None, float | None] = (None, None)  # sharegpt targets


@dataclass(frozen=True)
class Setup:
    """Everything one simulation needs (hashable: rows with equal setups share a run)."""

    model: str
    gpu: str
    tp: int
    replicas: int
    layout_extra: tuple[tuple[str, int], ...]  # ClusterConfig fields beyond tp (pp, ep)
    engine: str  # preset name
    batch_defaults: tuple[int, int] | None  # (max_num_batched_tokens, max_num_seqs)
    quantization: tuple[tuple[str, str], ...]
    traffic: str  # offline | poisson | concurrency | trace | single_batch
    rate_per_s: float = 0.0
    concurrency: int = 0
    num_requests: int = 0
    lengths: Lengths = field(default_factory=lambda: Lengths("fixed"))
    trace: str = ""
    batch_size: int = 0
    context_tokens: int = 0
    prefix_caching: str = ""  # "" off | "on" | "unbounded" (an infinite KV pool)
    engine_set: tuple[tuple[str, Any], ...] = ()  # `--set engine.KEY=VALUE`, every row
    speculative: tuple[tuple[str, Any], ...] = ()  # the speculative technique's fields


# spec_method -> the speculative technique's method (EAGLE-2/3 and MTP draft with a head of
# about one target layer; n-gram lookup costs nothing); `draft` needs a draft model the format
# does not name
SPEC_METHODS = {
    **dict.fromkeys(("eagle", "eagle2", "eagle3"), "eagle"),
    "mtp": "mtp",
    "ngram": "ngram",
}
# "acceptance length 2.18", "accept_len=3.1", "accept length: 2.4" in a row's notes
ACCEPT_LEN_NOTE = re.compile(
    r"accept(?:ance)?[\s_-]*len(?:gth)?\s*(?:of|=|:|is)?\s*(\d+(?:\.\d+)?)(?![\d.])", re.I
)
# an accept_len row gives the acceptance of the speculative rows of the same setup: every
# setup column equal except the mode (a ratio row and a serving row share it)
ACCEPT_KEY_SKIP = NON_SETUP_COLUMNS | {"simulatable", "baseline", "mode"}


def _acceptance_key(row: Row) -> tuple[str, ...]:
    return tuple(row.key(c) for c in COLUMNS if c not in ACCEPT_KEY_SKIP)


def attach_acceptance(rows: Sequence[Row]) -> list[Row]:
    """Speculative rows with their acceptance length: stated in their notes, else the value
    of the file's accept_len row of the same setup (simulatable or not: it is an input).
    Rows without one keep None and are skipped with that reason."""
    stated: dict[tuple[str, ...], set[float]] = {}
    for r in rows:
        value = r.num("value")
        if r.key("metric") == "accept_len" and value is not None:
            stated.setdefault(_acceptance_key(r), set()).add(value)
    out = []
    for r in rows:
        if r.key("spec_method") in ("", "none") or r.key("metric") == "accept_len":
            out.append(r)
            continue
        match = ACCEPT_LEN_NOTE.search(r.text("notes"))
        values = stated.get(_acceptance_key(r), set())
        if match:
            r = dataclasses.replace(r, accept_len=float(match.group(1)), accept_from="notes")
        elif len(values) == 1:
            source = "the accept_len row of the same setup"
            r = dataclasses.replace(r, accept_len=next(iter(values)), accept_from=source)
        out.append(r)
    return out


def per_token_acceptance(accept_len: float, k: int) -> float:
    """The conditional acceptance a per draft position whose expected tokens a step with k
    drafts (`Speculation.expected_tokens`, (1 - a^(k+1)) / (1 - a)) equal accept_len
    (bisection; exact at the ends)."""
    if accept_len <= 1.0:
        return 0.0
    if accept_len >= k + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(100):
        a = (lo + hi) / 2
        if Speculation("eagle", k, (a,) * k, sampled=False).expected_tokens < accept_len:
            lo = a
        else:
            hi = a
    return (lo + hi) / 2


def speculative_technique(row: Row) -> dict[str, Any]:
    """The technique entry for the row's spec_method: the one place speculative decoding
    plugs in (empty for none). The acceptance comes from the data (`attach_acceptance`):
    it is a property of the model, drafter and dataset, not something to predict."""
    method = row.key("spec_method")
    if method in ("", "none"):
        return {}
    if method not in SPEC_METHODS:
        why = "the format does not name the draft model" if method == "draft" else "unknown"
        raise Unexpressible(f"spec_method={method}: {why}")
    k = row.count("spec_k")
    if not k:
        raise Unexpressible(f"spec_method={method} needs spec_k (draft tokens per step)")
    length = row.accept_len
    if length is None:
        raise Unexpressible(
            f"spec_method={method}: no acceptance length for this setup (give an accept_len "
            "row of the same setup, or 'acceptance length X' in the notes)"
        )
    if not 1.0 <= length <= k + 1:
        raise Unexpressible(f"acceptance length {length:g} is outside [1, spec_k + 1 = {k + 1}]")
    a = per_token_acceptance(length, k)
    return {"method": SPEC_METHODS[method], "num_tokens": k, "acceptance": a}


# a checkpoint's format suffix ("-fp8", "-instruct-awq", "-gptq-int4", ...) names a
# quantized copy of the same architecture; the row's dtype columns say the precision
FORMAT_SUFFIX = re.compile(
    r"[-_.](fp8([-_]dynamic)?|fp4|nvfp4|mxfp4|awq|gptq([-_]int[48])?|int[48]|w4a16|w8a8|"
    r"w4a4|bf16|fp16|quantized[-_.]w\d+a\d+)$"
)
# a release's variant or date suffix ("-instruct", "-chat-hf", "-it", "-instruct-2507") names
# the same architecture trained differently; "meta-llama-3.1-8b" is Llama 3.1's old name
VARIANT_SUFFIX = re.compile(r"[-_.](instruct|chat|hf|it|base|thinking|\d{4})$")
META_PREFIX = re.compile(r"^meta-(?=llama)")
VENDOR_PREFIX = re.compile(r"^(nvidia|amd)[\s_-]+")
# words a GPU's marketing or CUDA device name adds around the part ("AMD Instinct MI300X",
# "HGX B200", "NVIDIA H100 80GB HBM3"): product lines, platforms and the memory technology
GPU_NAME_NOISE = re.compile(r"(^|-)(instinct|tesla|hgx|dgx|hbm\d?e?|gddr\d+x?)(?=-|$)", re.I)


def profile_names(column: str, name: str) -> list[str]:
    """The names a row's model or hardware may be looked up as, the written one first.

    model: without an organisation prefix ("meta-llama/x" -> "x") or Llama's old "meta-"
    prefix, then without checkpoint-format, variant and date suffixes
    ("llama-3.3-70b-instruct-fp8" -> "llama-3.3-70b", "qwen3-30b-a3b-instruct-2507" ->
    "qwen3-30b-a3b").
    hardware: spaces and underscores as hyphens, without a vendor prefix ("NVIDIA H100 SXM"
    -> "h100-sxm"), then without product-line, platform and memory-technology words
    ("NVIDIA H100 80GB HBM3" -> "h100-80gb", "AMD Instinct MI300X" -> "mi300x").
    """
    names = [name]
    if column == "model":
        short = META_PREFIX.sub("", name.rsplit("/", 1)[-1])
        names.append(short)
        while (stripped := VARIANT_SUFFIX.sub("", FORMAT_SUFFIX.sub("", short))) != short:
            names.append(stripped)
            short = stripped
    else:
        dashed = re.sub(r"[\s_]+", "-", name.strip())
        bare = VENDOR_PREFIX.sub("", dashed)
        names += [dashed, bare, GPU_NAME_NOISE.sub("", bare).strip("-")]
    return list(dict.fromkeys(names))


def _profile(row: Row, column: str, loader: Callable[[str], Any]) -> tuple[Any, str]:
    """The profile a row names, and a note when it was found under another spelling."""
    name = row.key(column)
    if not name:
        raise Unexpressible(f"{column} is blank")
    if ";" in name:
        raise Unexpressible(f"several {column} values in one row ({name!r})")
    for candidate in profile_names(column, name):
        try:
            spec = loader(candidate)
        except ValueError:
            continue
        note = "" if candidate == name else f"{column} {name!r} read as {spec.name}"
        return spec, note
    raise Unexpressible(f"unknown {column} {name!r} (none of our profiles)")


@dataclass(frozen=True)
class Layout:
    tp: int
    replicas: int
    extra: tuple[tuple[str, int], ...]
    note: str = ""


def layout_of(row: Row) -> Layout:
    """Replicas, tp and the ClusterConfig layout fields (pp, ep, dp_attention) of a row."""
    pp, ep, dp = (row.count(c, 1) or 1 for c in ("pp", "ep", "dp"))
    num_gpus, tp = row.count("num_gpus"), row.count("tp")
    if tp is None:
        tp = max((num_gpus or 1) // (pp * dp), 1)
    if num_gpus is None:
        num_gpus = tp * pp * dp
    dp_attention, note = 1, ""
    if dp > 1 and ep > 1:  # experts spread over the dp ranks: attention DP in one instance
        if ep != tp * dp:
            raise Unexpressible(f"dp={dp} with ep={ep}: attention DP + EP needs ep = tp x dp")
        dp_attention, note = dp, f"dp={dp} with ep={ep} read as attention data parallelism"
    elif dp > 1:
        if num_gpus != tp * pp * dp:
            raise Unexpressible(
                f"dp={dp} on {num_gpus} GPUs with tp={tp}: data-parallel attention inside one "
                "tensor-parallel group is not expressible"
            )
        note = f"dp={dp} read as {dp} replicas behind round-robin"
    fields = {f.name for f in dataclasses.fields(ClusterConfig)}
    extra: list[tuple[str, int]] = []
    for name, size in (("pp", pp), ("ep", ep), ("dp_attention", dp_attention)):
        if name in fields:
            extra.append((name, size))
        elif size > 1:
            raise Unexpressible(f"{name}={size}: ClusterConfig has no {name!r} field yet")
    per_replica = tp * pp * dp_attention
    if num_gpus % per_replica:
        raise Unexpressible(f"num_gpus={num_gpus} is not a multiple of {per_replica} per replica")
    return Layout(tp, num_gpus // per_replica, tuple(extra), note)


def _has_rate(gpu: GPUSpec, name: str) -> bool:
    fmt = get_format(name)
    if not fmt.compute or fmt.rate_key not in gpu.peak_flops_per_s:
        return False
    return not fmt.block_scaled or fmt.name in gpu.block_scaled_formats


# engines that run a checkpoint whose activation format the GPU cannot compute in as
# weight-only (Marlin-style kernels dequantize to 16 bits: FP8 on Ampere, FP4 on Hopper);
# TensorRT-LLM refuses such a checkpoint instead
WEIGHT_ONLY_FALLBACK_ENGINES = ("vllm", "sglang")


def precision_of(
    row: Row, model: ModelSpec, gpu: GPUSpec, engine: str
) -> tuple[tuple[str, str], ...]:
    """The quantization technique's (weights, experts, activations, kv_cache) for the row,
    served by the `engine` preset (`engine_of`)."""
    names = {c: row.key(c) for c in ("weight_dtype", "activation_dtype", "kv_dtype")}
    for column, name in names.items():
        if name:
            try:
                get_format(name)
            except ValueError:
                raise Unexpressible(f"{column}={name!r} is not a known number format") from None
    base = model.checkpoint_dtype
    sixteen = base if get_format(base).element_bits == 16 else "bf16"
    weights = names["weight_dtype"] or base
    experts = ""
    if model.expert_dtype != base and get_format(weights).name == model.expert_dtype:
        weights, experts = base, model.expert_dtype  # the mixed checkpoint as published
    acts = names["activation_dtype"] or (weights if _has_rate(gpu, weights) else sixteen)
    if not _has_rate(gpu, acts) and engine in WEIGHT_ONLY_FALLBACK_ENGINES:
        acts = sixteen if _has_rate(gpu, sixteen) else acts  # weight-only, 16-bit math
    kv = names["kv_dtype"] or default_kv_format(engine, weights, gpu, sixteen)
    return (("weights", weights), ("experts", experts), ("activations", acts), ("kv_cache", kv))


def default_kv_format(engine: str, weights: str, gpu: GPUSpec, sixteen: str) -> str:
    """The KV format an engine picks when the row does not say.

    TensorRT-LLM serves FP8/NVFP4 checkpoints made by NVIDIA ModelOpt, whose quantization
    config sets kv_cache_quant_algo FP8: an FP8 KV cache. vLLM and SGLang default to
    kv_cache_dtype auto, the model's 16-bit dtype.
    """
    quantized = get_format(weights).element_bits < 16 and get_format(weights).name != "int4"
    if engine == "trtllm" and quantized and _has_rate(gpu, "fp8"):
        return "fp8"
    return sixteen


def vllm_batch_defaults(gpu: GPUSpec) -> tuple[int, int]:
    """vLLM's default (max_num_batched_tokens, max_num_seqs) for `vllm serve` on this GPU.

    vllm/engine/arg_utils.py, EngineArgs.get_batch_defaults (v0.9-0.11), usage context
    OPENAI_API_SERVER: a GPU with >= 70 GiB whose name does not contain "a100" gets 8192
    tokens and 1024 sequences; any other GPU 2048 and 256 (A100 is excluded because larger
    budgets lowered its throughput, vLLM PR #17885).
    """
    names = (gpu.name, *gpu.aliases)
    big = gpu.hbm_bytes >= 70 * 2**30 and not any("a100" in n.lower() for n in names)
    return (8192, 1024) if big else (2048, 256)


# server flags a row's notes may state, as engine fields: (pattern, field, engines it applies to)
STATED_FLAGS = (
    (
        re.compile(r"num[-_]scheduler[-_]steps[\s=]+(\d+)", re.IGNORECASE),
        "num_scheduler_steps",
        ("vllm",),
    ),
)


def stated_flags(row: Row, engine: str) -> tuple[tuple[str, Any], ...]:
    """Engine fields set by server flags the row's notes state (`STATED_FLAGS`)."""
    notes = row.text("notes")
    found = []
    for pattern, key, engines in STATED_FLAGS:
        match = pattern.search(notes)
        if match and engine in engines:
            found.append((key, int(match.group(1))))
    return tuple(found)


# other spellings of the presets' engines ("TensorRT-LLM", "trt-llm", "SGLang 0.5", "vLLM v0.11")
ENGINE_SPELLINGS = re.compile(
    r"^(?:(?P<trtllm>tensorrt[-_ ]?llm|trt[-_ ]?llm|trtllm[-_ ]?(?:serve|bench))|"
    r"(?P<vllm>vllm)|(?P<sglang>sglang))(?:[-_ ]?v?\d[\w.]*)?$"
)


def engine_named(row: Row) -> str:
    """The row's engine, a preset's name where it is one spelled otherwise."""
    name = row.key("engine")
    spelled = ENGINE_SPELLINGS.match(name)
    return str(spelled.lastgroup) if spelled and name not in ENGINE_PRESETS else name


def engine_of(row: Row, gpu: GPUSpec) -> tuple[str, tuple[int, int] | None, str]:
    name = engine_named(row)
    note = "" if name == row.key("engine") else f"engine {row.key('engine')!r} read as {name}"
    if name not in ENGINE_PRESETS:
        note = f"engine {name or 'blank'!r} -> vllm preset"
        name = "vllm"
    return name, (vllm_batch_defaults(gpu) if name == "vllm" else None), note


@cache
def _preset(name: str) -> tuple[tuple[str, Any], ...]:
    return tuple(dataclasses.asdict(engine_preset(name, ENGINE_DIR)).items())


def engine_config(setup: Setup) -> EngineConfig:
    cfg = EngineConfig(**dict(_preset(setup.engine)))
    if setup.batch_defaults is not None:
        cfg.max_num_batched_tokens, cfg.max_num_seqs = setup.batch_defaults
    for key, value in setup.engine_set:
        setattr(cfg, key, value)
    return cfg


def parse_engine_setting(text: str) -> tuple[str, Any]:
    """`engine.KEY=VALUE` as (KEY, typed VALUE); ValueError naming the problem otherwise."""
    name, sep, raw = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(EngineConfig)}
    key = name.strip().removeprefix("engine.")
    if not sep or not name.strip().startswith("engine.") or key not in fields:
        raise ValueError(
            f"--set {text!r}: expected engine.KEY=VALUE with KEY one of {', '.join(fields)}"
        )
    default = getattr(EngineConfig(), key)
    try:
        if isinstance(default, bool):
            if raw.strip().lower() not in ("true", "false"):
                raise ValueError
            return key, raw.strip().lower() == "true"
        return key, type(default)(raw.strip())
    except ValueError:
        kinds = {bool: "true or false", int: "a whole number", float: "a number"}
        raise ValueError(
            f"--set {text!r}: engine.{key} takes {kinds.get(type(default), 'text')}, not {raw!r}"
        ) from None


def _length(value: float | None) -> int:
    assert value is not None
    return max(round(value), 1)


def lengths_of(row: Row) -> tuple[Lengths, str]:
    """The row's length distribution (see the module docstring) and a note if defaulted."""
    dist = row.key("length_dist")
    mean_in, mean_out = row.num("input_len"), row.num("output_len")
    both = mean_in is not None and mean_out is not None
    if dist == "sharegpt":
        missing = [c for c, m in (("input", mean_in), ("output", mean_out)) if m is None]
        note = ""
        if missing:
            note = (
                f"sharegpt: benchmark-dataset mean {' and '.join(missing)} length (row gives none)"
            )
        mean_in = SHAREGPT_BENCH_MEANS[0] if mean_in is None else mean_in
        mean_out = SHAREGPT_BENCH_MEANS[1] if mean_out is None else mean_out
        return Lengths("sharegpt", means=(mean_in, mean_out)), note
    match = re.fullmatch(r"random_range_ratio_([0-9.]+)", dist)
    if match and both:
        ratio = float(match.group(1))
        if not 0 < ratio <= 1:
            raise Unexpressible(f"length_dist {dist!r}: range ratio must lie in (0, 1]")

        def bounds(mean: float | None) -> tuple[int, int]:
            assert mean is not None
            low = _length(mean * 2 * ratio / (1 + ratio))
            return low, max(_length(mean * 2 / (1 + ratio)), low)

        return Lengths("uniform", bounds(mean_in), bounds(mean_out)), ""
    if not both:
        what = "dataset unknown" if dist and not match else "needs both means"
        raise Unexpressible(
            f"length_dist {dist or 'blank'!r} ({what}) and input_len/output_len not both given"
        )
    fixed_in, fixed_out = (_length(mean_in),) * 2, (_length(mean_out),) * 2
    note = "" if dist in ("fixed", "") else f"dataset {dist!r} unknown: lengths fixed at the means"
    return Lengths("fixed", fixed_in, fixed_out), note


def default_requests(traffic: str, row: Row, engine: EngineConfig) -> int:
    given = row.count("num_requests")
    if given:
        return given
    if traffic == "offline":
        return max(1000, 2 * engine.max_num_seqs)
    if traffic == "concurrency":
        return max(10 * (row.count("concurrency") or 1), 100)
    return 1000


def cluster_of(row: Row) -> tuple[dict[str, Any], list[str]]:
    """Model, GPU, layout, engine and precision fields of the row's Setup, plus notes."""
    if row.key("metric") in HIT_METRICS and not row.key("model") and not row.key("hardware"):
        row = row.changed(model=HIT_RATIO_DEFAULT[0], hardware=HIT_RATIO_DEFAULT[1])
    model, model_note = _profile(row, "model", load_model)
    gpu, gpu_note = _profile(row, "hardware", load_gpu)
    layout = layout_of(row)
    name, batch, engine_note = engine_of(row, gpu)
    quantization = precision_of(row, model, gpu, name)
    stated, acts = row.key("activation_dtype"), dict(quantization)["activations"]
    precision_note = ""
    if stated and acts != stated:  # see precision_of: no such compute on this GPU
        precision_note = (
            f"{gpu.name} has no {stated} compute: {name} runs the weights weight-only ({acts})"
        )
    fields = {
        "model": model.name,
        "gpu": gpu.name,
        "tp": layout.tp,
        "replicas": layout.replicas,
        "layout_extra": layout.extra,
        "engine": name,
        "batch_defaults": batch,
        "quantization": quantization,
    }
    notes = (model_note, gpu_note, layout.note, engine_note, precision_note)
    return fields, [n for n in notes if n]


def trace_dirs() -> tuple[Path, ...]:
    """Where a trace named by a scenario file is looked for when it is not beside the file:
    the bundled traces and the shared data's, if present."""
    shared = TRACES_DIR.parent.parent / "shared" / "traces"
    return (TRACES_DIR, *((shared,) if shared.is_dir() else ()))


def find_trace(text: str, csv_dir: Path) -> Path | None:
    """The trace file a row names: relative to the CSV's folder, else the same relative path
    or its last one or two components (also gzipped) under `trace_dirs()`."""
    if not text:
        return None
    first = (csv_dir / text).resolve()
    if first.is_file():
        return first
    parts = [p for p in Path(text).parts if p not in ("..", ".")]
    tails = [Path(*parts[i:]) for i in range(len(parts)) if len(parts) - i <= 2 or i == 0]
    for base in trace_dirs():
        for tail in tails:
            for name in (tail, tail.with_name(tail.name + ".gz")):
                if (base / name).is_file():
                    return (base / name).resolve()
    return None


def setup_of(
    row: Row,
    csv_dir: Path,
    max_requests: int | None,
    engine_set: tuple[tuple[str, Any], ...] = (),
) -> tuple[Setup, list[str]]:
    """The row's Setup and notes worth printing; Unexpressible with the reason otherwise."""
    speculative = speculative_technique(row)
    traffic = row.key("mode")
    trace_note: list[str] = []
    if traffic == "trace":
        text = row.text("trace")
        path = find_trace(text, csv_dir)
        if path is None:
            raise Unexpressible(
                f"mode trace needs the trace file {text!r} (looked for {csv_dir / text} and "
                f"under {', '.join(str(d) for d in trace_dirs())})"
            )
        if path != (csv_dir / text).resolve():
            trace_note.append(f"trace {text!r} not beside the file: read {path}")
    common, notes = cluster_of(row)
    notes += trace_note
    common["traffic"] = traffic
    # the three engines cache prefixes by default (vLLM v1 enable_prefix_caching, SGLang's
    # radix cache, TensorRT-LLM's KV block reuse)
    common["prefix_caching"] = "on"
    if speculative:
        common["speculative"] = tuple(speculative.items())
        notes.append(
            f"{row.key('spec_method')} k={speculative['num_tokens']}: acceptance length "
            f"{row.accept_len:g} (from {row.accept_from}) -> {speculative['acceptance']:.3f} "
            "per draft"
        )
    stated = stated_flags(row, common["engine"])
    notes += [f"notes state engine.{k}={v}" for k, v in stated]
    common["engine_set"] = stated + engine_set  # (a --set of the same field wins)
    if traffic == "single_batch":
        batch_size, context = row.count("batch_size"), row.num("input_len")
        if batch_size is None or context is None:
            raise Unexpressible("single_batch needs batch_size and input_len")
        return Setup(**common, batch_size=batch_size, context_tokens=_length(context)), notes
    if traffic == "trace":
        num = row.count("num_requests") or 0
        if max_requests:
            num = min(num, max_requests) if num else max_requests
        if row.key("metric") in HIT_METRICS:  # defined for an unbounded cache
            common["prefix_caching"] = "unbounded"
            if not row.key("model"):
                model, gpu = HIT_RATIO_DEFAULT
                notes.append(f"hit ratio: model and hardware blank, replayed on {model} / {gpu}")
        return Setup(**common, trace=str(path), num_requests=num), notes
    if traffic == "poisson":
        rate = row.num("request_rate")
        if rate is None or rate <= 0 or math.isinf(rate):
            raise Unexpressible("poisson needs a finite request_rate > 0")
        common["rate_per_s"] = rate
    if traffic == "concurrency":
        concurrency = row.count("concurrency") or row.count("batch_size")
        if not concurrency:
            raise Unexpressible("concurrency needs concurrency >= 1")
        common["concurrency"] = concurrency
    lengths, length_note = lengths_of(row)
    notes += [length_note] if length_note else []
    num = default_requests(traffic, row, engine_config(Setup(**common)))
    num = min(num, max_requests) if max_requests else num
    return Setup(**common, num_requests=num, lengths=lengths), notes


# --------------------------------------------------------------------------- setup -> numbers


def to_config(setup: Setup, lengths_trace: Path | None = None) -> Config:
    """The simulator Config for a setup (`lengths_trace`: the materialised ShareGPT draw)."""
    layout: dict[str, Any] = dict(setup.layout_extra)  # pp, ep, dp_attention
    cluster = ClusterConfig(replicas=setup.replicas, gpu=setup.gpu, tp=setup.tp, **layout)
    quant = {k: v for k, v in setup.quantization}
    closed = setup.traffic == "concurrency"
    if setup.traffic == "trace":
        workload = WorkloadConfig(kind="trace", trace=setup.trace)
        workload.max_requests = setup.num_requests or None
    elif lengths_trace is not None:
        workload = WorkloadConfig(kind="trace", trace=str(lengths_trace))
    else:
        li, lo = setup.lengths.input, setup.lengths.output
        kind = setup.lengths.kind
        workload = WorkloadConfig(
            kind="synthetic",
            num_requests=max(setup.num_requests, 1),
            arrival="poisson" if setup.traffic == "poisson" else "offline",
            rate_per_s=setup.rate_per_s or 1.0,
            input=LengthConfig(kind, value=li[0], low=li[0], high=li[1]),
            output=LengthConfig(kind, value=lo[0], low=lo[0], high=lo[1]),
        )
    workload.concurrency = setup.concurrency if closed else 0
    technique: dict[str, Any] = {"quantization": quant}
    if setup.prefix_caching:
        technique["prefix_caching"] = {"unbounded": setup.prefix_caching == "unbounded"}
    if setup.speculative:
        technique["speculative"] = dict(setup.speculative)
    return Config(
        model=ModelConfig(setup.model),
        cluster=cluster,
        engine=engine_config(setup),
        router=RouterConfig("round_robin"),
        workload=workload,
        technique=technique,
        seed=SEED,
        progress=False,
        write_plots=False,
    )


def rescale(values: np.ndarray, mean: float | None) -> np.ndarray:
    """Integer lengths >= 1 scaled so their mean is `mean` (to rounding); None keeps them."""
    if mean is None:
        return values.astype(np.int64)
    scaled = np.rint(values * (mean / values.mean()))
    return np.maximum(scaled, 1).astype(np.int64)


def sharegpt_requests(setup: Setup, rng: np.random.Generator) -> pd.DataFrame:
    """Arrival times and ShareGPT-shaped lengths of the setup's requests: prompts from the
    bundled sample, outputs gamma-distributed (see SHAREGPT_OUTPUT_GAMMA_SHAPE), each
    rescaled to the setup's means."""
    pairs = LengthPairs.from_csv(bundled(SHAREGPT_SAMPLE))
    n = setup.num_requests
    arrival = np.zeros(n)
    if setup.traffic == "poisson":
        arrival = arrival_times(n, rng, arrival="poisson", rate_per_s=setup.rate_per_s)
    rows = rng.choice(len(pairs.input_tokens), size=n, replace=n > len(pairs.input_tokens))
    mean_in, mean_out = setup.lengths.means
    return pd.DataFrame(
        {
            "arrival_s": arrival,
            "input_tokens": rescale(pairs.input_tokens[rows], mean_in),
            "output_tokens": rescale(
                rng.gamma(SHAREGPT_OUTPUT_GAMMA_SHAPE, size=n),
                SHAREGPT_BENCH_MEANS[1] if mean_out is None else mean_out,
            ),
        }
    )


def write_azure_trace(requests: pd.DataFrame, path: Path) -> Path:
    """Requests as an Azure-format trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)."""
    stamps = pd.Timestamp("2000-01-01") + pd.to_timedelta(requests["arrival_s"], unit="s")
    pd.DataFrame(
        {
            "TIMESTAMP": stamps.dt.strftime("%Y-%m-%d %H:%M:%S.%f"),
            "ContextTokens": requests["input_tokens"],
            "GeneratedTokens": requests["output_tokens"],
        }
    ).to_csv(path, index=False)
    return path


def linear_percentile(values: np.ndarray, q: float, weights: np.ndarray | None = None) -> float:
    """numpy's default (linear) percentile; with integer weights, that of the values each
    repeated weight times (NaN values and non-positive weights dropped; NaN if none)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = ~np.isnan(v) & (w > 0)
    v, w = v[keep], w[keep]
    if v.size == 0:
        return math.nan
    order = np.argsort(v, kind="stable")
    v, cum = v[order], np.cumsum(w[order])
    h = (cum[-1] - 1) * q / 100.0
    lo = math.floor(h)
    i_lo = int(np.searchsorted(cum, lo, side="right"))
    i_hi = int(np.searchsorted(cum, min(lo + 1, cum[-1] - 1), side="right"))
    i_lo, i_hi = min(i_lo, v.size - 1), min(i_hi, v.size - 1)
    return float(v[i_lo] + (h - lo) * (v[i_hi] - v[i_lo]))


def serving_metrics(
    requests: pd.DataFrame, steps: pd.DataFrame, num_gpus: int, hash_block_tokens: int = 0
) -> dict[str, float]:
    """Every serving metric of one run, defined as the benchmark clients define them."""
    req = request_metrics(requests)
    fin = req[req["status"] == "finished"]
    out: dict[str, float] = {}
    for metric, (column, q, scale) in PERCENTILE_METRICS.items():
        out[metric] = linear_percentile(fin[column].to_numpy(dtype=float) * scale, q)
    for metric, (column, scale) in MEAN_METRICS.items():
        values = fin[column].to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        out[metric] = float(values.mean()) * scale if values.size else math.nan
    itl_values, itl_weights = itl_samples(steps)
    for metric, itl_q in ITL_METRICS.items():
        if itl_q is not None:
            out[metric] = linear_percentile(itl_values * 1e3, itl_q, itl_weights)
        elif itl_weights.sum() > 0:
            out[metric] = float(np.average(itl_values, weights=itl_weights)) * 1e3
        else:
            out[metric] = math.nan
    duration = float(fin["finished_at"].max() - req["arrival_at"].min()) if len(fin) else 0.0
    rate = (lambda x: x / duration) if duration > 0 else (lambda x: math.nan)
    output_tokens = float(fin["output_tokens"].sum())
    out["output_tok_s"] = rate(output_tokens)
    out["output_tok_s_per_gpu"] = rate(output_tokens) / num_gpus
    out["total_tok_s"] = rate(output_tokens + float(fin["input_tokens"].sum()))
    out["requests_per_s"] = rate(float(len(fin)))
    out |= hit_ratios(fin, hash_block_tokens)
    return out


def hit_ratios(fin: pd.DataFrame, hash_block_tokens: int) -> dict[str, float]:
    """Prefix-cache hit ratios over finished requests: by tokens, and by the trace's hash
    blocks (a block counts when all its tokens were served from the cache)."""
    inputs = fin["input_tokens"].to_numpy(dtype=np.int64)
    cached = fin["cached_tokens"].to_numpy(dtype=np.int64)
    out = {"hit_ratio_tokens": float(cached.sum() / inputs.sum()) if inputs.sum() else math.nan}
    if hash_block_tokens:
        blocks = -(-inputs // hash_block_tokens)
        out["hit_ratio"] = float((cached // hash_block_tokens).sum() / blocks.sum())
    else:
        out["hit_ratio"] = math.nan
    return out


def decode_shapes(
    batch: int, context: int, engine: EngineConfig, window: int
) -> Iterator[tuple[StepShape, int]]:
    """One decode token for `batch` sequences at `context`, split by the engine's caps."""
    cap = max(min(engine.max_num_seqs, engine.max_num_batched_tokens), 1)
    for start in range(0, batch, cap):
        n = min(cap, batch - start)
        yield decode_shape(n, context, window), n


def single_batch_ms(setup: Setup, metric: str) -> float:
    """prefill_step_ms or decode_step_ms of the setup from the step-time model alone."""
    cfg = to_config(setup)
    try:
        plan = build_plan(cfg)
        mem = memory_plan(plan)
    except ValueError as err:
        raise Unexpressible(str(err)) from None
    b, ctx = setup.batch_size, setup.context_tokens
    blocks = b * -(-(ctx + 1) // mem.block_size)
    if blocks > mem.num_blocks:
        raise Unexpressible(
            f"batch {b} x {ctx} tokens needs {blocks:,} KV blocks, the replica has "
            f"{mem.num_blocks:,}"
        )
    model, window = Roofline(cost_params(plan)), plan.model.sliding_window
    e = cfg.engine
    if metric == "prefill_step_ms":
        shapes = prefill_shapes(
            b, ctx, e.max_num_batched_tokens, e.max_num_seqs, e.enable_chunked_prefill, window
        )
    else:
        shapes = decode_shapes(b, ctx, e, window)
    overhead = EngineOverhead.of(plan.engine)
    return 1e3 * sum(overhead.total_seconds(model, s, n) for s, n in shapes)


# --------------------------------------------------------------------------- the harness


@dataclass(frozen=True)
class Result:
    """One scenario row's outcome (status ok, skipped or not-simulatable)."""

    id: str
    line: int
    metric: str
    measured: float | None
    predicted: float | None
    status: str
    reason: str = ""
    group: str = ""
    hardware: str = ""
    model: str = ""
    mode: str = ""

    @property
    def error_pct(self) -> float:
        if self.status != "ok" or self.predicted is None or not self.measured:
            return math.nan
        return 100.0 * (self.predicted - self.measured) / self.measured


@dataclass
class Harness:
    """Runs rows; caches one outcome per Setup (a simulation or the reason it failed)."""

    csv_dir: Path
    max_requests: int | None = None
    engine_set: tuple[tuple[str, Any], ...] = ()  # engine settings applied to every row
    cache: dict[Setup, dict[str, float] | str] = field(default_factory=dict)
    num_simulations: int = 0

    def serving(self, setup: Setup) -> dict[str, float]:
        if setup not in self.cache:
            try:
                self.cache[setup] = self._simulate(setup)
            except ValueError as err:  # the simulator's own clear errors (does not fit, ...)
                self.cache[setup] = str(err).splitlines()[0]
            except Exception as err:  # a bug: keep going, report it, fail the exit status
                self.cache[setup] = f"{SIMULATOR_ERROR} ({type(err).__name__}: {err})"
        outcome = self.cache[setup]
        if isinstance(outcome, str):
            raise Unexpressible(outcome)
        return outcome

    def _simulate(self, setup: Setup) -> dict[str, float]:
        self.num_simulations += 1
        if setup.lengths.kind == "sharegpt" and setup.traffic != "trace":
            rng = np.random.default_rng(SEED)
            with tempfile.TemporaryDirectory(prefix="servesim-validate-") as tmp:
                path = write_azure_trace(sharegpt_requests(setup, rng), Path(tmp) / "req.csv")
                result = simulate(to_config(setup, path))
        else:
            result = simulate(to_config(setup))
        metrics = serving_metrics(
            result.requests,
            result.steps,
            int(result.meta["num_gpus"]),
            int(result.meta.get("hash_block_tokens", 0)),
        )
        rejected = int((result.requests["status"] == "rejected").sum())
        metrics["_rejected"] = rejected
        return metrics

    def predict(self, row: Row) -> tuple[float, list[str]]:
        """The row's predicted value and notes; Unexpressible with the reason otherwise."""
        mode, metric = row.key("mode"), row.key("metric")
        if not mode:
            raise Unexpressible("mode is blank")
        check_metric(metric, mode)
        if mode == "ratio":
            return self.ratio(row)
        setup, notes = setup_of(row, self.csv_dir, self.max_requests, self.engine_set)
        if mode == "single_batch":
            return single_batch_ms(setup, metric), notes
        values = self.serving(setup)
        if values["_rejected"]:
            notes.append(f"{int(values['_rejected'])} of {setup.num_requests} requests rejected")
        value = values[metric]
        if math.isnan(value):
            raise Unexpressible(f"the run produced no {metric} (no finished requests)")
        return value, notes

    def ratio(self, row: Row) -> tuple[float, list[str]]:
        overrides, quantity = parse_baseline(row.text("baseline"))
        traffic = (
            "poisson"
            if row.num("request_rate")
            else "concurrency"
            if row.num("concurrency") or row.num("batch_size")
            else "offline"
        )
        own = row.changed(mode=traffic, metric=quantity)
        value, notes = self.predict(own)
        base, base_notes = self.predict(own.changed(**overrides))
        notes += [f"baseline: {n}" for n in base_notes]
        lower_better = quantity.startswith(LOWER_IS_BETTER_PREFIXES)
        return (base / value if lower_better else value / base), notes


def check_metric(metric: str, mode: str) -> None:
    if metric in UNSUPPORTED_METRICS:
        raise Unexpressible(UNSUPPORTED_METRICS[metric])
    allowed = {
        **dict.fromkeys(SERVING_METRICS, SERVING_MODES),
        **dict.fromkeys(STEP_METRICS, ("single_batch",)),
        **dict.fromkeys(HIT_METRICS, ("trace",)),
        "speedup_x": ("ratio",),
    }
    if metric not in allowed:
        raise Unexpressible(f"metric {metric or 'blank'!r} is not one the simulator produces")
    if mode not in allowed[metric]:
        raise Unexpressible(f"metric {metric} is not produced in mode {mode}")


SPEC_OFF = re.compile(r"without\s+(speculative|spec\b|mtp|eagle|draft|ngram)", re.IGNORECASE)


def parse_baseline(text: str) -> tuple[dict[str, str], str]:
    """(column overrides, quantity) of a ratio row's baseline; Unexpressible if free text."""
    if not text:
        raise Unexpressible("ratio row without a baseline")
    overrides: dict[str, str] = {}
    quantity = ""
    if "=" in text:
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, sep, value = (s.strip() for s in part.partition("="))
            if not sep or (key not in COLUMNS and key != "quantity") or key in NON_SETUP_COLUMNS:
                raise Unexpressible(f"baseline part {part!r} is not column=value")
            if key == "quantity":
                quantity = value.lower()
            else:
                overrides[key] = value
    elif SPEC_OFF.search(text):
        overrides = {"spec_method": "none", "spec_k": ""}
    else:
        raise Unexpressible(f"baseline {text!r} is not expressible (write it as column=value;...)")
    if not quantity:
        low = text.lower()
        names = (("ttft", "ttft_mean_ms"), ("tpot", "tpot_mean_ms"), ("latency", "e2e_mean_s"))
        quantity = next((q for word, q in names if word in low), "output_tok_s")
    if quantity not in SERVING_METRICS:
        raise Unexpressible(f"baseline quantity {quantity!r} is not a serving metric")
    return overrides, quantity


def run_group(row: Row, setups: dict[tuple[str, ...], str]) -> str:
    """The group label of a row: the first id (prefix before '__') with its setup."""
    return setups.setdefault(row.setup_key, row.id.split("__")[0])


def outcome(row: Row, harness: Harness) -> tuple[float | None, str, str]:
    """(predicted, status, reason) of one row."""
    if row.key("simulatable") == "no":
        return None, "not-simulatable", row.text("why_not")
    try:
        value, notes = harness.predict(row)
    except Unexpressible as why:
        return None, "skipped", str(why)
    if not row.num("value"):
        return value, "skipped", "measured value 0: relative error undefined"
    return value, "ok", "; ".join(notes)


def validate_rows(
    rows: Sequence[Row],
    csv_dir: Path,
    max_requests: int | None = None,
    echo: Callable[[str], None] | None = None,
    engine_set: tuple[tuple[str, Any], ...] = (),
) -> list[Result]:
    """Predict every simulatable row; `echo` receives one printable line per row."""
    harness = Harness(csv_dir, max_requests, engine_set)
    groups: dict[tuple[str, ...], str] = {}
    results = []
    for row in attach_acceptance(rows):
        predicted, status, reason = outcome(row, harness)
        result = Result(
            id=row.id,
            line=row.line,
            metric=row.key("metric"),
            measured=row.num("value"),
            predicted=predicted,
            status=status,
            reason=reason,
            group=run_group(row, groups),
            hardware=row.key("hardware"),
            model=row.key("model"),
            mode=row.key("mode"),
        )
        results.append(result)
        if echo is not None:
            echo(format_result(result))
    return results


def format_result(r: Result) -> str:
    head = f"{r.id:<58} {r.metric:<21}"
    if r.status == "not-simulatable":
        return f"{head} not simulatable (file): {r.reason}"
    if r.status == "skipped":
        return f"{head} skipped: {r.reason}"
    assert r.measured is not None and r.predicted is not None
    line = (
        f"{head} measured {r.measured:>11.4g} predicted {r.predicted:>11.4g} {r.error_pct:>+8.1f}%"
    )
    return f"{line}  ({r.reason})" if r.reason else line


def ape_stats(results: Sequence[Result]) -> dict[str, float]:
    ape = np.abs([r.error_pct for r in results if r.status == "ok"])
    if ape.size == 0:
        return {"median": math.nan, "p90": math.nan, "max": math.nan, "rows": 0}
    return {
        "median": float(np.median(ape)),
        "p90": float(np.percentile(ape, 90)),
        "max": float(ape.max()),
        "rows": int(ape.size),
    }


def summary_line(results: Sequence[Result]) -> str:
    s = ape_stats(results)
    skipped = sum(r.status == "skipped" for r in results)
    return (
        f"median_ape={s['median']:.1f}% p90_ape={s['p90']:.1f}% max_ape={s['max']:.1f}% "
        f"rows={int(s['rows'])} skipped={skipped}"
    )


REPORT_COLUMNS = ("id", "metric", "measured", "predicted", "error_pct", "status", "reason")


def results_frame(results: Sequence[Result]) -> pd.DataFrame:
    """One row per scenario row: the report columns, then group, hardware, model, mode, line."""
    records = [
        {
            "id": r.id,
            "metric": r.metric,
            "measured": r.measured,
            "predicted": r.predicted,
            "error_pct": r.error_pct,
            "status": r.status,
            "reason": r.reason,
            "group": r.group,
            "hardware": r.hardware,
            "model": r.model,
            "mode": r.mode,
            "line": r.line,
        }
        for r in results
    ]
    columns = [*REPORT_COLUMNS, "group", "hardware", "model", "mode", "line"]
    return pd.DataFrame.from_records(records, columns=columns)


def validate_file(
    path: Path,
    max_requests: int | None = None,
    echo: Callable[[str], None] | None = None,
    engine_set: tuple[tuple[str, Any], ...] = (),
    only: str = "",
) -> list[Result]:
    """Read, check and validate one scenario file (ScenarioError if it is malformed); `only`
    keeps the rows whose id contains it."""
    rows = [r for r in read_scenarios(path) if only in r.id]
    return validate_rows(rows, path.resolve().parent, max_requests, echo, engine_set)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`servesim validate FILE.csv [--out report.csv] [--plot DIR] [--max-requests N]
    [--set engine.KEY=VALUE ...] [--only TEXT]`."""
    parser = argparse.ArgumentParser(
        prog="servesim validate",
        description="Simulate every simulatable row of a scenario CSV and compare with the "
        "measured value; the last line is the error summary.",
    )
    parser.add_argument("file", type=Path, help="scenario CSV (calibration_scenarios format)")
    parser.add_argument("--out", type=Path, help="write one report row per scenario row (CSV)")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write figures and summary.md")
    parser.add_argument(
        "--max-requests", type=int, metavar="N", help="cap the requests of every simulated setup"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="engine.KEY=VALUE",
        help="an engine setting for every row (a benchmark's server flags the format cannot "
        "carry), e.g. --set engine.batch_wait_steps=40; repeatable",
    )
    parser.add_argument("--only", default="", metavar="TEXT", help="rows whose id contains TEXT")
    args = parser.parse_args(argv)
    if args.max_requests is not None and args.max_requests < 1:
        parser.error("--max-requests must be >= 1")
    try:
        engine_set = tuple(parse_engine_setting(text) for text in args.set)
    except ValueError as err:
        parser.error(str(err))
    if engine_set:
        print("engine settings for every row: " + ", ".join(f"{k}={v}" for k, v in engine_set))
    start = time.perf_counter()
    try:
        results = validate_file(
            args.file,
            args.max_requests,
            echo=lambda s: print(s, flush=True),
            engine_set=engine_set,
            only=args.only,
        )
    except ScenarioError as err:
        print(f"servesim validate: error: {err}", file=sys.stderr)
        return 2
    frame = results_frame(results)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame[list(REPORT_COLUMNS)].to_csv(args.out, index=False)
        print(f"report written to {args.out}")
    if args.plot is not None:
        from sim.fidelity import write_report

        write_report({args.file.stem: frame}, args.plot)
        print(f"figures written to {args.plot}")
    failed = sum(r.reason.startswith(SIMULATOR_ERROR) for r in results)
    print(f"{len(results)} rows in {time.perf_counter() - start:.1f} s")
    print(summary_line(results))
    return 1 if failed else 0
