"""Per-step and per-request records of a run, and the summary computed from them.

Metric names are the constants below; tables are column dicts (written as Parquet by
experiments/results.py). Memory shares are fractions of capacity. "Saturated" steps are the
steps in which the allocator refused the head-of-line request: memory limited admission.
The PagedAttention paper's Fig. 2 averages over those; `*_all_steps` averages over all steps.
Both are plain means over steps.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

from allocators.base import MemoryUsage
from engine.sequence import Group

FEATURES = (
    "num_prefill_tokens",
    "num_decode_tokens",
    "decode_context",
    "prefill_pairs",
    "prefill_cached",
    "num_prefill_seqs",
    "num_copied_blocks",
    "num_swapped_blocks",
)
"""The step's shape (`StepBatch.features`): new prefill and decode tokens, KV tokens the
decode tokens read (summed over sequences), query-key pairs of the prefill tokens, cached
tokens the prefills read, prefilled sequences, blocks copied and blocks swapped. With
`duration_s` they are a step-time sample (engine/backends/profile.py fits them)."""
STEP_COLUMNS = (
    "time_s",
    "duration_s",
    "num_running_reqs",
    "num_running_seqs",
    "num_waiting",
    "mem_limited",
    "num_preempted",
    "num_host_blocks",
    *FEATURES,
    *MemoryUsage._fields,
)
TIMING_COLUMNS = ("host_s", "kernel_s")
"""Measured by a backend that runs the step (0 for the sim): host and GPU kernel seconds."""
SHARES = ("token_states", "reservation", "internal_frag", "external_frag", "free")
REQUEST_COLUMNS = (
    "req_id",
    "arrival_s",
    "first_token_s",
    "finish_s",
    "prompt_tokens",
    "output_tokens",
    "num_seqs",
    "num_preemptions",
    "cached_tokens",
    "computed_tokens",
)


class StepLog:
    """One row per engine step, STEP_COLUMNS in order (the MemoryUsage last), as float64s,
    and for a backend that measures its steps the TIMING_COLUMNS of every step in `timing`.

    The engine extends `values` with each row's tuple directly: it is its hot path, and an
    array of doubles becomes the table without a copy. The sim measures nothing: its timing
    stays empty and reads as zeros.
    """

    def __init__(self) -> None:
        self.values = array("d")
        self.timing = array("d")

    def __len__(self) -> int:
        return len(self.values) // len(STEP_COLUMNS)

    def columns(self) -> dict[str, np.ndarray]:
        n = len(self)
        table = np.frombuffer(self.values, np.float64).reshape(n, len(STEP_COLUMNS))
        cols = {name: table[:, j] for j, name in enumerate(STEP_COLUMNS)}
        for name in STEP_COLUMNS[2:]:
            if name != "prefill_pairs":  # half pairs: causal attention over odd counts
                cols[name] = cols[name].astype(bool if name == "mem_limited" else np.int64)
        timing = np.frombuffer(self.timing, np.float64) if self.timing else np.zeros(2 * n)
        for j, name in enumerate(TIMING_COLUMNS):
            cols[name] = timing.reshape(n, 2)[:, j]
        return cols


def request_columns(groups: list[Group]) -> dict[str, np.ndarray]:
    rows = [
        (
            g.req.req_id,
            g.req.arrival_s,
            g.first_token_s,
            g.finish_s,
            g.req.prompt_len,
            g.req.output_len * g.num_seqs,
            g.num_seqs,
            g.num_preemptions,
            g.num_cached_tokens,
            g.num_computed_tokens,
        )
        for g in sorted(groups, key=lambda g: g.req.req_id)
    ]
    cols = list(zip(*rows)) if rows else [[] for _ in REQUEST_COLUMNS]
    return {name: np.asarray(col) for name, col in zip(REQUEST_COLUMNS, cols)}


def _decode_rate(steps: dict[str, np.ndarray], which: np.ndarray) -> float | None:
    """Decode tokens per second over the steps `which` selects (None: no time there)."""
    seconds = steps["duration_s"][which].sum()
    return float(steps["num_decode_tokens"][which].sum() / seconds) if seconds > 0 else None


def summarize(steps: dict[str, np.ndarray], reqs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The run's headline numbers (summary.json keys of DESIGN.md / the engine issue)."""
    n = len(steps["time_s"])
    cap = steps["capacity"].astype(float)
    sat = steps["mem_limited"].astype(bool)
    out: dict[str, Any] = {"num_steps": n, "num_saturated_steps": int(sat.sum())}
    for name in SHARES:
        share = steps[name] / cap if n else np.zeros(0)
        out[f"share_{name}"] = float(share[sat].mean()) if sat.any() else None
        out[f"share_{name}_all_steps"] = float(share.mean()) if n else None
    batch = steps["num_running_reqs"]
    out["max_batch_size"] = int(batch.max()) if n else 0
    out["mean_batch_size"] = float(batch.mean()) if n else 0.0
    out["mean_batch_size_saturated"] = float(batch[sat].mean()) if sat.any() else None
    # the serving capacity when memory limits the batch: decode tokens (one generated token
    # each) per second of saturated steps - the rate a system sustains, without the run's
    # ramp-up and drain (PagedAttention paper Fig. 12's "sustained rate", in tokens)
    out["decode_tokens_per_s_saturated"] = _decode_rate(steps, sat)
    # the same over steps with requests waiting, whatever held them back (memory, or the
    # max_num_seqs cap a system with little memory per sequence reaches first)
    queued = steps["num_waiting"] > 0
    out["decode_tokens_per_s_queued"] = _decode_rate(steps, queued)
    out["mean_running_seqs_queued"] = (
        float(steps["num_running_seqs"][queued].mean()) if queued.any() else None
    )
    out["mean_running_seqs"] = float(steps["num_running_seqs"].mean()) if n else 0.0
    logical = steps["logical_slots"].astype(float)
    used = cap - steps["free"] - steps["external_frag"]
    with np.errstate(invalid="ignore", divide="ignore"):
        saving = np.where(logical > 0, 1 - used / logical, np.nan)
        ratio = np.where(
            steps["token_states"] > 0, steps["logical_tokens"] / steps["token_states"], np.nan
        )
    out["block_saving"] = float(np.nanmean(saving)) if n and np.isfinite(saving).any() else 0.0
    out["logical_physical_token_ratio"] = (
        float(np.nanmean(ratio)) if n and np.isfinite(ratio).any() else 1.0
    )
    cached, computed = reqs["cached_tokens"].sum(), reqs["computed_tokens"].sum()
    out["prefix_hit_rate"] = float(cached / (cached + computed)) if cached + computed else 0.0
    out["host_s"] = float(steps["host_s"].sum())
    out["kernel_s"] = float(steps["kernel_s"].sum())
    out["max_host_blocks"] = int(steps["num_host_blocks"].max()) if n else 0
    end = float(steps["time_s"][-1] + steps["duration_s"][-1]) if n else 0.0
    out["sim_time_s"] = end
    generated = int(reqs["output_tokens"].sum())
    out["throughput_tokens_per_s"] = generated / end if end > 0 else 0.0
    latency = reqs["finish_s"] - reqs["arrival_s"]
    if len(latency):
        per_token = latency / (reqs["output_tokens"] / reqs["num_seqs"])
        out["mean_latency_s"] = float(latency.mean())
        out["mean_normalized_latency_s"] = float(per_token.mean())
        out["mean_ttft_s"] = float((reqs["first_token_s"] - reqs["arrival_s"]).mean())
    return out
