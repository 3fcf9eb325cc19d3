"""Paged allocation with automatic prefix caching, with the semantics of vLLM v1 (vllm/v1/core).

Every full block gets a chained hash h_i = hash((h_{i-1}, key_i)), key_i being the block's
tokens as `TokenSource.block_key` gives them. A new sequence walks its prompt's chain and
takes every block whose hash is cached and whose (parent hash, tokens) match - tokens are
re-checked, a hash alone is never trusted - up to `prompt_len - 1` tokens: the last prompt
token is always computed, its logits are needed.

    free queue (front -> back):  [unhashed ... | hashed, least recently freed ... most]
                                    reused first   evicted in LRU order, still hittable

A block leaves the cache only when it is popped from the front of the free queue for reuse.
A hit on a free cached block takes it out of the queue (refcount 0 -> 1). Full blocks are
registered as they fill, prompt and output alike; a recomputed block whose hash is already
cached is registered too (nothing is deduplicated), and a lookup takes the oldest. Blocks are
registered when allocated, before their KV is written; `abort` (an admission rolled back in
its step) therefore unregisters the blocks the sequence took, keeping only those it found.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from allocators.base import Allocation, SeqLike, cdiv
from allocators.paged import PagedAllocator, _Seq

_ROOT = 0  # parent hash of the first block


class PrefixAllocator(PagedAllocator):
    hashes_blocks = True

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks + 1))
        self._meta: dict[int, tuple[int, int, Hashable]] = {}  # block -> (hash, parent, key)
        self._cached: dict[int, list[int]] = {}  # hash -> blocks, oldest registration first

    def _pop_free(self) -> int:
        b, _ = self._free.popitem(last=False)
        self._uncache(b)
        return b

    def _uncache(self, b: int) -> None:
        meta = self._meta.pop(b, None)
        if meta is not None:
            blocks = self._cached[meta[0]]
            blocks.remove(b)
            if not blocks:
                del self._cached[meta[0]]

    def _forget(self, seq_ids: Sequence[int]) -> None:
        # NOTE: blocks past the ones a sequence found were taken by its admission in this
        # step and registered before their KV is written; aborted, it will never be written
        for sid in seq_ids:
            st = self._seqs[sid]
            for b in st.table[st.num_found :]:
                self._uncache(b)

    def _pop_many(self, n: int) -> list[int]:
        return [self._pop_free() for _ in range(n)]

    def _release(self, freed: list[int]) -> None:
        for b in freed:
            self._free[b] = None
            if b not in self._meta:
                self._free.move_to_end(b, last=False)

    def _register(self, seq: SeqLike, st: _Seq) -> None:
        bs = self.block_size
        for i in range(len(st.hashes), st.num_tokens // bs):
            parent = st.hashes[-1] if st.hashes else _ROOT
            key = seq.tokens.block_key(i * bs, (i + 1) * bs)
            h = hash((parent, key))
            st.hashes.append(h)
            b = st.table[i]
            if b not in self._meta:
                self._meta[b] = (h, parent, key)
                self._cached.setdefault(h, []).append(b)

    def _lookup(self, seq: SeqLike, max_blocks: int) -> tuple[list[int], list[int]]:
        """The cached blocks of `seq`'s leading full blocks, and their hashes."""
        bs = self.block_size
        hits: list[int] = []
        hashes: list[int] = []
        parent = _ROOT
        for i in range(max_blocks):
            key = seq.tokens.block_key(i * bs, (i + 1) * bs)
            h = hash((parent, key))
            blocks = self._cached.get(h)
            if not blocks or self._meta[blocks[0]][1:] != (parent, key):
                break
            hits.append(blocks[0])
            hashes.append(h)
            parent = h
        return hits, hashes

    def _admit(self, seq: SeqLike, num_tokens: int) -> Allocation | None:
        if num_tokens < 1:
            raise ValueError(f"sequence {seq.seq_id}: admission needs at least one token")
        bs = self.block_size
        max_hit_tokens = num_tokens - 1 if num_tokens >= seq.prompt_len else num_tokens
        hits, hashes = self._lookup(seq, max_hit_tokens // bs)
        need = cdiv(num_tokens, bs) - len(hits)
        revived = [b for b in hits if self._ref[b] == 0]
        if need > self.num_free_blocks - len(revived):
            return None
        for b in revived:
            del self._free[b]
            self._tokens += bs  # cached blocks are full
        for b in hits:
            self._ref[b] += 1
        num_cached = len(hits) * bs
        st = _Seq(hits + self._take(need), num_cached, seq.final_len, 0, hashes, len(hits))
        st.room = len(st.table) * bs
        self._seqs[seq.seq_id] = st
        self._logical += num_cached
        self._logical_blocks += len(st.table)
        self._write(st, num_tokens)
        self._reserved += self._reserve_of(st)
        self._register(seq, st)
        return Allocation(tuple(st.table), num_cached_tokens=num_cached)

    def check_invariants(self) -> None:
        super().check_invariants()
        for h, blocks in self._cached.items():
            assert blocks and all(self._meta[b][0] == h for b in blocks), f"cache entry {h}"
        assert sum(map(len, self._cached.values())) == len(self._meta), "uncached meta"
        for st in self._seqs.values():
            assert len(st.hashes) == st.num_tokens // self.block_size, "unregistered block"
            for b, h in zip(st.table, st.hashes):
                assert self._meta[b][0] == h, f"held block {b} lost its hash"
