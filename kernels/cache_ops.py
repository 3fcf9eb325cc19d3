"""KV pool writes: new tokens' K/V into their slots, and block copies (copy-on-write).

    write_kv     grid (num_tokens, chunks): token i's [num_kv_heads * head_dim] row of K and V
                 goes to slot_mapping[i] = block_id * block_size + offset (skipped when < 0)
    copy_blocks  grid (num_pairs, chunks, num_layers): unit src of every layer's K and V
                 onto unit dst (a paged block, or a static slot), for the whole pool at once

Both need the pool contiguous (write_kv: `[num_blocks, block_size, num_kv_heads, head_dim]`;
copy_blocks: `[num_layers, num_units, ...]`). Offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    key_ptr,  # [num_tokens, num_kv_heads * head_dim] (rows may be strided)
    value_ptr,  # [num_tokens, num_kv_heads * head_dim]
    k_cache_ptr,  # [num_blocks * block_size, num_kv_heads * head_dim]
    v_cache_ptr,  # [num_blocks * block_size, num_kv_heads * head_dim]
    slot_mapping_ptr,  # [num_tokens] int64
    stride_key,
    stride_value,
    ROW: tl.constexpr,  # num_kv_heads * head_dim
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    mask = offs < tl.where(slot >= 0, ROW, 0)  # padding tokens (slot < 0) write nothing
    src = token.to(tl.int64)
    k = tl.load(key_ptr + src * stride_key + offs, mask=mask)
    v = tl.load(value_ptr + src * stride_value + offs, mask=mask)
    tl.store(k_cache_ptr + slot * ROW + offs, k, mask=mask)
    tl.store(v_cache_ptr + slot * ROW + offs, v, mask=mask)


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError("k_cache, v_cache: equal [num_blocks, block_size, num_kv_heads, head_dim]")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the KV pool must be contiguous")


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter key/value [num_tokens, num_kv_heads, head_dim] into the pool at slot_mapping."""
    _check_cache(k_cache, v_cache)
    row = k_cache.shape[2] * k_cache.shape[3]
    if key.shape != value.shape or key.shape[1:] != k_cache.shape[2:]:
        raise ValueError(f"key/value {tuple(key.shape)} do not match the pool's token rows")
    if key.dtype != k_cache.dtype or value.dtype != k_cache.dtype:
        raise ValueError(f"key/value dtype {key.dtype} differs from the pool's {k_cache.dtype}")
    if slot_mapping.dtype != torch.int64 or slot_mapping.shape != key.shape[:1]:
        raise ValueError("slot_mapping must be int64 [num_tokens]")
    key, value = key.reshape(key.shape[0], row), value.reshape(value.shape[0], row)
    if key.stride(1) != 1 or value.stride(1) != 1:
        raise ValueError("key/value rows must be contiguous")
    if key.shape[0] == 0:
        return
    block = min(1024, triton.next_power_of_2(row))
    _write_kv_kernel[(key.shape[0], triton.cdiv(row, block))](
        key, value, k_cache, v_cache, slot_mapping, key.stride(0), value.stride(0),
        ROW=row, BLOCK=block,
    )  # fmt: skip


@triton.jit
def _copy_blocks_kernel(
    k_cache_ptr,  # [num_layers, num_units, NUMEL]
    v_cache_ptr,  # [num_layers, num_units, NUMEL]
    pairs_ptr,  # [num_pairs, 2] int64: (src, dst)
    layer_stride,  # num_units * NUMEL
    NUMEL: tl.constexpr,  # elements of one unit
    BLOCK: tl.constexpr,
):
    pair = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < NUMEL
    base = tl.program_id(2).to(tl.int64) * layer_stride
    src = base + tl.load(pairs_ptr + pair * 2) * NUMEL
    dst = base + tl.load(pairs_ptr + pair * 2 + 1) * NUMEL
    tl.store(k_cache_ptr + dst + offs, tl.load(k_cache_ptr + src + offs, mask=mask), mask=mask)
    tl.store(v_cache_ptr + dst + offs, tl.load(v_cache_ptr + src + offs, mask=mask), mask=mask)


def copy_blocks(k_cache: torch.Tensor, v_cache: torch.Tensor, pairs: torch.Tensor) -> None:
    """Copy unit pairs[i, 0] onto unit pairs[i, 1] in every layer of both caches, k_cache and
    v_cache [num_layers, num_units, ...] (one layer's pool: k[None]). Destinations are
    distinct and no destination is a source: the pairs are copied concurrently."""
    if k_cache.dim() < 2 or k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError("k_cache, v_cache: equal [num_layers, num_units, ...]")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the KV pool must be contiguous")
    if pairs.dtype != torch.int64 or pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError("pairs must be int64 [num_pairs, 2] of (src, dst) unit ids")
    if pairs.shape[0] == 0:
        return
    numel = k_cache[0, 0].numel()
    block = min(4096, triton.next_power_of_2(numel))
    grid = (pairs.shape[0], triton.cdiv(numel, block), k_cache.shape[0])
    _copy_blocks_kernel[grid](
        k_cache, v_cache, pairs.contiguous(), k_cache[0].numel(), NUMEL=numel, BLOCK=block
    )
