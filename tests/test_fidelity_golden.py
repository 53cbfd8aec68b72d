"""The calibration error must not regress past the figures the README documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sim.validate import summary_line, validate_file

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"

# The README's "How accurate is it?" figures (median absolute % error), with a 1-point margin
# for harmless drift; the p90 bound catches a tail that grows while the median holds.
DOCUMENTED = {
    "calibration_scenarios.csv": (6.4, 52.0),
    "latency_calibration_scenarios.csv": (9.1, 46.0),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_validation_error_stays_at_the_documented_figure(name: str) -> None:
    results = validate_file(REFERENCE / name)
    line = summary_line(results)
    found = re.fullmatch(
        r"median_ape=([0-9.]+)% p90_ape=([0-9.]+)% max_ape=([0-9.]+)% rows=(\d+) skipped=(\d+)",
        line,
    )
    assert found, line
    median, p90 = float(found.group(1)), float(found.group(2))
    documented_median, p90_bound = DOCUMENTED[name]
    assert median <= documented_median + 1.0, line
    assert p90 <= p90_bound, line
    assert int(found.group(4)) >= 60, line  # nearly every simulatable row is compared
