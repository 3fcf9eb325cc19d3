"""Paged decode attention (one query token per sequence) over a block-table KV pool.

    grid (num_seqs, num_kv_heads, num_splits): a program takes the GROUP query heads that read
    one KV head (grouped-query attention, padded to 16 rows for tensor-core dots) and one
    contiguous range of the context (split-K), walks it BLOCK_N tokens at a time - each
    token's K/V row found through the block table - with an online softmax; with several
    splits a second kernel merges the partial results (log-sum-exp weighting).

Pool `[num_blocks, block_size, num_kv_heads, head_dim]`, block table int32
`[num_seqs, max_blocks_per_seq]`, `seq_lens` int32 (each >= 1). Offsets into the pool are
int64, so pools where block_id * block_stride overflows int32 work.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from kernels.decode_tiles import Tile, choose_tile

LOG2E = 1.4426950408889634
MAX_SPLITS = 64
RAGGED = 0.8  # a batch whose mean length is under this share of its longest is ragged
# Tiles (block_n, num_warps, num_stages). The first is the default; for equal-length batches
# decode_tiles.choose_tile may take a later one whose waves fill the SMs better. Each block_n
# divides the first's (split sizes are multiples of the default block_n).
CONTIGUOUS_TILES: tuple[Tile, ...] = ((64, 4, 2), (32, 4, 3), (32, 4, 4))
PAGED_TILES: tuple[Tile, ...] = ((64, 4, 3), (32, 4, 2))


@triton.jit
def load_kv_tile(
    k_head,  # k_cache_ptr + kv_head * stride_kh + offs_d[None, :]
    v_head,  # v_cache_ptr + kv_head * stride_vh + offs_d[None, :]
    bt_row,  # block_table_ptr + seq * stride_bt (contiguous: unused, k/v_head at slot 0)
    toks,  # [BLOCK_N] token positions in the sequence
    n_mask,  # [BLOCK_N] positions to load
    stride_kb,
    stride_kt,
    stride_vb,
    stride_vt,
    BLOCK_SIZE: tl.constexpr,
    CONTIGUOUS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """K and V rows [BLOCK_N, HEAD_DIM] of the given tokens: through the block table, or
    (CONTIGUOUS, k/v_head already at the sequence's first slot) at their positions."""
    kv_mask = n_mask[:, None]
    if CONTIGUOUS:
        rows = toks.to(tl.int64)[:, None]  # [BLOCK_N, 1] slots after the sequence's first
        k = tl.load(k_head + rows * stride_kt, mask=kv_mask, other=0.0)
        v = tl.load(v_head + rows * stride_vt, mask=kv_mask, other=0.0)
    else:
        block = tl.load(bt_row + toks // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        row = (toks % BLOCK_SIZE)[:, None]  # [BLOCK_N, 1]
        k = tl.load(k_head + block[:, None] * stride_kb + row * stride_kt, mask=kv_mask, other=0.0)
        v = tl.load(v_head + block[:, None] * stride_vb + row * stride_vt, mask=kv_mask, other=0.0)
    if UPCAST:  # the CPU interpreter computes low-precision dots wrongly
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


# NOTE: Triton compiles a variant per integer value class (== 1, divisible by 16, other) and per
# pointer alignment. Split counts and sizes vary from step to step (ragged batches make 16 or
# 32 splits), and the table's stride and the lengths pointer depend on how the caller slices
# its rows: they are not specialized, so a serving run never compiles mid-step (a compile
# costs 0.3-1 s). The KV and query pointers keep their alignment (vectorized loads).
@triton.jit
def split_size(
    seq_len, num_splits, min_tokens_per_split, split_tokens_ptr,
    BLOCK_N: tl.constexpr, READ_MIN: tl.constexpr,
):  # fmt: skip
    """Tokens per split of one sequence: its length over num_splits in whole tiles, at least
    the minimum (READ_MIN: read from split_tokens_ptr, which a graph replay sets per step)."""
    least = tl.load(split_tokens_ptr) if READ_MIN else min_tokens_per_split
    return tl.maximum(tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N, least)


@triton.jit(
    do_not_specialize=[
        "seq_lens_ptr", "stride_bt", "num_splits", "min_tokens_per_split", "split_tokens_ptr"
    ]
)  # fmt: skip
def _decode_kernel(
    out_ptr,  # [num_seqs, num_heads, head_dim]
    part_acc_ptr,  # [num_seqs, num_heads, num_splits, head_dim] fp32 (num_splits > 1)
    part_ml_ptr,  # [num_seqs, num_heads, num_splits, 2] fp32: running max, sum (log2 units)
    q_ptr,  # [num_seqs, num_heads, head_dim]
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_table_ptr,  # [num_seqs, max_blocks_per_seq] int32 (contiguous: [num_seqs, 1] first slots)
    seq_lens_ptr,  # [num_seqs] int32
    qk_scale,  # softmax scale * log2(e)
    stride_qs,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bt,
    stride_os,
    stride_oh,
    num_heads,
    num_splits,  # programs along axis 2 (a run-time value: no recompile per split count)
    min_tokens_per_split,  # a multiple of BLOCK_N
    split_tokens_ptr,  # [1] int32: the minimum instead, read on the GPU (READ_MIN)
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,  # num_splits > 1: write partial results for the merge kernel
    READ_MIN: tl.constexpr,
    CONTIGUOUS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    # NOTE: each sequence's split size comes from its own length on the GPU, not from a host
    # maximum, so a CUDA graph captured at a long maximum keeps every split busy on replay.
    tokens_per_split = split_size(
        seq_len, num_splits, min_tokens_per_split, split_tokens_ptr, BLOCK_N, READ_MIN
    )
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, seq_len)
    if start >= end:  # past the sequence's last piece (the merge reads only real pieces)
        return

    offs_g = tl.arange(0, BLOCK_G)  # [BLOCK_G] query heads of this KV head
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N] tokens of a tile
    heads = kv_head * GROUP + offs_g
    g_mask = offs_g < GROUP
    q = tl.load(  # [BLOCK_G, HEAD_DIM]
        q_ptr + seq * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_mask[:, None],
        other=0.0,
    )
    if UPCAST:  # the CPU interpreter computes low-precision dots wrongly
        q = q.to(tl.float32)
    bt_row = block_table_ptr + seq * stride_bt
    k_head = k_cache_ptr + kv_head * stride_kh + offs_d[None, :]
    v_head = v_cache_ptr + kv_head * stride_vh + offs_d[None, :]
    if CONTIGUOUS:  # the range's first slot, read once: no table load inside the loop
        first = tl.load(bt_row).to(tl.int64)
        k_head += first * stride_kt
        v_head += first * stride_vt

    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for tile in tl.range(start, end, BLOCK_N):
        toks = tile + offs_n
        n_mask = toks < end
        k, v = load_kv_tile(k_head, v_head, bt_row, toks, n_mask, stride_kb, stride_kt,
                            stride_vb, stride_vt, BLOCK_SIZE, CONTIGUOUS, UPCAST)  # fmt: skip
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_G, BLOCK_N]
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        l_sum = l_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new

    g_rows = (seq * stride_os + heads * stride_oh)[:, None]
    # a sequence in one piece (always, unsplit) is finished here; its merge row does nothing
    whole = tokens_per_split >= seq_len
    if whole & (split == 0):
        out = acc / l_sum[:, None]
        tl.store(
            out_ptr + g_rows + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
            mask=g_mask[:, None],
        )  # fmt: skip
    if SPLIT and tokens_per_split < seq_len:
        part = (seq * num_heads + heads) * num_splits + split  # partials are contiguous
        tl.store(
            part_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc,
            mask=g_mask[:, None],
        )  # fmt: skip
        tl.store(part_ml_ptr + part * 2, m, mask=g_mask)
        tl.store(part_ml_ptr + part * 2 + 1, l_sum, mask=g_mask)


