"""GPU and model profiles: YAML files in `hardware_profiles/` in, frozen specs out.

A GPU profile (`hardware_profiles/gpus/*.yaml`) is written in datasheet units (TFLOP/s, GB,
TB/s, Gbit/s, µs) and converted here to SI (FLOP/s, bytes, bytes/s, s). A model profile
(`hardware_profiles/models/*.yaml`) is a HuggingFace `config.json` in YAML; the loader
normalises the different key spellings (num_local_experts / num_experts / n_routed_experts, ...)
into one `ModelSpec`, which derives parameter counts, KV-cache bytes and attention FLOPs.
Lookups are case-insensitive on `name` and `aliases`; every problem raises `ProfileError`
naming the file, the field and the fix. Directories are read afresh on every call (no caches).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sim.dtypes import FORMATS, get_format

PROFILE_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles"

RATE_KEYS = ("bf16", "fp16", "fp8", "fp4", "int8")
GPU_KEYS = frozenset(
    {
        "name",
        "aliases",
        "peak_tflops",
        "block_scaled_formats",
        "hbm_gib",
        "hbm_tb_s",
        "scaleup_unidir_gb_s",
        "scaleup_domain_gpus",
        "nic_gbit_s",
        "tdp_w",
        "efficiency",
        "source",
    }
)
EFFICIENCY_KEYS = frozenset(
    {
        "matmul_frac",
        "hbm_frac",
        "allreduce_latency_us",
        "allreduce_bw_frac",
        "gemm_pad_tokens",
        "layer_floor_us",
    }
)
# Architecture facts HF implies by `model_type` rather than stating as config keys. A model
# YAML may set any of these keys explicitly to override.
MODEL_TYPE_DEFAULTS: Mapping[str, Mapping[str, bool]] = {
    "qwen2": {"attention_bias": True, "o_proj_bias": False},  # q/k/v biased, o_proj not
    "qwen3": {"qk_norm": True},
    "qwen3_moe": {"qk_norm": True},
    "gpt_oss": {"attention_sinks": True, "expert_bias": True, "router_bias": True},
    "deepseek_v3": {"router_bias": True},  # e_score_correction_bias
    "gemma3_text": {"qk_norm": True},
    # GLM-4.5: q/k/v biased, o_proj not; e_score_correction_bias (qk_norm from use_qk_norm)
    "glm4_moe": {"o_proj_bias": False, "router_bias": True},
}
LAYER_TYPES = ("full_attention", "sliding_attention")
PROFILES_README = "hardware_profiles/README.md"


class ProfileError(ValueError):
    """A GPU or model profile is missing, unknown or malformed (names file and field)."""


@dataclass(frozen=True)
class Efficiency:
    """Achievable fractions of datasheet peaks (calibrated; see hardware_profiles/README.md).

    matmul_frac: large-GEMM achievable FLOP/s over dense peak, per rate key (bf16, fp8, ...).
    hbm_frac: achievable HBM bandwidth over peak (STREAM-like copy/triad).
    allreduce_latency_s: fixed latency of one small all-reduce inside a scale-up domain.
    allreduce_bw_frac: achievable all-reduce bus bandwidth over the unidirectional link peak.
    gemm_pad_tokens: the GEMM-shape cost: a GEMM over M tokens computes as if over
        M + gemm_pad_tokens (tile padding and fixed kernel cost), so small-M GEMMs (decode,
        MoE experts that see few tokens) reach a lower share of the peak than large ones.
    layer_floor_s: GPU seconds each layer costs a step whatever the batch: the minimum
        durations of its dozen kernels (launch inside a CUDA graph, wave ramp-up and tail),
        which no roofline term sees. Unlike the engine's CPU overhead, overlap scheduling
        cannot hide it.
    """

    matmul_frac: dict[str, float]
    hbm_frac: float
    allreduce_latency_s: float
    allreduce_bw_frac: float
    gemm_pad_tokens: float = 0.0
    layer_floor_s: float = 0.0


@dataclass(frozen=True)
class GPUSpec:
    name: str
    peak_flops_per_s: dict[str, float]  # dense peaks by rate key: bf16, fp16, fp8, fp4, int8
    block_scaled_formats: tuple[str, ...]  # formats run natively (mxfp8, mxfp4, nvfp4)
    hbm_bytes: float
    hbm_bw_bytes_per_s: float
    scaleup_bw_bytes_per_s: float  # unidirectional, per GPU (NVLink / xGMI)
    scaleup_domain_gpus: int
    nic_bw_bytes_per_s: float  # scale-out, per GPU
    tdp_w: float
    efficiency: Efficiency
    source: str = ""
    aliases: tuple[str, ...] = field(default=())

    def achievable_flops_per_s(self, rate_key: str) -> float:
        """Large-GEMM FLOP/s at a rate key: dense peak times the measured matmul fraction."""
        if rate_key not in self.peak_flops_per_s:
            known = ", ".join(self.peak_flops_per_s)
            raise KeyError(f"{self.name} has no {rate_key!r} tensor-core rate (has: {known})")
        return self.peak_flops_per_s[rate_key] * self.efficiency.matmul_frac[rate_key]

    @property
    def achievable_hbm_bw_bytes_per_s(self) -> float:
        return self.hbm_bw_bytes_per_s * self.efficiency.hbm_frac

    def supports_format(self, format_name: str) -> bool:
        """True when the GPU computes natively in this number format (see sim.dtypes)."""
        fmt = get_format(format_name)
        if not fmt.compute:
            return False
        if fmt.block_scaled and fmt.name not in self.block_scaled_formats:
            return False
        return fmt.rate_key in self.peak_flops_per_s

    def allreduce_s(self, message_bytes: float, num_gpus: int) -> float:
        """One all-reduce of `message_bytes` over `num_gpus` GPUs of one scale-up domain.

        t = latency + bytes * 2(n-1)/n / (allreduce_bw_frac * unidirectional link bandwidth),
        the ring/NVLS bus-bandwidth model fitted to NCCL measurements (README). 0 for n <= 1.
        """
        if num_gpus <= 1:
            return 0.0
        bus_bytes = message_bytes * 2.0 * (num_gpus - 1) / num_gpus
        bus_bw = self.efficiency.allreduce_bw_frac * self.scaleup_bw_bytes_per_s
        return self.efficiency.allreduce_latency_s + bus_bytes / bus_bw


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by component, summed over all layers."""

    embedding: int
    lm_head: int  # 0 when tied to the embedding (the LM-head GEMM still runs)
    attention: int
    dense_mlp: int
    routed_experts: int  # all experts of all MoE layers
    shared_experts: int
    router: int
    norms: int

    @property
    def total(self) -> int:
        return (
            self.embedding
            + self.lm_head
            + self.attention
            + self.dense_mlp
            + self.routed_experts
            + self.shared_experts
            + self.router
            + self.norms
        )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    num_experts: int  # 0 for dense models
    experts_per_token: int
    moe_intermediate_size: int
    num_shared_experts: int
    num_dense_layers: int  # layers with a dense MLP (num_layers for dense models)
    kv_lora_rank: int  # MLA only, else 0
    q_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    sliding_window: int  # 0 = none
    num_sliding_layers: int
    checkpoint_dtype: str  # e.g. bf16
    expert_dtype: str  # checkpoint dtype of routed experts (gpt-oss: mxfp4)
    source: str = ""
    aliases: tuple[str, ...] = field(default=())
    # Small architecture details that only change parameter counts (added for exact counts;
    # `attention_bias` means q/k/v biases, `o_proj_bias` the output projection's bias).
    o_proj_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    attention_sinks: bool = False  # one learned sink logit per head and layer (gpt-oss)
    expert_bias: bool = False  # biases on expert gate/up/down projections (gpt-oss)
    router_bias: bool = False  # router bias (gpt-oss) or score-correction bias (DeepSeek-V3)

    # ---- structure ---------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def num_full_attention_layers(self) -> int:
        return self.num_layers - self.num_sliding_layers

    # ---- parameters --------------------------------------------------------------------
    @property
    def params(self) -> ParamCounts:
        """Parameter counts by component (MTP / next-token-prediction modules excluded)."""
        h = self.hidden_size
        embedding = self.vocab_size * h
        moe_layers = self.num_moe_layers
        return ParamCounts(
            embedding=embedding,
            lm_head=0 if self.tie_word_embeddings else embedding,
            attention=self.num_layers * self._attention_params_per_layer(),
            dense_mlp=self.num_dense_layers * 3 * h * self.intermediate_size,
            routed_experts=moe_layers * self.num_experts * self.params_per_expert,
            shared_experts=moe_layers
            * self.num_shared_experts
            * 3
            * h
            * self.moe_intermediate_size,
            router=moe_layers
            * (h * self.num_experts + (self.num_experts if self.router_bias else 0)),
            norms=self.num_layers * 2 * h + h,
        )

    def _attention_params_per_layer(self) -> int:
        h, nh = self.hidden_size, self.num_heads
        if self.is_mla:
            qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * nh * qk_dim
            else:
                q = h * nh * qk_dim
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
            kv_b = self.kv_lora_rank * nh * (self.qk_nope_head_dim + self.v_head_dim)
            o = nh * self.v_head_dim * h
            q_bias_dim = nh * qk_dim
            kv_bias_dim = self.kv_lora_rank + self.qk_rope_head_dim
            weights = q + kv_a + kv_b + o
        else:
            q_dim, kv_dim = nh * self.head_dim, self.num_kv_heads * self.head_dim
            weights = h * q_dim + 2 * h * kv_dim + q_dim * h
            q_bias_dim, kv_bias_dim = q_dim, 2 * kv_dim
        biases = (q_bias_dim + kv_bias_dim if self.attention_bias else 0) + (
            h if self.o_proj_bias else 0
        )
        qk_norm = 2 * self.head_dim if self.qk_norm else 0
        sinks = nh if self.attention_sinks else 0
        return weights + biases + qk_norm + sinks

    @property
    def params_per_expert(self) -> int:
        """Parameters of one routed expert in one layer (gate, up, down; biases if any)."""
        if not self.is_moe:
            return 0
        h, i = self.hidden_size, self.moe_intermediate_size
        return 3 * h * i + (2 * i + h if self.expert_bias else 0)

    @property
    def total_params(self) -> int:
        return self.params.total

    @property
    def active_params(self) -> int:
        """Parameters used per token: total minus the routed experts a token does not visit."""
        counts = self.params
        if not self.is_moe:
            return counts.total
        active_routed = self.num_moe_layers * self.experts_per_token * self.params_per_expert
        return counts.total - counts.routed_experts + active_routed

    # ---- KV cache ----------------------------------------------------------------------
    def kv_bytes_per_token(self, bytes_per_element: float) -> float:
        """KV-cache bytes per cached token that grow with context (full-attention layers).

        GQA: 2 * full-attention layers * kv_heads * head_dim * bytes. MLA: layers *
        (kv_lora_rank + qk_rope_head_dim) * bytes (the latent, shared by all heads). Sliding-
        window layers are excluded: their cost is capped, see `kv_bytes_per_seq_window`.
        """
        if self.is_mla:
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * bytes_per_element
        return (
            self.num_full_attention_layers * self._kv_elements_per_layer_token() * bytes_per_element
        )

    def kv_bytes_per_token_sliding(self, bytes_per_element: float) -> float:
        """KV bytes per token of the sliding-window layers (paid for at most `sliding_window`
        tokens of each sequence)."""
        return self.num_sliding_layers * self._kv_elements_per_layer_token() * bytes_per_element

    def kv_bytes_per_seq_window(self, bytes_per_element: float) -> float:
        """Sliding layers' KV bytes of one sequence once it is longer than the window."""
        return self.kv_bytes_per_token_sliding(bytes_per_element) * self.sliding_window

    def kv_bytes_per_seq(self, context_tokens: int, bytes_per_element: float) -> float:
        """KV bytes of one sequence holding `context_tokens` tokens, all layer types."""
        sliding_tokens = min(context_tokens, self.sliding_window)
        return self.kv_bytes_per_token(bytes_per_element) * context_tokens + (
            self.kv_bytes_per_token_sliding(bytes_per_element) * sliding_tokens
        )

    def _kv_elements_per_layer_token(self) -> int:
        return 2 * self.num_kv_heads * self.head_dim

    # ---- attention FLOPs ---------------------------------------------------------------
    @property
    def attention_flops_per_pair_per_layer(self) -> int:
        """FLOPs for one query token attending one key token in one layer (QK^T and PV).

        GQA: 4 * heads * head_dim. MLA, decode with absorbed weights (attention runs in the
        latent space): 2 * heads * (kv_lora_rank + qk_rope_head_dim) + 2 * heads * kv_lora_rank.
        """
        if self.is_mla:
            nh = self.num_heads
            return 2 * nh * (self.kv_lora_rank + self.qk_rope_head_dim) + 2 * nh * self.kv_lora_rank
        return 4 * self.num_heads * self.head_dim

    @property
    def prefill_attention_flops_per_pair_per_layer(self) -> int:
        """As `attention_flops_per_pair_per_layer`, for prefill. MLA prefill usually runs
        unabsorbed (K and V expanded per head): 2 * heads * (qk_nope + qk_rope) + 2 * heads *
        v_head_dim. Same as decode for GQA."""
        if self.is_mla:
            nh = self.num_heads
            qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
            return 2 * nh * qk_dim + 2 * nh * self.v_head_dim
        return self.attention_flops_per_pair_per_layer

    def attended_layer_tokens(self, context_tokens: int) -> int:
        """Key tokens one query token attends, summed over layers, with `context_tokens` in
        context: full layers see all of it, sliding layers at most `sliding_window`."""
        sliding_tokens = min(context_tokens, self.sliding_window)
        return (
            self.num_full_attention_layers * context_tokens
            + self.num_sliding_layers * sliding_tokens
        )


