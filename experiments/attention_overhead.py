"""`kvbench-attention-overhead`: what paging costs per decode step, on the GPU, at identical
batches: paged pools (blocks 8-256) against static contiguous ranges.

    python -m experiments.attention_overhead --out results/reference/attention_<card>

For each batch size, sequence lengths are drawn from the Azure conversation trace (prompt plus
output, clipped to 16k); the same sequences are placed by a paged allocator at each block size
and by a static allocator (oracle reservation, first fit), and the `attention` backend runs
decode steps of a Llama-3-8B-shaped model (32 layers, 32 q / 8 KV heads, d=128, bf16): every
layer writes the new token's K/V and runs decode attention, metadata updated incrementally.
Per step: wall time (the engine's step duration), GPU kernel time (CUDA events) and host time
(the rest); the median of the timed steps. Paging overhead = paged / contiguous kernel time.
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
from engine.backends.attention import AttentionBackend
from engine.backends.base import StepBatch
from engine.models import model_spec
from engine.sequence import Seq
from experiments.kernel_bench import azure_lengths
from workloads.tokens import GENERATED, UNIQUE, Tokens

BLOCK_SIZES = (8, 16, 32, 64, 128, 256)
BATCHES = (32, 64, 128, 256)


def time_steps(
    alloc: KVAllocator, lens: list[int], steps: int, warmup: int, graphs: bool,
    graph_splits: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """Admit sequences of these lengths, then time decode steps through the backend."""
    grow = steps + warmup
    seqs = [
        Seq(i + 1, n, n + grow, Tokens.from_chunks([((UNIQUE, i), n)], (GENERATED, i + 1)))
        for i, n in enumerate(lens)
    ]
    for s in seqs:
        if alloc.allocate(s, s.prompt_len) is None:
            raise RuntimeError("the pool is too small for the batch")
    backend = AttentionBackend(
        model_spec("llama3_8b"), alloc, graphs=graphs, max_seq_len=16384, graph_splits=graph_splits
    )
    backend.pool.k.normal_()
    backend.pool.v.normal_()
    batch = StepBatch(decode_seqs=seqs, num_decode=len(seqs))
    wall, kernel, host = [], [], []
    for t in range(grow):
        alloc.decode(seqs)
        dt = backend.step(batch)
        if t >= warmup:
            wall.append(dt)
            kernel.append(backend.last_kernel_s)
            host.append(backend.last_host_s)
    del backend
    torch.cuda.empty_cache()
    return dict(
        step_ms=1e3 * float(np.median(wall)),
        kernel_ms=1e3 * float(np.median(kernel)),
        host_ms=1e3 * float(np.median(host)),
    )


def run(args: argparse.Namespace) -> pd.DataFrame:
    card = torch.cuda.get_device_name()
    steps, warmup = args.steps, args.warmup
    rows = []
    for b in args.batches:
        lens = azure_lengths(b)
        final = [n + steps + warmup for n in lens]
        cases: list[tuple[str, int | None]] = [("static", None)]
        cases += [("paged", bs) for bs in args.blocks]
        for (layout, bs), mode in itertools.product(cases, args.modes):
            alloc: KVAllocator = (
                StaticAllocator(sum(final) + 1, max(final), "oracle", "first_fit")
                if bs is None
                else PagedAllocator(sum(cdiv(f, bs) for f in final), bs)
            )
            graph_splits = int(mode[6:]) if mode.startswith("graph:") else None
            r = time_steps(alloc, lens, steps, warmup, mode.startswith("graph"), graph_splits)
            rows.append(
                dict(
                    mode=mode,
                    layout=layout,
                    block_size=bs,
                    batch=b,
                    mean_len=float(np.mean(lens)),
                    max_len=max(lens),
                    card=card,
                    **r,
                )
            )
            print(
                f"{mode:<5} B={b:<4} {layout:<7} block {bs!s:<5} step {r['step_ms']:7.3f} ms  "
                f"kernels {r['kernel_ms']:7.3f} ms  host {r['host_ms']:6.3f} ms",
                flush=True,
            )
    table = pd.DataFrame(rows)
    base = table[table.layout == "static"].set_index(["mode", "batch"]).kernel_ms
    key = pd.MultiIndex.from_frame(table[["mode", "batch"]])
    table["overhead_vs_contiguous"] = table.kernel_ms.to_numpy() / base.reindex(key).to_numpy() - 1
    table["host_share"] = table.host_ms / table.step_ms
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "attention_overhead.csv", index=False)
    (out / "attention_overhead.md").write_text(markdown(table))
    from plots.attention import attention_overhead

    attention_overhead(table, out / "attention_overhead")
    return table


def markdown(table: pd.DataFrame) -> str:
    """Per-step kernel time (ms) per layout and batch, with paging overhead and host share."""
    lines = [
        f"card: {table.card.iloc[0]}; llama3_8b shapes, 32 layers, bf16; median of timed steps",
        "",
        "| mode | batch (mean len) | layout | block | step ms | kernels ms | host ms "
        "| paging overhead |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        block = "-" if pd.isna(r.block_size) else str(int(r.block_size))
        over = "-" if r.layout == "static" else f"{100 * r.overhead_vs_contiguous:+.1f}%"
        lines.append(
            f"| {r.mode} | {r.batch} ({r.mean_len:.0f}) | {r.layout} | {block} | {r.step_ms:.3f} | "
            f"{r.kernel_ms:.3f} | {r.host_ms:.3f} ({100 * r.host_share:.1f}%) | {over} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/attention_overhead"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=_ints, default=BATCHES)
    ap.add_argument("--blocks", type=_ints, default=BLOCK_SIZES)
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


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(","))


if __name__ == "__main__":
    main()
