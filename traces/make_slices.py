"""Regenerate every file in traces/ from the full public traces in ../shared/traces.

Run from the repository root:

    python traces/make_slices.py            # (re)write the shipped files
    python traces/make_slices.py --check    # verify the shipped files, write nothing

Every source file is checked against its published SHA-256 before anything is cut. Kept rows
are copied byte for byte (line endings included), so the slices parse with the same loaders
as the originals. Only the standard library and numpy are used; the simulator never runs this
script and never reads ../shared at run time.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOT = REPO_ROOT.parent / "shared" / "traces"
OUT_DIR = REPO_ROOT / "traces"

AZURE_WINDOW_S = (0.0, 1200.0)  # the first 20 minutes of each Azure service
SHAREGPT_SAMPLE_ROWS = 5000
SHAREGPT_SAMPLE_SEED = 20231116
TICKS_PER_S = 10_000_000  # Azure timestamps carry 7 fractional digits (100 ns ticks)

SOURCE_SHA256 = {
    "azure_llm_2023/AzureLLMInferenceTrace_conv.csv": (
        "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8"
    ),
    "azure_llm_2023/AzureLLMInferenceTrace_code.csv": (
        "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6"
    ),
    "mooncake_fast25/synthetic_trace.jsonl": (
        "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131"
    ),
    "mooncake_real_slices/mooncake_trace_1000.jsonl": (
        "e2bec9bccd21978f69a2ace7886ee2e5192a64839f7aa2c4dd5d8766fd392510"
    ),
    "length_distributions/sharegpt_8k_filtered_stats_llama2_tokenizer.csv": (
        "6d6c296302a853e2669a674a96f269283e60c57e60363bd450588a1066919f9f"
    ),
}


@dataclass(frozen=True)
class Slice:
    out_name: str
    source: str
    cut: Callable[[bytes], bytes]


def azure_ticks(line: bytes) -> int:
    """'2023-11-16 18:15:46.6805900,...' -> integer 100 ns ticks since the epoch (exact)."""
    stamp = line.split(b",", 1)[0].decode("ascii")
    whole, _, frac = stamp.partition(".")
    parsed = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    seconds = int(parsed.timestamp())
    return seconds * TICKS_PER_S + int(frac.ljust(7, "0")[:7])


def azure_window(data: bytes) -> bytes:
    """Header plus the rows whose arrival (relative to the first row) is in the window."""
    lines = data.splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    start, end = (round(t * TICKS_PER_S) for t in AZURE_WINDOW_S)
    first = azure_ticks(rows[0])
    kept = [row for row in rows if start <= azure_ticks(row) - first < end]
    return header + b"".join(kept)


def gzip_whole(data: bytes) -> bytes:
    """The whole file, gzip-compressed with a fixed header (mtime 0, no file name)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def sample_rows(data: bytes) -> bytes:
    """Header plus a seeded sample of rows without replacement, kept in file order."""
    lines = data.splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    rng = np.random.default_rng(SHAREGPT_SAMPLE_SEED)
    picked = np.sort(rng.choice(len(rows), size=SHAREGPT_SAMPLE_ROWS, replace=False))
    return header + b"".join(rows[i] for i in picked)


def copy_whole(data: bytes) -> bytes:
    return data


SLICES = (
    Slice(
        "azure_conv_first20min.csv",
        "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
        azure_window,
    ),
    Slice(
        "azure_code_first20min.csv",
        "azure_llm_2023/AzureLLMInferenceTrace_code.csv",
        azure_window,
    ),
    Slice(
        "mooncake_synthetic_trace.jsonl.gz",
        "mooncake_fast25/synthetic_trace.jsonl",
        gzip_whole,
    ),
    Slice(
        "mooncake_trace_1000.jsonl",
        "mooncake_real_slices/mooncake_trace_1000.jsonl",
        copy_whole,
    ),
    Slice(
        "sharegpt_lengths_sample5000.csv",
        "length_distributions/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
        sample_rows,
    ),
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(piece: Slice) -> bytes:
    data = (SOURCE_ROOT / piece.source).read_bytes()
    if sha256(data) != SOURCE_SHA256[piece.source]:
        raise SystemExit(f"{piece.source}: SHA-256 differs from the published checksum")
    return piece.cut(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify, do not write")
    args = parser.parse_args(argv)
    failed = False
    for piece in SLICES:
        out = build(piece)
        path = OUT_DIR / piece.out_name
        content = gzip.decompress(out) if path.suffix == ".gz" else out
        if args.check:
            shipped = path.read_bytes() if path.exists() else b""
            if path.suffix == ".gz" and shipped:
                shipped = gzip.decompress(shipped)
            ok = shipped == content
            failed |= not ok
            status = "ok" if ok else "DIFFERS"
        else:
            path.write_bytes(out)
            status = "written"
        rows = content.count(b"\n") + (not content.endswith(b"\n"))
        print(
            f"{piece.out_name:36s} {status:8s} {len(out):>9,d} B  "
            f"lines {rows:>6,d}  content sha256 {sha256(content)[:8]}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
