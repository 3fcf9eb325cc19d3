"""`kvbench-calibrate --add-steps RUN_DIR ... --profile IN --out OUT`: a profile that also
holds the measured steps of served runs (CPU only; the runs were made on the GPU).

Every GPU run's steps.parquet is a table of step shapes and measured durations, with the
shapes a served batch really has (ragged contexts, small prefills beside decode rows, block
tables after churn) - what a grid approximates. Each run must be of the profile's model,
dtype and card (summary.json, config.yaml); its steps are appended with `run` = k and one
`point` for the whole run, so cross-validation holds a run out in one piece. Steps longer
than OUTLIER x what the profile's own fit predicts are dropped and counted: first-use
compiles of a kernel specialization (measured on an H200: 0.8-2.2 s steps at the first
occurrence of a shape) are not serving time. Use runs of workloads other than the ones the
calibrated sim is then judged on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from engine.backends.profile import StepProfile
from engine.backends.step_fit import fit_best
from engine.metrics import FEATURES
from experiments.identity import TIMED_BACKENDS
from workloads.errors import KvbenchError

OUTLIER = 3.0


def run_dirs(roots: list[Path]) -> list[Path]:
    """The run directories (holding summary.json) under roots, in path order."""
    found = sorted({p.parent for root in roots for p in root.rglob("summary.json")})
    if not found:
        raise KvbenchError(f"no runs (summary.json) under {', '.join(map(str, roots))}")
    return found


def _check(run: Path, meta: dict[str, Any]) -> None:
    summary = json.loads((run / "summary.json").read_text())
    cfg = OmegaConf.load(run / "config.yaml") if (run / "config.yaml").exists() else {}
    have = {
        "backend": summary.get("backend"),
        "model": summary.get("model"),
        "card": summary.get("gpu"),
        "dtype": OmegaConf.select(cfg, "backend.dtype") if cfg else None,
    }
    if have["backend"] not in TIMED_BACKENDS:
        raise KvbenchError(f"{run}: backend {have['backend']!r} measured nothing (need "
                           f"{' or '.join(TIMED_BACKENDS)})")  # fmt: skip
    for field in ("model", "card", "dtype"):
        if have[field] != meta[field]:
            raise KvbenchError(
                f"{run}: {field} {have[field]!r}, but the profile's is {meta[field]!r}"
            )


def add_steps(profile: StepProfile, roots: list[Path]) -> tuple[StepProfile, list[str]]:
    """The profile with the steps of every GPU run under roots appended; a line per run."""
    t = {k: np.asarray(v) for k, v in profile.table.items()}
    t.setdefault("run", np.zeros(len(profile), np.int64))
    fit, _ = fit_best(profile.features, t["duration_s"], t["point"])
    meta = dict(profile.meta)
    added, lines = list(meta.get("added_runs", [])), []
    for run in run_dirs(roots):
        _check(run, meta)
        steps = pd.read_parquet(run / "steps.parquet")
        cols = {k: steps[k].to_numpy(np.float64) for k in FEATURES}
        if profile.padding is not None:  # the fit's shapes are the graphs'
            cols = profile.padding.columns(cols)
        keep = steps["duration_s"].to_numpy() <= OUTLIER * fit.predict(cols)
        k = int(t["run"].max()) + 1
        new = {n: steps[n].to_numpy()[keep] for n in (*FEATURES, "duration_s")}
        new["point"] = np.full(keep.sum(), int(t["point"].max()) + 1)
        new["run"] = np.full(keep.sum(), k)
        for n in ("host_s", "kernel_s"):
            if n in t:
                new[n] = steps[n].to_numpy()[keep]
        t = {n: np.concatenate([t[n], new[n]]) for n in t}
        workload = json.loads((run / "summary.json").read_text()).get("workload")
        added.append({"run": str(run), "workload": workload, "steps": int(keep.sum()),
                      "dropped": int((~keep).sum())})  # fmt: skip
        lines.append(f"  added {run} ({workload}): {keep.sum():,} steps, dropped "
                     f"{(~keep).sum()} over {OUTLIER:g}x the fit (first-use compiles)")  # fmt: skip
    meta["added_runs"] = added
    return StepProfile(t, meta, profile.path), lines
