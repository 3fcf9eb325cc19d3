"""The prefix_schemes figure: hashed blocks, radix tree and vAttention on the same traces."""

from __future__ import annotations

import numpy as np
import pandas as pd

from plots.memory import wide
from plots.style import plt

PANELS = [
    ("prefix_hit_rate", "prompt tokens hit (%)"),
    ("share_token_states_all_steps", "KV holding token states (%)"),
    ("throughput_tokens_per_s", "generated tokens/s"),
]


def prefix_schemes(table: pd.DataFrame, note: str = "") -> plt.Figure:
    """One group of bars per workload, one bar per scheme (in the configs' order)."""
    w = wide(table)
    systems = w.sort_values("rank").drop_duplicates("system")[["system", "label"]]
    workloads = sorted(w.workload.unique())
    fig, axes = plt.subplots(1, len(PANELS), figsize=(9.6, 2.9))
    width = 0.8 / len(systems)
    x = np.arange(len(workloads))
    for ax, (metric, ylabel) in zip(axes, PANELS):
        for i, s in enumerate(systems.itertuples()):
            g = w[w.system == s.system].set_index("workload")
            vals = [g[metric].get(wl, np.nan) if metric in g else np.nan for wl in workloads]
            ax.bar(x + (i - (len(systems) - 1) / 2) * width, vals, width, label=s.label)
        ax.set_xticks(x, workloads, fontsize=7)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=6, loc="upper left")
    fig.suptitle("Prefix sharing schemes" + (f" ({note})" if note else ""), fontsize=9)
    fig.tight_layout()
    return fig
