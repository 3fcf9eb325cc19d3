"""`kvbench-attention-overhead`: what paging costs per decode step, on the GPU, at identical
batches: paged pools (blocks 8-256) and vAttention's mapped virtual rows against static
contiguous ranges.

    python -m experiments.attention_overhead --out results/reference/attention_<card>

For each batch size, sequence lengths are drawn from the Azure conversation trace (prompt plus
output, clipped to 16k); the same sequences are placed by a paged allocator at each block size,
by vattention at each page size (physical pages mapped into one virtual row per sequence with
the CUDA VMM API, read by the contiguous kernels; the mapping work of a step is part of its
time) and by a static allocator (oracle reservation, first fit), and the `attention` backend runs
decode steps of a Llama-3-8B-shaped model (32 layers, 32 q / 8 KV heads, d=128, bf16): every
layer writes the new token's K/V and runs decode attention, metadata updated incrementally.
Per step: wall time (the engine's step duration), GPU kernel time (CUDA events) and host time
(the rest); the median of the timed steps, and the mean step (maps are rare: a sequence maps a
page group every page of tokens). Paging overhead = layout / contiguous kernel time - 1.
This is the real-kernel counterpart of the PagedAttention paper's Fig. 18b (block size).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from allocators import PagedAllocator, StaticAllocator
from allocators.base import KVAllocator, cdiv
from allocators.vattention import VAttentionAllocator
from engine.backends.attention import AttentionBackend
from engine.backends.base import StepBatch
from engine.models import PRESETS, ModelSpec, model_spec
from engine.sequence import Seq
from experiments.kernel_bench import azure_lengths
from workloads.errors import KvbenchError
from workloads.tokens import GENERATED, UNIQUE, Tokens

BLOCK_SIZES = (8, 16, 32, 64, 128, 256)
BATCHES = (32, 64, 128, 256)
PAGE_KIB = (2048, 64)  # vAttention's page sizes; CUDA maps 2 MiB multiples (64 KiB: refused)
MODEL = "llama3_8b"


def context_tokens(model: str = MODEL) -> int:
    """The model's context length: what vAttention reserves per request, virtually."""
    return int(PRESETS[model][1]["max_position_embeddings"])


def allocator_for(
    layout: str, size: int | None, final: list[int], row_tokens: int | None = None
) -> KVAllocator:
    """A pool that holds exactly these sequences: static (oracle), paged at block `size`, or
    vattention at pages of `size` KiB per K/V buffer, each sequence in a virtual row of
    `row_tokens` (default: the model's context) or its final length if longer."""
    if layout == "static":
        return StaticAllocator(sum(final) + 1, max(final), "oracle", "first_fit")
    assert size is not None
    if layout == "paged":
        return PagedAllocator(sum(cdiv(f, size) for f in final), size)
    spec = model_spec(MODEL)
    tpp = size * 1024 * 2 * spec.num_layers // spec.kv_bytes_per_token
    max_len = max(row_tokens or context_tokens(), max(final))
    return VAttentionAllocator(sum(cdiv(f, tpp) for f in final), tpp, max_len, size * 1024)


