"""Contiguous (varlen) attention for the static allocator, and SDPA baselines.

A static allocation keeps each sequence's KV in one contiguous slot range of a linear slot
space; there is no block table:

    k_slots, v_slots  [num_slots, num_kv_heads, head_dim]      slot 0 is the null slot
    seq_starts        [num_seqs] int32: the first slot of each sequence's range
    seq_lens          [num_seqs] int32: tokens of KV it holds   (token i at seq_starts + i)

`contiguous_decode` / `contiguous_prefill` run the same Triton programs as the paged kernels
with the table lookup compiled out (CONTIGUOUS): each K/V tile is one contiguous load, as in
the Orca baselines of the PagedAttention paper, so static allocation is never timed with a
paged kernel. `sdpa_decode` runs torch SDPA over equal-length, head-major KV: the baseline
(cuDNN was fastest for decode on the H100 in BENCHMARKS.md, then flash, then efficient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels.paged_decode import check_pool, launch_decode
from kernels.paged_prefill import launch_prefill

BACKENDS = (
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)


def _as_pool(
    q: torch.Tensor,
    k_slots: torch.Tensor,
    v_slots: torch.Tensor,
    seq_starts: torch.Tensor,
    seq_lens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The slot space as a pool of 1-token blocks and the starts as a one-column table."""
    if k_slots.dim() != 3 or k_slots.shape != v_slots.shape:
        raise ValueError("k_slots, v_slots: [num_slots, num_kv_heads, head_dim]")
    if seq_starts.dim() != 1:
        raise ValueError("seq_starts must be int32 [num_seqs]")
    k, v, starts = k_slots.unsqueeze(1), v_slots.unsqueeze(1), seq_starts.unsqueeze(1)
    check_pool(q, k, v, starts, seq_lens)
    return k, v, starts


def contiguous_decode(
    q: torch.Tensor,
    k_slots: torch.Tensor,
    v_slots: torch.Tensor,
    seq_starts: torch.Tensor,
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
    """Decode attention over contiguous ranges: q [num_seqs, num_heads, head_dim] -> out.

    Arguments after `scale` as for `paged_decode` (the same split-K heuristics).
    """
    k, v, starts = _as_pool(q, k_slots, v_slots, seq_starts, seq_lens)
    return launch_decode(
        q, k, v, starts, seq_lens, scale, out, True,
        max_seq_len, num_tokens, num_splits, block_n, num_warps, num_stages, split_tokens,
    )  # fmt: skip


def contiguous_prefill(
    q: torch.Tensor,
    k_slots: torch.Tensor,
    v_slots: torch.Tensor,
    seq_starts: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
) -> torch.Tensor:
    """Causal prefill over contiguous ranges; queries laid out as for `paged_prefill`."""
    k, v, starts = _as_pool(q, k_slots, v_slots, seq_starts, seq_lens)
    return launch_prefill(q, k, v, starts, seq_lens, query_start, scale, out, True, max_query_len)


def sdpa_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: SDPBackend
) -> torch.Tensor:
    """q [B, H, D], k/v [B, Hkv, L, D] -> [B, H, D] with one SDPA backend."""
    with sdpa_kernel([backend]):
        o = F.scaled_dot_product_attention(
            q.unsqueeze(2), k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
    return o.squeeze(2)


def pick_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> SDPBackend:
    """The first backend of BACKENDS that runs on these inputs."""
    for backend in BACKENDS:
        try:
            sdpa_decode(q[:1], k[:1, :, :16], v[:1, :, :16], 1.0, backend)
        except RuntimeError:
            continue
        return backend
    raise RuntimeError("no SDPA backend runs on these inputs")
