"""`kvbench-report DIR`: one tidy table over every run under DIR, references beside.

    DIR/report.csv   one row per (run, metric): run, setup, job_hash, experiment, system,
                     allocator, reservation, placement, block_size, workload, model, gpu,
                     kv_budget_gib, n, beam_width, request_rate, metric, value, unit,
                     reference, no_reference, incomplete
    DIR/report.md    per experiment and setup: measured (reference)
    DIR/fidelity.csv GPU runs beside calibrated-sim runs of the same config, metric by metric
                     (experiments/fidelity.py); also in report.md

Runs are grouped by setup: the hash of the resolved config without the keys their sweep
varies (experiments/sweeps.py). Runs of different setups never share a table or a figure;
runs with the same job hash are one job, shown once. A group whose sweeps launched more
jobs than finished says "incomplete: N of M jobs missing". Reference numbers
(experiments/reference.py) appear only beside runs that match the reference's setup.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback

from experiments import fidelity, sweeps
from experiments import runs as runs_mod
from experiments.reference import REFERENCES
from workloads.errors import KvbenchError, exits_cleanly

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
    "decode_tokens_per_s_saturated": "tokens/s",
    "decode_tokens_per_s_queued": "tokens/s",
    "mean_running_seqs_queued": "sequences",
    "request_throughput_per_s": "requests/s",
    "mean_latency_s": "s",
    "mean_normalized_latency_s": "s/token",
    "mean_ttft_s": "s",
    "block_saving": "%",
    "logical_physical_token_ratio": "x",
    "prefix_hit_rate": "%",
    "prefix_block_hit_rate": "%",
    "num_preemptions": "count",
    "clipped_requests": "count",
    "capacity_slots": "slots",
    "sim_time_s": "s",
    "wall_time_s": "s",
}
KEYS = [
    "setup",
    "setup_label",
    "job_hash",
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
    "backend",
    "kernel",
    "kv_budget_gib",
    "max_seq_len",
    "max_num_seqs",
    "length_scale",
    "n",
    "beam_width",
    "request_rate",
]
COLUMNS = ["run", *KEYS, "metric", "value", "unit", "reference", "no_reference", "incomplete"]
HEADLINE = ["share_token_states", "mean_batch_size", "throughput_tokens_per_s"]
SWEPT = {"seq_len": ("length_scale", "length x"), "concurrency": ("max_num_seqs", "max seqs")}
SWEPT_METRICS = ["share_token_states_all_steps", "mean_batch_size", "throughput_tokens_per_s"]
# beside the reference's metrics: what the sharing saves buys (Fig. 14's throughput)
EXTRA_METRICS = {"sharing": ["throughput_tokens_per_s", "decode_tokens_per_s_queued"]}
SCHEMES_METRICS = ["prefix_hit_rate", "share_token_states_all_steps", "share_free_all_steps",
                   "mean_batch_size", "throughput_tokens_per_s"]  # fmt: skip


def collect(root: Path) -> pd.DataFrame:
    """The tidy table of every finished run under root (percent metrics in percent)."""
    rows = []
    for run in runs_mod.find_runs(root):
        s = run.record
        base = {k: s.get(k) for k in KEYS}
        ref, why = run.reference
        for metric, unit in METRICS.items():
            v = s.get(metric)
            if v is None:
                continue
            scale = 100.0 if any(metric.startswith(p) for p in PERCENT) else 1.0
            rows.append(
                {
                    "run": run.name,
                    **base,
                    "metric": metric,
                    "value": v * scale,
                    "unit": unit,
                    "reference": ref.get(metric),
                    "no_reference": why,
                    "incomplete": run.incomplete,
                }
            )
    if not rows:
        raise KvbenchError(f"{root}: no runs (no summary.json below it)")
    return pd.DataFrame(rows, columns=COLUMNS)


def groups(table: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(experiment, title, rows) per experiment and setup, experiments in name order."""
    out = []
    exp = table.experiment.fillna("")
    for name in sorted(set(exp)):
        g = table[exp == name]
        setups = list(dict.fromkeys(g.setup))
        for setup in setups:
            title = name or "runs without an experiment"
            if len(setups) > 1:
                title += f", setup {setup[:8]} ({runs_mod.setup_label(g, setup)})"
            out.append((name, title, g[g.setup == setup]))
    return out


