"""Per-step attention time on the GPU, paged (by block size) against contiguous (from
attention_overhead.csv): the real-kernel counterpart of the PagedAttention paper's Fig. 18b."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from plots.style import plt, save


def attention_overhead(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Left: kernel time per step against block size, one line per batch, the contiguous
    (static) time dashed. Right: paged / contiguous - 1, in percent."""
    if "mode" in table:  # the steps as served: decode replayed from CUDA graphs (default)
        table = table[table["mode"] == "graph"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7.5, 3.0), constrained_layout=True)
    paged = table[table.layout == "paged"]
    static = table[table.layout == "static"].set_index("batch")
    for i, (batch, g) in enumerate(paged.groupby("batch")):
        g = g.sort_values("block_size")
        color = f"C{i}"
        label = f"batch {batch} (mean {g.mean_len.iloc[0]:.0f} tok)"
        ax.plot(g.block_size, g.kernel_ms, "-o", ms=3, color=color, label=label)
        ax.axhline(static.kernel_ms[batch], color=color, ls="--", lw=0.8)
        ax2.plot(g.block_size, 100 * g.overhead_vs_contiguous, "-o", ms=3, color=color)
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xticks(sorted(paged.block_size.unique()))
        a.set_xticklabels([str(int(b)) for b in sorted(paged.block_size.unique())])
        a.set_xlabel("block size (tokens)")
    ax.set_ylabel("attention + KV write per step (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("paged (solid) vs contiguous static (dashed)")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.axhline(5, color="k", lw=0.8, ls=":", label="5% budget")
    ax2.set_ylabel("paging overhead vs contiguous (%)")
    ax2.set_title("overhead of paging")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=4,
               bbox_to_anchor=(0.5, -0.1))  # fmt: skip
    ax2.legend(loc="upper right")
    fig.suptitle(
        f"Decode steps (CUDA graphs), Llama-3-8B shapes (32 layers, bf16) - {table.card.iloc[0]}"
    )
    return save(fig, stem)
