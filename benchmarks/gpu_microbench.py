#!/usr/bin/env python3
"""Ground truth for the roofline: time GEMMs, attention and HBM traffic on a real GPU.

Run on a machine with an NVIDIA GPU and PyTorch (not a servesim dependency: this script
imports only torch, yaml and the standard library, so it runs under any CUDA image):

    python benchmarks/gpu_microbench.py --out hardware_profiles/measured/H200_2026-11-27.csv

It writes one CSV row per measurement (columns in `COLUMNS`) and prints a summary.
`benchmarks/roofline_check.py` compares a table against servesim's step-time formulas.

What is measured, and how:

- `copy`: device-to-device copy of a large buffer; bytes = read + written.
- `read`: a sum over a large bf16 buffer (a pure streaming read).
- `gemm`: y = x·Wᵀ at the per-GPU shapes of our model profiles (`hardware_profiles/models`):
  QKV, O, gate+up, down and LM head for each tensor-parallel degree, at M tokens. BF16 through
  torch.mm; FP8 (e4m3, per-tensor scales, fast accumulation, BF16 out) through
  torch._scaled_mm. Weights rotate among enough copies to exceed L2 several times, as in a
  real forward pass, where every weight comes from HBM.
- `grouped_gemm`: MoE expert GEMMs as a batched matmul over the experts a step touches,
  each with m tokens (a proxy for fused/grouped MoE kernels).
- `attn_prefill`: causal flash attention (SDPA) over one sequence; FLOPs counted causal.
  K and V are expanded to the query heads beforehand (exact; the fused kernels' own GQA
  support differs between versions). SDPA's unfused math fallback is disabled on a GPU.
- `attn_decode`: one new token per sequence against a KV cache of `context` tokens, grouped
  query heads folded into the query length (exact for one query token).
- `launch`: one tiny kernel, repeated inside a CUDA graph: the minimum kernel duration.
- `sampling`: choosing the next token from fp32 logits over the vocabulary, greedy
  (argmax) and top-p (vLLM's torch-native path: sort, softmax, cumsum, mask, scatter,
  softmax, exponential race), for 1 to 256 sequences (added after the 2026-11-27 tables;
  `--only sampling` runs it alone).
- `decode_step` / `prefill_step`: a whole unfused PyTorch Llama-3.1-8B forward (RMSNorm,
  QKV, attention over a KV cache, O, SwiGLU MLP, LM head; rotary omitted) captured in one
  CUDA graph, at bf16 with random weights. It is an upper bound on an engine's GPU time:
  engines fuse norms and activations that this runs as separate kernels.

Timing: CUDA graphs of the work (eager when capture fails), replayed until each timing lasts
`--min-ms`; the median of `--reps` timings is `time_us`, the fastest `min_us`. Inputs are
random (never zeros). Sections run in priority order and stop at `--budget-s`.
`--smoke` runs tiny shapes on the CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "hardware_profiles" / "models"

COLUMNS = [
    "card", "date", "torch", "kind", "model", "tp", "op", "dtype", "m", "n", "k", "batch",
    "context", "flop", "bytes", "time_us", "min_us", "tflops", "gb_s", "note",
]  # fmt: skip

L2_ROTATE_BYTES = 256 * 2**20  # rotate weights until this much is touched: > 4x an H100/H200 L2
DENSE_CASES = [  # (model profile, tensor-parallel degrees)
    ("Llama-3.1-8B", [1]),
    ("Llama-3.1-70B", [1, 2, 4, 8]),
    ("Qwen3-32B", [1, 2]),
    ("Llama-3.1-405B", [8]),
]
GEMM_TOKENS = [1, 16, 64, 256, 1024, 4096, 16384]
MOE_CASES = ["Qwen3-30B-A3B", "gpt-oss-120b"]


class Bench:
    """Runs and times work on one device; writes rows as it goes."""

    def __init__(self, args: argparse.Namespace, writer: Any, out_file: Any) -> None:
        self.device = torch.device("cpu" if args.smoke else "cuda")
        self.cuda = self.device.type == "cuda"
        self.args = args
        self.writer = writer
        self.out_file = out_file
        self.t0 = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.card = torch.cuda.get_device_name() if self.cuda else "cpu"
        self.date = datetime.date.today().isoformat()
        self.gen = torch.Generator(device=self.device).manual_seed(0)

    def out_of_time(self) -> bool:
        return time.monotonic() - self.t0 > self.args.budget_s

    def randn(self, *shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        x = torch.randn(*shape, generator=self.gen, device=self.device, dtype=torch.float32)
        return x.to(dtype)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _time_once(self, fn: Callable[[], None], repeats: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / 1e3
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return time.perf_counter() - t

    def time(self, run: Callable[[], None], per_run: int) -> tuple[float, float, str]:
        """Seconds per unit of work (median, min): `run` enqueues `per_run` units."""
        note = ""
        run()
        run()
        self.sync()
        replay = run
        if self.cuda and not self.args.no_graphs:
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    run()
                torch.cuda.current_stream().wait_stream(side)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    run()
                graph.replay()
                torch.cuda.synchronize()
                replay = graph.replay
                note = "graph"
            except Exception as exc:  # fall back to eager, and say so
                torch.cuda.synchronize()
                note = f"eager ({type(exc).__name__})"
        one = max(self._time_once(replay, 1), 1e-7)
        repeats = max(1, min(2000, math.ceil(self.args.min_ms / 1e3 / one)))
        times = [
            self._time_once(replay, repeats) / (repeats * per_run) for _ in range(self.args.reps)
        ]
        return statistics.median(times), min(times), note

    def record(self, **fields: Any) -> None:
        row: dict[str, Any] = {c: "" for c in COLUMNS}
        row.update(card=self.card, date=self.date, torch=torch.__version__)
        row.update(fields)
        t_s = row.pop("_t_s")
        min_s = row.pop("_min_s")
        row["time_us"] = f"{t_s * 1e6:.3f}"
        row["min_us"] = f"{min_s * 1e6:.3f}"
        if row["flop"] != "":
            row["tflops"] = f"{float(row['flop']) / t_s / 1e12:.2f}"
        if row["bytes"] != "":
            row["gb_s"] = f"{float(row['bytes']) / t_s / 1e9:.1f}"
        self.writer.writerow(row)
        self.out_file.flush()
        self.rows.append(row)

    def guarded(self, label: str, fn: Callable[..., None], **kwargs: Any) -> None:
        """Run fn(self, **kwargs); an error is printed and recorded, the run goes on."""
        try:
            fn(self, **kwargs)
        except Exception as exc:  # one failed shape must not end the run
            print(f"  {label}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", flush=True)
            row = {c: "" for c in COLUMNS}
            row.update(card=self.card, date=self.date, torch=torch.__version__, kind="error")
            row.update(op=label, note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            self.writer.writerow(row)
            self.out_file.flush()
        finally:
            if self.cuda:
                torch.cuda.empty_cache()


def load_model(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((MODELS_DIR / f"{name}.yaml").read_text())
    return data


def dense_shapes(cfg: dict[str, Any], tp: int) -> Iterator[tuple[str, int, int]]:
    """(op, N, K) of one layer's linear layers and the LM head on one GPU of a TP group."""
    h, hd = (
        cfg["hidden_size"],
        cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
    )
    q, kv = cfg["num_attention_heads"] // tp, max(1, cfg["num_key_value_heads"] // tp)
    inter = cfg["intermediate_size"] // tp
    yield "qkv", (q + 2 * kv) * hd, h
    yield "o", h, q * hd
    yield "gate_up", 2 * inter, h
    yield "down", h, inter
    yield "lm_head", cfg["vocab_size"] // tp, h


