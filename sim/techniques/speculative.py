"""Speculative decoding: draft k tokens per sequence, verify k + 1 in one target pass.

Changes: per decode step, the target verifies k + 1 tokens per sequence (a prefill-like
chunk: k + 1 tokens of GEMM work, attention over the context for each, k + 1 logits);
drafting costs k passes of the draft (a separate model on the same GPUs, an EAGLE/MTP head
of `head_layers` target layers plus the LM head, or nothing for n-gram lookup); each step
commits 1 + (drafts accepted) tokens, so a request needs fewer steps. Draft i is accepted
with conditional probability `acceptance_by_position[i-1]` (or `acceptance` for all i),
giving (1 - a^(k+1)) / (1 - a) expected tokens a step. `sampling: sampled` draws each
request's step count (seeded), so per-request TPS is a distribution; `expected` uses the
mean. Memory: the draft model's (or head's) weights; KV for prompt + output + k is
reserved when a request is admitted (no preemption). TTFT is untouched by construction.

Nothing here decides whether it pays off: at batch 1 a step is bound by reading weights,
so verifying k + 1 tokens costs about as much as 1 and the gain approaches the expected
tokens over the draft cost; at large batch the k + 1 verified tokens make the step
compute-bound and the gain shrinks or turns into a loss. That falls out of the step cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sim.hardware import load_model
from sim.plan import PlanError, ReplicaPlan, Speculation
from sim.techniques.base import Technique

METHODS = ("draft", "eagle", "mtp", "ngram")


@dataclass
class SpeculativeConfig:
    method: str = "eagle"  # draft | eagle | mtp | ngram
    num_tokens: int = 3  # k draft tokens per step
    acceptance: float = 0.7  # per-token conditional acceptance (all positions)
    acceptance_by_position: list[float] = field(default_factory=list)  # overrides, len k
    draft_model: str = ""  # method=draft: a model profile name
    head_layers: float = 1.0  # eagle/mtp: head cost in target decoder layers
    sampling: str = "sampled"  # sampled | expected


def apply(plan: ReplicaPlan, c: SpeculativeConfig) -> ReplicaPlan:
    if c.method not in METHODS:
        raise PlanError(f"technique.speculative.method={c.method!r}: use one of {METHODS}")
    if c.num_tokens < 1:
        raise PlanError(f"technique.speculative.num_tokens must be >= 1, got {c.num_tokens}")
    if c.sampling not in ("sampled", "expected"):
        raise PlanError(f"technique.speculative.sampling={c.sampling!r}: sampled or expected")
    rates = tuple(c.acceptance_by_position) or (c.acceptance,) * c.num_tokens
    if len(rates) != c.num_tokens:
        raise PlanError(
            f"technique.speculative.acceptance_by_position has {len(rates)} rates for "
            f"num_tokens={c.num_tokens}; give one per draft position"
        )
    if not all(0.0 <= a <= 1.0 for a in rates):
        raise PlanError(f"technique.speculative acceptance rates must be in [0, 1]: {rates}")
    draft = None
    if c.method == "draft":
        if not c.draft_model:
            raise PlanError("technique.speculative.method=draft needs draft_model (a profile)")
        draft = load_model(c.draft_model)
    if c.head_layers <= 0:
        raise PlanError(f"technique.speculative.head_layers must be > 0, got {c.head_layers}")
    spec = Speculation(c.method, c.num_tokens, rates, c.sampling == "sampled", draft, c.head_layers)
    note = (
        f"speculative decoding ({c.method}, k={c.num_tokens}): "
        f"{spec.expected_tokens:.2f} expected tokens per step"
    )
    return dataclasses.replace(plan, speculation=spec, notes=(*plan.notes, note))


CHANGES = (
    "decode steps verify k+1 tokens per sequence (GEMM, attention, logits) plus k draft passes; "
    "steps commit 1 + accepted tokens; memory: draft weights, KV reserved for the whole output"
)

TECHNIQUE = Technique("speculative", SpeculativeConfig, apply, CHANGES)
