"""Figures of the memory experiments, from the report table (experiments/report.py: one row
per run and metric, a `reference` column where a run matches the reference's setup) and the
runs' steps.parquet tables only. Each function draws one setup group and returns the figure;
`note` ("incomplete: 6 of 18 jobs missing", the setup's label) goes into the title."""

from __future__ import annotations

import numpy as np
import pandas as pd

from plots.style import plt, title

PARTS = [
    ("token_states", "token states", "#2b6cb0"),
    ("reservation", "reservation", "#68a0d8"),
    ("internal_frag", "internal frag.", "#e8a33d"),
    ("external_frag", "external frag.", "#c0504d"),
    ("free", "free", "#d9d9d9"),
]


def systems(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(system, label) of the table's runs, in their allocator configs' order (the report
    table's `label` and `rank` columns, from experiments/systems.py)."""
    first = table.sort_values("rank", kind="stable").drop_duplicates("system")
    return list(zip(first.system, first.label))


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run, one column per metric (and `ref:<metric>` for reference values)."""
    keys = ["system", "label", "rank", "workload", "block_size", "kv_budget_gib", "request_rate"]
    keys += ["max_num_seqs", "length_scale", "no_reference", "backend", "gpu"]
    rows = []
    for run, r in table.groupby("run", sort=False):
        row = {"run": run, **{k: r[k].iloc[0] for k in keys if k in r}}
        row.update(dict(zip(r.metric, r.value)))
        row.update({f"ref:{m}": p for m, p in zip(r.metric, r.reference) if pd.notna(p)})
        rows.append(row)
    return pd.DataFrame(rows)


def describe(table: pd.DataFrame) -> str:
    """The setup the runs share: model, KV budget, and where the numbers come from."""
    first = table.iloc[0]
    budget = "unlimited" if pd.isna(first.kv_budget_gib) else f"{first.kv_budget_gib:g} GiB"
    return f"{first.model}, {budget} KV, {source(first)}"


def source(run: pd.Series) -> str:
    """The card and how its times were had: the sim's roofline of a GPU profile, the sim
    priced by steps measured on that card (a calibrated profile), or a run on the GPU."""
    backend, kernel = run.get("backend"), run.get("kernel")
    if pd.isna(backend):  # NOTE: reports of runs written before summaries named the backend
        return str(run.gpu)
    if backend == "sim":
        return f"{run.gpu} {'calibrated' if kernel == 'profile' else 'roofline'} sim"
    return f"{run.gpu}, {backend} backend"


def fig2_bars(table: pd.DataFrame, note: str = "") -> plt.Figure:
    """Fig.-2-style stacked bars: where KV memory goes, measured beside the paper."""
    w = wide(table)
    named = systems(w)
    names = [s for s, _ in named]
    has_ref = any(c.startswith("ref:share_") for c in w.columns)
    sources = [(-0.2, "measured"), (0.2, "paper")] if has_ref else [(0.0, "measured")]
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    x = np.arange(len(names))
    for offset, source in sources:
        col = "" if source == "measured" else "ref:"
        bottom = np.zeros(len(names))
        for key, name, color in PARTS:
            vals = np.nan_to_num([_cell(w, s, f"{col}share_{key}") for s in names])
            ax.bar(
                x + offset,
                vals,
                0.38,
                bottom=bottom,
                color=color,
                edgecolor="white",
                linewidth=0.5,
                hatch="//" if source == "paper" else None,
                label=name if source == "measured" else None,
            )
            bottom += vals
        for xi, s in zip(x, names):
            top = _cell(w, s, f"{col}share_token_states")
            text = "-" if np.isnan(top) else f"{top:.1f}"
            ax.text(xi + offset, 101, text, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [label for _, label in named])
    ax.set_ylabel("share of KV memory (%)")
    ax.set_ylim(0, 112)
    head = "KV memory use, saturated steps"
    if has_ref:
        head += " (left: kvbench, right hatched: paper)"
    else:
        why = w.no_reference.dropna()
        head += f"\nno paper bars: {why.iloc[0]}" if len(why) else ""
    ax.set_title(title(head, note))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _cell(w: pd.DataFrame, system: str, column: str) -> float:
    if column not in w:
        return np.nan
    hit = w.loc[w.system == system, column]
    return float(hit.iloc[0]) if len(hit) and pd.notna(hit.iloc[0]) else np.nan


def timeline(runs: dict[str, pd.DataFrame], table: pd.DataFrame, note: str = "") -> plt.Figure:
    """Batch size and token-state share over time, one line per system (runs: system -> its
    steps table; table: the group's report table, for labels and order)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 4.0), sharex=True)
    for system, label in systems(table[table.system.isin(list(runs))]):
        steps = runs[system]
        t = steps.time_s.to_numpy()
        top.plot(t, steps.num_running_reqs, lw=0.8, label=label)
        bottom.plot(t, 100 * steps.token_states / steps.capacity, lw=0.8, label=label)
    top.set_ylabel("running requests")
    bottom.set_ylabel("token states (% of KV)")
    bottom.set_xlabel("simulated time (s)")
    bottom.set_ylim(0, 105)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.set_title(title("Batch size and KV memory holding token states over time", note))
    return fig


def block_size(table: pd.DataFrame, note: str = "") -> plt.Figure:
    """Token-state share and throughput against block size, per workload."""
    w = wide(table).sort_values("block_size")
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 2.8), layout="constrained")
    for wl, g in w.groupby("workload"):
        left.plot(g.block_size, g.share_token_states, marker="o", ms=3, label=wl)
        right.plot(g.block_size, g.throughput_tokens_per_s, marker="o", ms=3, label=wl)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("block size (tokens)")
    left.set_ylabel("token states (% of KV, saturated)")
    right.set_ylabel("throughput (generated tokens/s)")
    left.legend()
    fig.suptitle(title(f"Paged allocation: block size ({describe(table)})", note))
    return fig


def latency_vs_rate(
    table: pd.DataFrame,
    note: str = "",
    ratios: dict[str, tuple[float, float]] | None = None,
    source: str = "",
    points: pd.DataFrame | None = None,
) -> plt.Figure:
    """Mean normalized latency against request rate, per system, with each system's
    sustained rate (requests/s served at the highest offered rate), the rate at which each
    reaches twice the lowest latency drawn (vLLM's over each baseline's: the paper's "higher
    request rates at similar latency"), the paper's ratios where given (`ratios`, from
    `source`), and runs of another backend as crosses over the lines (`points`: summary
    records of the same setup, e.g. GPU runs over a sim's curve)."""
    w = wide(table).sort_values("request_rate")
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    named, sustained, at_level, colors = dict(systems(w)), {}, {}, {}
    level = 2 * float(w.mean_normalized_latency_s.min())
    for system, label in named.items():
        g = w[w.system == system]
        (line,) = ax.plot(
            g.request_rate, g.mean_normalized_latency_s, marker="o", ms=3, label=label
        )
        colors[system] = line.get_color()
        sustained[system] = float(g.request_throughput_per_s.iloc[-1])
        at_level[system] = rate_at_latency(g.request_rate, g.mean_normalized_latency_s, level)
        ax.axvline(sustained[system], color=line.get_color(), ls=":", lw=0.8)
    lines = ["dotted: rate each system sustains", *_ratio_lines(named, sustained, at_level,
             level, ratios or {}, source)]  # fmt: skip
    if points is not None:
        lines.insert(0, "crosses: " + _overlay(ax, points, colors))
    ax.set_xlabel("request rate (requests/s)")
    ax.set_ylabel("normalized latency (s/token)")
    ax.set_yscale("log")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.text(1.02, 0.0, "\n".join(lines), transform=ax.transAxes, fontsize=6, va="bottom")
    ax.set_title(title(f"Latency against request rate ({describe(table)})", note))
    return fig


def _ratio_lines(
    named: dict[str, str], sustained: dict[str, float], at_level: dict[str, float | None],
    level: float, ratios: dict[str, tuple[float, float]], source: str,
) -> list[str]:  # fmt: skip
    """vLLM's sustained rate and its rate at `level` over each baseline's, beside the paper's."""
    lines = []
    for base, (lo, hi) in ratios.items():
        if "paged" in sustained and base in sustained:
            up, down = at_level.get("paged"), at_level.get(base)
            equal = f"{up / down:.2f}x" if up and down and np.isfinite(up / down) else "-"
            ratio = sustained["paged"] / sustained[base]
            lines.append(f"{named[base]}: {ratio:.2f}x | {equal} (paper {lo:g}-{hi:g}x)")
    if lines:
        head = f"vLLM's rate over Orca's: sustained | at {1e3 * level:.0f} ms/token (2x lowest)"
        lines.insert(0, head)
    if source:
        lines.append(f"paper: {source}")
    return lines


def rate_at_latency(rate: pd.Series, latency: pd.Series, level: float) -> float | None:
    """The rate at which a latency curve (sorted by rate) first exceeds `level`, interpolated
    on log latency; None where it never does or starts above it."""
    r, lat = np.asarray(rate, float), np.asarray(latency, float)
    above = np.flatnonzero(lat > level)
    if not len(above) or above[0] == 0:
        return None
    i = above[0]
    t = (np.log(level) - np.log(lat[i - 1])) / (np.log(lat[i]) - np.log(lat[i - 1]))
    return float(r[i - 1] + t * (r[i] - r[i - 1]))


def _overlay(ax, records: pd.DataFrame, colors: dict[str, str]) -> str:
    """Crosses for the records of the systems drawn; returns what they are."""
    drawn = records[records.system.isin(list(colors))]
    for system, g in drawn.groupby("system"):
        g = g.sort_values("request_rate")
        ax.plot(g.request_rate, g.mean_normalized_latency_s, "x", ms=5, mew=1.2,
                color=colors[system])  # fmt: skip
    what = sorted({source(r) for _, r in drawn.iterrows()})
    return f"{', '.join(what)} ({len(drawn)} runs)"


def hit_rate(table: pd.DataFrame, note: str = "") -> plt.Figure:
    """Prefix-cache hit rate (block references) against KV budget and block size, with each
    trace's repeat share (the hit rate of an unlimited cache at 512-token blocks)."""
    w = wide(table)
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.4, 2.8), sharey=True)
    big = w.kv_budget_gib.max(skipna=True) * 4 if w.kv_budget_gib.notna().any() else 1.0
    colors = {}
    for (wl, bs), g in w.groupby(["workload", "block_size"]):
        g = g.assign(budget=g.kv_budget_gib.fillna(big)).sort_values("budget")
        (line,) = left.plot(
            g.budget,
            g.prefix_block_hit_rate,
            marker={512: "o"}.get(int(bs), "^" if bs > 512 else "s"),
            ms=3,
            ls={512: "-"}.get(int(bs), "-." if bs > 512 else ":"),
            color=colors.get(wl),
            label=f"{wl}, block {int(bs)}",
        )
        colors.setdefault(wl, line.get_color())
    unlimited = w[w.kv_budget_gib.isna()].sort_values("block_size")
    for wl, g in unlimited.groupby("workload"):
        right.plot(g.block_size, g.prefix_block_hit_rate, marker="o", ms=3, color=colors[wl])
    if "ref:prefix_block_hit_rate" in w:
        for wl, share in w.groupby("workload")["ref:prefix_block_hit_rate"].first().items():
            for ax in (left, right):
                ax.axhline(share, color=colors[wl], lw=0.8, ls="--")
            right.annotate(
                f"{wl} repeat share {share:.1f}%",
                (1.0, share),
                xycoords=("axes fraction", "data"),
                fontsize=6,
                ha="right",
                va="bottom",
            )
    left.set_xscale("log", base=2)
    left.set_xlabel("KV budget (GiB)\nrightmost point: unlimited")
    left.set_ylabel("block references hit (%)")
    right.set_xscale("log", base=2)
    right.set_xlabel("block size (tokens)\nunlimited memory")
    left.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2)
    fig.suptitle(title("Prefix caching on the Mooncake traces (dashed: trace repeat share)", note))
    return fig


def sweep_lines(table: pd.DataFrame, x: str, xlabel: str, note: str = "") -> plt.Figure:
    """Utilization (token states, all steps) and throughput against a swept value, one line
    per allocator: the seq_len and concurrency sweeps."""
    w = wide(table).sort_values(x)
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.6, 2.8), layout="constrained")
    for system, label in systems(w):
        g = w[w.system == system]
        left.plot(g[x], g.share_token_states_all_steps, marker="o", ms=3, label=label)
        right.plot(g[x], g.throughput_tokens_per_s, marker="o", ms=3, label=label)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
    left.set_ylabel("token states (% of KV, all steps)")
    right.set_ylabel("throughput (generated tokens/s)")
    right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title(f"Utilization and throughput against {xlabel} ({describe(table)})", note))
    return fig
