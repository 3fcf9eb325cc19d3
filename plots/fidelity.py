"""Predicted (calibrated sim) against measured (GPU), one panel per metric, from the fidelity
table (experiments/fidelity.py): points on the diagonal are exact, the band is the target."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from plots.style import plt, title

PANELS = [
    ("throughput_tokens_per_s", "throughput (tokens/s)"),
    ("mean_ttft_s", "mean TTFT (s)"),
    ("p99_ttft_s", "p99 TTFT (s)"),
    ("mean_tpot_s", "mean TPOT (s)"),
    ("p99_tpot_s", "p99 TPOT (s)"),
    ("mean_batch_size", "mean batch"),
]


def predicted_vs_measured(t: pd.DataFrame, note: str = "") -> plt.Figure:
    fig, axes = plt.subplots(2, 3, figsize=(7.0, 4.6))
    cases = list(dict.fromkeys(t.case))
    colors = plt.get_cmap("tab10")
    for ax, (metric, label) in zip(axes.ravel(), PANELS):
        g = t[(t.metric == metric) & np.isfinite(t.measured) & np.isfinite(t.predicted)]
        g = g[(g.measured > 0) & (g.predicted > 0)]
        ax.set_title(label)
        if g.empty:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        lo = min(g.measured.min(), g.predicted.min()) / 1.3
        hi = max(g.measured.max(), g.predicted.max()) * 1.3
        x = np.geomspace(lo, hi, 50)
        target = g.target.dropna().iloc[0] if g.target.notna().any() else None
        if target:
            ax.fill_between(x, x * (1 - target), x * (1 + target), color="0.85", lw=0,
                            label=f"target ±{100 * target:.0f}%")  # fmt: skip
        ax.plot(x, x, color="0.4", lw=0.8)
        for r in g.itertuples():
            ax.scatter(r.measured, r.predicted, s=14, color=colors(cases.index(r.case) % 10))
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
        for axis in (ax.xaxis, ax.yaxis):  # few plain labels: ranges may span < 10x
            axis.set_major_locator(LogLocator(numticks=4, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("measured (GPU)")
        ax.set_ylabel("predicted (sim)")
    handles = [plt.Line2D([], [], ls="", marker="o", ms=4, color=colors(i % 10), label=c)
               for i, c in enumerate(cases)]  # fmt: skip
    below = -0.02 - 0.03 * (len(cases) // 2)
    fig.legend(handles=handles, loc="lower center", ncol=2, bbox_to_anchor=(0.5, below))
    gpu = ", ".join(str(v) for v in dict.fromkeys(t.gpu))
    fig.suptitle(title(f"calibrated sim against the GPU ({gpu})", note))
    fig.tight_layout()
    return fig