def markdown(table: pd.DataFrame) -> str:
    """Per experiment and setup: measured (reference), with what is missing and why."""
    out = []
    for exp, title, g in groups(table):
        ref = REFERENCES.get(exp)
        with_ref = g[g.reference.notna()]
        metrics = (
            list(dict.fromkeys(with_ref.metric))
            or (
                list(dict.fromkeys(g[g.metric.isin(_ref_metrics(exp))].metric))
                or (SCHEMES_METRICS if exp == "prefix_schemes" else None)
                or (SWEPT_METRICS if exp in SWEPT else HEADLINE)
            )
        ) + EXTRA_METRICS.get(exp, [])
        if exp == "mooncake_prefix":
            g = g[(g.block_size == 512) & g.kv_budget_gib.isna()]
        out += [f"### {title}", ""]
        if g.incomplete.notna().any():
            out += [f"**{g.incomplete.dropna().iloc[0]}**", ""]
        if ref is not None:
            out += [f"reference: {ref.source}", ""]
        out += _table(g, metrics, SWEPT.get(exp))
        for why in dict.fromkeys(g.no_reference.dropna()):
            out.append(f"- no reference beside some runs: {why}")
        out.append("")
    return "\n".join(out)


def _ref_metrics(exp: str) -> list[str]:
    ref = REFERENCES.get(exp)
    return [m for v in ref.values.values() for m in v] if ref else []


def _table(g: pd.DataFrame, metrics: list[str], swept: tuple[str, str] | None) -> list[str]:
    """One row per run: its keys (and the swept value of a seq_len / concurrency sweep)."""
    extra = f"{swept[1]} | " if swept else ""
    lines = [
        f"| system | workload | block | KV GiB | rate /s | {extra}run | "
        + " | ".join(metrics)
        + " |",
        "|---|---|---:|---:|---:|" + ("---:|" if swept else "") + "---|" + "---:|" * len(metrics),
    ]
    for (system, run), r in _ordered(g).groupby(["system", "run"], sort=False):
        cells = []
        for m in metrics:
            hit = r[r.metric == m]
            if hit.empty:
                cells.append("-")
                continue
            v, p = hit.value.iloc[0], hit.reference.iloc[0]
            cells.append(f"{v:.1f}" + ("" if pd.isna(p) else f" ({p:.1f})"))
        first = r.iloc[0]
        budget = "unlimited" if pd.isna(first.kv_budget_gib) else f"{first.kv_budget_gib:g}"
        rate = "-" if pd.isna(first.request_rate) else f"{first.request_rate:.2f}"
        value = f"{first[swept[0]]:g} | " if swept else ""
        lines.append(
            f"| {system} | {first.workload} | {first.block_size} | {budget} | {rate} | "
            f"{value}{run} | " + " | ".join(cells) + " |"
        )
    return lines


def _ordered(g: pd.DataFrame) -> pd.DataFrame:
    """Systems by their configs' rank, then runs in job order (numerically where numbered)."""
    num = pd.to_numeric(g.run.str.rsplit("/", n=1).str[-1], errors="coerce")
    return g.assign(_n=num).sort_values(["rank", "workload", "_n", "run"])


def write_report(root: Path) -> pd.DataFrame:
    """report.csv and report.md; with GPU runs beside calibrated-sim runs of the same
    configs, also fidelity.csv and the fidelity table in report.md (experiments/fidelity.py)."""
    table = collect(root)
    table.to_csv(root / "report.csv", index=False)
    text = "# kvbench report\n\nmeasured (reference); percentages of KV capacity where %.\n\n"
    (root / "report.md").write_text(text + markdown(table) + _fidelity(root))
    return table


def _fidelity(root: Path) -> str:
    t = fidelity.table(root)
    if t.empty:
        (root / "fidelity.csv").unlink(missing_ok=True)  # from runs no longer there
        return ""
    t.to_csv(root / "fidelity.csv", index=False)
    return "\n" + fidelity.markdown(t)


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="kvbench-report", description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="a results directory (searched recursively)")
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        raise KvbenchError(f"{args.dir}: not a directory")
    table = write_report(args.dir)
    print(markdown(table))
    if (args.dir / "fidelity.csv").exists():
        print(fidelity.markdown(pd.read_csv(args.dir / "fidelity.csv")))
    print(f"wrote {args.dir / 'report.csv'} and {args.dir / 'report.md'}")


class PrintReport(Callback):
    """Hydra callback: after a multirun, write and print the report of its sweep directory."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweeps.track(config.hydra)  # so that a failure before any job can tidy up

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        with contextlib.suppress(KvbenchError):  # no runs: every job failed, errors printed
            print("\n" + markdown(write_report(Path(config.hydra.sweep.dir))))
