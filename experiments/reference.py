"""Reference numbers the report puts beside measured ones, and the setups they hold for.

A reference value is shown beside a run only when the run matches the reference's setup
(every key of `Reference.setup` and of the system's own requirements); otherwise the report
says which key differs. Keys name summary.json fields (`model`, `kv_budget_gib`, ...) or
leaves of the resolved config (`workload.arrival.rate`).

Sources: Kwon et al., "Efficient Memory Management for Large Language Model Serving with
PagedAttention", SOSP 2023 (Figs. 2, 13a, 14-15; section 6.2 for request rates), and the
Mooncake traces' own hash ids (Qin et al., FAST 2025): the share of block references that
repeat an earlier block, computed by `kvbench-trace-stats`, not a number the paper publishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reference:
    source: str
    values: dict[str, dict[str, float]]  # system -> metric -> value (percent where %)
    setup: dict[str, Any]
    per_system: dict[str, dict[str, Any]] = field(default_factory=dict)


FIG2_SETUP = {
    "model": "opt_13b",
    "kv_budget_gib": 12,
    "max_seq_len": 2048,
    "workload": "sharegpt_like",
    "workload.length_scale": 1.0,
}
ORCA = {"placement": "buddy"}
FIG2_SYSTEMS = {
    "orca_max": ORCA,
    "orca_pow2": ORCA,
    "orca_oracle": ORCA,
    "paged": {"block_size": 16},
}
PAPER = "PagedAttention paper (Kwon et al., SOSP 2023)"

REFERENCES: dict[str, Reference] = {
    "vllm_fig2": Reference(
        f"{PAPER}, Fig. 2",
        {
            "orca_max": {
                "share_token_states": 20.4,
                "share_reservation": 13.3,
                "share_internal_frag": 57.3,
                "share_external_frag": 8.9,
            },
            "orca_pow2": {
                "share_token_states": 26.8,
                "share_reservation": 17.9,
                "share_internal_frag": 13.6,
                "share_external_frag": 41.6,
            },
            "orca_oracle": {
                "share_token_states": 38.2,
                "share_reservation": 25.2,
                "share_external_frag": 36.6,
            },
            "paged": {"share_token_states": 96.3},
        },
        FIG2_SETUP,
        FIG2_SYSTEMS,
    ),
    "vllm_fig13": Reference(
        f"{PAPER}, Fig. 13a (2 requests/s)",
        {
            "orca_max": {"mean_batch_size": 7.00},
            "orca_pow2": {"mean_batch_size": 9.81},
            "orca_oracle": {"mean_batch_size": 13.62},
            "paged": {"mean_batch_size": 30.42},
        },
        {**FIG2_SETUP, "gpu": "a100_40gb", "workload.arrival.rate": 2.0},
        FIG2_SYSTEMS,
    ),
    "sharing": Reference(
        f"{PAPER}, Figs. 14-15",
        {
            "n2": {"block_saving": 6.1},
            "n4": {"block_saving": 8.5},
            "n6": {"block_saving": 9.8},
            "beam2": {"block_saving": 37.6},
            "beam4": {"block_saving": 53.1},
            "beam6": {"block_saving": 55.2},
        },
        {
            "model": "opt_13b",
            "kv_budget_gib": 12,
            "max_seq_len": 2048,
            "workload": "alpaca_like",
            "workload.length_scale": 1.0,
            "allocator": "paged",
            "block_size": 16,
        },
    ),
    "mooncake_prefix": Reference(
        "the trace's repeat share: block references whose hash id appeared in an earlier "
        "request (computed from the trace, not published)",
        {
            "mooncake_conv": {"prefix_block_hit_rate": 36.6},
            "mooncake_synth": {"prefix_block_hit_rate": 64.0},
        },
        {
            "kv_budget_gib": None,
            "block_size": 512,
            "clipped_requests": 0,
            "workload.max_requests": None,
            "workload.window_start_s": None,
            "workload.window_end_s": None,
        },
    ),
}

# PagedAttention paper section 6.2, ShareGPT, OPT-13B to 175B: the request rate vLLM
# sustains at similar latency, as a multiple of each Orca baseline's.
SUSTAINED_RATE_RATIOS = {"orca_oracle": (1.7, 2.7), "orca_max": (2.7, 8.0)}
SUSTAINED_RATE_SOURCE = "PagedAttention paper, section 6.2\n(ShareGPT, OPT-13B to 175B)"
DEFAULTS = {"workload.length_scale": 1.0}


def system_of(s: dict[str, Any]) -> str:
    """The name a run goes by in the paper's figures."""
    if s.get("experiment") == "sharing":  # the sampling; and the system where not vLLM's
        n, width = s["n"], s["beam_width"]
        name = f"n{n}" if n > 1 else f"beam{width}" if width > 1 else "single"
        base = s.get("system") or _allocator_system(s)  # its allocator config's system
        return name if base == "paged" else f"{base} {name}"
    if s.get("experiment") == "mooncake_prefix":
        return str(s["workload"])
    if s.get("system"):  # its allocator config's system name (experiments/systems.py)
        return str(s["system"])
    return _allocator_system(s)  # summaries from before allocator configs named systems


def _allocator_system(s: dict[str, Any]) -> str:
    return f"orca_{s['reservation']}" if s["allocator"] == "static" else str(s["allocator"])


def reference_for(run: dict[str, Any], system: str) -> tuple[dict[str, float], str | None]:
    """(metric -> reference value, None) for a run (summary and config) of this system
    (`system_of` its summary) matching a reference setup, else ({}, why not) - why is None
    where the experiment has no reference for this system."""
    ref = REFERENCES.get(run.get("experiment") or "")
    if ref is None or system not in ref.values:
        return {}, None
    for key, want in {**ref.setup, **ref.per_system.get(system, {})}.items():
        have = run.get(key, DEFAULTS.get(key))
        if have != want:
            return {}, f"{key} is {have}, the reference setup has {want}"
    return ref.values[system], None
