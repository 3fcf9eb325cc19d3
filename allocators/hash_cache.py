"""vLLM's automatic prefix caching as a cache policy over a block pool (vllm/v1/core).

Every full block gets a chained hash h_i = hash(m_i), m_i = (h_{i-1}, key_i), key_i being the
block's tokens as `TokenSource.block_keys` gives them (h_{-1} = 0). A lookup walks a
sequence's chain and takes every block whose hash is cached and whose m_i matches - tokens
are re-checked, a hash alone is never trusted.

    block_hash[b], block_meta[b]   a cached block's hash and (parent hash, key), else None;
                                   the meta tuple is the one the hash was taken of (shared
                                   with the chain that computed it: no copies per block)
    first[h]                       the oldest cached block of hash h (what a lookup takes)
    later[h]                       younger blocks of hash h, oldest first (recomputed copies)
    chains[seq_id]                 a live sequence's hashes and metas, computed once:
                                   registration reuses what its admission's lookup computed
                                   and extends them, in one go, to the last block the
                                   sequence can fill (its generated tokens are known)
    pending[seq_id]                the same for sequences not admitted yet: a waiting request
                                   refused again and again hashes its prompt once (the most
                                   recent MAX_PENDING are kept), and remembers its last hits
    watch[b]                       {chain: i} for the pending chains whose remembered hits
                                   hold block b at position i: its eviction cuts them there

A block stays cached until the pool hands it out again (`on_reuse`); freed cached blocks go
to the back of the free queue (LRU), others to the front. Blocks are registered when
allocated, before their KV is written: an admission rolled back in its step (`abort`)
unregisters the blocks it took, keeping those it found. Block tables are append-only:
a recomputed block whose hash is already cached is registered too (nothing is deduplicated).

Invariants (`check_invariants`): first/later hold exactly the blocks with a hash, each under
its own hash; every block of a live sequence's registered prefix holds that prefix's hash; a
pending chain's hits are what a walk finds, and each is watched at its position.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from allocators.base import SeqLike
from allocators.block_pool import CachingBlockPool

ROOT = 0  # parent hash of the first block
MAX_PENDING = 1024
Meta = tuple[int, Hashable]  # (h_{i-1}, key_i): what h_i is the hash of


class Holder(Protocol):
    """A live sequence's state as its allocator keeps it."""

    table: list[int]
    num_tokens: int


@dataclass(slots=True, eq=False)  # NOTE: hashed by identity (the keys of watch[b])
class Chain:
    tokens: object = None  # the TokenSource it was computed from (a pending one is reused
    # only for the same object: sequence ids are not trusted to name the same tokens)
    hashes: list[int] = field(default_factory=list)
    metas: list[Meta] = field(default_factory=list)
    num_registered: int = 0  # leading blocks whose table entries carry their hash
    hits: list[int] = field(default_factory=list)  # the last lookup's result (while pending)
    refused: tuple[int, int, int] | None = None  # (tokens, max hits, pool.num_returned bound)