def time_steps(
    alloc: KVAllocator, lens: list[int], steps: int, warmup: int, graphs: bool,
    graph_splits: int | None = None, model: ModelSpec | None = None, device: str = "cuda",
) -> dict[str, float]:  # fmt: skip
    """Admit sequences of these lengths, then time decode steps through the backend (of
    `model`, default Llama-3-8B; `device` cpu only for tests)."""
    grow = steps + warmup
    seqs = [
        Seq(i + 1, n, n + grow, Tokens.from_chunks([((UNIQUE, i), n)], (GENERATED, i + 1)))
        for i, n in enumerate(lens)
    ]
    for s in seqs:
        if alloc.allocate(s, s.prompt_len) is None:
            raise RuntimeError("the pool is too small for the batch")
    backend = AttentionBackend(
        model or model_spec(MODEL), alloc, graphs=graphs, max_seq_len=16384,
        graph_splits=graph_splits, max_num_seqs=len(seqs), device=device,
    )  # fmt: skip
    backend.pool.k.normal_()
    backend.pool.v.normal_()
    batch = StepBatch(decode_seqs=seqs, num_decode=len(seqs))
    wall, kernel, host = [], [], []
    for t in range(grow):
        alloc.decode(seqs)
        if t == warmup:
            before = backend.summary()  # the first step maps every admitted sequence
        dt = backend.step(batch)
        if t >= warmup:
            wall.append(dt)
            kernel.append(backend.last_kernel_s)
            host.append(backend.last_host_s)
    vmm = backend.summary()
    backend.close()
    del backend
    torch.cuda.empty_cache()
    out = dict(
        step_ms=1e3 * float(np.median(wall)),
        step_mean_ms=1e3 * float(np.mean(wall)),
        kernel_ms=1e3 * float(np.median(kernel)),
        host_ms=1e3 * float(np.median(host)),
    )
    if vmm:
        out["maps_per_step"] = (vmm["vmm_maps"] - before["vmm_maps"]) / steps
        out["map_ms_per_step"] = 1e3 * (vmm["vmm_map_s"] - before["vmm_map_s"]) / steps
        out["map_us_per_page"] = 1e6 * vmm["vmm_map_s"] / vmm["vmm_maps"]  # the whole run
        out["unmap_us_per_page"] = 1e6 * vmm["vmm_unmap_s"] / max(vmm["vmm_unmaps"], 1)
        out["vmm_init_s"] = vmm["vmm_init_s"]
    return out


def measure(
    args: argparse.Namespace, lens: list[int], layout: str, size: int | None, mode: str
) -> dict[str, object] | None:
    """One case's timed steps (None: a vattention page size the GPU cannot map)."""
    steps, warmup = args.steps, args.warmup
    final = [n + steps + warmup for n in lens]
    alloc = allocator_for(layout, size, final, args.row_tokens)
    graph_splits = int(mode[6:]) if mode.startswith("graph:") else None
    b = len(lens)
    try:
        r = time_steps(alloc, lens, steps, warmup, mode.startswith("graph"), graph_splits)
    except KvbenchError as e:  # vattention pages the GPU cannot map
        print(f"{mode:<5} B={b:<4} {layout} {size} KiB: skipped: {e}", flush=True)
        return None
    maps = f"  maps {r['maps_per_step']:.1f}/step" if "maps_per_step" in r else ""
    print(
        f"{mode:<5} B={b:<4} {layout:<10} block {alloc.block_size if size else '-'!s:<5} "
        f"step {r['step_ms']:7.3f} ms (mean {r['step_mean_ms']:7.3f})  kernels "
        f"{r['kernel_ms']:7.3f} ms  host {r['host_ms']:6.3f} ms{maps}",
        flush=True,
    )
    return dict(
        mode=mode, layout=layout, block_size=alloc.block_size if size else None,
        page_kib=size if layout == "vattention" else None, batch=b,
        row_tokens=alloc.max_seq_len if isinstance(alloc, VAttentionAllocator) else None,
        mean_len=float(np.mean(lens)), max_len=max(lens), card=torch.cuda.get_device_name(),
        **r,
    )  # fmt: skip


def _medians(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per case: the median over rounds of every measured column."""
    keys = ["mode", "layout", "block_size", "page_kib", "row_tokens", "batch", "mean_len",
            "max_len", "card"]  # fmt: skip
    values = [c for c in rows.columns if c not in keys and c != "round"]
    table = rows.groupby(keys, sort=False, dropna=False)[values].median().reset_index()
    return table.assign(rounds=rows.groupby(keys, sort=False, dropna=False).size().to_numpy())


def run(args: argparse.Namespace) -> pd.DataFrame:
    """Every case of every batch, `args.rounds` times; each round starts one case later, so
    drift of the card's clocks over the run (seconds per case) falls on every layout alike."""
    rows = []
    for b in args.batches:
        lens = azure_lengths(b)
        cases: list[tuple[str, int | None]] = [("static", None)]
        cases += [("paged", bs) for bs in args.blocks]
        cases += [("vattention", kib) for kib in args.vattention]
        cases_modes = list(itertools.product(cases, args.modes))
        for r in range(args.rounds):
            shift = r % len(cases_modes)
            for (layout, size), mode in cases_modes[shift:] + cases_modes[:shift]:
                row = measure(args, lens, layout, size, mode)
                if row is not None:
                    rows.append(dict(row, round=r))
    table = _medians(pd.DataFrame(rows))
    base = table[table.layout == "static"].set_index(["mode", "batch"]).kernel_ms
    key = pd.MultiIndex.from_frame(table[["mode", "batch"]])
    table["overhead_vs_contiguous"] = table.kernel_ms.to_numpy() / base.reindex(key).to_numpy() - 1
    table["host_share"] = table.host_ms / table.step_ms
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "attention_overhead.csv", index=False)
    pd.DataFrame(rows).to_csv(out / "attention_overhead_rounds.csv", index=False)
    (out / "attention_overhead.md").write_text(markdown(table))
    from plots.attention import attention_overhead

    attention_overhead(table, out / "attention_overhead")
    return table


