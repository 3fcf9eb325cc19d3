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

from allocators.base import SeqLike
from allocators.paged import PagedAllocator


class PrefixAllocator(PagedAllocator):
    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size, prefix_caching=True)

    def prefix_match(self, seq: SeqLike, num_tokens: int) -> int:
        """Tokens of a waiting sequence's first num_tokens its admission would find cached
        (what SGLang's `lpm` policy orders by); changes nothing."""
        assert self._cache is not None
        max_hit = num_tokens - 1 if num_tokens >= seq.prompt_len else num_tokens
        return len(self._cache.lookup(seq, max_hit // self.block_size)) * self.block_size
