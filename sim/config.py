"""Structured configs (Hydra schema): YAML values in, typed dataclasses out.

The values live in `experiments/` (config groups hardware, model, cluster, engine, router,
workload, technique); these dataclasses are the schema Hydra checks them against, so a
typo in a key is Hydra's error naming the key, never a traceback from the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class ModelConfig:
    name: str = "Llama-3.1-8B"  # a profile in hardware_profiles/models (name or alias)


@dataclass
class ClusterConfig:
    replicas: int = 1  # identical replicas behind the router
    gpu: str = "H100-SXM"  # a profile in hardware_profiles/gpus (name or alias)
    tp: int = 1  # tensor-parallel GPUs of attention and dense layers
    pp: int = 1  # pipeline stages; a replica has tp x dp_attention x pp GPUs
    ep: int = 1  # expert-parallel ranks (MoE; divides the experts and tp x dp_attention)
    dp_attention: int = 1  # attention data-parallel groups of tp GPUs (MoE; needs ep = tp x dp)
    ep_skew: float = 0.0  # busiest EP rank's extra expert load (0.2 = 20 % above the mean)


@dataclass
class EngineConfig:
    name: str = "vllm"
    max_num_batched_tokens: int = 8192  # token budget per step
    max_num_seqs: int = 256  # sequences per step
    block_size: int = 16  # tokens per KV block
    gpu_memory_utilization: float = 0.90  # share of HBM the engine may use
    enable_chunked_prefill: bool = True
    max_model_len: int = 0  # 0 = the model's max_position_embeddings
    step_overhead_s: float = 0.0  # CPU per step: scheduling, launches not hidden by graphs
    seq_overhead_s: float = 0.0  # CPU per sequence per step: bookkeeping, sampling, output
    overlap_scheduling: bool = False  # CPU of step n+1 overlaps GPU of step n (max, not sum)
    request_overhead_s: float = 0.0  # arrival to engine queue: API server, tokenization
    runtime_reserve_bytes: float = 1.5e9  # CUDA context, NCCL buffers, graphs
    kv_reservation: str = "incremental"  # incremental (vLLM) | full (TRT-LLM no-evict)


@dataclass
class RouterConfig:
    policy: str = "round_robin"  # round_robin | random | least_outstanding


@dataclass
class LengthConfig:
    kind: str = "fixed"  # fixed | uniform | empirical
    value: int = 512  # fixed
    low: int = 1  # uniform, inclusive
    high: int = 1


@dataclass
class SessionsConfig:
    """Multi-turn chat sessions with shared system prompts (kind=sessions; sim.trace.sessions)."""

    num_sessions: int = 200
    turns: LengthConfig = field(default_factory=lambda: LengthConfig("uniform", low=1, high=8))
    system_prompt_tokens: int = 2000
    num_system_prompts: int = 4
    user_tokens: LengthConfig = field(
        default_factory=lambda: LengthConfig("uniform", low=50, high=300)
    )
    think_time_s: float = 20.0  # mean gap between a session's turns
    session_rate_per_s: float = 1.0  # new sessions per second (Poisson)
    hash_block_tokens: int = 16
    stable_prefix_first: bool = True  # False: a unique token first, so nothing is shareable


@dataclass
class WorkloadConfig:
    kind: str = "trace"  # trace | synthetic | sessions
    trace: str = "azure_conv"  # a bundled trace name or a file path (kind=trace)
    start_s: float = 0.0  # time window of the trace to replay
    end_s: float | None = None
    max_requests: int | None = None
    rate_scale: float = 1.0  # 2 = replay twice as fast
    concurrency: int = 0  # > 0: closed loop with this many requests in flight
    num_requests: int = 1000  # kind=synthetic
    arrival: str = "poisson"  # poisson | gamma | offline
    rate_per_s: float = 4.0
    gamma_cv: float = 1.0
    input: LengthConfig = field(default_factory=LengthConfig)
    output: LengthConfig = field(default_factory=lambda: LengthConfig(value=128))
    lengths_file: str = ""  # empirical (input, output) pairs: bundled name or path
    sessions: SessionsConfig = field(default_factory=SessionsConfig)  # kind=sessions


@dataclass
class SLOConfig:
    ttft_s: float = 2.0
    tpot_s: float = 0.1


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    slo: SLOConfig = field(default_factory=SLOConfig)
    technique: dict[str, Any] = field(default_factory=dict)  # plugins, in listed order
    seed: int = 0
    fast_forward: bool = True  # plan pure-decode stretches in one event
    progress: bool = True  # progress bar on a terminal for long runs
    write_plots: bool = True


def register_configs() -> None:
    ConfigStore.instance().store(name="servesim_schema", node=Config)