# ---- YAML field access with errors that name file, field and fix ----------------------------


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class _Doc:
    """One YAML mapping plus where it came from, for typed reads with good errors."""

    path: Path
    data: Mapping[str, Any]
    prefix: str = ""

    def error(self, key: str, problem: str, fix: str) -> ProfileError:
        return ProfileError(f"{self.path}: field '{self.prefix}{key}': {problem}. Fix: {fix}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _required(self, key: str, what: str) -> Any:
        if not self.has(key):
            raise self.error(key, "missing (required)", f"add `{key}: <{what}>`")
        return self.data[key]

    def number(self, key: str, default: float | None = None, positive: bool = True) -> float:
        """A number > 0, or >= 0 with positive=False."""
        value = self.data.get(key) if default is not None else self._required(key, "number")
        if value is None:
            assert default is not None
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(
                key, f"expected a number, got {_type_name(value)} {value!r}", "write a plain number"
            )
        if positive and not value > 0:
            raise self.error(key, f"must be > 0, got {value!r}", "give a positive value")
        if not value >= 0:
            raise self.error(key, f"must be >= 0, got {value!r}", "give 0 or a positive value")
        return float(value)

    def integer(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.data.get(key) if default is not None else self._required(key, "integer")
        if value is None:
            assert default is not None
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(
                key,
                f"expected an integer, got {_type_name(value)} {value!r}",
                "write a whole number without quotes",
            )
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}", "correct the value")
        return value

    def boolean(self, key: str, default: bool | None = None) -> bool:
        value = self.data.get(key) if default is not None else self._required(key, "true|false")
        if value is None:
            assert default is not None
            return default
        if not isinstance(value, bool):
            raise self.error(
                key,
                f"expected true or false, got {_type_name(value)} {value!r}",
                "write true/false",
            )
        return value

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key) if default is not None else self._required(key, "text")
        if value is None:
            assert default is not None
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.error(
                key, f"expected non-empty text, got {_type_name(value)} {value!r}", "quote the text"
            )
        return value.strip()

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(
                key, f"expected a list of text, got {value!r}", f"write `{key}: [a, b]`"
            )
        return tuple(value)

    def mapping(self, key: str) -> _Doc:
        value = self._required(key, "mapping")
        if not isinstance(value, dict):
            raise self.error(
                key,
                f"expected a mapping, got {_type_name(value)} {value!r}",
                f"indent keys under `{key}:`",
            )
        return _Doc(self.path, value, f"{self.prefix}{key}.")

    def reject_unknown(self, allowed: frozenset[str], fix: str) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(str(key), "unknown key (typo?)", fix)


