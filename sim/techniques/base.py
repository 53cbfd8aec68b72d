"""The plugin record every technique module exports as TECHNIQUE."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sim.plan import ReplicaPlan


@dataclass(frozen=True)
class Technique:
    name: str
    schema: type  # dataclass of the plugin's parameters (unknown keys are errors)
    apply: Callable[[ReplicaPlan, Any], ReplicaPlan]
    changes: str  # what the plugin edits, shown in docs and the run summary
