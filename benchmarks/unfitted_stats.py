"""Validate on the latency statistics the fit never saw: the ones only quoted in notes.

Each run of `latency_calibration_scenarios.csv` has rows for a few metrics (what the fit in
`benchmarks/calibrate.py` uses), but its `notes` keep the benchmark's whole printed result:
median and p99 TTFT, median and p99 TPOT, mean, median and p99 ITL. This script turns every
statistic quoted in a run's notes that is not already one of its rows into a scenario row of
the same setup (same columns, the new metric and value), writes them to a CSV in the
scenario format, and runs `servesim validate` on it: an error report on data the constants
were not fitted to, from the same runs.

    python benchmarks/unfitted_stats.py                     # print the report
    python benchmarks/unfitted_stats.py --out rows.csv      # also keep the derived file
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
from pathlib import Path

import sim.validate as validate

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "reference" / "latency_calibration_scenarios.csv"

STAT = {"mean": "mean", "median": "p50", "p99": "p99"}
# "Median TTFT (ms) 77291.46" (vllm bench serve's printed lines)
PRINTED = re.compile(r"\b(Mean|Median|P99) (TTFT|TPOT|ITL) \(ms\):? ([0-9.]+)")
# "TTFT mean/median/p99 267.22/300.05/454.62 ms" (a condensed quote of the same lines)
CONDENSED = re.compile(r"\b(TTFT|TPOT|ITL) mean/median/p99 ([0-9.]+)/([0-9.]+)/([0-9.]+) ms")


def quoted_statistics(notes: str) -> dict[str, float]:
    """metric -> value for every TTFT/TPOT/ITL statistic the notes quote."""
    out: dict[str, float] = {}
    for stat, quantity, value in PRINTED.findall(notes):
        out[f"{quantity.lower()}_{STAT[stat.lower()]}_ms"] = float(value)
    for quantity, *values in CONDENSED.findall(notes):
        for stat, value in zip(("mean", "p50", "p99"), values, strict=True):
            out[f"{quantity.lower()}_{stat}_ms"] = float(value)
    return out


def derived_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and one row per quoted statistic that is not a row of its run already."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    runs: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if row["simulatable"].strip().lower() == "yes":
            runs.setdefault(row["id"].split("__")[0], []).append(row)
    out = []
    for run, members in runs.items():
        have = {r["metric"] for r in members}
        template = members[0]
        for metric, value in sorted(quoted_statistics(template["notes"]).items()):
            if metric in have:
                continue
            row = dict(template)
            row.update(id=f"{run}__{metric}", metric=metric, value=f"{value:g}")
            row["notes"] = f"derived by benchmarks/unfitted_stats.py from {template['id']}'s notes"
            out.append(row)
    return header, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, help="keep the derived scenario file here")
    args = parser.parse_args(argv)
    header, rows = derived_rows(args.source)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or Path(tmp) / "unfitted_stats.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        print(f"{len(rows)} rows derived from the notes of {args.source.name}", flush=True)
        return validate.main([str(path)])


if __name__ == "__main__":
    sys.exit(main())
