"""Paged prefill and chunked prefill: causal attention of several query tokens per sequence.

    grid (num_seqs, num_heads, query tiles): a program takes BLOCK_M query tokens of one head
    of one sequence and walks that sequence's KV through the block table, BLOCK_N tokens at a
    time, up to its last query's position (causal), with an online softmax.

Sequence i's queries are q[query_start[i]:query_start[i+1]], the last tokens of its
seq_lens[i] tokens of KV: a plain prefill when the two counts are equal, a chunked prefill (or
a prefix-cache hit) when KV holds earlier tokens too. Write the new tokens' K/V into the pool
(cache_ops.write_kv) before calling this.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.paged_decode import LOG2E, check_pool, load_kv_tile, output_for


# NOTE: a mixed step's prefill rows start at row num_decode of the table and lengths, so those
# pointers' alignment varies with it: not specialized (paged_decode.py says why)
@triton.jit(do_not_specialize=["block_table_ptr", "seq_lens_ptr", "query_start_ptr", "stride_bt"])
def _prefill_kernel(
    out_ptr,  # [total_query_tokens, num_heads, head_dim]
    q_ptr,  # [total_query_tokens, num_heads, head_dim]
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_table_ptr,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens_ptr,  # [num_seqs] int32: KV tokens, the queries' included
    query_start_ptr,  # [num_seqs + 1] int32
    qk_scale,  # softmax scale * log2(e)
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bt,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CONTIGUOUS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    m_tile = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    ctx = tl.load(seq_lens_ptr + seq)
    first_pos = ctx - q_len  # position of query 0 in the sequence

    offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] query index in the sequence
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    m_mask = offs_m < q_len
    q_rows = (q_start + offs_m).to(tl.int64)[:, None]
    q = tl.load(
        q_ptr + q_rows * stride_qt + head * stride_qh + offs_d[None, :],
        mask=m_mask[:, None],
        other=0.0,
    )  # [BLOCK_M, HEAD_DIM]
    if UPCAST:  # the CPU interpreter computes low-precision dots wrongly
        q = q.to(tl.float32)
    kv_head = head // GROUP
    bt_row = block_table_ptr + seq * stride_bt
    k_head = k_cache_ptr + kv_head * stride_kh + offs_d[None, :]
    v_head = v_cache_ptr + kv_head * stride_vh + offs_d[None, :]
    if CONTIGUOUS:  # the range's first slot, read once: no table load inside the loop
        first = tl.load(bt_row).to(tl.int64)
        k_head += first * stride_kt
        v_head += first * stride_vt
    q_pos = first_pos + offs_m  # [BLOCK_M]
    # keys past this tile's last query are masked anyway; tiles past the queries do nothing
    hi = tl.where(m_tile * BLOCK_M < q_len, tl.minimum(ctx, first_pos + (m_tile + 1) * BLOCK_M), 0)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for tile in tl.range(0, hi, BLOCK_N):
        toks = tile + offs_n
        n_mask = toks < hi
        k, v = load_kv_tile(k_head, v_head, bt_row, toks, n_mask, stride_kb, stride_kt,
                            stride_vb, stride_vt, BLOCK_SIZE, CONTIGUOUS, UPCAST)  # fmt: skip
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_M, BLOCK_N]
        keep = n_mask[None, :] & (toks[None, :] <= q_pos[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing to see yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m - m_safe)
        l_sum = l_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new

    out = acc / tl.where(l_sum > 0, l_sum, 1.0)[:, None]
    o_rows = (q_start + offs_m).to(tl.int64)[:, None]
    tl.store(
        out_ptr + o_rows * stride_ot + head * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None],
    )


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Causal prefill attention: q [total_query_tokens, num_heads, head_dim] -> out.

    Args:
        query_start: int32 [num_seqs + 1], offsets of each sequence's queries in q.
        max_query_len: the longest query run (read from the GPU when None: a sync).
        block_m, block_n, num_warps, num_stages: override the tile defaults (tuned on an
            H100 for head_dim 128: 128 x 128 tiles, 8 warps, 3 stages; smaller past 128).
    """
    check_pool(q, k_cache, v_cache, block_table, seq_lens)
    return launch_prefill(
        q, k_cache, v_cache, block_table, seq_lens, query_start, scale, out, False,
        max_query_len, block_m, block_n, num_warps, num_stages,
    )  # fmt: skip


def launch_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    index: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    scale: float,
    out: torch.Tensor | None,
    contiguous: bool,
    max_query_len: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """The prefill launch shared by the paged (index = block table) and contiguous (index =
    [num_seqs, 1] first slots, pool viewed with block_size 1) wrappers; pool checked."""
    num_seqs = seq_lens.shape[0]
    if query_start.dtype != torch.int32 or query_start.shape != (num_seqs + 1,):
        raise ValueError("query_start must be int32 [num_seqs + 1]")
    out = output_for(q, out)
    if max_query_len is None:
        max_query_len = int((query_start[1:] - query_start[:-1]).max())
    num_heads, head_dim = q.shape[1], q.shape[2]
    big = head_dim <= 128  # 128 x 128 tiles of head_dim 256 overflow shared memory
    block_m = block_m or (128 if big else 64)
    block_n = block_n or (128 if big else 32)
    num_warps = num_warps or (8 if big else 4)
    num_stages = num_stages or (3 if big else 2)
    grid = (num_seqs, num_heads, triton.cdiv(max_query_len, block_m))
    _prefill_kernel[grid](
        out, q, k_cache, v_cache, index, seq_lens, query_start, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), index.stride(0),
        GROUP=num_heads // k_cache.shape[2], HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
        BLOCK_M=block_m, BLOCK_N=block_n, CONTIGUOUS=contiguous,
        UPCAST=os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