@triton.jit(
    do_not_specialize=["seq_lens_ptr", "num_splits", "min_tokens_per_split", "split_tokens_ptr"]
)
def _merge_kernel(
    out_ptr,  # [num_seqs, num_heads, head_dim]
    part_acc_ptr,  # [num_seqs * num_heads, num_splits, head_dim] fp32
    part_ml_ptr,  # [num_seqs * num_heads, num_splits, 2] fp32
    seq_lens_ptr,  # [num_seqs] int32
    num_heads,
    stride_os,
    stride_oh,
    num_splits,
    min_tokens_per_split,
    split_tokens_ptr,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,  # >= num_splits (one compile serves every split count)
    BLOCK_N: tl.constexpr,  # the decode kernel's
    READ_MIN: tl.constexpr,
):
    row = tl.program_id(0)  # seq * num_heads + head
    seq, head = row // num_heads, row % num_heads
    seq_len = tl.load(seq_lens_ptr + seq)
    tokens_per_split = split_size(
        seq_len, num_splits, min_tokens_per_split, split_tokens_ptr, BLOCK_N, READ_MIN
    )
    pieces = tl.cdiv(seq_len, tokens_per_split)
    if pieces > 1:  # else the decode kernel wrote the output
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, HEAD_DIM)
        s_mask = offs_s < pieces
        base = row * num_splits + offs_s
        m = tl.load(part_ml_ptr + base * 2, mask=s_mask, other=float("-inf"))
        l_sum = tl.load(part_ml_ptr + base * 2 + 1, mask=s_mask, other=0.0)
        acc = tl.load(
            part_acc_ptr + base[:, None] * HEAD_DIM + offs_d[None, :],
            mask=s_mask[:, None],
            other=0.0,
        )
        m_max = tl.max(m, 0)
        w = tl.where(s_mask, tl.exp2(m - m_max), 0.0)
        out = tl.sum(acc * w[:, None], 0) / tl.sum(l_sum * w, 0)
        tl.store(
            out_ptr + seq * stride_os + head * stride_oh + offs_d,
            out.to(out_ptr.dtype.element_ty),
        )


