"""Decode kernel bandwidth per shape (from kernels.csv, experiments/kernel_bench.py).

Left: one group of bars per decode shape (equal lengths, then ragged batches), one bar per
kernel at its usual block size, the device-copy ceiling as a line. Right: kvbench's paged
decode at each block size relative to block 16, per shape, where the differences are visible.
Shapes are categories: nothing joins unrelated shapes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plots.style import plt

NAMES = {
    "kvbench_paged_decode": "kvbench paged decode",
    "kvbench_contiguous_decode": "kvbench contiguous decode",
    "sdpa_cudnn": "SDPA cuDNN (contiguous)",
    "sdpa_flash": "SDPA flash (contiguous)",
    "flashinfer_batch_decode": "FlashInfer (paged)",
    "flex_paged_attention": "FlexAttention + PagedAttention",
}
MAIN_BLOCK = 16  # kvbench's paged decode in the left panel


def _name(kernel: str, block: float) -> str:
    base = NAMES.get(kernel, kernel.replace("_", " "))
    return base if pd.isna(block) else f"{base}, block {int(block)}"


def _shape_label(shape: str) -> str:
    """ "B=64 L=1024" -> "64 x 1024"; "ragged B=64" -> "ragged 64"."""
    parts = dict(p.split("=") for p in shape.split() if "=" in p)
    if shape.startswith("ragged"):
        return f"ragged {parts.get('B', '?')}\n(Azure lengths)"
    return f"{parts.get('B', '?')} x {parts.get('L', '?')}"


def decode_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Decode timings at equal-length and ragged shapes (no prefill, graph or tuning rows)."""
    dec = table[(table.layout != "copy") & table.tb_per_s.notna()]
    dec = dec[~dec.kernel.str.contains("tune|prefill|causal|graph|eager")]
    shape = dec["shape"].astype(str)
    return dec[shape.str.match(r"^(ragged )?B=")]


def kernel_bandwidth(table: pd.DataFrame) -> plt.Figure:
    dec = decode_rows(table)
    shapes = list(dict.fromkeys(dec["shape"]))
    main = dec[~((dec.kernel == "kvbench_paged_decode") & (dec.block_size != MAIN_BLOCK))]
    main = main.assign(name=[_name(k, b) for k, b in zip(main.kernel, main.block_size)])
    bw = main.pivot_table(index="name", columns="shape", values="tb_per_s", aggfunc="first")
    names = sorted(bw.index, key=lambda n: (not n.startswith("kvbench"), n))
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(9.0, 3.2), layout="constrained", gridspec_kw={"width_ratios": [2.2, 1]}
    )
    x, width = np.arange(len(shapes)), 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        vals = [bw.loc[name].get(s, np.nan) for s in shapes]
        left.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
    copy = table[table.kernel == "d2d_copy"].tb_per_s
    if len(copy):
        left.axhline(copy.iloc[0], color="k", lw=0.8, ls=":", label="device copy (ceiling)")
    left.set_xticks(x, [_shape_label(s) for s in shapes])
    left.set_xlabel("batch x context length (tokens)")
    left.set_ylabel("effective K+V bandwidth (TB/s)")
    left.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    _block_sizes(right, dec, shapes)
    fig.suptitle(f"Decode attention, bf16, 32 q / 8 kv heads, d=128 - {table.card.iloc[0]}")
    return fig


def _block_sizes(ax: plt.Axes, dec: pd.DataFrame, shapes: list[str]) -> None:
    """kvbench paged decode per block size, as a ratio to block 16 at the same shape."""
    ours = dec[dec.kernel == "kvbench_paged_decode"]
    blocks = sorted(int(b) for b in ours.block_size.dropna().unique())
    x, width = np.arange(len(shapes)), 0.8 / max(len(blocks), 1)
    for i, b in enumerate(blocks):
        ratio = []
        for s in shapes:
            at = ours[ours["shape"] == s].set_index("block_size").tb_per_s
            ratio.append(at.get(b, np.nan) / at.get(MAIN_BLOCK, np.nan))
        ax.bar(x + (i - (len(blocks) - 1) / 2) * width, ratio, width, label=f"block {b}")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(x, [_shape_label(s).split("\n")[0] for s in shapes], rotation=30, fontsize=6)
    ax.set_ylim(0.9, 1.05)
    ax.set_ylabel("bandwidth / block 16")
    ax.set_title("kvbench paged decode: block size")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)
