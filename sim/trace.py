"""Workload: trace files or generator parameters in, a normalised `Trace` of requests out.

Every source ends as one `Trace`: arrays of arrival times (seconds from the trace start) and
token counts, optional session ids and prefix-chained hash ids (one id per hash block; equal
ids mean equal prefixes up to and including that block).

- Real traces: `load_azure_csv` (Azure LLM inference 2023), `load_mooncake_jsonl` (Mooncake,
  with `hash_ids`), `load_length_csv` (ShareGPT / arXiv length pairs, no arrivals), and
  `load_trace`, which picks one by extension and header. Loaders are strict: any malformed
  row raises `TraceError` naming the file, the 1-based line number and the field.
- Shipped slices: `bundled(name)` gives the path of a file in `traces/` (see its data card).
- Synthetic: `synthetic` (Poisson / gamma / burst arrivals, lengths from `LengthDist` or
  jointly from `LengthPairs`), `sessions` (multi-turn chats with shared system prompts and
  growing history, for prefix-cache studies), and `ideal_hit_ratio`.

All randomness comes from the `numpy.random.Generator` passed in; nothing reads the clock,
the network or any global state.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
UIntArray = npt.NDArray[np.uint64]
PrefixHashes = tuple[tuple[int, ...], ...]

MOONCAKE_BLOCK_TOKENS = 512
AZURE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
TRACES_DIR = Path(__file__).resolve().parents[1] / "traces"
BUNDLED_FILES = MappingProxyType(
    {
        "azure_conv": "azure_conv_first20min.csv",
        "azure_code": "azure_code_first20min.csv",
        "mooncake_synthetic": "mooncake_synthetic_trace.jsonl.gz",
        "mooncake_real": "mooncake_trace_1000.jsonl",
        "sharegpt_lengths": "sharegpt_lengths_sample5000.csv",
    }
)
ARRIVAL_KINDS = ("poisson", "gamma", "burst", "offline")
LENGTH_KINDS = ("fixed", "uniform", "empirical", "normal", "lognormal")


class TraceError(ValueError):
    """A trace file is malformed; the message names the file, line and field."""


# --------------------------------------------------------------------------- the schema


def _frozen_view(array: np.ndarray) -> np.ndarray:
    """A read-only view, so a frozen Trace cannot be edited in place (the caller's array
    keeps its own flags)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _int_array(values: Any, name: str) -> IntArray:
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests sorted by arrival; arrays are read-only, methods return new Traces.

    `eq=False`: arrays have no single truth value, so compare fields with numpy instead.
    """

    arrival_s: FloatArray
    input_tokens: IntArray
    output_tokens: IntArray
    session_id: IntArray
    prefix_hashes: PrefixHashes | None
    hash_block_tokens: int
    source: str

    def __post_init__(self) -> None:
        self._check_arrays()
        self._check_values()
        self._check_prefix_hashes()

    def _check_arrays(self) -> None:
        num_rows = len(self.arrival_s) if isinstance(self.arrival_s, np.ndarray) else -1
        for name, dtype in (
            ("arrival_s", np.float64),
            ("input_tokens", np.int64),
            ("output_tokens", np.int64),
            ("session_id", np.int64),
        ):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray):
                raise ValueError(f"Trace.{name} must be a numpy array, not {type(array).__name__}")
            if array.dtype != dtype or array.ndim != 1:
                raise ValueError(
                    f"Trace.{name} must be a 1-D {np.dtype(dtype)} array, "
                    f"got {array.ndim}-D {array.dtype}"
                )
            if len(array) != num_rows:
                raise ValueError(f"Trace.{name} has {len(array)} rows but arrival_s has {num_rows}")
            object.__setattr__(self, name, _frozen_view(array))

    def _check_values(self) -> None:
        arrival = self.arrival_s
        if not np.isfinite(arrival).all():
            raise ValueError("Trace.arrival_s must be finite")
        if len(arrival) and arrival[0] < 0:
            raise ValueError(f"Trace.arrival_s must start at >= 0, got {arrival[0]}")
        decreasing = np.flatnonzero(np.diff(arrival) < 0)
        if decreasing.size:
            i = int(decreasing[0]) + 1
            raise ValueError(
                f"Trace.arrival_s must be non-decreasing: row {i} ({arrival[i]}) "
                f"< row {i - 1} ({arrival[i - 1]})"
            )
        for name in ("input_tokens", "output_tokens"):
            values = getattr(self, name)
            if len(values) and values.min() < 1:
                i = int(np.argmin(values))
                raise ValueError(f"Trace.{name} must be >= 1, row {i} is {values[i]}")
        if len(self.session_id) and self.session_id.min() < -1:
            raise ValueError("Trace.session_id must be >= -1 (-1 = no session)")

    def _check_prefix_hashes(self) -> None:
        hashes, block = self.prefix_hashes, self.hash_block_tokens
        if hashes is None:
            if block != 0:
                raise ValueError("Trace.hash_block_tokens must be 0 when prefix_hashes is None")
            return
        if not isinstance(hashes, tuple) or not all(isinstance(h, tuple) for h in hashes):
            raise ValueError("Trace.prefix_hashes must be a tuple of tuples of ints, or None")
        if len(hashes) != len(self):
            raise ValueError(f"Trace.prefix_hashes has {len(hashes)} rows, expected {len(self)}")
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"Trace.hash_block_tokens must be >= 1 with hashes, got {block}")
        counts = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
        expected = -(-self.input_tokens // block)
        wrong = np.flatnonzero(counts != expected)
        if wrong.size:
            i = int(wrong[0])
            raise ValueError(
                f"Trace.prefix_hashes row {i} has {counts[i]} ids, expected "
                f"ceil({self.input_tokens[i]} / {block}) = {expected[i]}"
            )

    @classmethod
    def from_arrays(
        cls,
        arrival_s: Sequence[float] | FloatArray,
        input_tokens: Sequence[int] | IntArray,
        output_tokens: Sequence[int] | IntArray,
        *,
        session_id: Sequence[int] | IntArray | None = None,
        prefix_hashes: Sequence[Sequence[int]] | None = None,
        hash_block_tokens: int = 0,
        source: str = "arrays",
    ) -> Trace:
        """Build a Trace from any array-likes (converted to the schema's dtypes)."""
        arrival = np.asarray(arrival_s, dtype=np.float64)
        sessions = (
            np.full(len(arrival), -1, dtype=np.int64)
            if session_id is None
            else _int_array(session_id, "session_id")
        )
        return cls(
            arrival_s=arrival,
            input_tokens=_int_array(input_tokens, "input_tokens"),
            output_tokens=_int_array(output_tokens, "output_tokens"),
            session_id=sessions,
            prefix_hashes=None
            if prefix_hashes is None
            else tuple(tuple(int(h) for h in row) for row in prefix_hashes),
            hash_block_tokens=hash_block_tokens,
            source=source,
        )

    def __len__(self) -> int:
        return len(self.arrival_s)

    def _take(self, rows: slice | IntArray, arrival_s: FloatArray, source: str) -> Trace:
        hashes = self.prefix_hashes
        if hashes is not None:
            picked = hashes[rows] if isinstance(rows, slice) else [hashes[i] for i in rows]
            hashes = tuple(picked)
        return Trace(
            arrival_s=arrival_s,
            input_tokens=self.input_tokens[rows],
            output_tokens=self.output_tokens[rows],
            session_id=self.session_id[rows],
            prefix_hashes=hashes,
            hash_block_tokens=self.hash_block_tokens,
            source=source,
        )

    def window(self, start_s: float, end_s: float) -> Trace:
        """Requests arriving in [start_s, end_s), re-timed as `arrival_s - start_s`
        (end_s may be inf: to the end of the trace)."""
        if not (math.isfinite(start_s) and start_s <= end_s):
            raise ValueError(f"window needs finite start_s <= end_s, got [{start_s}, {end_s})")
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        rows = slice(int(lo), int(hi))
        return self._take(
            rows, self.arrival_s[rows] - start_s, f"{self.source}[{start_s:g}s,{end_s:g}s)"
        )

    def scale_rate(self, factor: float) -> Trace:
        """Replay `factor` times as fast: arrival_s / factor (2 = twice the request rate)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"scale_rate factor must be finite and > 0, got {factor}")
        return self._take(slice(None), self.arrival_s / factor, f"{self.source} x{factor:g} rate")

    def head(self, num_requests: int) -> Trace:
        """The first `num_requests` requests (all of them if the trace is shorter)."""
        if num_requests < 0:
            raise ValueError(f"head needs num_requests >= 0, got {num_requests}")
        rows = slice(0, num_requests)
        return self._take(rows, self.arrival_s[rows], f"{self.source}[:{num_requests}]")

    def clip_context(self, max_tokens: int) -> tuple[Trace, pd.DataFrame]:
        """Split into requests with input + output <= max_tokens and a frame of the rest.

        The rejected frame has `request_index` (row in this trace), arrival_s, input_tokens,
        output_tokens, session_id and `reason`, so the simulator can record every rejection.
        Kept requests keep their arrival times.
        """
        if max_tokens < 1:
            raise ValueError(f"clip_context needs max_tokens >= 1, got {max_tokens}")
        total = self.input_tokens + self.output_tokens
        fits = total <= max_tokens
        kept = self._take(
            np.flatnonzero(fits), self.arrival_s[fits], f"{self.source} <={max_tokens} tokens"
        )
        over = np.flatnonzero(~fits)
        rejected = pd.DataFrame(
            {
                "request_index": over,
                "arrival_s": self.arrival_s[over],
                "input_tokens": self.input_tokens[over],
                "output_tokens": self.output_tokens[over],
                "session_id": self.session_id[over],
                "reason": [
                    f"input_tokens + output_tokens = {t} > max_tokens = {max_tokens}"
                    for t in total[over].tolist()
                ],
            }
        )
        return kept, rejected

    def num_prefix_blocks(self) -> IntArray:
        """Hash ids per request (zeros when the trace has no prefix hashes)."""
        if self.prefix_hashes is None:
            return np.zeros(len(self), dtype=np.int64)
        return np.fromiter(map(len, self.prefix_hashes), dtype=np.int64, count=len(self))

    def to_frame(self) -> pd.DataFrame:
        """One row per request: arrival_s, input/output_tokens, session_id, num_prefix_blocks."""
        return pd.DataFrame(
            {
                "arrival_s": self.arrival_s,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "session_id": self.session_id,
                "num_prefix_blocks": self.num_prefix_blocks(),
            }
        )

    def summary(self) -> dict[str, float]:
        """rows, span_s (last - first arrival), rate_per_s (rows / span, NaN if span is 0),
        and mean/p50/p90/p99 of input and output tokens (numpy's linear percentiles)."""
        rows = len(self)
        span_s = float(self.arrival_s[-1] - self.arrival_s[0]) if rows else 0.0
        out: dict[str, float] = {
            "rows": rows,
            "span_s": span_s,
            "rate_per_s": rows / span_s if span_s > 0 else math.nan,
        }
        for name, values in (("input", self.input_tokens), ("output", self.output_tokens)):
            out[f"{name}_mean"] = float(values.mean()) if rows else math.nan
            for q in (50, 90, 99):
                out[f"{name}_p{q}"] = float(np.percentile(values, q)) if rows else math.nan
        return out


# --------------------------------------------------------------------------- file loaders


def _fail(path: Path, line: int, field: str, value: object, expected: str) -> TraceError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return TraceError(f"{path.name} line {line}: field {field!r} is {shown}, expected {expected}")


def _read_csv_text(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """All cells as stripped strings; row i of the frame is line i + 2 of the file."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise TraceError(f"{path.name}: empty file") from None
    except pd.errors.ParserError as exc:
        raise TraceError(f"{path.name}: {exc}") from None
    for column in columns:
        if column not in frame.columns:
            raise TraceError(
                f"{path.name}: missing column {column!r} (header has {list(frame.columns)})"
            )
    if frame.empty:
        raise TraceError(f"{path.name}: no data rows after the header")
    return frame[list(columns)].fillna("")


def _positive_ints(path: Path, frame: pd.DataFrame, column: str) -> IntArray:
    """Validate a column of decimal integers >= 1 at once, then name the first bad line."""
    text = frame[column].astype(str).str.strip()
    ok = text.str.fullmatch(r"\d{1,18}").to_numpy(dtype=bool)
    values = np.zeros(len(text), dtype=np.int64)
    values[ok] = text[ok].astype(np.int64).to_numpy()
    ok = ok & (values >= 1)
    if not ok.all():
        i = int(np.argmin(ok))
        raise _fail(path, i + 2, column, frame[column].iloc[i], "a positive integer")
    return values


def load_azure_csv(path: str | Path) -> Trace:
    """Azure LLM inference 2023 CSV (TIMESTAMP, ContextTokens, GeneratedTokens) -> Trace.

    arrival_s = TIMESTAMP - first TIMESTAMP, parsed exactly (100 ns digits) before the one
    conversion to float seconds. Timestamps must not decrease; both token counts must be >= 1.
    """
    path = Path(path)
    columns = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    frame = _read_csv_text(path, columns)
    stamps = pd.to_datetime(frame["TIMESTAMP"], format=AZURE_TIMESTAMP_FORMAT, errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise _fail(
            path, i + 2, "TIMESTAMP", frame["TIMESTAMP"].iloc[i], "'YYYY-MM-DD HH:MM:SS.fffffff'"
        )
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    backwards = np.flatnonzero(np.diff(ns) < 0)
    if backwards.size:
        i = int(backwards[0]) + 1
        raise _fail(
            path,
            i + 2,
            "TIMESTAMP",
            frame["TIMESTAMP"].iloc[i],
            f"a time >= the previous row's {frame['TIMESTAMP'].iloc[i - 1]!r} (non-decreasing)",
        )
    input_tokens = _positive_ints(path, frame, "ContextTokens")
    output_tokens = _positive_ints(path, frame, "GeneratedTokens")
    return Trace(
        arrival_s=(ns - ns[0]).astype(np.float64) / 1e9,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        session_id=np.full(len(ns), -1, dtype=np.int64),
        prefix_hashes=None,
        hash_block_tokens=0,
        source=path.name,
    )


def load_length_csv(path: str | Path) -> tuple[IntArray, IntArray]:
    """ShareGPT / arXiv length CSV -> (num_prefill_tokens, num_decode_tokens), row-paired."""
    path = Path(path)
    columns = ("num_prefill_tokens", "num_decode_tokens")
    frame = _read_csv_text(path, columns)
    return _positive_ints(path, frame, columns[0]), _positive_ints(path, frame, columns[1])


@contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    """Open a text file, transparently gunzipping `*.gz`."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            yield handle
    else:
        with path.open(encoding="utf-8") as handle:
            yield handle


def _int_field(
    path: Path, line: int, record: dict[str, Any], field: str, minimum: int | None
) -> int:
    if field not in record:
        raise TraceError(f"{path.name} line {line}: field {field!r} is missing")
    value = record[field]
    if type(value) is not int or (minimum is not None and value < minimum):
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise _fail(path, line, field, value, expected)
    return value


def _mooncake_row(
    path: Path, line: int, text: str, block_tokens: int
) -> tuple[int, int, int, tuple[int, ...]]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(
            f"{path.name} line {line}: not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(record, dict):
        raise TraceError(f"{path.name} line {line}: expected a JSON object, got {text[:40]!r}")
    timestamp = _int_field(path, line, record, "timestamp", minimum=None)
    input_length = _int_field(path, line, record, "input_length", minimum=1)
    output_length = _int_field(path, line, record, "output_length", minimum=1)
    if "hash_ids" not in record:
        raise TraceError(f"{path.name} line {line}: field 'hash_ids' is missing")
    ids = record["hash_ids"]
    if not isinstance(ids, list) or any(type(h) is not int for h in ids):
        raise _fail(path, line, "hash_ids", ids, "a list of integers")
    expected = -(-input_length // block_tokens)
    if len(ids) != expected:
        raise TraceError(
            f"{path.name} line {line}: field 'hash_ids' has {len(ids)} ids, expected "
            f"ceil(input_length / {block_tokens}) = ceil({input_length} / {block_tokens}) "
            f"= {expected}"
        )
    return timestamp, input_length, output_length, tuple(ids)


def load_mooncake_jsonl(
    path: str | Path, *, hash_block_tokens: int = MOONCAKE_BLOCK_TOKENS
) -> Trace:
    """Mooncake JSON Lines (timestamp ms, input_length, output_length, hash_ids) -> Trace.

    arrival_s = (timestamp - first timestamp) / 1000; timestamps must not decrease and
    `len(hash_ids) == ceil(input_length / hash_block_tokens)`. `*.jsonl.gz` is read too.
    """
    path = Path(path)
    rows: list[tuple[int, int, int, tuple[int, ...]]] = []
    with _open_text(path) as handle:
        for line, text in enumerate(handle, start=1):
            row = _mooncake_row(path, line, text, hash_block_tokens)
            if rows and row[0] < rows[-1][0]:
                raise _fail(
                    path, line, "timestamp", row[0], f">= the previous line's {rows[-1][0]}"
                )
            rows.append(row)
    if not rows:
        raise TraceError(f"{path.name}: empty file")
    timestamps, inputs, outputs, hashes = zip(*rows, strict=True)
    ms = np.asarray(timestamps, dtype=np.int64)
    return Trace(
        arrival_s=(ms - ms[0]).astype(np.float64) / 1000.0,
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        session_id=np.full(len(ms), -1, dtype=np.int64),
        prefix_hashes=tuple(hashes),
        hash_block_tokens=hash_block_tokens,
        source=path.name,
    )


def load_trace(path: str | Path) -> Trace:
    """Load an arrival trace by extension and header: `.jsonl[.gz]` -> Mooncake,
    `.csv[.gz]` with a TIMESTAMP column -> Azure."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".jsonl":
        return load_mooncake_jsonl(path)
    if kind == ".csv":
        with _open_text(path) as handle:
            header = [c.strip() for c in handle.readline().split(",")]
        if "TIMESTAMP" in header:
            return load_azure_csv(path)
        if "num_prefill_tokens" in header:
            raise TraceError(
                f"{path.name}: a length distribution without arrival times; use "
                "LengthPairs.from_csv(path) with synthetic(...)"
            )
        raise TraceError(f"{path.name}: CSV header {header} is not a known trace format")
    raise TraceError(f"{path.name}: unknown trace format (expected .csv or .jsonl)")


def bundled(name: str) -> Path:
    """Path of a trace slice shipped in `traces/` (described in traces/README.md)."""
    if name not in BUNDLED_FILES:
        raise ValueError(f"unknown bundled trace {name!r}; known: {', '.join(BUNDLED_FILES)}")
    return TRACES_DIR / BUNDLED_FILES[name]


# --------------------------------------------------------------------------- synthetic


@dataclass(frozen=True, eq=False)
class LengthDist:
    """A token-count distribution; build it with the classmethods, draw with `sample`.

    fixed(value); uniform(low, high) (integers, both ends inclusive); empirical(values)
    (with replacement); normal(mean, std) and lognormal(median, sigma) (rounded, floored
    at 1). For (input, output) pairs that must stay together use `LengthPairs`.
    """

    kind: str
    low: int = 1
    high: int = 1
    loc: float = 0.0
    scale: float = 0.0
    values: IntArray | None = None

    def __post_init__(self) -> None:
        if self.kind not in LENGTH_KINDS:
            raise ValueError(f"unknown LengthDist kind {self.kind!r}; known: {LENGTH_KINDS}")
        if self.kind in ("fixed", "uniform") and not 1 <= self.low <= self.high:
            raise ValueError(f"{self.kind} needs 1 <= low <= high, got {self.low}, {self.high}")
        if self.kind in ("normal", "lognormal") and not (self.loc > 0 and self.scale >= 0):
            raise ValueError(f"{self.kind} needs loc > 0 and scale >= 0")
        if self.kind == "empirical":
            values = self.values
            if values is None or values.ndim != 1 or len(values) == 0:
                raise ValueError("empirical needs a non-empty 1-D array of values")
            if values.dtype != np.int64 or values.min() < 1:
                raise ValueError("empirical values must be int64 token counts >= 1")
            object.__setattr__(self, "values", _frozen_view(values))

    @classmethod
    def fixed(cls, value: int) -> LengthDist:
        return cls("fixed", low=value, high=value)

    @classmethod
    def uniform(cls, low: int, high: int) -> LengthDist:
        return cls("uniform", low=low, high=high)

    @classmethod
    def empirical(cls, values: Sequence[int] | IntArray) -> LengthDist:
        return cls("empirical", values=_int_array(values, "values"))

    @classmethod
    def normal(cls, mean: float, std: float) -> LengthDist:
        return cls("normal", loc=mean, scale=std)

    @classmethod
    def lognormal(cls, median: float, sigma: float) -> LengthDist:
        return cls("lognormal", loc=median, scale=sigma)

    def sample(self, num: int, rng: np.random.Generator) -> IntArray:
        """`num` token counts (int64, >= 1)."""
        if self.kind == "fixed":
            return np.full(num, self.low, dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(self.low, self.high, size=num, endpoint=True, dtype=np.int64)
        if self.kind == "empirical":
            assert self.values is not None
            return self.values[rng.integers(0, len(self.values), size=num)].copy()
        if self.kind == "normal":
            draws = rng.normal(self.loc, self.scale, size=num)
        else:
            draws = rng.lognormal(math.log(self.loc), self.scale, size=num)
        return np.maximum(np.rint(draws), 1).astype(np.int64)


@dataclass(frozen=True, eq=False)
class LengthPairs:
    """Empirical (input, output) pairs sampled jointly, so a row's pair stays together."""

    input_tokens: IntArray
    output_tokens: IntArray
    source: str = "pairs"

    def __post_init__(self) -> None:
        if len(self.input_tokens) == 0 or len(self.input_tokens) != len(self.output_tokens):
            raise ValueError("LengthPairs needs equal, non-empty input and output arrays")
        for name in ("input_tokens", "output_tokens"):
            values = getattr(self, name)
            if values.dtype != np.int64 or values.ndim != 1 or values.min() < 1:
                raise ValueError(f"LengthPairs.{name} must be 1-D int64 token counts >= 1")
            object.__setattr__(self, name, _frozen_view(values))

    @classmethod
    def from_csv(cls, path: str | Path) -> LengthPairs:
        """From a ShareGPT / arXiv length CSV (see `load_length_csv`)."""
        inputs, outputs = load_length_csv(path)
        return cls(inputs, outputs, source=Path(path).name)

    @classmethod
    def from_trace(cls, trace: Trace) -> LengthPairs:
        """The (input, output) pairs of a trace, e.g. to re-time Azure lengths."""
        return cls(trace.input_tokens, trace.output_tokens, source=trace.source)

    def sample(self, num: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        rows = rng.integers(0, len(self.input_tokens), size=num)
        return self.input_tokens[rows].copy(), self.output_tokens[rows].copy()


def arrival_times(
    num_requests: int,
    rng: np.random.Generator,
    *,
    arrival: str = "poisson",
    rate_per_s: float | None = None,
    gamma_cv: float = 1.0,
) -> FloatArray:
    """Arrival times starting at t = 0 (like a re-zeroed real trace).

    'poisson': exponential gaps with mean 1/rate_per_s. 'gamma': gamma gaps with mean
    1/rate_per_s and coefficient of variation gamma_cv (shape 1/cv^2; cv 1 is Poisson,
    > 1 burstier, < 1 more regular). 'burst' / 'offline': everything at t = 0.
    Draws num_requests - 1 gaps from `rng`.
    """
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if arrival not in ARRIVAL_KINDS:
        raise ValueError(f"unknown arrival {arrival!r}; known: {ARRIVAL_KINDS}")
    if arrival in ("burst", "offline"):
        return np.zeros(num_requests, dtype=np.float64)
    if rate_per_s is None or not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"arrival {arrival!r} needs rate_per_s > 0, got {rate_per_s}")
    mean_gap_s = 1.0 / rate_per_s
    if arrival == "poisson":
        gaps = rng.exponential(mean_gap_s, size=num_requests - 1)
    else:
        if not (math.isfinite(gamma_cv) and gamma_cv > 0):
            raise ValueError(f"gamma arrivals need gamma_cv > 0, got {gamma_cv}")
        shape = 1.0 / gamma_cv**2
        gaps = rng.gamma(shape, mean_gap_s / shape, size=num_requests - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))


def synthetic(
    num_requests: int,
    rng: np.random.Generator,
    *,
    arrival: str = "poisson",
    rate_per_s: float | None = None,
    gamma_cv: float = 1.0,
    input_dist: LengthDist | None = None,
    output_dist: LengthDist | None = None,
    pairs: LengthPairs | None = None,
) -> Trace:
    """A trace of independent requests: `arrival_times(...)`, then lengths.

    Lengths come either from `input_dist` and `output_dist` (independent) or from `pairs`
    (rows drawn jointly, e.g. ShareGPT (prompt, output) pairs); give one or the other.
    Draw order from `rng`: gaps, then inputs, then outputs (or the pair rows).
    """
    if pairs is not None and (input_dist is not None or output_dist is not None):
        raise ValueError("give either pairs or input_dist + output_dist, not both")
    if pairs is None and (input_dist is None or output_dist is None):
        raise ValueError("give input_dist and output_dist, or pairs")
    arrival_s = arrival_times(
        num_requests, rng, arrival=arrival, rate_per_s=rate_per_s, gamma_cv=gamma_cv
    )
    if pairs is not None:
        inputs, outputs = pairs.sample(num_requests, rng)
        lengths = pairs.source
    else:
        assert input_dist is not None and output_dist is not None
        inputs = input_dist.sample(num_requests, rng)
        outputs = output_dist.sample(num_requests, rng)
        lengths = f"{input_dist.kind}/{output_dist.kind}"
    rate = "" if arrival in ("burst", "offline") else f" {rate_per_s:g}/s"
    return Trace(
        arrival_s=arrival_s,
        input_tokens=inputs,
        output_tokens=outputs,
        session_id=np.full(num_requests, -1, dtype=np.int64),
        prefix_hashes=None,
        hash_block_tokens=0,
        source=f"synthetic {arrival}{rate} n={num_requests} lengths={lengths}",
    )


# --------------------------------------------------------------------------- sessions

_ROOT_HASH = 0x5E55_1015_0000_0001
_CONTENT_SYSTEM, _CONTENT_SESSION, _CONTENT_UNIQUE = 1, 2, 3


def _splitmix64(x: UIntArray) -> UIntArray:
    """SplitMix64's finaliser: a fixed bijective mixing of uint64 (wrapping arithmetic)."""
    z = x + np.uint64(0x9E37_79B9_7F4A_7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
    return z ^ (z >> np.uint64(31))


def _mix(a: UIntArray, b: UIntArray | np.uint64) -> UIntArray:
    """Deterministic hash of the pair (a, b); injective in b for a fixed a."""
    return _splitmix64(_splitmix64(a) ^ b)


def _content_ids(kind: IntArray, owner: IntArray, position: IntArray) -> UIntArray:
    return _mix(_mix(kind.astype(np.uint64), owner.astype(np.uint64)), position.astype(np.uint64))


def _chain(content: UIntArray, starts: IntArray, counts: IntArray) -> UIntArray:
    """Prefix-chained ids: id[i] = mix(id[i-1], content[i]) within each request's run
    (`starts`, `counts` into the flat arrays), id[-1] = a fixed root. One numpy pass per
    block position, over the requests that are that long."""
    ids = np.empty_like(content)
    order = np.argsort(-counts, kind="stable")
    sorted_counts = counts[order]
    parent = np.full(len(counts), _ROOT_HASH, dtype=np.uint64)
    for position in range(int(sorted_counts[0]) if len(counts) else 0):
        active = int(np.searchsorted(-sorted_counts, -position, side="left"))
        flat = starts[order[:active]] + position
        ids[flat] = _mix(parent[:active], content[flat])
        parent = ids[flat]
    return ids


def _segment_cumsum(values: IntArray | FloatArray, first: IntArray, counts: IntArray) -> Any:
    """Inclusive cumulative sum restarting at each segment (`first` index, `counts` rows)."""
    total = np.cumsum(values)
    offset = total[first] - values[first]
    return total - np.repeat(offset, counts)


def sessions(
    num_sessions: int,
    turns_per_session: LengthDist,
    rng: np.random.Generator,
    *,
    system_prompt_tokens: int,
    num_system_prompts: int,
    user_tokens: LengthDist,
    output_tokens: LengthDist,
    think_time_s: float,
    session_rate_per_s: float,
    hash_block_tokens: int = 16,
    stable_prefix_first: bool = True,
) -> Trace:
    """Multi-turn chat sessions with session ids and prefix-chained hash ids.

    Model. Sessions start as a Poisson process (`session_rate_per_s`, first at t = 0). Each
    picks one of `num_system_prompts` system prompts (uniformly; each `system_prompt_tokens`
    long) and a number of turns from `turns_per_session`. Turn j sends the prompt

        system prompt + (user_0 + reply_0) + ... + (user_{j-1} + reply_{j-1}) + user_j

    with user_k ~ `user_tokens` and reply_k ~ `output_tokens` (turn k's output_tokens), so
    input_tokens = system_prompt_tokens + history + user_j. The trace is open loop: turn
    j + 1 arrives an exponential think time (mean `think_time_s`; 0 = at once) after turn
    j *arrives*, since the trace cannot know when turn j will finish.

    Hashes. The prompt is cut into blocks of `hash_block_tokens`; block i's id is
    mix(id of block i-1, content id of block i), a deterministic SplitMix64-based mixing of
    ints (never Python's salted `hash`), so equal ids mean equal prefixes. A full block
    inside the system prompt has the content (prompt, i), shared by every session with that
    prompt; a later full block has the content (session, i), shared by all later turns of
    the session; a trailing partial block is unique to its request. Every request also
    carries a few unique tokens (say a timestamp) at no extra token cost: with
    `stable_prefix_first` they sit at the end, in the new user message; otherwise they come
    first, block 0 is unique and nothing is shareable (ideal hit ratio 0).

    Draw order from `rng`: session starts, system prompt choice, turns, user tokens, reply
    tokens, think times. Rows are sorted by arrival (ties: session, then turn).
    """
    if num_sessions < 1 or num_system_prompts < 1 or system_prompt_tokens < 0:
        raise ValueError(
            "sessions needs num_sessions >= 1, num_system_prompts >= 1, system_prompt_tokens >= 0"
        )
    if hash_block_tokens < 1 or not (math.isfinite(think_time_s) and think_time_s >= 0):
        raise ValueError("sessions needs hash_block_tokens >= 1 and think_time_s >= 0")
    starts_s = arrival_times(num_sessions, rng, rate_per_s=session_rate_per_s)
    prompt_of = rng.integers(0, num_system_prompts, size=num_sessions)
    turns = turns_per_session.sample(num_sessions, rng)
    num_turns = int(turns.sum())
    session = np.repeat(np.arange(num_sessions, dtype=np.int64), turns)
    first = np.cumsum(turns) - turns
    user = user_tokens.sample(num_turns, rng)
    reply = output_tokens.sample(num_turns, rng)
    think_s = rng.exponential(think_time_s, size=num_turns)
    think_s[first] = 0.0
    arrival_s = starts_s[session] + _segment_cumsum(think_s, first, turns)
    history = _segment_cumsum(user + reply, first, turns) - (user + reply)
    inputs = system_prompt_tokens + history + user

    hashes = _session_hashes(
        inputs,
        session,
        prompt_of[session],
        system_prompt_tokens,
        hash_block_tokens,
        stable_prefix_first,
    )
    order = np.argsort(arrival_s, kind="stable")
    layout = "stable-prefix" if stable_prefix_first else "unique-first"
    return Trace(
        arrival_s=arrival_s[order],
        input_tokens=inputs[order],
        output_tokens=reply[order],
        session_id=session[order],
        prefix_hashes=tuple(hashes[i] for i in order),
        hash_block_tokens=hash_block_tokens,
        source=f"sessions n={num_sessions} {session_rate_per_s:g}/s {layout}",
    )


def _session_hashes(
    inputs: IntArray,
    session: IntArray,
    prompt: IntArray,
    system_prompt_tokens: int,
    block_tokens: int,
    stable_prefix_first: bool,
) -> list[tuple[int, ...]]:
    """Per request, the prefix-chained block ids described in `sessions`."""
    counts = -(-inputs // block_tokens)
    starts = np.cumsum(counts) - counts
    request = np.repeat(np.arange(len(inputs), dtype=np.int64), counts)
    position = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    block_end = (position + 1) * block_tokens
    full = block_end <= inputs[request]
    in_system = block_end <= system_prompt_tokens
    kind = np.where(in_system, _CONTENT_SYSTEM, np.where(full, _CONTENT_SESSION, _CONTENT_UNIQUE))
    if not stable_prefix_first:
        kind[starts] = _CONTENT_UNIQUE
    owner = np.where(
        kind == _CONTENT_SYSTEM,
        prompt[request],
        np.where(kind == _CONTENT_SESSION, session[request], request),
    )
    ids = _chain(_content_ids(kind, owner, position), starts, counts)
    flat = (ids & np.uint64(0x7FFF_FFFF_FFFF_FFFF)).astype(np.int64).tolist()
    return [tuple(flat[a : a + n]) for a, n in zip(starts.tolist(), counts.tolist(), strict=True)]


def ideal_hit_ratio(trace: Trace) -> float:
    """Fraction of all prefix-hash entries already seen earlier in the trace (block-weighted,
    infinite cache, cold start). With prefix-chained ids this is 1 - unique / total."""
    if trace.prefix_hashes is None:
        raise ValueError(f"trace {trace.source!r} has no prefix hashes")
    total = int(trace.num_prefix_blocks().sum())
    if total == 0:
        return 0.0
    flat = np.fromiter(chain.from_iterable(trace.prefix_hashes), dtype=np.int64, count=total)
    return 1.0 - np.unique(flat).size / total
