"""Trace loaders: Azure CSV, Mooncake JSONL, ShareGPT lengths CSV, with strict validation.

Every problem in a file is an `InputError` naming the file, the line and the field: missing
or misnamed columns, non-integer, negative or zero lengths, unparseable or unsorted
timestamps, empty files, malformed JSON lines, hash_ids that do not cover the input length, and
requests longer than max_seq_len when clipping is off. Nothing is dropped silently: window and
max_requests select a contiguous part of the trace, and clipped requests are counted.

Mooncake `hash_ids` name 512-token blocks; each id becomes a deterministic pseudo-random
512-token chunk (workloads/tokens.py), so requests with equal leading ids share token
prefixes at any block size dividing 512.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workloads.errors import InputError, KvbenchError
from workloads.registry import TRACES, TraceFormat, locate, trace_info
from workloads.request import Request, Workload, clip_lengths
from workloads.synthetic import (
    Arrival,
    _as,
    arrival_times,
    check_length_scale,
    check_rate_scale,
    scale_lengths,
)
from workloads.tokens import MOONCAKE

MOONCAKE_BLOCK = 512


@dataclass
class Rows:
    """A parsed trace: one entry per request, in file order."""

    path: Path
    lines: np.ndarray  # line number of each request in the file
    prompt: np.ndarray
    output: np.ndarray
    arrival_s: np.ndarray | None  # None: the trace has no timestamps
    hash_ids: list[list[int]] | None = None
    prompt_field: str = "input_length"


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(path, "empty file", row=1) from None
    except pd.errors.ParserError as e:
        raise InputError(path, f"not a valid CSV file ({' '.join(str(e).split())})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(
            path, f"missing column; the header has {list(df.columns)}", row=1, field=missing[0]
        )
    if df.empty:
        raise InputError(path, "no data rows after the header", row=2)
    return df


def _positive_ints(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    s = df[col].str.strip()
    ok = s.str.fullmatch(r"[+-]?\d+")
    if not ok.all():
        i = int(np.argmin(ok.to_numpy()))
        raise InputError(path, f"{s.iloc[i]!r} is not an integer", row=i + 2, field=col)
    x = s.astype(np.int64).to_numpy()
    if (x <= 0).any():
        i = int(np.argmax(x <= 0))
        raise InputError(path, f"length must be >= 1, got {x[i]}", row=i + 2, field=col)
    return x


def _check_sorted(t: np.ndarray, lines: np.ndarray, path: Path, col: str) -> None:
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise InputError(path, "timestamp earlier than the line before (unsorted)", lines[i], col)


def read_azure(path: Path) -> Rows:
    df = _read_csv(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    prompt = _positive_ints(df, "ContextTokens", path)
    output = _positive_ints(df, "GeneratedTokens", path)
    ts = pd.to_datetime(df["TIMESTAMP"].str.strip(), errors="coerce", format="ISO8601")
    if ts.isna().any():
        i = int(np.argmax(ts.isna().to_numpy()))
        bad = df["TIMESTAMP"].iloc[i]
        raise InputError(path, f"unparseable timestamp {bad!r}", row=i + 2, field="TIMESTAMP")
    t = (ts - ts.iloc[0]).dt.total_seconds().to_numpy()
    lines = np.arange(len(df)) + 2
    _check_sorted(t, lines, path, "TIMESTAMP")
    return Rows(path, lines, prompt, output, t, prompt_field="ContextTokens")


def read_sharegpt(path: Path) -> Rows:
    df = _read_csv(path, ("num_prefill_tokens", "num_decode_tokens"))
    prompt = _positive_ints(df, "num_prefill_tokens", path)
    output = _positive_ints(df, "num_decode_tokens", path)
    lines = np.arange(len(df)) + 2
    return Rows(path, lines, prompt, output, None, prompt_field="num_prefill_tokens")


def _field(obj: dict[str, Any], key: str, path: Path, line: int, minimum: int) -> int:
    if key not in obj:
        raise InputError(path, f"missing key; the line has {sorted(obj)}", row=line, field=key)
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(path, f"{v!r} is not an integer", row=line, field=key)
    if v < minimum:
        raise InputError(path, f"must be >= {minimum}, got {v}", row=line, field=key)
    return v


def read_mooncake(path: Path) -> Rows:
    lines, prompt, output, times, hash_ids = [], [], [], [], []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                raise InputError(path, "empty line", row=line_no)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, f"malformed JSON ({e.msg})", row=line_no) from None
            if not isinstance(obj, dict):
                raise InputError(path, "a line must hold one JSON object", row=line_no)
            t = _field(obj, "timestamp", path, line_no, 0)
            p = _field(obj, "input_length", path, line_no, 1)
            o = _field(obj, "output_length", path, line_no, 1)
            ids = obj.get("hash_ids")
            if not isinstance(ids, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in ids
            ):
                raise InputError(path, "must be a list of integers", row=line_no, field="hash_ids")
            if len(ids) != -(-p // MOONCAKE_BLOCK):
                raise InputError(
                    path,
                    f"{len(ids)} ids do not cover input_length {p} "
                    f"(need ceil({p}/{MOONCAKE_BLOCK}) = {-(-p // MOONCAKE_BLOCK)})",
                    row=line_no,
                    field="hash_ids",
                )
            lines.append(line_no)
            times.append(t / 1000.0)
            prompt.append(p)
            output.append(o)
            hash_ids.append(ids)
    if not lines:
        raise InputError(path, "empty file", row=1)
    t_arr, line_arr = np.array(times), np.array(lines)
    _check_sorted(t_arr, line_arr, path, "timestamp")
    t_arr -= t_arr[0]  # the trace's clock: seconds after its first request, as for Azure
    return Rows(path, line_arr, np.array(prompt), np.array(output), t_arr, hash_ids)


def _check_text(path: Path, format: str) -> None:
    """Refuse a binary file up front (a NUL byte or invalid UTF-8 in its first 64 KiB)."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    nul = head.find(b"\0")
    if nul >= 0:
        raise InputError(path, f"not a text {format} trace (byte {nul} is NUL)")
    codecs.getincrementaldecoder("utf-8")().decode(head, final=False)


