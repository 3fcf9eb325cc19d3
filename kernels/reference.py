"""Pure-torch versions of every kernel: the test oracle, and the `torch` kernel of sweeps.

KV pool layout (every paged kernel):

    k_cache, v_cache  [num_blocks, block_size, num_kv_heads, head_dim]
    block_table       [num_seqs, max_blocks_per_seq] int32, padded with 0 (the null block)
    seq_lens          [num_seqs] int32: tokens of KV each sequence holds
    slot              block_id * block_size + offset

Attention is computed and returned in float32: the oracle keeps its precision. Query head h reads KV
head h // (num_heads // num_kv_heads) (grouped-query attention).
"""

from __future__ import annotations

import torch


def gather_kv(
    cache: torch.Tensor, block_table: torch.Tensor, seq_len: int, row: int
) -> torch.Tensor:
    """The first seq_len tokens of sequence `row` as [seq_len, num_kv_heads, head_dim]."""
    bs = cache.shape[1]
    blocks = block_table[row, : -(-seq_len // bs)].long()
    return cache[blocks].reshape(-1, *cache.shape[2:])[:seq_len]


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal_offset: int | None
) -> torch.Tensor:
    """q [nq, H, D], k/v [nk, Hkv, D] -> [nq, H, D] in float32."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    if causal_offset is not None:  # query i sits at position causal_offset + i
        qpos = torch.arange(q.shape[0], device=q.device)[:, None] + causal_offset
        s = s.masked_fill(torch.arange(k.shape[0], device=q.device)[None, :] > qpos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), v)


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence: q [num_seqs, num_heads, head_dim]; float32 output."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for i, n in enumerate(seq_lens.tolist()):
        k = gather_kv(k_cache, block_table, n, i)
        v = gather_kv(v_cache, block_table, n, i)
        out[i] = attend(q[i : i + 1], k, v, scale, None)[0]
    return out


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of each sequence's last query tokens over its whole context.

    q [total_query_tokens, num_heads, head_dim]; sequence i's queries are
    q[query_start[i]:query_start[i+1]], the last tokens of its seq_lens[i] tokens of KV (a
    chunked prefill when seq_lens[i] exceeds the query count). Float32 output.
    """
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    starts = query_start.tolist()
    for i, n in enumerate(seq_lens.tolist()):
        a, b = starts[i], starts[i + 1]
        k = gather_kv(k_cache, block_table, n, i)
        v = gather_kv(v_cache, block_table, n, i)
        out[a:b] = attend(q[a:b], k, v, scale, n - (b - a))
    return out


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """k_cache.view(-1, H, D)[slot] = key[i] for every token i with slot >= 0."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = key[keep]
    v_cache.view(-1, *v_cache.shape[2:])[slots] = value[keep]


def copy_blocks(k_cache: torch.Tensor, v_cache: torch.Tensor, pairs: torch.Tensor) -> None:
    """For each row (src, dst) of pairs, copy block src onto block dst (copy-on-write)."""
    src, dst = pairs[:, 0].long(), pairs[:, 1].long()
    k_cache[dst] = k_cache[src]
    v_cache[dst] = v_cache[src]


def contiguous_decode(
    q: torch.Tensor,
    k_slots: torch.Tensor,
    v_slots: torch.Tensor,
    seq_starts: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode over contiguous ranges: sequence i's KV at slots seq_starts[i] + [0, seq_lens[i])
    of k_slots/v_slots [num_slots, num_kv_heads, head_dim]; float32 output."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for i, (a, n) in enumerate(zip(seq_starts.tolist(), seq_lens.tolist())):
        out[i] = attend(q[i : i + 1], k_slots[a : a + n], v_slots[a : a + n], scale, None)[0]
    return out


def contiguous_prefill(
    q: torch.Tensor,
    k_slots: torch.Tensor,
    v_slots: torch.Tensor,
    seq_starts: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal prefill over contiguous ranges (queries as in `paged_prefill`); float32."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    qs = query_start.tolist()
    for i, (a, n) in enumerate(zip(seq_starts.tolist(), seq_lens.tolist())):
        b, e = qs[i], qs[i + 1]
        out[b:e] = attend(q[b:e], k_slots[a : a + n], v_slots[a : a + n], scale, n - (e - b))
    return out
