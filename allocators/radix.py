"""Prefix sharing through a radix tree, with the semantics of SGLang's RadixAttention.

A sequence locks the tree node its cached prefix ends at and holds its own blocks after it:

    block table of r:  [ tree path: root .. r.node       | r's own blocks          ]
                         tokens [0, cached), shared, locked  tokens [cached, num_tokens)

Admission matches the prompt (at most prompt_len - 1 tokens, floored to whole blocks), locks
the match and takes blocks for the rest, evicting LRU unlocked leaves only when short.
Right after admission (SGLang's cache_unfinished_req, there run after the prefill) and at
`free` (cache_finished_req) the sequence's full blocks go into the tree: blocks another
sequence inserted first are the same tokens, so the sequence's own copies are freed and it
points at the tree's (SGLang deduplicates, vLLM does not). Decoded tokens stay private until
`free`. A fork publishes the parent the same way; the child locks the parent's node and gets
its own copy of a partial last block (`Allocation.copies`). NOTE: `free` also ends a
preemption, so a preempted sequence's tokens stay cached (vLLM too; SGLang's retraction
drops its decoded tail). `abort` (radix_swap.py) undoes an admission rolled back.

Accounting: tokens of locked tree nodes and of the sequences' own blocks are token states;
unlocked (evictable) tree blocks are free, as cached free blocks are in the prefix allocator;
an own last block's empty slots are reservation or internal fragmentation, as in paged.

Invariants: a block is free, in the tree or one sequence's; a node's locks are the sequences
ending there; `cached` is the length of the sequence's tree path; counters match a recount.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from allocators import radix_steps, radix_swap
from allocators.base import (
    NO_CHANGE,
    Allocation,
    MemoryUsage,
    Run,
    SeqLike,
    Swapped,
    TokenSource,
    cdiv,
)
from allocators.block_pool import BlockPool
from allocators.radix_tree import Node, RadixTree
from allocators.token_runs import Key, split_key

_new = tuple.__new__
MAX_WAITING = 1024  # refused admissions whose match is remembered (see _match)


@dataclass(slots=True, eq=False)
class _Seq:
    node: Node  # the tree node it locks: tokens [0, cached) are on its path
    cached: int
    own: list[int]  # its blocks after `cached`
    num_tokens: int
    final_len: int
    tokens: TokenSource
    mark: int = 0  # tree nodes numbered from here on were made by its admission (`abort`)


class RadixAllocator:
    def __init__(self, num_blocks: int, block_size: int = 1) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._pool = BlockPool(num_blocks)  # every held block is held once: tree or sequence
        self.tree = RadixTree(block_size, self._pool.drop)
        self._seqs: dict[int, _Seq] = {}
        self._own_tokens = 0  # sum over sequences of num_tokens - cached
        self._own_blocks = 0
        self._reserved = 0  # sum of _reserve_of
        self._logical = 0  # sum of num_tokens
        self._cached = 0  # sum of cached
        self._waiting: OrderedDict[int, tuple[int, Node, int, Key]] = OrderedDict()  # _match

    @property
    def capacity(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can get: free ones and evictable cached ones."""
        return len(self._pool) + self.tree.evictable_size // self.block_size

    # --- blocks ----------------------------------------------------------------------------
    def _take(self, n: int) -> list[int] | None:
        """n blocks off the front of the free queue, evicting cached ones only if needed."""
        short = n - len(self._pool)
        if short > 0:
            if short * self.block_size > self.tree.evictable_size:
                return None
            self.tree.evict(short * self.block_size)
        return self._pool.take(n)

    def _reserve_of(self, st: _Seq) -> int:
        room = st.cached + len(st.own) * self.block_size
        return max(0, min(room, st.final_len) - st.num_tokens)

    def _add(self, st: _Seq, sign: int) -> None:
        """Count st in (sign 1) or out (sign -1) of the running totals."""
        self._own_tokens += sign * (st.num_tokens - st.cached)
        self._own_blocks += sign * len(st.own)
        self._reserved += sign * self._reserve_of(st)
        self._logical += sign * st.num_tokens
        self._cached += sign * st.cached

    def _publish(self, st: _Seq) -> None:
        """Put st's full blocks into the tree; its copies of blocks already there are freed."""
        bs = self.block_size
        end = st.num_tokens - st.num_tokens % bs
        if end <= st.cached:
            return
        num = (end - st.cached) // bs
        dup, node = self.tree.insert(st.tokens.runs(st.cached, end), st.own[:num], st.node)
        self._pool.drop(st.own[: dup // bs])
        self.tree.lock(node)
        self.tree.unlock(st.node)
        self._add(st, -1)
        st.node, st.cached, st.own = node, end, st.own[num:]
        self._add(st, 1)

    # --- the protocol ------------------------------------------------------------------------
    def allocate(self, seq: SeqLike, num_new_tokens: int) -> Allocation | None:
        st = self._seqs.get(seq.seq_id)
        if st is None:
            return self._admit(seq, num_new_tokens)
        n = st.num_tokens + num_new_tokens
        need = cdiv(n - st.cached, self.block_size) - len(st.own)
        new = self._take(need) if need > 0 else []
        if new is None:
            return None
        self._add(st, -1)
        st.own += new
        st.num_tokens = n
        self._add(st, 1)
        return Allocation(tuple(new)) if new else NO_CHANGE

    def _admit(self, seq: SeqLike, n: int) -> Allocation | None:
        if n < 1:
            raise ValueError(f"sequence {seq.seq_id}: admission needs at least one token")
        tokens = seq.tokens
        mark = self.tree.next_node_id
        node, cached = self._match(seq, n)
        self.tree.lock(node)
        own = self._take(cdiv(n - cached, self.block_size))
        if own is None:
            self.tree.unlock(node)
            return None
        del self._waiting[seq.seq_id]
        st = _Seq(node, cached, own, n, seq.final_len, tokens, mark)
        self._seqs[seq.seq_id] = st
        self._add(st, 1)
        self._publish(st)
        return Allocation(tuple(self.block_table(seq.seq_id)), num_cached_tokens=cached)

    def _match(self, seq: SeqLike, n: int) -> tuple[Node, int]:
        """The cached prefix of seq's first n tokens, at most n - 1 of the prompt's.

        NOTE: a refused request is matched again every step (SGLang too: it touches the
        path); the last match resumes where it ended, unless that node was evicted since."""
        max_hit = n - 1 if n >= seq.prompt_len else n
        memo = self._waiting.pop(seq.seq_id, None)
        if memo is not None and memo[0] == max_hit and not memo[1].deleted:
            _, start, done, rest = memo
            node, more, _ = self.tree.match(rest, start)
            cached = done + more
            rest = split_key(rest, more)[1] if more else rest
        else:
            key = self.tree.aligned(seq.tokens.runs(0, max_hit))
            node, cached, _ = self.tree.match(key)
            rest = split_key(key, cached)[1]
        self._waiting[seq.seq_id] = (max_hit, node, cached, rest)
        if len(self._waiting) > MAX_WAITING:
            self._waiting.popitem(last=False)
        return node, cached

    def prefix_match(self, seq: SeqLike, num_tokens: int) -> int:
        """A waiting sequence's match (what SGLang's `lpm` orders by; touched, remembered)."""
        return self._match(seq, num_tokens)[1]

    def decode(
        self, seqs: Sequence[SeqLike], start: int = 0, copies: list[Run] | None = None
    ) -> int:
        """Growth never copies: a sequence's own blocks are never shared."""
        states, bs, free, pop = self._seqs, self.block_size, self._pool.free, self._pool.pop
        fast = 0  # tokens written into own last blocks, counted in once at the end
        for i in range(start, len(seqs)):
            st = states[seqs[i].seq_id]
            n = st.num_tokens + 1
            room = st.cached + len(st.own) * bs
            if n <= room and n <= st.final_len:
                st.num_tokens = n
                fast += 1
                continue
            if n == room + 1 and n <= st.final_len and free:  # full: one more block
                st.own.append(pop())
                st.num_tokens = n
                self._own_blocks += 1
                self._own_tokens += 1
                self._logical += 1
                self._reserved += min(room + bs, st.final_len) - n
                continue
            if self.allocate(seqs[i], 1) is None:
                self._count_fast(fast)
                return i
        self._count_fast(fast)
        return len(seqs)

    def _count_fast(self, n: int) -> None:
        self._own_tokens += n
        self._logical += n
        self._reserved -= n

    def decode_steps(self, seqs: Sequence[SeqLike], num_steps: int) -> list[MemoryUsage] | None:
        return radix_steps.decode_steps(self, seqs, num_steps)

    def fork(self, parent_id: int, child: SeqLike) -> Allocation | None:
        p = self._seqs[parent_id]
        tail = p.num_tokens % self.block_size
        if tail and not self.num_free_blocks:
            return None
        self._publish(p)
        own = self._take(1) if tail else []
        assert own is not None  # publishing freed blocks or locked evictable ones: room stays
        self.tree.lock(p.node)
        st = _Seq(p.node, p.cached, own, p.num_tokens, child.final_len, child.tokens, p.mark)
        self._seqs[child.seq_id] = st
        self._add(st, 1)
        copies = ((p.own[0], own[0], 1),) if tail else ()
        return Allocation(tuple(self.block_table(child.seq_id)), copies=copies)

    def free(self, seq_id: int) -> None:
        st = self._seqs[seq_id]
        self._publish(st)
        del self._seqs[seq_id]
        self._add(st, -1)
        self._pool.drop(st.own)
        self.tree.unlock(st.node)

    def abort(self, seq_ids: Sequence[int]) -> None:
        radix_swap.abort(self, seq_ids)

    def swap_out(self, seq_ids: Sequence[int]) -> Swapped:
        return radix_swap.swap_out(self, seq_ids)

    def swap_in(
        self, swapped: Swapped, seqs: Sequence[SeqLike], num_tokens: int = 0
    ) -> Allocation | None:
        """Blocks whose tokens the tree still caches are not copied back (radix_swap.py)."""
        return radix_swap.swap_in(self, swapped, seqs, num_tokens)

    def block_table(self, seq_id: int) -> list[int]:
        st = self._seqs[seq_id]
        return [*self._path_blocks(st.node), *st.own]

    def _path_blocks(self, node: Node) -> list[int]:
        parts = []
        while node.parent is not None:
            parts.append(node.block_ids)
            node = node.parent
        return [b for part in reversed(parts) for b in part]

    def num_tokens(self, seq_id: int) -> int:
        return self._seqs[seq_id].num_tokens

    def usage(self) -> MemoryUsage:
        bs = self.block_size
        cap = self.num_blocks * bs
        tokens = self.tree.protected_size + self._own_tokens
        internal = self._own_blocks * bs - self._own_tokens - self._reserved
        return _new(MemoryUsage, (cap, tokens, self._reserved, internal, 0,
                                  cap - tokens - self._reserved - internal, self._logical,
                                  self._cached + self._own_blocks * bs))  # fmt: skip

    def check_invariants(self) -> None:
        bs = self.block_size
        locks: dict[int, int] = {}
        owned: list[int] = []
        for st in self._seqs.values():
            locks[st.node.node_id] = locks.get(st.node.node_id, 0) + 1
            assert st.cached == len(self._path_blocks(st.node)) * bs <= st.num_tokens
            assert len(st.own) == cdiv(st.num_tokens - st.cached, bs), "own blocks"
            owned += st.own
        in_tree = self.tree.check_invariants(locks)
        refs = [0] * (self.num_blocks + 1)
        for b in [*in_tree, *owned]:
            refs[b] += 1  # a block held twice shows as refcount 2: the pool check fails
        self._pool.check_invariants(refs)
        seqs = self._seqs.values()
        assert self._own_tokens == sum(st.num_tokens - st.cached for st in seqs)
        assert self._own_blocks == len(owned)
        assert self._reserved == sum(self._reserve_of(st) for st in seqs)
        assert self._logical == sum(st.num_tokens for st in seqs)
        assert self._cached == sum(st.cached for st in seqs)
        for _, node, cached, _ in self._waiting.values():  # a remembered match: still its path
            assert node.deleted or len(self._path_blocks(node)) * bs == cached
        self.usage().check()
