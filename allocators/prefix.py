"""Paged allocation with automatic prefix caching, with the semantics of vLLM v1 (vllm/v1/core).

The paged allocator over its block pool, with the hash-chain cache policy on top
(allocators/hash_cache.py): full blocks, prompt and output alike, are registered by their
chained hash as they fill; a new sequence takes the cached blocks of its prompt's chain, up to
`prompt_len - 1` tokens (the last prompt token is always computed, its logits are needed).

    free queue (front -> back):  [unhashed ... | hashed, least recently freed ... most]
                                    reused first   evicted in LRU order, still hittable

A block leaves the cache only when it is popped from the front of the free queue for reuse.
A hit on a free cached block takes it out of the queue (refcount 0 -> 1). A recomputed block
whose hash is already cached is registered too (nothing is deduplicated), and a lookup takes
the oldest.
"""

from __future__ import annotations

from allocators.paged import PagedAllocator


class PrefixAllocator(PagedAllocator):
    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size, prefix_caching=True)