def _read_yaml(path: Path) -> _Doc:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a YAML mapping of fields, got {_type_name(data)}")
    return _Doc(path, data)


def _index(kind: str, profile_dir: Path | str | None) -> dict[str, _Doc]:
    """Every profile of one kind ('gpus' or 'models'), keyed by lowercased name and alias."""
    folder = Path(profile_dir if profile_dir is not None else PROFILE_DIR) / kind
    if not folder.is_dir():
        raise ProfileError(f"{folder}: profile folder not found (expected YAML files in it)")
    index: dict[str, _Doc] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        doc = _read_yaml(path)
        keys = {k.lower() for k in (doc.string("name"), *doc.strings("aliases"))}
        for key in sorted(keys):
            if key in index:
                other = index[key].path
                raise ProfileError(
                    f"{path}: field 'name/aliases': {key!r} is also claimed by {other}. "
                    "Fix: remove or rename it in one of the two files"
                )
            index[key] = doc
    return index


def _find(kind: str, name: str, profile_dir: Path | str | None) -> _Doc:
    index = _index(kind, profile_dir)
    doc = index.get(name.strip().lower())
    if doc is None:
        folder = Path(profile_dir if profile_dir is not None else PROFILE_DIR) / kind
        known = ", ".join(_names(index)) or "(none)"
        raise ProfileError(
            f"unknown {kind[:-1]} {name!r}: known {kind} are {known} (names and aliases are "
            f"case-insensitive). To add one, drop a YAML file into {folder} or pass profile_dir= "
            f"(schema in {PROFILES_README})"
        )
    return doc


