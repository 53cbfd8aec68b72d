"""The held-out sets (benchmarks/heldout/) stay fully expressible: every row becomes a setup.

Their accuracy is a reported figure (README, "How accurate is it?"), not asserted here; this
checks that a file of rows the constants never saw parses, and that no row is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.validate import Unexpressible, read_scenarios, setup_of

HELDOUT = Path(__file__).resolve().parents[1] / "benchmarks" / "heldout"
FILES = {"trtllm_perf_overview.csv": 84, "latency_heldout.csv": 191}


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_held_out_row_becomes_a_setup(name: str) -> None:
    rows = read_scenarios(HELDOUT / name)
    assert len(rows) == FILES[name]
    assert all(row.text("simulatable") == "yes" for row in rows)
    skipped = []
    for row in rows:
        try:
            setup_of(row, HELDOUT, None)
        except Unexpressible as why:
            skipped.append(f"{row.text('id')}: {why}")
    assert not skipped, "\n".join(skipped)
