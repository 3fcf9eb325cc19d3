"""Random KV pools with random block tables, shared by the CPU and GPU kernel tests."""

from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def make_pool(
    seq_lens: list[int],
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str,
    num_blocks: int | None = None,
    first_block: int = 1,
    seed: int = 0,
):
    """K/V pools filled with random values and a random, non-identity block table.

    Block ids are drawn without replacement from [first_block, num_blocks); the table is padded
    with 0 (the null block).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    need = [-(-n // block_size) for n in seq_lens]
    num_blocks = num_blocks or first_block + sum(need) + 3
    ids = first_block + torch.randperm(num_blocks - first_block, generator=g)[: sum(need)]
    table = torch.zeros(len(seq_lens), max(need), dtype=torch.int32)
    pos = 0
    for i, n in enumerate(need):
        table[i, :n] = ids[pos : pos + n]
        pos += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k = torch.empty(shape, dtype=dtype, device=device)
    v = torch.empty(shape, dtype=dtype, device=device)
    if num_blocks * block_size * num_kv_heads * head_dim > 1 << 28:  # only touch used blocks
        used = ids.to(device)
        k[used] = torch.randn((len(ids), *shape[1:]), dtype=dtype, device=device)
        v[used] = torch.randn((len(ids), *shape[1:]), dtype=dtype, device=device)
    else:
        k.copy_(torch.randn(shape, generator=g).to(dtype))
        v.copy_(torch.randn(shape, generator=g).to(dtype))
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return k, v, table.to(device), lens


def make_slots(
    seq_lens: list[int],
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str,
    seed: int = 0,
):
    """A static allocator's slot space: K/V [num_slots, num_kv_heads, head_dim] filled with
    random values, each sequence's range placed in random order with random gaps (slot 0 is
    the null slot). Returns k, v, int32 first slots and int32 lengths."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    order = torch.randperm(len(seq_lens), generator=g).tolist()
    starts, pos = [0] * len(seq_lens), 1
    for i in order:
        pos += int(torch.randint(0, 64, (1,), generator=g))
        starts[i] = pos
        pos += seq_lens[i]
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (pos + 1, num_kv_heads, head_dim)
    k = torch.randn(shape, generator=gen, device=device).to(dtype)
    v = torch.randn(shape, generator=gen, device=device).to(dtype)
    as_index = dict(dtype=torch.int32, device=device)
    return k, v, torch.tensor(starts, **as_index), torch.tensor(seq_lens, **as_index)