def _names(index: Mapping[str, _Doc]) -> list[str]:
    return sorted({doc.string("name") for doc in index.values()}, key=str.lower)


# ---- GPUs --------------------------------------------------------------------------------


def _gpu_from_doc(doc: _Doc) -> GPUSpec:
    doc.reject_unknown(GPU_KEYS, f"allowed keys are {', '.join(sorted(GPU_KEYS))}")
    peaks = doc.mapping("peak_tflops")
    peaks.reject_unknown(frozenset(RATE_KEYS), f"rate keys are {', '.join(RATE_KEYS)}")
    peak_flops_per_s = {k: peaks.number(k) * 1e12 for k in RATE_KEYS if peaks.has(k)}
    if not peak_flops_per_s:
        raise doc.error("peak_tflops", "no rates given", "add at least `bf16: <dense TFLOP/s>`")
    block_scaled = doc.strings("block_scaled_formats")
    for name in block_scaled:
        fmt = FORMATS.get(name)
        if fmt is None or not fmt.block_scaled or fmt.rate_key not in peak_flops_per_s:
            raise doc.error(
                "block_scaled_formats",
                f"{name!r} is not a block-scaled format whose rate this GPU lists",
                "use names from sim/dtypes.py (mxfp8, mxfp4, nvfp4) with their rate in peak_tflops",
            )
    return GPUSpec(
        name=doc.string("name"),
        aliases=doc.strings("aliases"),
        peak_flops_per_s=peak_flops_per_s,
        block_scaled_formats=block_scaled,
        hbm_bytes=doc.number("hbm_gib") * 2**30,
        hbm_bw_bytes_per_s=doc.number("hbm_tb_s") * 1e12,
        scaleup_bw_bytes_per_s=doc.number("scaleup_unidir_gb_s") * 1e9,
        scaleup_domain_gpus=doc.integer("scaleup_domain_gpus"),
        nic_bw_bytes_per_s=doc.number("nic_gbit_s") * 1e9 / 8,
        tdp_w=doc.number("tdp_w"),
        efficiency=_efficiency_from_doc(doc.mapping("efficiency"), tuple(peak_flops_per_s)),
        source=doc.string("source"),
    )


