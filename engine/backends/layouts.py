"""The KV layout the attention backend builds for an allocator (its `layout` attribute):

paged       (paged, prefix, radix)  KVPool of blocks + SeqRows of block tables
contiguous  (static)                KVPool of slots + SeqRows of first slots
virtual     (vattention)            VirtualPool of mapped rows + VirtualRows (vmm_pool.py)
"""

from __future__ import annotations

import torch

from allocators.base import KVAllocator
from engine.backends.kv_pool import KVPool, SeqRows
from engine.backends.vmm_map import EmulatedMapper
from engine.backends.vmm_pool import VirtualRows, virtual_layout
from engine.models import ModelSpec


def build_layout(
    alloc: KVAllocator, model: ModelSpec, num_layers: int, dtype: torch.dtype,
    device: torch.device, max_num_seqs: int, check: bool,
) -> tuple[KVPool, SeqRows | VirtualRows, EmulatedMapper | None]:  # fmt: skip
    """The pool, the rows, and the CPU mapper whose rows must be loaded before each layer
    (vattention without a GPU; None otherwise)."""
    layout = getattr(alloc, "layout", "paged")
    if layout == "virtual":
        pool, rows = virtual_layout(
            alloc,
            model,
            num_layers,
            dtype,
            device,
            max_num_seqs,
            check,  # type: ignore[arg-type]
        )
        emulated = pool.mapper if isinstance(pool.mapper, EmulatedMapper) else None
        return pool, rows, emulated
    contiguous = layout == "contiguous"
    pool = KVPool(
        num_layers, alloc.num_blocks, alloc.block_size, model.num_kv_heads, model.head_dim,
        contiguous, dtype, device,
    )  # fmt: skip
    return pool, SeqRows(device, contiguous), None
