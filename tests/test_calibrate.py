"""benchmarks/calibrate.py: the loss the fit minimises and the rows it fits."""

from __future__ import annotations

import math
from types import ModuleType

import pytest

from sim.validate import Row
from tests.factories import load_script


def calibrate() -> ModuleType:
    return load_script("calibrate")


def test_loss_is_the_mean_absolute_log_error_clipped_at_60_percent() -> None:
    c = calibrate()
    # +10 % and -10 % count by their log size; +150 % is clipped at log 1.6
    errors = {"a": math.log(1.1), "b": math.log(0.9), "c": math.log(2.5)}
    expected = (math.log(1.1) + -math.log(0.9) + math.log(1.6)) / 3
    assert c.loss(errors) == pytest.approx(expected, rel=1e-12)
    # a row the model cannot express (+1000 %) pulls no harder than one at +60 %
    assert c.loss({"x": math.log(11.0)}) == c.loss({"x": math.log(1.6)})
    assert c.loss({}) == 0.0


def test_fit_leaves_out_legacy_and_unsimulatable_rows() -> None:
    c = calibrate()

    def row(simulatable: str, notes: str) -> Row:
        return Row(2, {"simulatable": simulatable, "notes": notes}, {})

    assert c.fitted(row("yes", "MEASURED."))
    assert not c.fitted(row("yes", "MEASURED legacy: bs8 32.5 ms"))
    assert not c.fitted(row("no", "MEASURED."))
