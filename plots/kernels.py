"""Kernel bandwidth against context length, per kernel (from kernels.csv)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from plots.style import plt, save


def kernel_bandwidth(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Effective K+V bandwidth of each decode kernel at each equal-length shape."""
    dec = table[
        (table.layout != "copy") & table.tb_per_s.notna() & (table.kernel != "kvbench_tune")
    ]
    dec = dec[~dec["shape"].astype(str).str.startswith(("ragged", "prefill", "graph"))]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    names = dec.kernel + dec.block_size.map(lambda b: "" if pd.isna(b) else f" (block {int(b)})")
    for name, g in dec.assign(name=names).groupby("name", sort=True):
        g = g.sort_values(["seq_len", "batch"])
        g = g.assign(x=g.batch.astype(int).astype(str) + " x " + g.seq_len.astype(int).astype(str))
        style = "-" if name.startswith("kvbench") else "--"
        ax.plot(g.x, g.tb_per_s, style, marker="o", ms=3, label=name)
    copy = table[table.kernel == "d2d_copy"].tb_per_s
    if len(copy):
        ax.axhline(copy.iloc[0], color="k", lw=0.8, ls=":", label="device copy (ceiling)")
    ax.set_xlabel("batch x context length (tokens)")
    ax.set_ylabel("effective K+V bandwidth (TB/s)")
    ax.set_title(f"Decode attention, bf16, 32 q / 8 kv heads, d=128 - {table.card.iloc[0]}")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, stem)
