"""Paged allocation (PagedAttention): fixed-size blocks, a free queue, a block table per sequence.

Two layers, as vLLM v1 has them: the block pool (allocators/block_pool.py: ids, refcounts,
free queue) and, for the prefix allocator, the hash-chain cache policy on top of it
(allocators/hash_cache.py); this class keeps the tables, copy-on-write and the accounting.

    block table of seq r:  [ 7 | 3 | 12 ]      slot = block_id * block_size + offset
                             full full partial  (a new block only when the last one is full)

Block ids run 1..num_blocks; block 0 is the null block and is never handed out. Free blocks
leave the front of the free queue (initially ascending ids) and return to its back, a
sequence's blocks tail first. `fork` shares every parent block (refcounts); the first write
into a shared partial block copies it (copy-on-write, reported in `Allocation.copies`, and
by `decode` into its `copies` list). `swap_out` frees a group's blocks and returns a host copy
plan that holds each shared block once; `swap_in` takes one new block per host block and
rebuilds the tables with the same sharing (the prefix allocator registers the full ones again).
Invariants: allocators/paged_check.py; bulk decode steps: allocators/paged_steps.py.

Accounting: token states are physical (a shared block counts once). Reservation is the empty
slots of a sequence's exclusively held last block that it will still fill; the other empty
slots of used blocks are internal fragmentation. No external fragmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from allocators import paged_check, paged_steps, paged_swap
from allocators.base import NO_CHANGE, Allocation, MemoryUsage, Run, SeqLike, Swapped, cdiv
from allocators.block_pool import BlockPool, CachingBlockPool
from allocators.hash_cache import HashChainCache

_new = tuple.__new__


@dataclass(slots=True)
class _Seq:
    table: list[int]
    num_tokens: int
    final_len: int
    room: int  # len(table) * block_size
    num_found: int = 0  # leading blocks it found in KV (prefix hits, a fork's parent blocks)


class PagedAllocator:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False) -> None:
        """prefix_caching: vLLM's hash-chain cache on top (the prefix allocator sets it)."""
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._cache = HashChainCache(num_blocks, block_size) if prefix_caching else None
        self._pool: BlockPool | CachingBlockPool = (
            BlockPool(num_blocks) if self._cache is None else self._cache.pool
        )
        self._ref = self._pool.ref
        self._seqs: dict[int, _Seq] = {}
        self._shared_tail: dict[int, set[int]] = {}  # shared partial block -> its holders
        self._tokens = 0  # filled slots of used blocks
        self._logical = 0  # sum of num_tokens over sequences
        self._reserved = 0  # sum of _reserve_of over sequences
        self._logical_blocks = 0  # sum of table lengths

    @property
    def capacity(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_free_blocks(self) -> int:
        """Blocks in the free queue (with prefix caching, cached ones too: evictable)."""
        return len(self._pool)

    def _register(self, seq: SeqLike, st: _Seq) -> None:
        """Blocks of `st` may have become full: prefix caching hashes them."""
        if self._cache is not None:
            self._cache.register(seq, st.table, st.num_tokens)

    # --- accounting helpers ------------------------------------------------------------------
    def _reserve_of(self, st: _Seq) -> int:
        if not st.table or self._ref[st.table[-1]] > 1:
            return 0
        return max(0, min(st.room, st.final_len) - st.num_tokens)

    def _tail_fill(self, st: _Seq) -> int:
        """Tokens in the last block of `st`."""
        return st.num_tokens - st.room + self.block_size

    def _write(self, st: _Seq, n: int) -> None:
        """`st` now holds n tokens (the blocks it writes into are exclusively held)."""
        self._tokens += n - st.num_tokens
        self._logical += n - st.num_tokens
        st.num_tokens = n

    def _unshare(self, block: int, seq_id: int) -> None:
        """`seq_id` lets go of a shared partial block; a last remaining holder owns it again."""
        self._ref[block] -= 1
        holders = self._shared_tail[block]
        holders.discard(seq_id)
        if len(holders) == 1:
            del self._shared_tail[block]
            self._reserved += self._reserve_of(self._seqs[holders.pop()])

    # --- the protocol ------------------------------------------------------------------------
    def allocate(self, seq: SeqLike, num_new_tokens: int) -> Allocation | None:
        st = self._seqs.get(seq.seq_id)
        if st is None:
            return self._admit(seq, num_new_tokens)
        n = st.num_tokens + num_new_tokens
        if n <= st.room and self._ref[st.table[-1]] == 1:  # fast path: into the own last block
            if n <= st.final_len:
                self._reserved -= num_new_tokens
            else:
                self._reserved -= self._reserve_of(st) - max(0, min(st.room, st.final_len) - n)
            self._tokens += num_new_tokens
            self._logical += num_new_tokens
            st.num_tokens = n
            if n == st.room:
                self._register(seq, st)
            return NO_CHANGE
        return self._grow(seq, st, n)

    def decode(
        self, seqs: Sequence[SeqLike], start: int = 0, copies: list[Run] | None = None
    ) -> int:
        states, ref, pool, bs = self._seqs, self._ref, self._pool, self.block_size
        pop = pool.pop
        register = None if self._cache is None else self._cache.register
        fast = slow = 0  # tokens written on the fast paths are counted in once, at the end
        for seq in seqs[start:] if start else seqs:
            st = states[seq.seq_id]
            n = st.num_tokens + 1
            if n <= st.room:
                if n <= st.final_len and ref[st.table[-1]] == 1:  # into the own last block
                    st.num_tokens = n
                    fast += 1
                    if n == st.room and register is not None:
                        register(seq, st.table, n)
                    continue
            elif n == st.room + 1 and n <= st.final_len and len(pool):  # full: take one block
                st.table.append(pop())
                st.room += bs
                st.num_tokens = n
                self._reserved += min(st.room, st.final_len) - n + 1
                self._logical_blocks += 1
                fast += 1
                if bs == 1 and register is not None:  # the new block is full at once
                    register(seq, st.table, n)
                continue
            out = self.allocate(seq, 1)
            if out is None:
                self._count_fast(fast)
                return start + fast + slow
            if out.copies and copies is not None:
                copies.extend(out.copies)
            slow += 1
        self._count_fast(fast)
        return len(seqs)

    def decode_steps(self, seqs: Sequence[SeqLike], num_steps: int) -> list[MemoryUsage] | None:
        return paged_steps.decode_steps(self, seqs, num_steps)

    def _count_fast(self, n: int) -> None:
        """n tokens went into exclusively held last blocks, each within its final length."""
        self._tokens += n
        self._logical += n
        self._reserved -= n

    def _admit(self, seq: SeqLike, num_tokens: int) -> Allocation | None:
        if num_tokens < 1:
            raise ValueError(f"sequence {seq.seq_id}: admission needs at least one token")
        bs, pool, cache = self.block_size, self._pool, self._cache
        hits: list[int] = []
        revived: list[int] = []  # cached, free: taken out of the queue
        if cache is None:
            if cdiv(num_tokens, bs) > len(pool):  # NOTE: a refused head is retried every step
                return None
        else:
            found = cache.admissible(seq, num_tokens)
            if found is None:
                return None
            hits, revived = found
            cache.pool.revive(revived)
        need = cdiv(num_tokens, bs) - len(hits)
        ref = self._ref
        for b in hits:
            ref[b] += 1
        num_cached = len(hits) * bs
        self._tokens += len(revived) * bs  # cached blocks are full
        st = _Seq(hits + pool.take(need), num_cached, seq.final_len, 0, len(hits))
        st.room = len(st.table) * bs
        self._seqs[seq.seq_id] = st
        self._logical += num_cached
        self._logical_blocks += len(st.table)
        self._write(st, num_tokens)
        self._reserved += self._reserve_of(st)
        if cache is not None:
            cache.admit(seq, len(hits))
            self._register(seq, st)
        return Allocation(tuple(st.table), num_cached_tokens=num_cached)

    def _grow(self, seq: SeqLike, st: _Seq, n: int) -> Allocation | None:
        bs = self.block_size
        last = st.table[-1]
        cow = self._ref[last] > 1 and st.num_tokens % bs != 0
        need = cdiv(n, bs) - len(st.table)
        if need + cow > self.num_free_blocks:
            return None
        self._reserved -= self._reserve_of(st)
        copies: tuple[tuple[int, int, int], ...] = ()
        if cow:
            (new,) = self._pool.take(1)
            self._tokens += self._tail_fill(st)
            st.table[-1] = new
            self._unshare(last, seq.seq_id)
            copies = ((last, new, 1),)
        added = self._pool.take(need)
        st.table.extend(added)
        st.room += need * bs
        self._logical_blocks += need
        self._write(st, n)
        self._reserved += self._reserve_of(st)
        self._register(seq, st)
        return Allocation(tuple(added), copies=copies)

    def fork(self, parent_id: int, child: SeqLike) -> Allocation | None:
        p = self._seqs[parent_id]
        if p.num_tokens % self.block_size:  # the partial tail becomes shared
            self._reserved -= self._reserve_of(p)
            self._shared_tail.setdefault(p.table[-1], {parent_id}).add(child.seq_id)
        for b in p.table:
            self._ref[b] += 1
        st = _Seq(list(p.table), p.num_tokens, child.final_len, p.room, len(p.table))
        self._seqs[child.seq_id] = st
        if self._cache is not None:
            self._cache.fork(parent_id, child, p.num_tokens)
        self._logical += st.num_tokens
        self._logical_blocks += len(st.table)
        return Allocation(tuple(st.table))

    def free(self, seq_id: int) -> None:
        st = self._seqs[seq_id]
        self._reserved -= self._reserve_of(st)
        del self._seqs[seq_id]
        self._logical -= st.num_tokens
        self._logical_blocks -= len(st.table)
        ref = self._ref
        if st.table[-1] in self._shared_tail:
            self._unshare(st.table[-1], seq_id)
            ref[st.table[-1]] += 1  # dropped once more below
        freed = []
        for b in reversed(st.table):
            ref[b] -= 1
            if not ref[b]:
                freed.append(b)
        if freed:  # every freed block is full but perhaps the tail
            tail_freed = freed[0] == st.table[-1]
            self._tokens -= len(freed) * self.block_size - (
                self.block_size - self._tail_fill(st) if tail_freed else 0
            )
        if self._cache is not None:
            self._cache.forget(seq_id, st.num_tokens < st.final_len - 1)
        self._pool.release(freed)  # with prefix caching: unhashed first, hashed last (LRU)

    def abort(self, seq_ids: Sequence[int]) -> None:
        paged_swap.abort(self, seq_ids)

    def swap_out(self, seq_ids: Sequence[int]) -> Swapped:
        return paged_swap.swap_out(self, seq_ids)

    def swap_in(
        self, swapped: Swapped, seqs: Sequence[SeqLike], num_tokens: int = 0
    ) -> Allocation | None:
        return paged_swap.swap_in(self, swapped, seqs, num_tokens)

    def block_table(self, seq_id: int) -> Sequence[int]:
        return self._seqs[seq_id].table

    def num_tokens(self, seq_id: int) -> int:
        return self._seqs[seq_id].num_tokens

    def usage(self) -> MemoryUsage:
        bs = self.block_size
        cap = self.num_blocks * bs
        free = len(self._pool) * bs
        tokens, reserved = self._tokens, self._reserved
        # NOTE: tuple.__new__ skips the NamedTuple constructor's Python frame (hot path)
        return _new(
            MemoryUsage,
            (cap, tokens, reserved, cap - free - tokens - reserved, 0, free, self._logical,
             self._logical_blocks * bs),
        )  # fmt: skip

    def check_invariants(self) -> None:
        paged_check.check_invariants(self)
