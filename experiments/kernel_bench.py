"""`kvbench-kernels`: paged decode and prefill against contiguous SDPA and paged peers, one card.

    python -m experiments.kernel_bench --out results/reference/kernels_h100 [--tune]

Every kernel is timed in this process with triton.testing.do_bench (median of repeats, inputs
far larger than L2). Decode: bf16, 32 query heads, 8 KV heads, head_dim 128, the BENCHMARKS.md
grid (B, L) and ragged batches whose lengths come from the Azure conversation trace; paged
pools have their blocks shuffled at random. Effective bandwidth = K+V bytes read / time; the
ceiling is a device-to-device copy (bytes read + written). Writes kernels.csv (tidy: one row per
kernel and shape), kernels.md and the figure kernel_bandwidth.{png,pdf}.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels.contiguous import BACKENDS, contiguous_decode, contiguous_prefill, sdpa_decode
from kernels.paged_decode import paged_decode
from kernels.paged_prefill import paged_prefill

HQ, HKV, D = 32, 8, 128
GRID = [(64, 1024), (64, 4096), (16, 16384), (128, 4096)]
BLOCK_SIZES = [8, 16, 32, 64, 128]
DT = torch.bfloat16


def bench(fn: Callable[[], object]) -> float:
    """Median milliseconds of fn."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def copy_ceiling() -> float:
    """Device-to-device copy of 2 GiB, bytes read + written per second."""
    x = torch.empty(1 << 31, dtype=torch.uint8, device="cuda").random_()
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3)


def warm_card(seconds: float = 8.0) -> None:
    """Keep the card busy before the first timed kernel: after a cold start an H200 ran the
    first Triton kernels timed 10-40% slow (results/reference/attention_h200/NOTES.md)."""
    import time

    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            y.copy_(x)
        torch.cuda.synchronize()


def paged_pool(lens: list[int], bs: int, seed: int = 0):
    """Random K/V blocks and a shuffled block table for the given sequence lengths."""
    g = torch.Generator().manual_seed(seed)
    need = [math.ceil(n / bs) for n in lens]
    total = sum(need)
    perm = (1 + torch.randperm(total, generator=g)).int()
    table = torch.zeros(len(lens), max(need), dtype=torch.int32)
    pos = 0
    for i, n in enumerate(need):
        table[i, :n] = perm[pos : pos + n]
        pos += n
    k = torch.randn(total + 1, bs, HKV, D, device="cuda", dtype=DT)
    v = torch.randn_like(k)
    return k, v, table.cuda(), torch.tensor(lens, dtype=torch.int32, device="cuda")


def slot_space(lens: list[int], seed: int = 0):
    """Random K/V slots with each sequence's range at a shuffled place (a static allocator)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lens), generator=g).tolist()
    starts, pos = [0] * len(lens), 1
    for i in order:
        starts[i] = pos
        pos += lens[i]
    k = torch.randn(pos, HKV, D, device="cuda", dtype=DT)
    v = torch.randn_like(k)
    as_gpu = dict(dtype=torch.int32, device="cuda")
    return k, v, torch.tensor(starts, **as_gpu), torch.tensor(lens, **as_gpu)


def _contiguous_fn(q: torch.Tensor, lens: list[int]) -> Callable:
    k, v, starts, seq_lens = slot_space(lens)
    n = sum(lens)
    return lambda: contiguous_decode(
        q, k, v, starts, seq_lens, D**-0.5, max_seq_len=max(lens), num_tokens=n
    )


def kv_bytes(lens: list[int]) -> int:
    return sum(lens) * HKV * D * 2 * DT.itemsize


def flex_paged_fn(q: torch.Tensor, lens: list[int], page: int = 128) -> Callable:
    """FlexAttention over torch's experimental PagedAttention (pages shuffled)."""
    from torch.nn.attention.experimental._paged_attention import PagedAttention
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention, noop_mask

    b, max_len = len(lens), max(lens)
    n_pages = sum(math.ceil(n / page) for n in lens)
    paged = PagedAttention(n_pages, page, b)
    paged.empty_pages = torch.randperm(n_pages).tolist()
    for i, n in enumerate(lens):
        paged.reserve(torch.tensor(i, device="cuda"), torch.tensor(n, device="cuda"))
    k = torch.randn(1, HKV, n_pages * page, D, device="cuda", dtype=DT)
    v = torch.randn_like(k)
    kv_len = torch.tensor(lens, device="cuda")
    mask = create_block_mask(noop_mask, b, None, 1, max_len, BLOCK_SIZE=(128, page))
    mask = paged.convert_logical_block_mask(mask, kv_len=kv_len)
    flex = torch.compile(flex_attention, dynamic=False)
    q4 = q.unsqueeze(2)
    return lambda: flex(q4, k, v, block_mask=mask, enable_gqa=True, scale=D**-0.5)


