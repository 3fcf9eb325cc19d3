"""`kvbench-plot DIR`: every figure whose data are under DIR, written to DIR/figures/."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from plots import memory
from plots.kernels import kernel_bandwidth
from workloads.errors import KvbenchError, exits_cleanly


def plot_all(root: Path) -> list[Path]:
    from experiments.report import collect

    out = root / "figures"
    paths: list[Path] = []
    summaries = list(root.rglob("summary.json"))
    table = collect(root) if summaries else pd.DataFrame(columns=["experiment"])
    experiments = set(table.experiment.dropna())
    if "vllm_fig2" in experiments:
        paths += memory.fig2_bars(table, out / "fig2_memory_shares")
        runs = table[table.experiment == "vllm_fig2"][["run", "system"]].drop_duplicates()
        steps = {
            r.system: pd.read_parquet(root / r.run / "steps.parquet")
            for r in runs.itertuples()
            if (root / r.run / "steps.parquet").exists()
        }
        if steps:
            paths += memory.timeline(steps, table, out / "batch_and_memory_over_time")
    if "block_size" in experiments:
        paths += memory.block_size(table, out / "block_size")
    if "request_rate" in experiments:
        paths += memory.latency_vs_rate(table, out / "latency_vs_rate")
    if "mooncake_prefix" in experiments:
        paths += memory.hit_rate(table, out / "prefix_hit_rate")
    for csv in root.rglob("kernels.csv"):
        paths += kernel_bandwidth(pd.read_csv(csv), out / f"kernel_bandwidth_{csv.parent.name}")
    if not paths:
        raise KvbenchError(f"{root}: no runs or kernel tables to plot")
    return paths


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="kvbench-plot", description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        raise KvbenchError(f"{args.dir}: not a directory")
    for p in plot_all(args.dir):
        print(p)
