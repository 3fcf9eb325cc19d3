"""Config targets: allocators built from a slot capacity (the engine's KV budget)."""

from __future__ import annotations

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from allocators.placement import PlacementName
from allocators.radix import RadixAllocator
from allocators.static import ReservationName
from allocators.vattention import VAttentionAllocator
from engine.models import model_spec
from workloads.errors import KvbenchError


def _blocks(num_slots: int, block_size: int) -> int:
    if block_size < 1:
        raise KvbenchError(f"allocator.block_size must be >= 1, got {block_size}")
    if num_slots < block_size:
        raise KvbenchError(f"{num_slots} KV slots do not hold one block of {block_size} tokens")
    return num_slots // block_size


def static_allocator(
    num_slots: int,
    max_seq_len: int,
    reservation: ReservationName = "max",
    placement: PlacementName = "buddy",
) -> StaticAllocator:
    try:
        return StaticAllocator(num_slots, max_seq_len, reservation, placement)
    except ValueError as e:
        raise KvbenchError(f"allocator: {e}") from None


def paged_allocator(num_slots: int, max_seq_len: int, block_size: int = 16) -> PagedAllocator:
    return PagedAllocator(_blocks(num_slots, block_size), block_size)


def prefix_allocator(num_slots: int, max_seq_len: int, block_size: int = 16) -> PrefixAllocator:
    return PrefixAllocator(_blocks(num_slots, block_size), block_size)


def radix_allocator(num_slots: int, max_seq_len: int, block_size: int = 1) -> RadixAllocator:
    return RadixAllocator(_blocks(num_slots, block_size), block_size)


def vattention_allocator(
    num_slots: int, max_seq_len: int, page_kib: int = 2048, model: str = "llama3_8b"
) -> VAttentionAllocator:
    """Pages of page_kib KiB in each layer's K and V buffers, page bytes / (kv_heads x head_dim
    x dtype bytes) tokens each (llama3_8b: 1024 at 2 MiB, 32 at 64 KiB). NOTE: where a page
    does not hold whole tokens (OPT-13B: 10 KiB a token), its last partial token is left
    unused (a token never straddles two pages here: under 1 token of every page)."""
    spec = model_spec(model)
    token_bytes = spec.kv_bytes_per_token // (2 * spec.num_layers)  # one K (or V) buffer
    page_bytes = page_kib * 1024
    if page_kib < 1 or page_bytes < token_bytes:
        raise KvbenchError(f"allocator.page_kib={page_kib}: a page must hold a token ({model})")
    num_pages = num_slots * token_bytes // page_bytes  # pages of each buffer the budget holds
    if num_pages < 1:
        raise KvbenchError(f"{num_slots} KV slots do not hold one page of {page_kib} KiB")
    return VAttentionAllocator(num_pages, page_bytes // token_bytes, max_seq_len, page_bytes)
