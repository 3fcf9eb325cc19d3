"""A step-time profile: steps of one model measured on one card, and the record of how.

    table  one row per measured step: FEATURES (engine/metrics.py), duration_s (seconds,
           > 0), point (the measured shape it repeats: rows of one point are held out
           together when fits are cross-validated); host_s and kernel_s when measured;
           run (0: a shape of the grid; k > 0: a step of the k-th served run added by
           `kvbench-calibrate --add-steps`, its point shared by the whole run)
    meta   card (CUDA device name), model, dtype, layout (paged | contiguous), block_size,
           backend, versions {torch, triton, transformers}, kvbench, git_sha, date, command,
           grid (what kvbench-calibrate was asked to measure), added_runs (what
           --add-steps appended: run directory, workload, steps kept and dropped)

A profile is one Parquet file; `meta` is JSON under the schema metadata key
`kvbench.profile`, so the file alone says what it measured. Written by kvbench-calibrate
(experiments/calibrate.py), read by the sim (`backend.profile=FILE`, engine/backends/
calibrated.py). Invariants checked on load: every column present and finite, features >= 0,
durations > 0, at least MIN_POINTS measured shapes, the meta fields present.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.backends.buckets import Padding
from engine.metrics import FEATURES
from workloads.errors import KvbenchError

META_KEY = b"kvbench.profile"
META_FIELDS = ("card", "model", "dtype", "layout", "block_size", "backend", "versions",
               "kvbench", "date", "command")  # fmt: skip
COLUMNS = (*FEATURES, "duration_s", "point")
MIN_POINTS = 3


@dataclass
class StepProfile:
    table: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path | None = None

    @property
    def padding(self) -> Padding | None:
        """How the measured backend padded steps to its CUDA graphs' buckets (its recorded
        backend= options); None: not at all."""
        return Padding.of(str(self.meta["backend"]), self.meta.get("config") or {})

    @property
    def features(self) -> dict[str, np.ndarray]:
        """FEATURES as the steps ran (padded to their graphs' buckets) and `run` (zeros for a
        profile of grid shapes alone): what fits read."""
        run = self.table.get("run")
        cols = {name: self.table[name] for name in FEATURES}
        pad = self.padding
        return {
            **(pad.columns(cols) if pad is not None else cols),
            "run": np.zeros(len(self)) if run is None else run,
        }

    def __len__(self) -> int:
        return len(self.table["duration_s"])


def save_profile(profile: StepProfile, path: Path) -> None:
    """Write the profile atomically (a temporary file beside `path`, then a rename)."""
    check(profile, path)
    names = [c for c in profile.table if c in COLUMNS or c in ("host_s", "kernel_s", "run")]
    schema_meta = {META_KEY: json.dumps(profile.meta, sort_keys=True).encode()}
    table = pa.table({c: profile.table[c] for c in names}).replace_schema_metadata(schema_meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_profile(path: str | Path) -> StepProfile:
    """Read and check a profile; a KvbenchError naming the file (and row, field) if bad."""
    path = Path(path)
    if not path.is_file():
        raise KvbenchError(f"{path}: no such profile file (write one with kvbench-calibrate)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise KvbenchError(f"{path}: not a Parquet step profile ({reason})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise KvbenchError(
            f"{path}: not a kvbench step profile (no {META_KEY.decode()} metadata); "
            "write one with kvbench-calibrate"
        )
    try:
        meta = json.loads(raw)
        assert isinstance(meta, dict)
    except (ValueError, AssertionError):
        raise KvbenchError(
            f"{path}: the {META_KEY.decode()} metadata is not a JSON object"
        ) from None
    cols = {name: table.column(name).to_numpy() for name in table.column_names}
    profile = StepProfile(cols, meta, path)
    check(profile, path)
    return profile


def check(profile: StepProfile, path: Path) -> None:
    for field in META_FIELDS:
        if field not in profile.meta:
            raise KvbenchError(f"{path}: metadata field {field!r} is missing")
    for name in COLUMNS:
        col = profile.table.get(name)
        if col is None:
            raise KvbenchError(f"{path}: column {name!r} is missing")
        if not np.issubdtype(col.dtype, np.number):
            raise KvbenchError(f"{path}: column {name!r} is not numeric ({col.dtype})")
        low = 0.0 if name != "duration_s" else np.nextafter(0.0, 1.0)
        bad = ~np.isfinite(col) | (col < low)
        if bad.any():
            i = int(np.argmax(bad))
            need = "> 0" if name == "duration_s" else ">= 0"
            raise KvbenchError(f"{path}, row {i}, field {name!r}: {float(col[i])} (must be {need})")
    points = len(np.unique(profile.table["point"]))
    if points < MIN_POINTS:
        raise KvbenchError(f"{path}: {points} measured shape(s); a fit needs at least {MIN_POINTS}")
