"""Fidelity of the calibrated sim: runs of one workload measured on a GPU backend beside the
same runs priced by `backend=sim backend.profile=...`, metric by metric, against targets.

    pairs       a measured run (backend model or attention) and a predicted run (backend sim,
                kernel "profile") whose configs are equal outside `backend.*`
    table       one row per (pair, metric): case, workload, system, gpu, metric, measured,
                predicted, error (predicted / measured - 1), target, within

Metrics: generated tokens/s, mean and p99 time to first token (arrival to first token) and
time per output token (first token to finish, over the tokens after the first, per request
with more than one output token), mean batch, preemptions. Targets (issue 11): throughput
within 5%, means within 10%, p99s within 15%; preemptions have none (counts are shown).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.backends.profile import load_profile
from engine.backends.step_fit import fit_best
from experiments import runs as runs_mod
from experiments.identity import PRESENTATION_KEYS, TIMED_BACKENDS, digest
from workloads.errors import KvbenchError

METRICS = {  # name: (label, unit, target)
    "throughput_tokens_per_s": ("throughput", "tokens/s", 0.05),
    "mean_ttft_s": ("mean TTFT", "s", 0.10),
    "p99_ttft_s": ("p99 TTFT", "s", 0.15),
    "mean_tpot_s": ("mean TPOT", "s", 0.10),
    "p99_tpot_s": ("p99 TPOT", "s", 0.15),
    "mean_batch_size": ("mean batch", "requests", 0.10),
    "num_preemptions": ("preemptions", "count", None),
}
COLUMNS = ["case", "workload", "system", "allocator", "gpu", "measured_run", "predicted_run",
           "profile", "metric", "measured", "predicted", "error", "target", "within"]  # fmt: skip


def latency(run_dir: Path) -> dict[str, float]:
    """Mean and p99 TTFT and TPOT from a run's requests.parquet."""
    r = pd.read_parquet(run_dir / "requests.parquet")
    ttft = (r.first_token_s - r.arrival_s).to_numpy()
    per_seq = (r.output_tokens / r.num_seqs).to_numpy()
    more = per_seq > 1
    tpot = ((r.finish_s - r.first_token_s).to_numpy()[more]) / (per_seq[more] - 1)
    out = {}
    for name, v in (("ttft", ttft), ("tpot", tpot)):
        out[f"mean_{name}_s"] = float(v.mean()) if len(v) else float("nan")
        out[f"p99_{name}_s"] = float(np.quantile(v, 0.99)) if len(v) else float("nan")
    return out


def _key(run: runs_mod.Run) -> str:
    skip = PRESENTATION_KEYS
    kept = {
        k: v
        for k, v in run.config.items()
        if not k.startswith("backend.") and k.split(".")[0] not in skip
    }
    return digest(kept)


def pairs(root: Path) -> list[tuple[runs_mod.Run, runs_mod.Run]]:
    """(measured, predicted) runs under root with equal configs outside backend.*"""
    found = runs_mod.find_runs(root) if any(root.rglob("summary.json")) else []
    measured: dict[str, runs_mod.Run] = {}
    predicted: dict[str, runs_mod.Run] = {}
    for run in found:
        rec = run.record
        if rec.get("backend") in TIMED_BACKENDS:
            measured.setdefault(_key(run), run)
        elif rec.get("backend") == "sim" and rec.get("kernel") == "profile":
            predicted.setdefault(_key(run), run)
    return [(measured[k], predicted[k]) for k in measured if k in predicted]


def _values(run: runs_mod.Run) -> dict[str, Any]:
    return {**{k: run.record.get(k) for k in METRICS}, **latency(run.path)}


def table(root: Path) -> pd.DataFrame:
    """The fidelity table of every pair under root (empty when there is none)."""
    rows = []
    for m, p in pairs(root):
        mv, pv = _values(m), _values(p)
        rec = m.record
        case = f"{rec.get('workload')} / {rec.get('label') or rec.get('system')}"
        rate = rec.get("request_rate")
        if rate:
            case += f" @ {rate:.3g} req/s"
        for metric, (_, _, target) in METRICS.items():
            a, b = mv.get(metric), pv.get(metric)
            a = float("nan") if a is None else float(a)
            b = float("nan") if b is None else float(b)
            err = b / a - 1 if a else float("nan")
            judged = target is not None and np.isfinite(err)
            within = bool(abs(err) <= target + 1e-9) if judged else None
            keys = [rec.get(k) for k in ("workload", "system", "allocator", "gpu")]
            profile = p.config.get("backend.profile")
            rows.append([case, *keys, m.name, p.name, profile, metric, a, b, err, target, within])
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(t: pd.DataFrame) -> str:
    """One row per case: measured / predicted (error) per metric; misses in bold."""
    if t.empty:
        return ""
    head = [label for label, _, _ in METRICS.values()]
    lines = [
        "### fidelity: calibrated sim (predicted) against the GPU (measured)",
        "",
        "targets: throughput 5%, means 10%, p99 15%; cells: measured / predicted (error)",
        "",
        "| case | gpu | " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * len(head),
    ]
    for case, g in t.groupby("case", sort=False):
        cells = [_cell(r) for r in g.itertuples()]
        lines.append(f"| {case} | {g.gpu.iloc[0]} | " + " | ".join(cells) + " |")
    judged = t.within.dropna()
    lines += ["", f"within target: {int(judged.sum())} of {len(judged)} comparisons", ""]
    lines += [f"- {_profile_line(path)}" for path in dict.fromkeys(t.profile.dropna())]
    return "\n".join(lines) + "\n"


def _profile_line(path: str) -> str:
    """The profile the sim runs used: its card, and the held-out error of the fit the sim
    makes of it now (engine/backends/step_fit.py)."""
    try:
        p = load_profile(path)
    except KvbenchError as e:
        return f"profile {e}"
    _, fit = fit_best(p.features, p.table["duration_s"], p.table["point"])
    err = fit["chosen"]
    return (f"profile {path}: {p.meta['card']}, measured {p.meta['date']}; the sim's fit "
            f"({fit['model']}) predicts held-out shapes within {100 * err['mean']:.1f}% on "
            f"average (p95 {100 * err['p95']:.1f}%)")  # fmt: skip


def _cell(r: Any) -> str:
    if not np.isfinite(r.measured):
        return "-"
    fmt = "{:.0f}" if r.metric in ("throughput_tokens_per_s", "num_preemptions") else "{:.3g}"
    text = f"{fmt.format(r.measured)} / {fmt.format(r.predicted)}"
    if np.isfinite(r.error):
        err = f"{100 * r.error:+.1f}%"
        text += f" ({f'**{err}**' if r.within is False else err})"
    return text