def _efficiency_from_doc(doc: _Doc, rate_keys: tuple[str, ...]) -> Efficiency:
    doc.reject_unknown(EFFICIENCY_KEYS, f"allowed keys are {', '.join(sorted(EFFICIENCY_KEYS))}")
    fracs = doc.mapping("matmul_frac")
    fix = f"give one fraction per rate in peak_tflops: {', '.join(rate_keys)}"
    fracs.reject_unknown(frozenset(rate_keys), fix)
    matmul_frac = {}
    for key in rate_keys:
        matmul_frac[key] = fracs.number(key)
        if matmul_frac[key] > 1:
            raise fracs.error(key, f"a fraction of peak must be <= 1, got {matmul_frac[key]}", fix)
    hbm_frac = doc.number("hbm_frac")
    if hbm_frac > 1:
        raise doc.error("hbm_frac", f"a fraction of peak must be <= 1, got {hbm_frac}", "use 0..1")
    bw_frac = doc.number("allreduce_bw_frac")
    if bw_frac > 2:
        raise doc.error(
            "allreduce_bw_frac",
            f"{bw_frac} times the link peak is implausible",
            "give a fraction (NVLS may reach slightly above 1)",
        )
    return Efficiency(
        matmul_frac=matmul_frac,
        hbm_frac=hbm_frac,
        allreduce_latency_s=doc.number("allreduce_latency_us") * 1e-6,
        allreduce_bw_frac=bw_frac,
        gemm_pad_tokens=doc.number("gemm_pad_tokens", default=0.0, positive=False),
        layer_floor_s=doc.number("layer_floor_us", default=0.0, positive=False) * 1e-6,
    )


