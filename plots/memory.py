"""Figures of the memory experiments, from the report table (experiments/report.py) and the
runs' steps.parquet tables only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plots.style import plt, save

PARTS = [
    ("token_states", "token states", "#2b6cb0"),
    ("reservation", "reservation", "#68a0d8"),
    ("internal_frag", "internal frag.", "#e8a33d"),
    ("external_frag", "external frag.", "#c0504d"),
    ("free", "free", "#d9d9d9"),
]


def _systems(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(system, label) of the table's runs, in their allocator configs' order."""
    first = table.sort_values("rank").drop_duplicates("system")
    return list(zip(first.system, first.label))


def _wide(table: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """One row per run of an experiment, one column per metric."""
    g = table[table.experiment == experiment]
    keys = ["system", "label", "rank", "workload", "block_size", "kv_budget_gib", "request_rate"]
    rows = [
        {"run": run, **{k: r[k].iloc[0] for k in keys}, **dict(zip(r.metric, r.value))}
        for run, r in g.groupby("run")
    ]
    return pd.DataFrame(rows)


def fig2_bars(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Fig.-2-style stacked bars: where KV memory goes, measured beside the paper."""
    w = _wide(table, "vllm_fig2")
    paper = table[(table.experiment == "vllm_fig2") & table.paper.notna()]
    named = _systems(w)
    systems = [s for s, _ in named]
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    x = np.arange(len(systems))
    for offset, source in ((-0.2, "measured"), (0.2, "paper")):
        bottom = np.zeros(len(systems))
        for key, label, color in PARTS:
            if source == "measured":
                vals = [w.loc[w.system == s, f"share_{key}"].iloc[0] for s in systems]
            else:
                vals = [_paper(paper, s, f"share_{key}") for s in systems]
            vals = np.nan_to_num(np.array(vals, dtype=float))
            ax.bar(
                x + offset,
                vals,
                0.38,
                bottom=bottom,
                color=color,
                edgecolor="white",
                linewidth=0.5,
                hatch="//" if source == "paper" else None,
                label=label if source == "measured" else None,
            )
            bottom += vals
        for xi, s in zip(x, systems):
            top = (
                w.loc[w.system == s, "share_token_states"].iloc[0]
                if source == "measured"
                else _paper(paper, s, "share_token_states")
            )
            ax.text(
                xi + offset,
                101,
                "-" if pd.isna(top) else f"{top:.1f}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x, [label for _, label in named])
    ax.set_ylabel("share of KV memory (%)")
    ax.set_ylim(0, 112)
    ax.set_title("KV memory use, saturated steps (left: kvbench, right hatched: paper)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, stem)


def _paper(paper: pd.DataFrame, system: str, metric: str) -> float:
    hit = paper[(paper.system == system) & (paper.metric == metric)]
    return float(hit.paper.iloc[0]) if len(hit) else np.nan


def timeline(runs: dict[str, pd.DataFrame], table: pd.DataFrame, stem: Path) -> list[Path]:
    """Batch size and token-state share over time, one line per system (runs: system ->
    its steps table; table: the report table, for labels and order)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 4.0), sharex=True)
    for system, label in _systems(table[table.system.isin(list(runs))]):
        steps = runs[system]
        t = steps.time_s.to_numpy()
        top.plot(t, steps.num_running_reqs, lw=0.8, label=label)
        bottom.plot(t, 100 * steps.token_states / steps.capacity, lw=0.8, label=label)
    top.set_ylabel("running requests")
    bottom.set_ylabel("token states (% of KV)")
    bottom.set_xlabel("simulated time (s)")
    bottom.set_ylim(0, 105)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.set_title("Batch size and KV memory holding token states over time")
    return save(fig, stem)


def block_size(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Token-state share and throughput against block size, per workload."""
    w = _wide(table, "block_size").sort_values("block_size")
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 2.6))
    for wl, g in w.groupby("workload"):
        left.plot(g.block_size, g.share_token_states, marker="o", ms=3, label=wl)
        right.plot(g.block_size, g.throughput_tokens_per_s, marker="o", ms=3, label=wl)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("block size (tokens)")
    left.set_ylabel("token states (% of KV, saturated)")
    right.set_ylabel("throughput (generated tokens/s)")
    left.legend()
    fig.suptitle("Paged allocation: block size (OPT-13B, 12 GiB KV, sim A100-40GB)", y=1.02)
    return save(fig, stem)


def latency_vs_rate(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Mean normalized latency (s per output token) against request rate, per system."""
    w = _wide(table, "request_rate").sort_values("request_rate")
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    for system, label in _systems(w):
        g = w[w.system == system]
        ax.plot(g.request_rate, g.mean_normalized_latency_s, marker="o", ms=3, label=label)
    ax.set_xlabel("request rate (requests/s)")
    ax.set_ylabel("normalized latency (s/token)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("ShareGPT-like, OPT-13B, sim A100-40GB")
    return save(fig, stem)


def hit_rate(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Prefix-cache hit rate (block references) against KV budget and block size."""
    w = _wide(table, "mooncake_prefix")
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.4, 2.8), sharey=True)
    big = w.kv_budget_gib.max(skipna=True) * 4 if w.kv_budget_gib.notna().any() else 1.0
    for (wl, bs), g in w.groupby(["workload", "block_size"]):
        g = g.assign(budget=g.kv_budget_gib.fillna(big)).sort_values("budget")
        left.plot(
            g.budget,
            g.prefix_block_hit_rate,
            marker="o",
            ms=3,
            ls="-" if bs == 512 else ":",
            label=f"{wl}, block {int(bs)}",
        )
    unlimited = w[w.kv_budget_gib.isna()].sort_values("block_size")
    for wl, g in unlimited.groupby("workload"):
        right.plot(g.block_size, g.prefix_block_hit_rate, marker="o", ms=3, label=wl)
    left.set_xscale("log", base=2)
    left.set_xlabel("KV budget (GiB at 320 KiB/token)\nrightmost point: unlimited")
    left.set_ylabel("block references hit (%)")
    right.set_xscale("log", base=2)
    right.set_xlabel("block size (tokens)\nunlimited memory")
    left.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2)
    right.legend(fontsize=7, loc="lower left")
    fig.suptitle("Prefix caching on the Mooncake traces", y=1.02)
    return save(fig, stem)
