"""`kvbench-trace-stats NAME_OR_PATH [--format F] [--fit]`: what a trace holds.

Prints rows, duration, mean rate, input and output mean / median / p99, and for Mooncake
traces the share of block references that repeat a block seen in an earlier request (the
hit-rate ceiling of an infinite prefix cache, in file order). `--fit` prints instead the
statistics the embedded synthetic default is built from (workloads/data/azure_conv_fit.json).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from workloads.errors import exits_cleanly
from workloads.traces import Rows, read_rows


def repeat_share(hash_ids: list[list[int]]) -> float:
    """Share of block references whose id appeared in an earlier request."""
    seen: set[int] = set()
    repeats = total = 0
    for ids in hash_ids:
        repeats += sum(h in seen for h in ids)
        total += len(ids)
        seen.update(ids)
    return repeats / total


def trace_stats(rows: Rows) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": len(rows.lines)}
    if rows.arrival_s is not None:
        duration = float(rows.arrival_s[-1] - rows.arrival_s[0])
        out["duration_s"] = duration
        out["mean_rate_per_s"] = len(rows.lines) / duration if duration > 0 else float("inf")
    for name, x in (("input", rows.prompt), ("output", rows.output)):
        out[f"{name}_mean"] = float(np.mean(x))
        out[f"{name}_median"] = float(np.median(x))
        out[f"{name}_p99"] = float(np.percentile(x, 99))
    if rows.hash_ids is not None:
        out["block_refs"] = sum(map(len, rows.hash_ids))
        out["distinct_blocks"] = len({h for ids in rows.hash_ids for h in ids})
        out["repeat_block_share"] = repeat_share(rows.hash_ids)
    return out


def fit(rows: Rows) -> dict[str, Any]:
    """Arrival rate and CV, and mean/std/min/max of the lengths."""
    gaps = np.diff(rows.arrival_s) if rows.arrival_s is not None else np.array([np.nan])
    lengths = {
        k: {
            "mean": float(x.mean()),
            "std": float(x.std()),
            "min": int(x.min()),
            "max": int(x.max()),
        }
        for k, x in (("prompt", rows.prompt), ("output", rows.output))
    }
    rate = 1.0 / float(gaps.mean())
    return {
        "source": str(rows.path.name),
        "rate": rate,
        "cv": float(gaps.std() / gaps.mean()),
        **lengths,
    }


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="kvbench-trace-stats", description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a trace name (azure_conv, mooncake_conv, ...) or a file path")
    ap.add_argument("--format", choices=["azure", "mooncake", "sharegpt"], help="for a file path")
    ap.add_argument("--fit", action="store_true", help="print the synthetic-default fit as JSON")
    args = ap.parse_args(argv)
    name, rows = read_rows(args.source, args.format)
    if args.fit:
        print(json.dumps(fit(rows), indent=2))
        return
    print(f"trace: {name}")
    for key, value in trace_stats(rows).items():
        text = f"{value:,.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else f"{value:,}"
        if key == "repeat_block_share":
            text = f"{100 * value:.1f}%"
        print(f"  {key:<20} {text}")
