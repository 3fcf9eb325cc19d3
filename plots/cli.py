"""`kvbench-plot DIR`: every figure whose data are under DIR, written to DIR/figures/.

One figure per experiment and setup (experiments/report.py groups runs by setup): with one
setup the figure is `figures/<name>.png`, with several `figures/<name>_<setup>.png`, each
titled with what sets its setup apart. A group with missing jobs says so in its title.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from plots import fidelity, memory, schemes
from plots.kernels import kernel_bandwidth
from plots.style import plt, save
from workloads.errors import KvbenchError, exits_cleanly

Draw = Callable[[pd.DataFrame, str], plt.Figure]


def _latency(table: pd.DataFrame, note: str, points: pd.DataFrame | None = None) -> plt.Figure:
    from experiments.reference import SUSTAINED_RATE_RATIOS, SUSTAINED_RATE_SOURCE

    ratios, source = SUSTAINED_RATE_RATIOS, SUSTAINED_RATE_SOURCE
    return memory.latency_vs_rate(table, note, ratios, source, points)


def _swept_rates(table: pd.DataFrame) -> bool:
    return bool(table.groupby("system").request_rate.nunique().max() > 1)


FIGURES: dict[str, list[tuple[str, Draw]]] = {
    "vllm_fig2": [("fig2_memory_shares", memory.fig2_bars)],
    "block_size": [("block_size", memory.block_size)],
    "request_rate": [("latency_vs_rate", _latency)],
    "vllm_fig13": [("latency_vs_rate", _latency)],  # where rates were swept
    "mooncake_prefix": [("prefix_hit_rate", memory.hit_rate)],
    "prefix_schemes": [("prefix_schemes", schemes.prefix_schemes)],
    "seq_len": [
        ("seq_len", lambda t, n: memory.sweep_lines(t, "length_scale", "sequence length scale", n))
    ],
    "concurrency": [
        ("concurrency", lambda t, n: memory.sweep_lines(t, "max_num_seqs", "max_num_seqs", n))
    ],
}


def plot_all(root: Path, points: Path | None = None) -> list[Path]:
    """Every figure of root's runs; runs under `points` of the same setup (outside
    `backend.*`) are drawn as crosses over the latency-against-rate lines (GPU runs over a
    sim's curve)."""
    from experiments.report import collect, groups

    out = root / "figures"
    paths: list[Path] = []
    found = groups(collect(root)) if any(root.rglob("summary.json")) else []
    count = Counter(exp for exp, _, _ in found)
    overlay = Overlay(root, points) if points is not None else None
    for exp, _, g in found:
        suffix = f"_{g.setup.iloc[0][:8]}" if count[exp] > 1 else ""
        note = _note(g)
        for stem, draw in FIGURES.get(exp, []):
            if draw is not _latency:
                paths += save(draw(g, note), out / f"{stem}{suffix}")
            elif _swept_rates(g):
                pts = overlay.matching(g) if overlay is not None else None
                paths += save(_latency(g, note, pts), out / f"{stem}{suffix}")
        if exp == "vllm_fig2":
            paths += _timeline(root, g, note, out / f"batch_and_memory_over_time{suffix}")
    if overlay is not None and not overlay.used:
        raise KvbenchError(f"{points}: no runs of the setup of a latency figure of {root}")
    fid = fidelity_table(root)
    if not fid.empty:
        paths += save(fidelity.predicted_vs_measured(fid), out / "fidelity")
    for csv in root.rglob("kernels.csv"):
        fig = kernel_bandwidth(pd.read_csv(csv))
        paths += save(fig, out / f"kernel_bandwidth_{csv.parent.name}")
    if not paths:
        raise KvbenchError(f"{root}: no runs or kernel tables to plot")
    return paths


class Overlay:
    """Runs under `points` to draw over root's latency figures: those of a figure's setup."""

    def __init__(self, root: Path, points: Path) -> None:
        from experiments.runs import find_runs

        self.setups = {r.setup: r.setup_config or {} for r in find_runs(root)}
        self.runs = find_runs(points)
        self.used = False

    def matching(self, g: pd.DataFrame) -> pd.DataFrame | None:
        want = self.setups[g.setup.iloc[0]]
        keys = [k for k in want if not k.startswith("backend.")]
        same = [r.record for r in self.runs
                if all(r.config.get(k, _MISSING) == want[k] for k in keys)]  # fmt: skip
        self.used |= bool(same)
        return pd.DataFrame(same) if same else None


_MISSING = object()


def fidelity_table(root: Path) -> pd.DataFrame:
    from experiments.fidelity import table

    return table(root)


def _note(g: pd.DataFrame) -> str:
    """What sets the group's setup apart, and what is missing from it."""
    parts = [g.setup_label.iloc[0], g.incomplete.iloc[0]]
    return "; ".join(str(p) for p in parts if isinstance(p, str) and p)


def _timeline(root: Path, g: pd.DataFrame, note: str, stem: Path) -> list[Path]:
    runs = g[["run", "system"]].drop_duplicates()
    steps = {
        r.system: pd.read_parquet(root / r.run / "steps.parquet")
        for r in runs.itertuples()
        if (root / r.run / "steps.parquet").exists()
    }
    return save(memory.timeline(steps, g, note), stem) if steps else []


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="kvbench-plot", description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--points", type=Path, help="runs to draw as crosses over the latency lines")
    args = ap.parse_args(argv)
    for d in (args.dir, args.points):
        if d is not None and not d.is_dir():
            raise KvbenchError(f"{d}: not a directory")
    for p in plot_all(args.dir, args.points):
        print(p)


if __name__ == "__main__":
    main()
