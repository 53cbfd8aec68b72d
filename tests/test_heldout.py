"""The held-out sets (benchmarks/heldout/) stay fully expressible: every row becomes a setup.

Their accuracy is a reported figure (README, "How accurate is it?"), not asserted here; this
checks that a file of rows the constants never saw parses, and that no row is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.validate import read_scenarios, setup_of

HELDOUT = Path(__file__).resolve().parents[1] / "benchmarks" / "heldout"
FILES = {"trtllm_perf_overview.csv": 84, "latency_heldout.csv": 191}


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_held_out_row_becomes_a_setup(name: str) -> None:
    rows = read_scenarios(HELDOUT / name)
    assert len(rows) == FILES[name]
    assert all(row.text("simulatable") == "yes" for row in rows)
    setups = {setup_of(row, HELDOUT, None)[0] for row in rows}  # raises Unexpressible on a skip
    runs = {row.text("id").split("__")[0] for row in rows}
    assert len(setups) <= len(runs)  # rows of one run share their setup
