"""Structured configs (Hydra schema): YAML values in, typed dataclasses out.

The values live in `experiments/` (config groups hardware, model, cluster, topology, engine,
router, workload, technique); these dataclasses are the schema Hydra checks them against.
A mistyped command-line key is caught before Hydra (`override_error`: the key and the closest
known one); one in a YAML file is Hydra's error naming the key. Never a traceback from the
simulator.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


@dataclass
class ModelConfig:
    name: str = "Llama-3.1-8B"  # a profile in hardware_profiles/models (name or alias)


@dataclass
class PoolConfig:
    """One pool of a disaggregated cluster (cluster.prefill / cluster.decode).

    0 and "" inherit the cluster-level value (cluster.gpu, .tp, ...); `technique` entries
    replace the top-level technique of the same name (null removes it), new ones follow.
    """

    replicas: int = 0  # 0: from cluster.topology (xPyD)
    gpu: str = ""
    tp: int = 0
    pp: int = 0
    ep: int = 0
    dp_attention: int = 0
    nodes: list[int] = field(default_factory=list)  # scale-up domain of each replica (placement)
    technique: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClusterConfig:
    replicas: int = 1  # identical replicas behind the router
    gpu: str = "H100-SXM"  # a profile in hardware_profiles/gpus (name or alias)
    tp: int = 1  # tensor-parallel GPUs of attention and dense layers
    pp: int = 1  # pipeline stages; a replica has tp x dp_attention x pp GPUs
    ep: int = 1  # expert-parallel ranks (MoE; divides the experts and tp x dp_attention)
    dp_attention: int = 1  # attention data-parallel groups of tp GPUs (MoE; needs ep = tp x dp)
    ep_skew: float = 0.0  # busiest EP rank's extra expert load (0.2 = 20 % above the mean)
    # aggregated | xPyD (1P1D, 2P4D: x prefill and y decode replicas, sim/cluster.py) |
    # disaggregated (pool sizes from prefill.replicas and decode.replicas)
    topology: str = "aggregated"
    prefill: PoolConfig = field(default_factory=PoolConfig)
    decode: PoolConfig = field(default_factory=PoolConfig)
    placement: str = "packed"  # packed | separate (pools on their own nodes) | pool .nodes


@dataclass
class EngineConfig:
    name: str = "vllm"
    max_num_batched_tokens: int = 8192  # token budget per step
    max_num_seqs: int = 256  # sequences per step
    block_size: int = 16  # tokens per KV block
    gpu_memory_utilization: float = 0.90  # share of HBM the engine may use (see kv_memory_basis)
    kv_memory_basis: str = "total"  # total (vLLM, SGLang) | free (TensorRT-LLM), see EngineSpec
    enable_chunked_prefill: bool = True
    max_model_len: int = 0  # 0 = the model's max_position_embeddings
    step_overhead_s: float = 0.0  # CPU per step: scheduling, launches not hidden by graphs
    inflight_overhead_s: float = 0.0  # CPU per step per request in flight, see EngineOverhead
    overlap_scheduling: bool = False  # CPU of step n+1 overlaps GPU of step n (max, not sum)
    request_overhead_s: float = 0.0  # arrival to engine queue: API server, tokenization
    runtime_reserve_bytes: float = 1.5e9  # CUDA context, NCCL buffers, graphs
    kv_reservation: str = "incremental"  # incremental (vLLM) | full (TRT-LLM no-evict)
    batch_wait_steps: int = 0  # TRT-LLM batch_wait_timeout_iters (0: off), see EngineSpec
    batch_wait_tokens_ratio: float = 0.0  # TRT-LLM batch_wait_max_tokens_ratio
    mxfp4_moe_layout: str = "checkpoint"  # checkpoint | vllm: MXFP4 expert padding, see EngineSpec
    sampling: str = "greedy"  # greedy | top_p_torch: GPU cost of choosing tokens, see EngineSpec
    num_scheduler_steps: int = 1  # vLLM v0 multi-step: decode steps per scheduling, see EngineSpec


@dataclass
class RouterConfig:
    """Routing policies and what the router sees (sim/router.py documents each policy)."""

    # round_robin | random | least_outstanding | least_tokens | least_kv | power_of_two |
    # session_affinity | kv_aware (disaggregated: picks the prefill replica)
    policy: str = "round_robin"
    decode_policy: str = "least_kv"  # disaggregated: picks the decode replica
    decode_at: str = "handoff"  # disaggregated: pick the decode replica at handoff | arrival
    load_weight: float = 1.0  # kv_aware: cost = prompt tokens to compute + this x queued work
    decode_weight: float = 0.1  # kv_aware: queued work = prompt tokens left + this x decode
    affinity_slack: int = 8  # session_affinity: leave a replica this much busier than the least
    publish_period_s: float = 0.0  # 0: live counters; > 0: replicas publish snapshots this often
    publish_delay_s: float = 0.0  # a snapshot reaches the router this late


@dataclass
class LinkConfig:
    """KV transfer links of a disaggregated cluster (sim/link.py, sim/cluster.py)."""

    fairness: str = "fair"  # fair (max-min share) | fifo
    overlap: bool = False  # stream KV layer by layer during the prefill's last chunk
    rdma_latency_s: float = 1e-4  # per transfer across nodes (NIC, RDMA)
    nvlink_latency_s: float = 2e-5  # per transfer inside a scale-up domain
    rdma_gb_s: float = 0.0  # per GPU; 0: the GPU profile's NIC line rate
    nvlink_gb_s: float = 0.0  # per GPU, one direction; 0: the GPU profile's scale-up bandwidth


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
    link: LinkConfig = field(default_factory=LinkConfig)  # disaggregated KV transfers


CONFIG_GROUPS_DIR = Path(__file__).resolve().parent.parent / "experiments"  # Hydra's config dir
ENGINE_PRESETS_DIR = CONFIG_GROUPS_DIR / "engine"


def engine_preset(name: str, presets_dir: Path | None = None) -> EngineConfig:
    """An engine preset (experiments/engine/NAME.yaml) as an EngineConfig.

    `EngineConfig()` itself is a bare vLLM-like engine with no CPU costs (handy for tests
    and what-ifs); the presets add each engine's documented limits and calibrated costs,
    and are what the command line uses (`engine=vllm` by default).
    """
    folder = presets_dir or ENGINE_PRESETS_DIR
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ValueError(f"unknown engine preset {name!r}: use one of {known}")
    merged = OmegaConf.merge(OmegaConf.structured(EngineConfig), OmegaConf.load(path))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, EngineConfig)
    return cfg


def register_configs() -> None:
    ConfigStore.instance().store(name="servesim_schema", node=Config)


def override_error(arg: str) -> str:
    """'' if a command-line override names a key of the schema (or a config group); else an
    error naming the key and the closest known one. Appends (+), deletions (~), Hydra's own
    keys and the free-form `technique` section are left to Hydra and the techniques."""
    key, sep, _ = arg.partition("=")
    if not sep or key.startswith(("-", "+", "~", "hydra")):
        return ""
    parts = key.split(".")
    groups = {d.name for d in CONFIG_GROUPS_DIR.iterdir() if d.is_dir()}
    if len(parts) == 1 and parts[0] in groups:
        return ""
    cls: Any = Config
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            where = ".".join(parts[:depth])
            return f"{where} is a value, not a section: {key!r} has no key {part!r}"
        hints = typing.get_type_hints(cls)
        if part not in hints:
            section = ".".join(parts[:depth]) or "the top level"
            close = difflib.get_close_matches(part, list(hints), n=1)
            hint = f"; did you mean {'.'.join([*parts[:depth], close[0]])!r}?" if close else ""
            return f"unknown config key {key!r}{hint} (keys of {section}: {', '.join(hints)})"
        cls = hints[part]
        if typing.get_origin(cls) is dict:  # free-form (technique): checked where it is used
            return ""
    return ""