def markdown(table: pd.DataFrame) -> str:
    """Per-step kernel time (ms) per layout and batch, with paging overhead and host share;
    vattention's mapping work, and its speed against static contiguous and paged."""
    lines = [
        f"card: {table.card.iloc[0]}; llama3_8b shapes, 32 layers, bf16; median of timed steps",
        "",
        "| mode | batch (mean len) | layout | block | step ms (mean) | kernels ms | host ms "
        "| paging overhead | maps / step (us / page) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        block = "-" if pd.isna(r.block_size) else str(int(r.block_size))
        over = "-" if r.layout == "static" else f"{100 * r.overhead_vs_contiguous:+.1f}%"
        mean = getattr(r, "step_mean_ms", float("nan"))
        maps = getattr(r, "maps_per_step", float("nan"))
        maps_s = "-" if pd.isna(maps) else f"{maps:.1f} ({r.map_us_per_page:.1f})"
        rows = getattr(r, "row_tokens", float("nan"))
        layout = r.layout if pd.isna(rows) else f"{r.layout} (rows of {int(rows):,})"
        lines.append(
            f"| {r.mode} | {r.batch} ({r.mean_len:.0f}) | {layout} | {block} | {r.step_ms:.3f} "
            f"({mean:.3f}) | {r.kernel_ms:.3f} | {r.host_ms:.3f} ({100 * r.host_share:.1f}%) "
            f"| {over} | {maps_s} |"
        )
    return "\n".join(lines + speeds(table)) + "\n"


def speeds(table: pd.DataFrame) -> list[str]:
    """vattention's speed (baseline time / its time) against static contiguous (target >=
    0.97x) and against paged, kernels (median step) and whole steps (mean: maps included)."""
    if "page_kib" not in table or table.page_kib.isna().all():
        return []
    lines = ["", "vattention speed = baseline time / vattention time (kernels; mean step):"]
    for (mode, batch), g in table.groupby(["mode", "batch"], sort=False):
        static = g[g.layout == "static"].iloc[0]
        for v in g[g.layout == "vattention"].itertuples():
            vs = [("static", static)] + [(f"paged {int(p.block_size)}", p)
                                         for _, p in g[g.layout == "paged"].iterrows()]  # fmt: skip
            parts = [f"{name} {b.kernel_ms / v.kernel_ms:.3f}x; "
                     f"{b.step_mean_ms / v.step_mean_ms:.3f}x" for name, b in vs]  # fmt: skip
            lines.append(
                f"- {mode} batch {batch}, {int(v.page_kib)} KiB pages: vs {', '.join(parts)} "
                f"(maps {v.map_ms_per_step:.3f} ms per step)"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/attention_overhead"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=_positive, default=1, help="interleaved repeats (median)")
    ap.add_argument("--batches", type=_ints, default=BATCHES)
    ap.add_argument("--blocks", type=_ints, default=BLOCK_SIZES)
    ap.add_argument(
        "--vattention", type=_ints, default=PAGE_KIB, help="vattention page sizes in KiB"
    )
    ap.add_argument(
        "--row-tokens", type=_positive, default=None,
        help=f"tokens of vattention's virtual row per sequence (default: the model's context, "
        f"{context_tokens():,}; at least the longest sequence)",
    )  # fmt: skip
    ap.add_argument(
        "--modes", type=lambda s: s.split(","), default=["graph", "eager"],
        help="graph, eager, or graph:N (graph-captured decode with N splits)",
    )  # fmt: skip
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(
            "error: kvbench-attention-overhead needs a CUDA GPU; torch sees none", file=sys.stderr
        )
        sys.exit(2)
    print(markdown(run(args)))


def _positive(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {s!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(","))


if __name__ == "__main__":
    main()