def load_gpu_file(path: Path | str) -> GPUSpec:
    """Load and validate one GPU profile YAML file."""
    return _gpu_from_doc(_read_yaml(Path(path)))


def load_gpu(name: str, profile_dir: Path | str | None = None) -> GPUSpec:
    """GPU by name or alias (case-insensitive) from `profile_dir/gpus` (default PROFILE_DIR)."""
    return _gpu_from_doc(_find("gpus", name, profile_dir))


def list_gpus(profile_dir: Path | str | None = None) -> list[str]:
    """Canonical names of the GPU profiles in `profile_dir/gpus`."""
    return _names(_index("gpus", profile_dir))


# ---- models ------------------------------------------------------------------------------


def _one_of(doc: _Doc, keys: tuple[str, ...], default: int | None, minimum: int = 1) -> int:
    """The value of whichever of several synonymous HF keys is present (they must agree);
    `default` None makes one of them required."""
    values = {key: doc.integer(key, minimum=minimum) for key in keys if doc.has(key)}
    if len(set(values.values())) > 1:
        raise doc.error("/".join(values), f"synonymous keys disagree: {values}", "keep one")
    if values:
        return next(iter(values.values()))
    if default is None:
        raise doc.error(" or ".join(keys), "missing (required)", f"add `{keys[0]}: <integer>`")
    return default


def _dtype(doc: _Doc, key: str, value: str) -> str:
    try:
        return get_format(value).name
    except ValueError as exc:
        raise doc.error(key, str(exc), "use bfloat16, float16 or a sim/dtypes.py name") from exc


def _dtypes(doc: _Doc) -> tuple[str, str]:
    """(checkpoint_dtype, expert_dtype) from torch_dtype (or dtype) and quantization_config."""
    dtype_key = "torch_dtype" if doc.has("torch_dtype") or not doc.has("dtype") else "dtype"
    checkpoint = _dtype(doc, dtype_key, doc.string(dtype_key))
    if not doc.has("quantization_config"):
        return checkpoint, checkpoint
    quant = doc.mapping("quantization_config")
    method = quant.string("quant_method").lower()
    if method in ("awq", "gptq"):
        method = f"int{quant.integer('bits', default=4)}"
    quantized = _dtype(quant, "quant_method", method)
    skipped = quant.data.get("modules_to_not_convert") or []
    experts_only = any("attn" in str(module) for module in skipped)
    return (checkpoint if experts_only else quantized), quantized


def _layer_counts(doc: _Doc, num_layers: int) -> tuple[int, int]:
    """(sliding_window, num_sliding_layers) from sliding_window, use_sliding_window, layer_types."""
    window = doc.integer("sliding_window", default=0, minimum=0)
    if not doc.boolean("use_sliding_window", default=True):
        window = 0
    if not doc.has("layer_types"):
        return window, num_layers if window else 0  # HF (Mistral): the window applies to all
    types = doc.data["layer_types"]
    if not isinstance(types, list) or len(types) != num_layers:
        raise doc.error(
            "layer_types",
            f"expected a list of {num_layers} entries (num_hidden_layers), got {types!r}",
            f"list one of {LAYER_TYPES} per layer",
        )
    unknown = sorted({str(t) for t in types} - set(LAYER_TYPES))
    if unknown:
        raise doc.error("layer_types", f"unknown layer types {unknown}", f"use {LAYER_TYPES}")
    num_sliding = types.count("sliding_attention")
    if num_sliding and not window:
        raise doc.error("sliding_window", "layer_types has sliding layers but no window", "set it")
    return (window if num_sliding else 0), num_sliding


def _moe_layout(doc: _Doc, num_layers: int) -> tuple[int, int, int]:
    """(num_experts, experts_per_token, num_dense_layers); (0, 0, num_layers) when dense."""
    num_experts = _one_of(doc, ("num_local_experts", "num_experts", "n_routed_experts"), 0, 0)
    if not num_experts:
        return 0, 0, num_layers
    experts_per_token = _one_of(doc, ("num_experts_per_tok", "experts_per_token"), None)
    if experts_per_token > num_experts:
        raise doc.error("num_experts_per_tok", "exceeds the number of experts", "correct it")
    if doc.integer("decoder_sparse_step", default=1) != 1:
        raise doc.error("decoder_sparse_step", "only 1 is supported", "list mlp_only_layers")
    mlp_only = doc.data.get("mlp_only_layers") or []
    if not isinstance(mlp_only, list):
        raise doc.error("mlp_only_layers", f"expected a list, got {mlp_only!r}", "list indices")
    num_dense = doc.integer("first_k_dense_replace", default=0, minimum=0) + len(mlp_only)
    if num_dense > num_layers:
        raise doc.error("first_k_dense_replace", "exceeds num_hidden_layers", "correct it")
    return num_experts, experts_per_token, num_dense


