"""`kvbench-report DIR`: one tidy table over every run under DIR, the paper's numbers beside.

    DIR/report.csv   one row per (run, metric): run, experiment, system, allocator,
                     reservation, placement, block_size, workload, model, gpu, kv_budget_gib,
                     n, beam_width, request_rate, metric, value, unit, paper
    DIR/report.md    per experiment, measured (paper) for the metrics the paper reports

Paper numbers: Kwon et al., "Efficient Memory Management for Large Language Model Serving with
PagedAttention", SOSP 2023 (Figs. 2, 13a, 14-15), and the Mooncake traces' own block-repeat
shares (Qin et al., FAST 2025; ../shared/traces/README.md), as BENCHMARKS.md lists them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback

from experiments import sweeps, systems
from workloads.errors import KvbenchError, exits_cleanly

PAPER: dict[str, dict[str, dict[str, float]]] = {
    "vllm_fig2": {
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
    "vllm_fig13": {
        "orca_max": {"mean_batch_size": 7.00},
        "orca_pow2": {"mean_batch_size": 9.81},
        "orca_oracle": {"mean_batch_size": 13.62},
        "paged": {"mean_batch_size": 30.42},
    },
    "sharing": {
        "n2": {"block_saving": 6.1},
        "n4": {"block_saving": 8.5},
        "n6": {"block_saving": 9.8},
        "beam2": {"block_saving": 37.6},
        "beam4": {"block_saving": 53.1},
        "beam6": {"block_saving": 55.2},
    },
    "mooncake_prefix": {  # unlimited memory, 512-token blocks
        "mooncake_conv": {"prefix_block_hit_rate": 36.6},
        "mooncake_synth": {"prefix_block_hit_rate": 64.0},
    },
}
PERCENT = {"share_", "block_saving", "prefix_hit_rate", "prefix_block_hit_rate"}
METRICS = {
    **{
        f"share_{k}{s}": "%"
        for k in ("token_states", "reservation", "internal_frag", "external_frag", "free")
        for s in ("", "_all_steps")
    },
    "mean_batch_size": "requests",
    "mean_batch_size_saturated": "requests",
    "max_batch_size": "requests",
    "mean_running_seqs": "sequences",
    "throughput_tokens_per_s": "tokens/s",
    "mean_latency_s": "s",
    "mean_normalized_latency_s": "s/token",
    "mean_ttft_s": "s",
    "block_saving": "%",
    "logical_physical_token_ratio": "x",
    "prefix_hit_rate": "%",
    "prefix_block_hit_rate": "%",
    "num_preemptions": "count",
    "capacity_slots": "slots",
    "sim_time_s": "s",
    "wall_time_s": "s",
}
KEYS = [
    "experiment",
    "system",
    "label",
    "rank",
    "allocator",
    "reservation",
    "placement",
    "block_size",
    "workload",
    "model",
    "gpu",
    "kv_budget_gib",
    "n",
    "beam_width",
    "request_rate",
]


def system_of(s: dict[str, Any]) -> str:
    """The name a run goes by in tables and the paper's figures: its allocator's system name
    (experiments/systems.py), or what the experiment compares."""
    if s.get("experiment") == "sharing":
        return f"n{s['n']}" if s["n"] > 1 else f"beam{s['beam_width']}"
    if s.get("experiment") == "mooncake_prefix":
        return s["workload"]
    if s.get("system"):
        return str(s["system"])
    if s["allocator"] == "static":  # summaries from before allocator configs named systems
        return f"orca_{s['reservation']}"
    return str(s["allocator"])


def paper_value(s: dict[str, Any], metric: str) -> float | None:
    exp = s.get("experiment")
    if exp == "mooncake_prefix" and (s["kv_budget_gib"] is not None or s["block_size"] != 512):
        return None
    return PAPER.get(exp or "", {}).get(system_of(s), {}).get(metric)


def collect(root: Path) -> pd.DataFrame:
    """The tidy table of every summary.json under root (percent metrics in percent)."""
    rows = []
    for path in sorted(root.rglob("summary.json")):
        s = json.loads(path.read_text())
        base = {k: s.get(k) for k in KEYS if k not in ("system", "label", "rank")}
        base["system"] = system_of(s)
        base["label"], base["rank"] = systems.label_rank(base["system"], s)
        base["run"] = str(path.parent.relative_to(root))
        for metric, unit in METRICS.items():
            v = s.get(metric)
            if v is None:
                continue
            scale = 100.0 if any(metric.startswith(p) for p in PERCENT) else 1.0
            rows.append(
                {
                    **base,
                    "metric": metric,
                    "value": v * scale,
                    "unit": unit,
                    "paper": paper_value(s, metric),
                }
            )
    if not rows:
        raise KvbenchError(f"{root}: no runs (no summary.json below it)")
    return pd.DataFrame(rows, columns=["run", *KEYS, "metric", "value", "unit", "paper"])


def markdown(table: pd.DataFrame) -> str:
    """Per experiment with paper numbers: measured (paper); other experiments: a short table."""
    out = []
    for exp, g in table.groupby(table.experiment.fillna("(none)"), sort=True):
        paper = g[g.paper.notna()]
        metrics = (
            list(dict.fromkeys(paper.metric))
            if len(paper)
            else ["share_token_states", "mean_batch_size", "throughput_tokens_per_s"]
        )
        if exp == "mooncake_prefix":
            g = g[(g.block_size == 512) & g.kv_budget_gib.isna()]
        out += [
            f"### {exp}",
            "",
            "| system | workload | block | KV GiB | rate /s | run | " + " | ".join(metrics) + " |",
            "|---|---|---:|---:|---:|---|" + "---:|" * len(metrics),
        ]
        for (system, run), r in _ordered(g).groupby(["system", "run"], sort=False):
            cells = []
            for m in metrics:
                hit = r[r.metric == m]
                if hit.empty:
                    cells.append("-")
                    continue
                v, p = hit.value.iloc[0], hit.paper.iloc[0]
                cells.append(f"{v:.1f}" + ("" if pd.isna(p) else f" ({p:.1f})"))
            first = r.iloc[0]
            budget = "unlimited" if pd.isna(first.kv_budget_gib) else f"{first.kv_budget_gib:g}"
            rate = "-" if pd.isna(first.request_rate) else f"{first.request_rate:.2f}"
            out.append(
                f"| {system} | {first.workload} | {first.block_size} | {budget} | {rate} | "
                f"{run} | " + " | ".join(cells) + " |"
            )
        out.append("")
    return "\n".join(out)


def _ordered(g: pd.DataFrame) -> pd.DataFrame:
    """Systems by their configs' rank, then runs in job order (numerically where numbered)."""
    num = pd.to_numeric(g.run.str.rsplit("/", n=1).str[-1], errors="coerce")
    return g.assign(_n=num).sort_values(["rank", "workload", "_n", "run"])


def write_report(root: Path) -> pd.DataFrame:
    table = collect(root)
    table.to_csv(root / "report.csv", index=False)
    text = "# kvbench report\n\nmeasured (paper); percentages of KV capacity where %.\n\n"
    (root / "report.md").write_text(text + markdown(table))
    return table


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="kvbench-report", description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="a results directory (searched recursively)")
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        raise KvbenchError(f"{args.dir}: not a directory")
    table = write_report(args.dir)
    print(markdown(table))
    print(f"wrote {args.dir / 'report.csv'} and {args.dir / 'report.md'}")


class PrintReport(Callback):
    """Hydra callback: after a multirun, write and print the report of its sweep directory."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweeps.track(config.hydra)  # so that a failure before any job can tidy up

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        with contextlib.suppress(KvbenchError):  # no runs: every job failed, errors printed
            print("\n" + markdown(write_report(Path(config.hydra.sweep.dir))))