def flashinfer_fn(q: torch.Tensor, lens: list[int], bs: int = 16) -> Callable:
    import flashinfer

    k, v, table, _ = paged_pool(lens, bs)
    need = [math.ceil(n / bs) for n in lens]
    indptr = torch.tensor([0, *np.cumsum(need)], dtype=torch.int32, device="cuda")
    indices = torch.cat([table[i, :n] for i, n in enumerate(need)])
    last = torch.tensor(
        [n - (m - 1) * bs for n, m in zip(lens, need)], dtype=torch.int32, device="cuda"
    )
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
    w.plan(indptr, indices, last, HQ, HKV, D, bs, q_data_type=DT, kv_data_type=DT)
    return lambda: w.run(q, (k, v))


def _paged_fn(q: torch.Tensor, pool: tuple, max_len: int, **cfg: int) -> Callable:
    k, v, table, seq_lens = pool
    n = int(seq_lens.sum())
    return lambda: paged_decode(
        q, k, v, table, seq_lens, D**-0.5, max_seq_len=max_len, num_tokens=n, **cfg
    )


TUNE_TILES = ((64, 4, 2), (64, 4, 3), (32, 4, 3), (128, 8, 2))  # block_n, warps, stages
TUNE_SPLITS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32)


def _paged_rows(record: Callable, q: torch.Tensor, lens: list[int], bs: int, tune: bool) -> None:
    """kvbench's paged decode at one block size (its defaults; with tune, a config sweep)."""
    pool = paged_pool(lens, bs)
    record("kvbench_paged_decode", "paged", bs, lambda: _paged_fn(q, pool, max(lens)))
    for block_n, warps, stages in TUNE_TILES if tune else ():
        for splits in TUNE_SPLITS:
            if splits * block_n <= max(lens):
                cfg = dict(block_n=block_n, num_warps=warps, num_stages=stages, num_splits=splits)
                record(
                    "kvbench_tune",
                    "paged",
                    bs,
                    lambda c=cfg: _paged_fn(q, pool, max(lens), **c),
                    **cfg,
                )