def rotation(nbytes: int) -> int:
    return max(1, min(64, math.ceil(L2_ROTATE_BYTES / max(nbytes, 1))))


def _discard(_: object) -> None:
    """Drop a result: timed work is enqueued for its kernels, not its value."""


# --------------------------------------------------------------------------------- sections


def _copy(b: Bench, nbytes: int) -> None:
    src = b.randn(nbytes // 2)
    dst = torch.empty_like(src)
    t, tmin, note = b.time(lambda: _discard(dst.copy_(src)), 1)
    b.record(kind="copy", op="d2d_copy", dtype="bf16", n=nbytes // 2, bytes=2 * nbytes,
             _t_s=t, _min_s=tmin, note=note)  # fmt: skip


def _read(b: Bench, nbytes: int) -> None:
    src = b.randn(nbytes // 2)
    t, tmin, note = b.time(lambda: _discard(torch.sum(src, dtype=torch.float32)), 1)
    b.record(kind="read", op="sum", dtype="bf16", n=nbytes // 2, bytes=nbytes,
             _t_s=t, _min_s=tmin, note=note)  # fmt: skip


def bench_memory(b: Bench) -> None:
    sizes = [2**20 * 64] if b.args.smoke else [2**20 * 256, 2**30, 4 * 2**30]
    for nbytes in sizes:
        b.guarded(f"copy {nbytes}", _copy, nbytes=nbytes)
        b.guarded(f"read {nbytes}", _read, nbytes=nbytes)


def _gemm(b: Bench, model: str, tp: int, op: str, n: int, k: int, m: int, dtype: str) -> None:
    w_bytes = n * k * (1 if dtype == "fp8" else 2)
    copies = 1 if b.args.smoke else rotation(w_bytes)
    x = b.randn(m, k)
    weights = [b.randn(n, k) for _ in range(copies)]
    pad_note = ""
    if dtype == "bf16":
        out = torch.empty(m, n, device=b.device, dtype=torch.bfloat16)

        def run() -> None:
            for w in weights:
                torch.mm(x, w.t(), out=out)

    else:
        f8 = torch.float8_e4m3fn
        xq = x.to(f8)
        wq = [w.to(f8) for w in weights]
        del weights
        one = torch.ones((), device=b.device, dtype=torch.float32)
        try:
            torch._scaled_mm(xq, wq[0].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        except RuntimeError:  # some versions want M a multiple of 16: pad, as engines do
            padded = -(-m // 16) * 16
            xq = torch.cat([xq, xq.new_zeros(padded - m, k)])
            pad_note = f"m padded to {padded}"

        def run() -> None:
            for w in wq:
                torch._scaled_mm(xq, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                 use_fast_accum=True)  # fmt: skip

    t, tmin, tnote = b.time(run, copies)
    note = ";".join(s for s in (tnote, f"rotate={copies}", pad_note) if s)
    b.record(kind="gemm", model=model, tp=tp, op=op, dtype=dtype, m=m, n=n, k=k,
             flop=2 * m * n * k, bytes=w_bytes, _t_s=t, _min_s=tmin, note=note)  # fmt: skip


def bench_gemm(b: Bench, dtype: str) -> None:
    cases = [("Llama-3.1-8B", [1])] if b.args.smoke else DENSE_CASES
    tokens = [1, 16] if b.args.smoke else GEMM_TOKENS
    for model, tps in cases:
        cfg = load_model(model)
        for tp in tps:
            for op, n, k in dense_shapes(cfg, tp):
                if b.args.smoke:
                    n, k = n // 16, k // 16
                for m in tokens:
                    if b.out_of_time():
                        return
                    b.guarded(f"gemm {dtype} {model} tp{tp} {op} m={m}", _gemm, model=model,
                              tp=tp, op=op, n=n, k=k, m=m, dtype=dtype)  # fmt: skip


def _grouped(b: Bench, model: str, op: str, n: int, k: int, experts: int, m: int) -> None:
    w_bytes = experts * n * k * 2
    copies = 1 if b.args.smoke else rotation(w_bytes)
    x = b.randn(experts, m, k)
    ws = [b.randn(experts, k, n) for _ in range(copies)]
    out = torch.empty(experts, m, n, device=b.device, dtype=torch.bfloat16)

    def run() -> None:
        for w in ws:
            torch.bmm(x, w, out=out)

    t, tmin, note = b.time(run, copies)
    b.record(kind="grouped_gemm", model=model, op=op, dtype="bf16", m=m, n=n, k=k, batch=experts,
             flop=2 * experts * m * n * k, bytes=w_bytes, _t_s=t, _min_s=tmin,
             note=f"{note};rotate={copies}")  # fmt: skip


def bench_grouped(b: Bench) -> None:
    for model in MOE_CASES:
        cfg = load_model(model)
        h = cfg["hidden_size"]
        inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
        experts = cfg.get("num_experts") or cfg["num_local_experts"]
        for op, n, k in (("w13", 2 * inter, h), ("w2", h, inter)):
            if b.args.smoke:
                n, k = n // 16, k // 16
            for touched in (8,) if b.args.smoke else (8, 64, experts):
                for m in (1, 16) if b.args.smoke else (1, 4, 16, 64, 256):
                    if b.out_of_time():
                        return
                    b.guarded(f"grouped {model} {op} e={touched} m={m}", _grouped, model=model,
                              op=op, n=n, k=k, experts=touched, m=m)  # fmt: skip


def _heads(cfg: dict[str, Any], tp: int) -> tuple[int, int, int]:
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["num_attention_heads"] // tp, max(1, cfg["num_key_value_heads"] // tp), hd


def _prefill_attention(b: Bench, model: str, tp: int, seq: int) -> None:
    q_heads, kv_heads, hd = _heads(load_model(model), tp)
    group = q_heads // kv_heads
    q = b.randn(1, q_heads, seq, hd)
    k = b.randn(1, kv_heads, seq, hd).repeat_interleave(group, dim=1)
    v = b.randn(1, kv_heads, seq, hd).repeat_interleave(group, dim=1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    t, tmin, note = b.time(lambda: _discard(sdpa(q, k, v, is_causal=True)), 1)
    pairs = seq * (seq + 1) // 2
    b.record(kind="attn_prefill", model=model, tp=tp, op="sdpa_causal", dtype="bf16", m=seq,
             batch=1, context=seq, flop=4 * hd * q_heads * pairs,
             bytes=4 * seq * kv_heads * hd + 4 * seq * q_heads * hd, _t_s=t, _min_s=tmin,
             note=f"{note};heads={q_heads}/{kv_heads}x{hd}")  # fmt: skip


def _decode_attention(b: Bench, model: str, tp: int, batch: int, context: int) -> None:
    q_heads, kv_heads, hd = _heads(load_model(model), tp)
    kv_bytes = 4 * batch * context * kv_heads * hd
    copies = 1 if b.args.smoke else rotation(kv_bytes)
    q = b.randn(batch, kv_heads, q_heads // kv_heads, hd)
    kvs = [(b.randn(batch, kv_heads, context, hd), b.randn(batch, kv_heads, context, hd))
           for _ in range(copies)]  # fmt: skip
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run() -> None:
        for k, v in kvs:
            sdpa(q, k, v)

    t, tmin, note = b.time(run, copies)
    b.record(kind="attn_decode", model=model, tp=tp, op="sdpa_decode", dtype="bf16", m=batch,
             batch=batch, context=context, flop=4 * hd * q_heads * batch * context,
             bytes=kv_bytes, _t_s=t, _min_s=tmin,
             note=f"{note};rotate={copies};heads={q_heads}/{kv_heads}x{hd}")  # fmt: skip


def bench_attention(b: Bench) -> None:
    for model, tp in [("Llama-3.1-8B", 1), ("Llama-3.1-70B", 4)]:
        _, kv_heads, hd = _heads(load_model(model), tp)
        for seq in [256] if b.args.smoke else [1024, 4096, 16384]:
            if b.out_of_time():
                return
            b.guarded(f"prefill {model} tp{tp} seq={seq}", _prefill_attention, model=model,
                      tp=tp, seq=seq)  # fmt: skip
        for batch in [2] if b.args.smoke else [1, 8, 32, 128]:
            for context in [256] if b.args.smoke else [1024, 4096, 16384]:
                if 4 * batch * context * kv_heads * hd > 16 * 2**30 or b.out_of_time():
                    continue
                b.guarded(f"decode {model} tp{tp} b={batch} ctx={context}", _decode_attention,
                          model=model, tp=tp, batch=batch, context=context)  # fmt: skip


def _launch_elementwise(b: Bench) -> None:
    x = b.randn(16)
    n = 100

    def run() -> None:
        for _ in range(n):
            x.mul_(1.0001)

    t, tmin, note = b.time(run, n)
    b.record(kind="launch", op="elementwise_16", dtype="bf16", n=16, _t_s=t, _min_s=tmin,
             note=note)  # fmt: skip


def _launch_gemm(b: Bench) -> None:
    x, w = b.randn(1, 256), b.randn(256, 256)
    out = torch.empty(1, 256, device=b.device, dtype=torch.bfloat16)
    n = 100

    def run() -> None:
        for _ in range(n):
            torch.mm(x, w.t(), out=out)

    t, tmin, note = b.time(run, n)
    b.record(kind="launch", op="gemm_1x256x256", dtype="bf16", m=1, n=256, k=256, _t_s=t,
             _min_s=tmin, note=note)  # fmt: skip


def _sampling(b: Bench, batch: int, vocab: int, top_p: bool) -> None:
    logits = b.randn(batch, vocab, dtype=torch.float32)

    def greedy() -> None:
        torch.argmax(logits, dim=-1)

    def nucleus() -> None:  # the torch-native top-p path of vLLM's sampler
        scaled = logits / 0.7
        sorted_logits, index = scaled.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_logits.masked_fill_(cum <= 1 - 0.9, -float("inf"))
        probs = scaled.scatter(-1, index, sorted_logits).softmax(dim=-1)
        q = torch.empty_like(probs).exponential_()
        probs.div_(q).argmax(dim=-1)

    t, tmin, note = b.time(nucleus if top_p else greedy, 1)
    b.record(kind="sampling", op="top_p" if top_p else "greedy", dtype="fp32", m=batch, n=vocab,
             batch=batch, bytes=4 * batch * vocab, _t_s=t, _min_s=tmin, note=note)  # fmt: skip


def bench_sampling(b: Bench) -> None:
    """Per-step sampling over the vocabulary (logits in fp32): argmax, and top-p."""
    for vocab in [1024] if b.args.smoke else [128256, 151936, 201088]:
        for batch in [2] if b.args.smoke else [1, 8, 32, 128, 256]:
            for top_p in (False, True):
                b.guarded(f"sampling b={batch} v={vocab} top_p={top_p}", _sampling, batch=batch,
                          vocab=vocab, top_p=top_p)  # fmt: skip


def bench_launch(b: Bench) -> None:
    b.guarded("launch elementwise", _launch_elementwise)
    b.guarded("launch gemm", _launch_gemm)


class TinyLlama:
    """An unfused Llama forward with random weights over a fixed KV cache (rotary omitted)."""

    def __init__(self, b: Bench, cfg: dict[str, Any], layers: int) -> None:
        self.b = b
        self.h = cfg["hidden_size"]
        self.q_heads, self.kv_heads, self.hd = _heads(cfg, 1)
        inter = cfg["intermediate_size"]
        self.layers = [
            {
                "norm1": b.randn(self.h),
                "qkv": b.randn((self.q_heads + 2 * self.kv_heads) * self.hd, self.h) * 0.02,
                "o": b.randn(self.h, self.q_heads * self.hd) * 0.02,
                "norm2": b.randn(self.h),
                "gate_up": b.randn(2 * inter, self.h) * 0.02,
                "down": b.randn(self.h, inter) * 0.02,
            }
            for _ in range(layers)
        ]
        self.inter = inter
        self.lm_head = b.randn(cfg["vocab_size"], self.h) * 0.02
        self.weight_bytes = 2 * (
            sum(sum(t.numel() for t in layer.values()) for layer in self.layers)
            + self.lm_head.numel()
        )

    @staticmethod
    def norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + 1e-5)).to(x.dtype) * w

    def decode_step(
        self, x: torch.Tensor, caches: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """x: (B, h) one token per sequence; caches: per layer (B, kv, L, hd) K and V."""
        sdpa = torch.nn.functional.scaled_dot_product_attention
        batch, group = x.shape[0], self.q_heads // self.kv_heads
        for layer, (k_cache, v_cache) in zip(self.layers, caches, strict=True):
            qkv = self.norm(x, layer["norm1"]) @ layer["qkv"].t()
            q = qkv[:, : self.q_heads * self.hd].reshape(batch, self.kv_heads, group, self.hd)
            attn = sdpa(q, k_cache, v_cache).reshape(batch, self.q_heads * self.hd)
            x = x + attn @ layer["o"].t()
            gate_up = self.norm(x, layer["norm2"]) @ layer["gate_up"].t()
            act = torch.nn.functional.silu(gate_up[:, : self.inter]) * gate_up[:, self.inter :]
            x = x + act @ layer["down"].t()
        return x[:, :] @ self.lm_head.t()

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        """x: (T, h), one sequence of T tokens attending causally to itself."""
        sdpa = torch.nn.functional.scaled_dot_product_attention
        tokens = x.shape[0]
        for layer in self.layers:
            qkv = self.norm(x, layer["norm1"]) @ layer["qkv"].t()
            q = (
                qkv[:, : self.q_heads * self.hd]
                .reshape(tokens, self.q_heads, self.hd)
                .transpose(0, 1)
            )
            kv = qkv[:, self.q_heads * self.hd :].reshape(tokens, 2, self.kv_heads, self.hd)
            group = self.q_heads // self.kv_heads
            k = kv[:, 0].transpose(0, 1).repeat_interleave(group, dim=0)
            v = kv[:, 1].transpose(0, 1).repeat_interleave(group, dim=0)
            attn = sdpa(q[None], k[None], v[None], is_causal=True)
            x = x + attn[0].transpose(0, 1).reshape(tokens, -1) @ layer["o"].t()
            gate_up = self.norm(x, layer["norm2"]) @ layer["gate_up"].t()
            act = torch.nn.functional.silu(gate_up[:, : self.inter]) * gate_up[:, self.inter :]
            x = x + act @ layer["down"].t()
        return x[-1:] @ self.lm_head.t()


STEP_MODEL = "Llama-3.1-8B"


def _decode_step(b: Bench, llama: TinyLlama, batch: int, context: int) -> None:
    shape = (batch, llama.kv_heads, context, llama.hd)
    caches = [(b.randn(*shape), b.randn(*shape)) for _ in llama.layers]
    x = b.randn(batch, llama.h)
    with torch.inference_mode():
        t, tmin, note = b.time(lambda: _discard(llama.decode_step(x, caches)), 1)
    layers = len(llama.layers)
    kv_bytes = 4 * batch * context * llama.kv_heads * llama.hd * layers
    b.record(kind="decode_step", model=STEP_MODEL, tp=1, op=f"forward_{layers}_layers",
             dtype="bf16", m=batch, batch=batch, context=context,
             bytes=llama.weight_bytes + kv_bytes, _t_s=t, _min_s=tmin,
             note=f"{note};unfused PyTorch, rotary omitted")  # fmt: skip


def _prefill_step(b: Bench, llama: TinyLlama, tokens: int) -> None:
    x = b.randn(tokens, llama.h)
    with torch.inference_mode():
        t, tmin, note = b.time(lambda: _discard(llama.prefill(x)), 1)
    b.record(kind="prefill_step", model=STEP_MODEL, tp=1, op=f"forward_{len(llama.layers)}_layers",
             dtype="bf16", m=tokens, batch=1, context=tokens, bytes=llama.weight_bytes, _t_s=t,
             _min_s=tmin, note=f"{note};unfused PyTorch, rotary omitted")  # fmt: skip


def _build_llama(b: Bench, into: list[TinyLlama]) -> None:
    cfg = load_model(STEP_MODEL)
    layers = cfg["num_hidden_layers"]
    if b.args.smoke:
        layers = 2
        cfg = dict(cfg, hidden_size=256, intermediate_size=512, vocab_size=1024,
                   num_attention_heads=8, num_key_value_heads=2, head_dim=32)  # fmt: skip
    into.append(TinyLlama(b, cfg, layers))


def bench_model_steps(b: Bench) -> None:
    built: list[TinyLlama] = []
    b.guarded("build TinyLlama", _build_llama, into=built)
    if not built:
        return
    context = 256 if b.args.smoke else 2048
    for batch in [2] if b.args.smoke else [1, 8, 32, 128]:
        if b.out_of_time():
            return
        b.guarded(f"decode_step b={batch}", _decode_step, llama=built[0], batch=batch,
                  context=context)  # fmt: skip
    for tokens in [64] if b.args.smoke else [512, 2048, 8192]:
        if b.out_of_time():
            return
        b.guarded(f"prefill_step T={tokens}", _prefill_step, llama=built[0], tokens=tokens)


# ------------------------------------------------------------------------------------ main


def no_math_attention(cuda: bool) -> Any:
    """On a GPU, SDPA must use a fused kernel: an error beats timing the unfused fallback."""
    if not cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    )


def summary(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'kind':<13} {'dtype':<5} {'rows':>4}  best"]
    kinds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        kinds.setdefault((row["kind"], row["dtype"]), []).append(row)
    for (kind, dtype), group in kinds.items():
        if any(r["tflops"] for r in group):
            best = max(group, key=lambda r: float(r["tflops"] or 0))
            text = (
                f"{best['tflops']} TFLOP/s ({best['op']} m={best['m']} n={best['n']} k={best['k']})"
            )
        elif any(r["gb_s"] for r in group):
            best = max(group, key=lambda r: float(r["gb_s"] or 0))
            text = f"{best['gb_s']} GB/s ({best['op']} n={best['n']} m={best['m']})"
        else:
            best = min(group, key=lambda r: float(r["time_us"]))
            text = f"{best['time_us']} us ({best['op']})"
        lines.append(f"{kind:<13} {dtype:<5} {len(group):>4}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes on the CPU (checks the script)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="stop starting sections after this"
    )
    parser.add_argument(
        "--min-ms", type=float, default=10.0, help="each timing lasts at least this"
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="timings per measurement (median reported)"
    )
    parser.add_argument(
        "--no-graphs", action="store_true", help="time eager launches, not CUDA graphs"
    )
    parser.add_argument("--only", default="", help="comma-separated sections to run (default all)")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(
            "error: no CUDA device; run on a GPU machine, or --smoke to check the script on a CPU"
        )
        return 2
    sections: dict[str, Callable[[Bench], None]] = {
        "memory": bench_memory,
        "gemm_bf16": lambda b: bench_gemm(b, "bf16"),
        "gemm_fp8": lambda b: bench_gemm(b, "fp8"),
        "attention": bench_attention,
        "launch": bench_launch,
        "model_steps": bench_model_steps,
        "grouped": bench_grouped,
        "sampling": bench_sampling,
    }
    chosen = [s for s in args.only.split(",") if s] or list(sections)
    unknown = sorted(set(chosen) - set(sections))
    if unknown:
        print(f"error: unknown section(s) {unknown}; choose from {sorted(sections)}")
        return 2
    if args.smoke:
        chosen = [s for s in chosen if s != "gemm_fp8"]  # float8 matmul needs a GPU
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as out_file:
        writer = csv.DictWriter(out_file, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        bench = Bench(args, writer, out_file)
        print(f"device: {bench.card}; torch {torch.__version__}; date {bench.date}", flush=True)
        for name in chosen:
            if bench.out_of_time():
                print(
                    f"section {name}: skipped (budget of {args.budget_s:.0f} s spent)", flush=True
                )
                continue
            started = time.monotonic()
            with no_math_attention(bench.cuda):
                sections[name](bench)
            print(f"section {name}: done in {time.monotonic() - started:.1f} s", flush=True)
    print(summary(bench.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