class HashChainCache:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.block_hash: list[int | None] = [None] * (num_blocks + 1)
        self.block_meta: list[Meta | None] = [None] * (num_blocks + 1)
        self.pool = CachingBlockPool(num_blocks, self.block_hash, self.uncache, self.evict)
        self.first: dict[int, int] = {}
        self.later: dict[int, list[int]] = {}
        self.chains: dict[int, Chain] = {}
        self.pending: OrderedDict[int, Chain] = OrderedDict()
        self.watch: dict[int, dict[Chain, int]] = {}

    def chain(self, seq: SeqLike, num_blocks: int) -> Chain:
        """seq's chain, computed up to num_blocks blocks."""
        ch = self.chains.get(seq.seq_id) or self.pending.get(seq.seq_id)
        if ch is None or ch.tokens is not seq.tokens:
            if ch is not None:
                self._cut(self.pending.pop(seq.seq_id), 0)
            ch = self.pending[seq.seq_id] = Chain(seq.tokens)
            if len(self.pending) > MAX_PENDING:
                self._cut(self.pending.popitem(last=False)[1], 0)
        if len(ch.hashes) < num_blocks:
            self._extend(ch, seq, num_blocks)
        return ch

    def _extend(self, ch: Chain, seq: SeqLike, num_blocks: int) -> None:
        done = len(ch.hashes)
        keys = seq.tokens.block_keys(done, num_blocks, self.block_size)
        parent = ch.hashes[-1] if done else ROOT
        hashes, metas = ch.hashes, ch.metas
        for key in keys:
            m = (parent, key)
            parent = hash(m)
            hashes.append(parent)
            metas.append(m)

    def admissible(self, seq: SeqLike, num_tokens: int) -> tuple[list[int], list[int]] | None:
        """(hits, the free ones among them) for admitting seq's first num_tokens, or None
        when the pool cannot hold them. The last prompt token is always computed (its
        logits), so hits cover at most prompt_len - 1 tokens.

        NOTE: a refused request is retried every step. It lacks `short` blocks: the free
        blocks its hits do not hold, minus what it needs. That only shrinks as blocks are
        handed out or hits go (each needs a block more), and grows by at most the blocks
        returned since, so it stays refused until `short` blocks came back or its hits can
        grow: until then a retry costs one probe, not a count of its free hits."""
        pool = self.pool
        ch = self.pending.get(seq.seq_id)
        if ch is not None and ch.refused is not None and ch.tokens is seq.tokens:
            n, max_blocks, until = ch.refused
            k = len(ch.hits)
            if (
                n == num_tokens
                and pool.num_returned < until
                and (k == max_blocks or ch.hashes[k] not in self.first)
            ):
                return None
        max_hit = num_tokens - 1 if num_tokens >= seq.prompt_len else num_tokens
        max_blocks = max_hit // self.block_size
        hits = self.lookup(seq, max_blocks)
        short = -(-num_tokens // self.block_size) - len(hits) - len(pool)
        if short <= 0:
            ref = pool.ref
            revived = [b for b in hits if ref[b] == 0]
            short += len(revived)
            if short <= 0:
                return hits, revived
        ch = self.pending[seq.seq_id]
        ch.refused = (num_tokens, max_blocks, pool.num_returned + short)
        return None

    def lookup(self, seq: SeqLike, max_blocks: int) -> list[int]:
        """The cached blocks of seq's leading full blocks (at most max_blocks); the list is
        the cache's own (read it before the pool hands out blocks; do not change it).

        NOTE: a refused request is looked up again every step. Its last hits are watched:
        the eviction of one cuts them there, and they can only grow past the end, so a
        retry costs one probe, not a walk."""
        ch = self.pending.get(seq.seq_id)
        if (  # the common retry: the next block is not cached
            ch is not None
            and ch.tokens is seq.tokens
            and len(ch.hits) < max_blocks <= len(ch.hashes)
            and ch.hashes[len(ch.hits)] not in self.first
        ):
            return ch.hits
        ch = self.chain(seq, max_blocks)
        if len(ch.hits) > max_blocks:
            self._cut(ch, max_blocks)
        hashes, hits = ch.hashes, ch.hits
        first, meta, metas, watch = self.first, self.block_meta, ch.metas, self.watch
        for i in range(len(hits), max_blocks):
            b = first.get(hashes[i])
            if b is None or meta[b] != metas[i]:  # the tokens re-checked
                break
            hits.append(b)
            watch.setdefault(b, {})[ch] = i
        return hits

    def _cut(self, ch: Chain, keep: int) -> None:
        """ch keeps its first `keep` hits; the others are no longer watched."""
        watch = self.watch
        for b in ch.hits[keep:]:
            chains = watch[b]
            del chains[ch]
            if not chains:
                del watch[b]
        del ch.hits[keep:]

    def _walk(self, ch: Chain, max_blocks: int) -> list[int]:
        """The hits of ch's first max_blocks blocks, walked from scratch (for checks)."""
        hits: list[int] = []
        for h, m in zip(ch.hashes[:max_blocks], ch.metas):
            b = self.first.get(h)
            if b is None or self.block_meta[b] != m:
                break
            hits.append(b)
        return hits

    def register(self, seq: SeqLike, table: Sequence[int], num_tokens: int) -> None:
        """The full blocks of `table` (seq's) are cached from now on."""
        ch = self.chains.get(seq.seq_id) or self.admit(seq)
        bs = self.block_size
        num_full = num_tokens // bs
        i = ch.num_registered
        if i + 1 != num_full:
            if i < num_full:
                self._register(ch, seq, table, num_full)
            return
        # NOTE: the hot case, a decode step filled the last block: _register inlined
        hashes = ch.hashes
        if len(hashes) == i:
            self._extend(ch, seq, max(num_full, (seq.final_len - 1) // bs))
        ch.num_registered = num_full
        b = table[i]
        if self.block_hash[b] is None:
            h = self.block_hash[b] = hashes[i]
            self.block_meta[b] = ch.metas[i]
            if h in self.first:
                self.later.setdefault(h, []).append(b)
            else:
                self.first[h] = b

    def register_grown(self, seqs: Sequence[SeqLike], states: Sequence[Holder]) -> None:
        """`register` for every live sequence of a decode stretch (one call, fewer frames)."""
        chains, bs = self.chains, self.block_size
        for seq, st in zip(seqs, states):
            ch = chains[seq.seq_id]
            num_full = st.num_tokens // bs
            if ch.num_registered < num_full:
                self._register(ch, seq, st.table, num_full)

    def _register(self, ch: Chain, seq: SeqLike, table: Sequence[int], num_full: int) -> None:
        if len(ch.hashes) < num_full:  # NOTE: up to the last block seq can fill, in one go
            self._extend(ch, seq, max(num_full, (seq.final_len - 1) // self.block_size))
        block_hash, meta, first = self.block_hash, self.block_meta, self.first
        i = ch.num_registered
        for b, h, m in zip(table[i:num_full], ch.hashes[i:num_full], ch.metas[i:num_full]):
            if block_hash[b] is None:
                block_hash[b] = h
                meta[b] = m
                if h in first:
                    self.later.setdefault(h, []).append(b)
                else:
                    first[h] = b
        ch.num_registered = num_full

    def admit(self, seq: SeqLike, num_found: int = 0) -> Chain:
        """seq is live: its chain (computed while it waited, if it was) stays. Its table
        starts with the num_found blocks its lookup found (registered already)."""
        ch = self.pending.pop(seq.seq_id, None)
        if ch is not None:
            self._cut(ch, 0)
            ch.refused = None
        if ch is None or ch.tokens is not seq.tokens:
            ch = Chain(seq.tokens)
        ch.num_registered = num_found
        self.chains[seq.seq_id] = ch
        return ch

    def fork(self, parent_id: int, child: SeqLike, num_tokens: int) -> None:
        """The child holds the parent's first num_tokens tokens: their full blocks' chain."""
        p = self.chains.get(parent_id)
        if p is None:
            return
        k = min(num_tokens // self.block_size, len(p.hashes))
        n = min(p.num_registered, k)
        self.chains[child.seq_id] = Chain(child.tokens, p.hashes[:k], p.metas[:k], n)

    def forget(self, seq_id: int, unfinished: bool) -> None:
        """seq_id is freed. Its chain is kept (as pending) while it has tokens to come: a
        preempted sequence is admitted again, to recompute its tokens."""
        ch = self.chains.pop(seq_id, None)
        if ch is not None and unfinished:
            ch.num_registered = 0
            self.pending[seq_id] = ch
            if len(self.pending) > MAX_PENDING:
                self._cut(self.pending.popitem(last=False)[1], 0)

    def uncache(self, blocks: list[int]) -> None:
        """The blocks' contents are no longer cached: evicted (they leave the free queue for
        reuse), or never written (an admission rolled back in its step: `abort`)."""
        block_hash, meta, first, later, watch = (
            self.block_hash, self.block_meta, self.first, self.later, self.watch
        )  # fmt: skip
        for b in blocks:
            h = block_hash[b]
            if h is None:
                continue
            block_hash[b] = meta[b] = None
            if b in watch or h in later:
                self._uncache_rare(b, h)
            else:
                del first[h]

    def evict(self, b: int) -> None:
        """`uncache([b])` of a cached block (the pool hands out blocks one at a time)."""
        h = self.block_hash[b]
        assert h is not None
        self.block_hash[b] = self.block_meta[b] = None
        if b in self.watch or h in self.later:
            self._uncache_rare(b, h)
        else:
            del self.first[h]

    def _uncache_rare(self, b: int, h: int) -> None:
        """`uncache` of a block some pending chain's hits hold, or with copies of its hash."""
        if b in self.watch:  # NOTE: not block_hash: an evicted block may be refilled with
            # the same tokens and registered again, behind another block of its hash
            for ch, i in list(self.watch[b].items()):
                self._cut(ch, i)
        more = self.later.get(h)
        if more is None:
            del self.first[h]
            return
        if self.first[h] == b:
            self.first[h] = more.pop(0)
        else:
            more.remove(b)
        if not more:
            del self.later[h]

    def check_invariants(self, tables: dict[int, tuple[Sequence[int], int]]) -> None:
        """tables: seq_id -> (block table, tokens) of every live sequence."""
        listed = {b: h for h, b in self.first.items()}
        for h, blocks in self.later.items():
            assert blocks and h in self.first, f"later[{h}] without first"
            listed.update((b, h) for b in blocks)
        held = {b: h for b, h in enumerate(self.block_hash) if h is not None}
        assert listed == held, "cache entries differ from the blocks' hashes"
        assert all((m is None) == (h is None) for m, h in zip(self.block_meta, self.block_hash))
        watched = {(b, id(c), i) for b, chains in self.watch.items() for c, i in chains.items()}
        hits = {(b, id(c), i) for c in self.pending.values() for i, b in enumerate(c.hits)}
        assert watched == hits and all(self.watch.values()), "watch lists != pending hits"
        for waiting in self.pending.values():
            assert waiting.hits == self._walk(waiting, len(waiting.hits)), "stale hits"
        for seq_id, (table, num_tokens) in tables.items():
            ch = self.chains.get(seq_id)
            num = ch.num_registered if ch else 0
            assert num == num_tokens // self.block_size, f"{seq_id}: unregistered full blocks"
            for b, h in zip(table[:num], ch.hashes if ch else []):
                assert self.block_hash[b] == h, f"held block {b} lost its hash"