def _attention_shape(doc: _Doc, hidden: int, num_heads: int) -> tuple[int, int]:
    """(num_kv_heads, head_dim); MLA's head_dim defaults to qk_nope + qk_rope."""
    if doc.integer("kv_lora_rank", default=0, minimum=0):
        dims = [doc.integer(k) for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")]
        default_head_dim = dims[0] + dims[1]
    else:
        default_head_dim = hidden // num_heads
    num_kv_heads = doc.integer("num_key_value_heads", default=num_heads)
    if num_heads % num_kv_heads:
        raise doc.error(
            "num_key_value_heads",
            f"{num_kv_heads} does not divide num_attention_heads {num_heads}",
            "check both values against the model's config.json",
        )
    return num_kv_heads, doc.integer("head_dim", default=default_head_dim)


def _model_from_doc(doc: _Doc) -> ModelSpec:
    hidden = doc.integer("hidden_size")
    num_layers = doc.integer("num_hidden_layers")
    num_heads = doc.integer("num_attention_heads")
    intermediate = doc.integer("intermediate_size")
    num_kv_heads, head_dim = _attention_shape(doc, hidden, num_heads)
    num_experts, experts_per_token, num_dense_layers = _moe_layout(doc, num_layers)
    window, num_sliding = _layer_counts(doc, num_layers)
    checkpoint_dtype, expert_dtype = _dtypes(doc)
    implied = MODEL_TYPE_DEFAULTS.get(str(doc.data.get("model_type", "")).lower(), {})

    def flag(key: str, fallback: bool = False) -> bool:
        return doc.boolean(key, default=implied.get(key, fallback))

    attention_bias = flag("attention_bias")
    return ModelSpec(
        name=doc.string("name"),
        aliases=doc.strings("aliases"),
        source=doc.string("source", default=""),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=doc.integer("vocab_size"),
        max_position_embeddings=doc.integer("max_position_embeddings"),
        tie_word_embeddings=doc.boolean("tie_word_embeddings"),
        attention_bias=attention_bias,
        num_experts=num_experts,
        experts_per_token=experts_per_token,
        moe_intermediate_size=(
            doc.integer("moe_intermediate_size", default=intermediate) if num_experts else 0
        ),
        num_shared_experts=doc.integer("n_shared_experts", default=0, minimum=0),
        num_dense_layers=num_dense_layers,
        kv_lora_rank=doc.integer("kv_lora_rank", default=0, minimum=0),
        q_lora_rank=doc.integer("q_lora_rank", default=0, minimum=0),
        qk_nope_head_dim=doc.integer("qk_nope_head_dim", default=0, minimum=0),
        qk_rope_head_dim=doc.integer("qk_rope_head_dim", default=0, minimum=0),
        v_head_dim=doc.integer("v_head_dim", default=0, minimum=0),
        sliding_window=window,
        num_sliding_layers=num_sliding,
        checkpoint_dtype=checkpoint_dtype,
        expert_dtype=expert_dtype,
        o_proj_bias=flag("o_proj_bias", fallback=attention_bias),
        qk_norm=flag("qk_norm", fallback=doc.boolean("use_qk_norm", default=False)),
        attention_sinks=flag("attention_sinks"),
        expert_bias=flag("expert_bias"),
        router_bias=flag("router_bias"),
    )


def load_model_file(path: Path | str) -> ModelSpec:
    """Load and validate one model profile YAML file (a config.json in YAML)."""
    return _model_from_doc(_read_yaml(Path(path)))


def load_model(name: str, profile_dir: Path | str | None = None) -> ModelSpec:
    """Model by name or alias (case-insensitive) from `profile_dir/models` (default PROFILE_DIR)."""
    return _model_from_doc(_find("models", name, profile_dir))


def list_models(profile_dir: Path | str | None = None) -> list[str]:
    """Canonical names of the model profiles in `profile_dir/models`."""
    return _names(_index("models", profile_dir))