def decode_rows(lens: list[int], shape: str, card: str, args: argparse.Namespace) -> list[dict]:
    rows = []
    nbytes = kv_bytes(lens)
    q = torch.randn(len(lens), HQ, D, device="cuda", dtype=DT)

    def record(
        kernel: str, layout: str, bs: int | None, make: Callable[[], Callable], **extra: object
    ) -> None:
        """Time make()'s function; a peer that cannot be built or run here is reported."""
        try:
            ms = bench(make())
            rows.append(
                dict(
                    kernel=kernel,
                    layout=layout,
                    block_size=bs,
                    shape=shape,
                    batch=len(lens),
                    seq_len=max(lens),
                    mean_len=float(np.mean(lens)),
                    time_ms=ms,
                    bytes=nbytes,
                    tb_per_s=nbytes / (ms * 1e-3) / 1e12,
                    card=card,
                    **extra,
                )
            )
            print(
                f"  {kernel:<28} {layout:<10} bs={bs!s:<4} {ms:8.4f} ms "
                f"{rows[-1]['tb_per_s']:6.3f} TB/s",
                flush=True,
            )
        except Exception as e:
            print(f"  {kernel:<28} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            if os.environ.get("KVBENCH_DEBUG"):
                traceback.print_exc()

    if len(set(lens)) == 1:  # contiguous SDPA needs equal lengths
        kc = torch.randn(len(lens), HKV, lens[0], D, device="cuda", dtype=DT)
        vc = torch.randn_like(kc)
        for backend in BACKENDS[:3]:
            record(
                f"sdpa_{backend.name.split('_')[0].lower()}",
                "contiguous",
                None,
                lambda b=backend: lambda: sdpa_decode(q, kc, vc, D**-0.5, b),
            )
        del kc, vc
    record("kvbench_contiguous_decode", "contiguous", None, lambda: _contiguous_fn(q, lens))
    for bs in BLOCK_SIZES:
        _paged_rows(record, q, lens, bs, tune=args.tune and bs == 16)
    record("flashinfer_batch_decode", "paged", 16, lambda: flashinfer_fn(q, lens))
    if args.flex and len(set(lens)) == 1:  # it faults on ragged batches (torch 2.11)
        record("flex_paged_attention", "paged", 128, lambda: flex_paged_fn(q, lens))
    torch.cuda.empty_cache()
    return rows


def graph_rows(card: str, b: int = 16, captured: int = 8192, true_len: int = 4096) -> list[dict]:
    """Decode captured in a CUDA graph at `captured` and replayed with every sequence at
    `true_len`, against eager launches that know the true maximum (paged, block 16)."""
    k, v, table, seq_lens = paged_pool([captured] * b, 16)
    q = torch.randn(b, HQ, D, device="cuda", dtype=DT)
    out = torch.empty_like(q)

    def run(max_len: int) -> None:
        paged_decode(q, k, v, table, seq_lens, D**-0.5, out=out, max_seq_len=max_len)

    run(captured)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(captured)
    seq_lens.fill_(true_len)
    nbytes = kv_bytes([true_len] * b)
    rows = []
    for name, fn in (("eager_true_max", lambda: run(true_len)), ("graph_replay", graph.replay)):
        ms = bench(fn)
        rows.append(
            dict(
                kernel=f"kvbench_paged_decode_{name}",
                layout="paged",
                block_size=16,
                shape=f"graph B={b} L={true_len} (captured {captured})",
                batch=b,
                seq_len=true_len,
                mean_len=true_len,
                time_ms=ms,
                bytes=nbytes,
                tb_per_s=nbytes / (ms * 1e-3) / 1e12,
                card=card,
            )
        )
        print(f"  {name:<28} {ms:8.4f} ms {rows[-1]['tb_per_s']:6.3f} TB/s", flush=True)
    return rows


def prefill_rows(card: str) -> list[dict]:
    """Causal prefill of 4 x 4096 tokens: paged (block 16) against SDPA flash, in TFLOP/s."""
    rows = []
    b, n = 4, 4096
    flops = 4 * b * HQ * D * n * n / 2  # causal
    q = torch.randn(b * n, HQ, D, device="cuda", dtype=DT)
    k, v, table, seq_lens = paged_pool([n] * b, 16)
    ks, vs, seq_starts, _ = slot_space([n] * b)
    starts = torch.arange(0, b * n + 1, n, dtype=torch.int32, device="cuda")
    for name, fn in (
        (
            "kvbench_paged_prefill",
            lambda: paged_prefill(q, k, v, table, seq_lens, starts, D**-0.5, max_query_len=n),
        ),
        (
            "kvbench_contiguous_prefill",
            lambda: contiguous_prefill(
                q, ks, vs, seq_starts, seq_lens, starts, D**-0.5, max_query_len=n
            ),
        ),
        ("sdpa_flash_causal", _sdpa_causal(b, n)),
    ):
        ms = bench(fn)
        rows.append(
            dict(
                kernel=name,
                layout="paged" if "paged_" in name else "contiguous",
                block_size=16 if "paged" in name else None,
                shape=f"prefill B={b} L={n}",
                batch=b,
                seq_len=n,
                mean_len=n,
                time_ms=ms,
                tflops=flops / ms / 1e9,
                card=card,
            )
        )
        print(f"  {name:<28} {ms:8.3f} ms {rows[-1]['tflops']:6.1f} TFLOP/s", flush=True)
    return rows


def _sdpa_causal(b: int, n: int) -> Callable:
    q = torch.randn(b, HQ, n, D, device="cuda", dtype=DT)
    k = torch.randn(b, HKV, n, D, device="cuda", dtype=DT)
    v = torch.randn_like(k)

    def fn() -> torch.Tensor:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return fn


def azure_lengths(batch: int, seed: int = 0) -> list[int]:
    from workloads.traces import load_trace

    reqs = load_trace("azure_conv").requests
    pick = np.random.default_rng(seed).integers(0, len(reqs), batch)
    return [min(reqs[i].prompt_len + reqs[i].output_len, 16384) for i in pick]


def main() -> None:
    warnings.filterwarnings("ignore", category=UserWarning)  # SDPA explains every refusal
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/kernels"))
    ap.add_argument("--tune", action="store_true", help="also sweep tile configs at block 16")
    ap.add_argument("--no-flex", dest="flex", action="store_false")
    ap.add_argument("--quick", action="store_true", help="decode grid only: no ragged, no prefill")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: kvbench-kernels needs a CUDA GPU; torch sees none", file=sys.stderr)
        sys.exit(2)
    card = torch.cuda.get_device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    warm_card()
    ceiling = copy_ceiling()
    print(f"{card}: device-to-device copy {ceiling / 1e12:.3f} TB/s (read + write)", flush=True)
    rows: list[dict] = [
        dict(
            kernel="d2d_copy",
            layout="copy",
            shape="2 GiB",
            time_ms=None,
            tb_per_s=ceiling / 1e12,
            card=card,
        )
    ]
    for b, n in GRID:
        print(f"decode B={b} L={n}", flush=True)
        rows += decode_rows([n] * b, f"B={b} L={n}", card, args)
    for b in () if args.quick else (64, 128):
        lens = azure_lengths(b)
        print(f"decode ragged B={b} (Azure lengths, mean {np.mean(lens):.0f})", flush=True)
        rows += decode_rows(lens, f"ragged B={b}", card, args)
    print("decode under a CUDA graph", flush=True)
    rows += graph_rows(card)
    if not args.quick:
        print("prefill", flush=True)
        rows += prefill_rows(card)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "kernels.csv", index=False)
    (args.out / "kernels.md").write_text(summary_markdown(table))
    from plots.kernels import kernel_bandwidth
    from plots.style import save

    save(kernel_bandwidth(table), args.out / "kernel_bandwidth")
    print(summary_markdown(table))


