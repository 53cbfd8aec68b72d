"""Simulator fidelity against published measurements; writes a report folder (not a test).

Runs `servesim validate` on the shared scenario files (by default the calibration and the
latency-under-load scenarios in ../shared/reference, relative to the repository root) and
writes into OUT (default `outputs/fidelity/`, git-ignored):

- `<file>.csv`: one row per scenario row (id, metric, measured, predicted, error_pct, status,
  reason, then group, hardware, model, mode, line);
- `<file>_scatter.png`, `<file>_error_by_family.png`, `<file>_distribution.png` and
  `<file>_distribution.csv` (see `sim.fidelity`);
- `summary.md`: per file totals, APE by metric family, worst rows, skipped rows.

    python benchmarks/fidelity.py
    python benchmarks/fidelity.py my_scenarios.csv --out /tmp/fid --max-requests 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sim.fidelity import write_report
from sim.validate import ScenarioError, results_frame, summary_line, validate_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES = (
    ROOT.parent / "shared" / "reference" / "calibration_scenarios.csv",
    ROOT.parent / "shared" / "reference" / "latency_calibration_scenarios.csv",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fidelity report over scenario CSV files.")
    parser.add_argument("files", nargs="*", type=Path, default=list(DEFAULT_FILES))
    parser.add_argument("--out", type=Path, default=Path("outputs") / "fidelity")
    parser.add_argument("--max-requests", type=int, default=None, metavar="N")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(
            f"fidelity: scenario file(s) not found: {', '.join(missing)}\n"
            "pass the paths of calibration_scenarios.csv-format files as arguments",
            file=sys.stderr,
        )
        return 2
    frames = {}
    for path in args.files:
        start = time.perf_counter()
        try:
            results = validate_file(path, args.max_requests)
        except ScenarioError as err:
            print(f"fidelity: error: {err}", file=sys.stderr)
            return 2
        frame = results_frame(results)
        args.out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out / f"{path.stem}.csv", index=False)
        frames[path.stem] = frame
        print(f"{path.name}: {summary_line(results)} ({time.perf_counter() - start:.1f} s)")
    write_report(frames, args.out, prefixed=True)
    print(f"report written to {args.out}/summary.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
