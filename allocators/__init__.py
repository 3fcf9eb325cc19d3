"""KV block/slot managers: ids and accounting only, no tensors, no CUDA."""

from allocators.base import Allocation, KVAllocator, MemoryUsage, SeqLike, TokenSource
from allocators.paged import PagedAllocator
from allocators.prefix import PrefixAllocator
from allocators.static import StaticAllocator

__all__ = [
    "Allocation",
    "KVAllocator",
    "MemoryUsage",
    "PagedAllocator",
    "PrefixAllocator",
    "SeqLike",
    "StaticAllocator",
    "TokenSource",
]