READERS = {"azure": read_azure, "mooncake": read_mooncake, "sharegpt": read_sharegpt}


def read_rows(
    source: str, format: TraceFormat | None = None, path: str | None = None
) -> tuple[str, Rows]:
    """Parse a named trace, or a file (`path`, or `source` naming a file) with a format.

    A file given by `path` is read in `format`, or else in the format of the trace `source`.
    """
    if path is not None:
        format = format or (trace_info(source).format if source in TRACES else None)
        source = path
    elif source in TRACES:
        info = trace_info(source)
        if format not in (None, info.format):
            raise KvbenchError(f"trace {source!r} is in {info.format!r} format, not {format!r}")
        return source, read_file(locate(source), info.format)
    path = Path(source)
    if not path.exists():
        raise KvbenchError(f"{source}: no such trace name or file; names: {sorted(TRACES)}")
    if path.is_dir():
        raise InputError(path, "is a directory; give a trace file")
    if format not in READERS:
        raise KvbenchError(f"{source}: give the file's format, one of {sorted(READERS)}")
    return path.name, read_file(path, format)


def read_file(path: Path, format: TraceFormat) -> Rows:
    """Parse one trace file; a binary or unreadable file is an InputError naming it."""
    try:
        _check_text(path, format)
        return READERS[format](path)
    except UnicodeDecodeError as e:
        raise InputError(path, f"not a text {format} trace (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise InputError(path, f"cannot read the file ({e.strerror})") from None


def load_trace(
    source: str,
    format: TraceFormat | None = None,
    path: str | None = None,
    rate_scale: float = 1.0,
    window_start_s: float | None = None,
    window_end_s: float | None = None,
    max_requests: int | None = None,
    max_seq_len: int | None = None,
    clip: bool = True,
    seed: int = 0,
    arrival: Arrival | dict[str, Any] | None = None,
    length_scale: float = 1.0,
) -> Workload:
    """Requests of a trace, in arrival order.

    Args:
        source, format, path: see `read_rows`.
        rate_scale: arrival times are divided by this (2.0 replays twice as fast).
        window_start_s, window_end_s: keep requests arriving in [start, end) on the trace's
            clock (seconds after its first request); times are rebased to the window start,
            so a request 5 s into the window arrives at 5 s (before rate_scale).
        max_requests: keep the first N requests (after the window).
        max_seq_len, clip: requests longer than max_seq_len are clipped and counted
            (clip=True) or rejected with an error naming their line (clip=False).
        arrival: the arrival process of a trace without timestamps (ShareGPT); `seed` seeds it.
        length_scale: prompt and output lengths are multiplied by this (rounded, at least 1)
            before clipping; not for traces whose hash_ids fix the prompt's blocks (Mooncake).
    """
    check_rate_scale(rate_scale)
    check_length_scale(length_scale)
    name, rows = read_rows(source, format, path)
    if length_scale != 1.0 and rows.hash_ids is not None:
        raise KvbenchError(
            f"{rows.path}: workload.length_scale must be 1 for a trace with hash_ids "
            "(its 512-token blocks fix the prompt lengths)"
        )
    keep = _select(rows, window_start_s, window_end_s, max_requests)
    if rows.arrival_s is None:
        arr = _as(Arrival, arrival)
        times = arrival_times(arr.process, len(keep), arr.rate, arr.cv, np.random.default_rng(seed))
    else:
        times = rows.arrival_s[keep] - (window_start_s or 0.0)
    times = times / rate_scale
    prompts = scale_lengths(rows.prompt[keep], length_scale)
    outputs = scale_lengths(rows.output[keep], length_scale)
    requests, num_clipped = [], 0
    for j, i in enumerate(keep):
        p, o = int(prompts[j]), int(outputs[j])
        if max_seq_len is not None and p + o > max_seq_len:
            if not clip:
                raise InputError(
                    rows.path,
                    f"{p} + {o} tokens exceed max_seq_len {max_seq_len} (clipping is off)",
                    row=int(rows.lines[i]),
                    field=rows.prompt_field,
                )
            p, o = clip_lengths(p, o, max_seq_len)
            num_clipped += 1
        chunks: tuple = ()
        if rows.hash_ids is not None:
            chunks = _mooncake_chunks(rows.hash_ids[i], p)
        requests.append(Request(j, float(times[j]), p, o, chunks))
    return Workload(name, requests, num_clipped)


def _select(
    rows: Rows, start_s: float | None, end_s: float | None, max_requests: int | None
) -> np.ndarray:
    """Indices of the requests in the window [start_s, end_s), then the first max_requests."""
    if start_s is not None and start_s < 0:
        raise KvbenchError(f"workload.window_start_s must be >= 0, got {start_s}")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise KvbenchError(f"workload.window_end_s ({end_s}) must be > window_start_s ({start_s})")
    if max_requests is not None and max_requests < 1:
        raise KvbenchError(f"workload.max_requests must be >= 1 or null, got {max_requests}")
    keep = np.arange(len(rows.lines))
    t = rows.arrival_s
    if t is not None and (start_s is not None or end_s is not None):
        lo = -np.inf if start_s is None else start_s
        hi = np.inf if end_s is None else end_s
        keep = keep[(t >= lo) & (t < hi)]
    if max_requests is not None:
        keep = keep[:max_requests]
    if not keep.size:
        raise KvbenchError(f"{rows.path}: the window and max_requests select no requests")
    return keep


def _mooncake_chunks(ids: list[int], prompt_len: int) -> tuple:
    chunks = []
    for h in ids:
        if prompt_len <= 0:
            break
        chunks.append(((MOONCAKE, h), min(MOONCAKE_BLOCK, prompt_len)))
        prompt_len -= MOONCAKE_BLOCK
    return tuple(chunks)