def _tile_kwargs(tile: Tile) -> dict[str, int]:
    block_n, num_warps, num_stages = tile
    return dict(BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def check_pool(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
) -> None:
    """Shapes, dtypes and strides every paged attention kernel relies on."""
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError("k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"dtypes differ: q {q.dtype}, k {k_cache.dtype}, v {v_cache.dtype}")
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"unsupported dtype {q.dtype}")
    head_dim, num_kv_heads = k_cache.shape[3], k_cache.shape[2]
    if q.shape[-1] != head_dim or head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim: q has {q.shape[-1]}, the cache {head_dim}; need a power of 2")
    if q.shape[-2] % num_kv_heads:
        raise ValueError(f"{q.shape[-2]} query heads are not a multiple of {num_kv_heads}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: the head_dim axis must be contiguous")
    if not 1 <= k_cache.shape[1] <= 256:
        raise ValueError(f"block_size {k_cache.shape[1]} outside 1..256")
    if block_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise ValueError("block_table and seq_lens must be int32")
    if block_table.dim() != 2 or block_table.stride(1) != 1:
        raise ValueError("block_table: [num_seqs, max_blocks_per_seq], rows contiguous")


def output_for(q: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """`out`, checked against q, or a new tensor like q."""
    if out is None:
        return torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError("out must match q's shape and dtype")
    return out


def default_splits(
    programs: int, max_len: int, block_n: int, num_sms: int, mean_len: float | None = None
) -> tuple[int, int]:
    """Split-K count and the fewest tokens per split, tuned on an H100
    (results/reference/kernels_h100/NOTES.md).

    Equal lengths: one split wherever there are 2 x SMs (sequence, KV head) programs or more
    (the merge pass costs more than a short wave tail), else about 3 x SMs programs in all.
    Ragged batches (mean length under 0.8 x the longest, when the caller knows the mean): cut
    every sequence into pieces of the length that makes about 6 x SMs programs, so the longest
    sequence stops being the critical path. Very long contexts are cut into 8192-token pieces.
    Each piece keeps at least two tiles. The kernel sizes each sequence's splits from its own
    length (at least the returned minimum), so shorter sequences use fewer of them.
    """
    piece = 2 * block_n
    if mean_len is not None and mean_len < RAGGED * max_len:
        piece = triton.cdiv(int(max(mean_len * programs / (6 * num_sms), piece)), block_n)
        piece *= block_n
        want = triton.cdiv(max_len, piece)
    else:
        want = 1 if programs >= 2 * num_sms else max(1, 3 * num_sms // programs)
    want = max(want, triton.cdiv(max_len, 8192))
    return max(1, min(want, MAX_SPLITS, triton.cdiv(max_len, 2 * block_n))), piece


def default_block_n(head_dim: int) -> int:
    """The decode tile's tokens when no tile is chosen (graph captures): every tile set's first."""
    assert PAGED_TILES[0][0] == CONTIGUOUS_TILES[0][0]
    return 32 if head_dim > 128 else PAGED_TILES[0][0]


def split_tokens_for(
    programs: int, max_len: int, mean_len: float, num_splits: int, head_dim: int, num_sms: int
) -> int:
    """The fewest tokens per split (a graph replay's `split_tokens`) that cuts the longest
    sequence into the pieces `default_splits` chooses for this step's lengths, at most
    `num_splits` (the captured grid); shorter sequences get pieces of that size. Equal lengths
    over 2 x SMs programs run in one piece and skip the merge."""
    block_n = default_block_n(head_dim)
    want, piece = default_splits(programs, max_len, block_n, num_sms, mean_len)
    want = min(want, num_splits)
    return max(piece, triton.cdiv(triton.cdiv(max_len, want), block_n) * block_n)


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    max_seq_len: int | None = None,
    num_tokens: int | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    split_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode attention: q [num_seqs, num_heads, head_dim] -> out of the same shape.

    Args:
        max_seq_len: an upper bound of seq_lens (read from the GPU when None: a sync). Under a
            CUDA graph, the captured bound; each sequence's splits follow its own length.
        num_tokens: sum of seq_lens, if the caller knows it: ragged batches split better.
        num_splits, block_n, num_warps, num_stages: override the launch heuristics.
        split_tokens: with num_splits, a device int32 [1]: each split holds at least this
            many tokens (a multiple of the tile), read on the GPU - a CUDA graph captured
            with num_splits splits then splits as each replay sets it (`split_tokens_for`);
            sequences in one piece skip the merge. None: num_splits pieces of every sequence
            (at least one tile each).
    """
    check_pool(q, k_cache, v_cache, block_table, seq_lens)
    return launch_decode(
        q, k_cache, v_cache, block_table, seq_lens, scale, out, False,
        max_seq_len, num_tokens, num_splits, block_n, num_warps, num_stages, split_tokens,
    )  # fmt: skip


def launch_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    index: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor | None,
    contiguous: bool,
    max_seq_len: int | None = None,
    num_tokens: int | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    split_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The decode launch shared by the paged (index = block table) and contiguous (index =
    [num_seqs, 1] first slots, pool viewed with block_size 1) wrappers; inputs checked.

    NOTE: contiguous tiles pipeline fully, so 3 stages would take 70 KB of shared memory per
    program (paged: 39 KB, its table-dependent loads stage less) and cut residency to 3
    programs per SM; 2 stages keep it at 39 KB. Batches known to be of equal lengths (from
    num_tokens) take the tile whose waves fill the SMs best (decode_tiles.py); ragged or
    unknown ones (CUDA graphs) keep the default, which measured best on ragged batches."""
    num_seqs, num_heads, head_dim = q.shape
    if seq_lens.shape != (num_seqs,) or index.shape[0] != num_seqs:
        raise ValueError("block_table (seq_starts) and seq_lens need one row per query")
    out = output_for(q, out)
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    max_len = int(seq_lens.max()) if max_seq_len is None else max_seq_len
    tiles = CONTIGUOUS_TILES if contiguous else PAGED_TILES
    pinned = (block_n, num_warps, num_stages) != (None, None, None)
    block_n = block_n or default_block_n(head_dim)
    min_split = block_n  # an explicit split count really splits
    mean = num_tokens / num_seqs if num_tokens is not None else None
    if split_tokens is not None and (num_splits is None or split_tokens.dtype != torch.int32):
        raise ValueError("split_tokens: a device int32 [1] beside an explicit num_splits")
    if num_splits is None:
        num_splits, min_split = default_splits(
            num_seqs * num_kv_heads, max_len, block_n, _num_sms(q.device), mean
        )
    if num_splits > 1:
        part_acc = torch.empty(
            num_seqs * num_heads * num_splits * head_dim, device=q.device, dtype=torch.float32
        )
        part_ml = torch.empty(
            num_seqs * num_heads * num_splits * 2, device=q.device, dtype=torch.float32
        )
        part_out = out if out.is_contiguous() else torch.empty_like(q)
    else:
        part_acc = part_ml = out
        part_out = out
    grid = (num_seqs, num_kv_heads, num_splits)
    read_min = split_tokens is not None  # else the pointer is a stand-in, never read
    least_ptr = split_tokens if read_min else seq_lens
    args = (
        part_out, part_acc, part_ml, q, k_cache, v_cache, index, seq_lens,
        scale * LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        index.stride(0), part_out.stride(0), part_out.stride(1), num_heads, num_splits,
        min_split, least_ptr,
    )  # fmt: skip
    consts = dict(
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, SPLIT=num_splits > 1, READ_MIN=read_min, CONTIGUOUS=contiguous,
        UPCAST=os.environ.get("TRITON_INTERPRET") == "1",
    )  # fmt: skip
    tile = (block_n, num_warps or tiles[0][1], num_stages or tiles[0][2])
    if not pinned and head_dim <= 128 and (mean is not None and mean >= RAGGED * max_len):
        tile = choose_tile(  # equal lengths: every program streams as much, waves are real
            tiles, num_seqs * num_kv_heads * num_splits, q.device,
            lambda t: _decode_kernel.warmup(*args, grid=grid, **consts, **_tile_kwargs(t)),
            (q.dtype, *consts.items()),
        )  # fmt: skip
    _decode_kernel[grid](*args, **consts, **_tile_kwargs(tile))
    if num_splits > 1:
        _merge_kernel[(num_seqs * num_heads,)](
            part_out, part_acc, part_ml, seq_lens, num_heads, part_out.stride(0),
            part_out.stride(1), num_splits, min_split, least_ptr, HEAD_DIM=head_dim,
            BLOCK_S=MAX_SPLITS, BLOCK_N=tile[0], READ_MIN=read_min,
        )  # fmt: skip
        if part_out is not out:
            out.copy_(part_out)
    return out