def summary_markdown(table: pd.DataFrame) -> str:
    """Decode bandwidth per kernel and shape, with the ratio to the best contiguous SDPA."""
    dec = table[
        table.tb_per_s.notna() & (table.kernel != "d2d_copy") & (table.kernel != "kvbench_tune")
    ]
    dec = dec.assign(
        name=dec.kernel + dec.block_size.map(lambda b: "" if pd.isna(b) else f" bs{int(b)}")
    )
    pivot = dec.pivot_table(index="name", columns="shape", values="tb_per_s", aggfunc="first")
    best = dec[dec.kernel.str.startswith("sdpa")].groupby("shape").tb_per_s.max()
    lines = [
        f"card: {table.card.iloc[0]}; copy ceiling {table.tb_per_s.iloc[0]:.3f} TB/s",
        "",
        "| kernel | " + " | ".join(pivot.columns) + " |",
        "|---|" + "---:|" * len(pivot.columns),
    ]
    for name, r in pivot.iterrows():
        cells = []
        for shape in pivot.columns:
            v = r[shape]
            ratio = f" ({v / best[shape]:.2f}x)" if shape in best and not pd.isna(v) else ""
            cells.append("-" if pd.isna(v) else f"{v:.2f}{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pre = table[table.kernel.str.contains("prefill|causal")]
    lines += ["", "| prefill | ms | TFLOP/s |", "|---|---:|---:|"]
    lines += [f"| {r.kernel} | {r.time_ms:.3f} | {r.tflops:.1f} |" for r in pre.itertuples()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
