"""Technique plugins: a ReplicaPlan and each plugin's parameters in, an edited plan out.

A technique is a pure transform of the shared cost and memory model (`ReplicaPlan`): it
may change number formats, parallel layout or per-step work, and it says what it changed
in `plan.notes`. Plugins apply in the order the config lists them. Adding one is one file
in this package plus one line in `TECHNIQUES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sim.plan import ReplicaPlan
from sim.techniques import prefix_caching, quantization, speculative
from sim.techniques.base import Technique

TECHNIQUES: dict[str, Technique] = {
    "quantization": quantization.TECHNIQUE,
    "prefix_caching": prefix_caching.TECHNIQUE,
    "speculative": speculative.TECHNIQUE,
}


class TechniqueError(ValueError):
    """Unknown technique or bad technique parameters."""


def parse_params(tech: Technique, params: Mapping[str, Any] | None) -> Any:
    """Validate a plugin's parameters against its schema (unknown keys are errors)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(tech.schema), params or {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise TechniqueError(f"technique.{tech.name}: {err}".splitlines()[0]) from None


def apply_techniques(plan: ReplicaPlan, config: Mapping[str, Any]) -> ReplicaPlan:
    """Apply each configured technique in order."""
    for name, params in config.items():
        if name not in TECHNIQUES:
            known = ", ".join(TECHNIQUES)
            raise TechniqueError(f"unknown technique {name!r}: use one of {known}")
        tech = TECHNIQUES[name]
        plan = tech.apply(plan, parse_params(tech, params))
    return plan
