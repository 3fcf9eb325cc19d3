"""Config targets: allocators built from a slot capacity (the engine's KV budget)."""

from __future__ import annotations

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from allocators.placement import PlacementName
from allocators.static import ReservationName
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
