"""Paged allocation (PagedAttention): fixed-size blocks, a free queue, a block table per sequence.

    block table of seq r:  [ 7 | 3 | 12 ]      slot = block_id * block_size + offset
                             full full partial  (a new block only when the last one is full)

Block ids run 1..num_blocks; block 0 is the null block and is never handed out. Free blocks
leave the front of the free queue (initially ascending ids) and return to its back, a
sequence's blocks tail first. `fork` shares every parent block (refcounts); the first write
into a shared partial block copies it (copy-on-write, reported in `Allocation.copies`, and
by `decode` into its `copies` list). `swap_out` frees a group's blocks and returns a host copy
plan that holds each shared block once; `swap_in` takes one new block per host block and
rebuilds the tables with the same sharing (the prefix allocator registers the full ones again).

Invariants (checked by `check_invariants`):
- a block is free (refcount 0, in the queue once) or used (refcount = number of tables that
  hold it); free + used = num_blocks;
- every table has exactly ceil(num_tokens / block_size) blocks, filled in order;
- a partial block is shared only right after a fork, and its holders all hold the same tokens.

Accounting: token states are physical (a shared block counts once). Reservation is the empty
slots of a sequence's exclusively held last block that it will still fill; the other empty
slots of used blocks are internal fragmentation. No external fragmentation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from allocators.base import NO_CHANGE, Allocation, MemoryUsage, Run, SeqLike, Swapped, cdiv, runs

_new = tuple.__new__


@dataclass(slots=True)
class _Seq:
    table: list[int]
    num_tokens: int
    final_len: int
    room: int  # len(table) * block_size
    hashes: list[int] = field(default_factory=list)  # prefix sharing: chain of full blocks
    num_found: int = 0  # leading blocks it found in KV (prefix hits, a fork's parent blocks)


class PagedAllocator:
    hashes_blocks = False  # whether _register does anything (prefix caching)

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._ref = [0] * (num_blocks + 1)
        self._free: Iterable[int] = deque(range(1, num_blocks + 1))
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
        return len(self._free)  # type: ignore[arg-type]

    # --- the free queue; the prefix allocator overrides these three ------------------------
    def _pop_free(self) -> int:
        return self._free.popleft()  # type: ignore[attr-defined, no-any-return]

    def _pop_many(self, n: int) -> list[int]:
        popleft = self._free.popleft  # type: ignore[attr-defined]
        return [popleft() for _ in range(n)]

    def _release(self, freed: list[int]) -> None:
        self._free.extend(freed)  # type: ignore[attr-defined]

    def _register(self, seq: SeqLike, st: _Seq) -> None:
        """Called when blocks of `st` have become full (prefix caching hashes them)."""

    # --- accounting helpers ------------------------------------------------------------------
    def _reserve_of(self, st: _Seq) -> int:
        if not st.table or self._ref[st.table[-1]] > 1:
            return 0
        return max(0, min(st.room, st.final_len) - st.num_tokens)

    def _take(self, n: int) -> list[int]:
        ids = self._pop_many(n)
        ref = self._ref
        for b in ids:
            ref[b] = 1
        return ids

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
        states, ref, free, bs = self._seqs, self._ref, self._free, self.block_size
        pop = self._pop_free
        fast = slow = 0  # tokens written on the fast paths are counted in once, at the end
        for seq in seqs[start:] if start else seqs:
            st = states[seq.seq_id]
            n = st.num_tokens + 1
            if n <= st.room:
                if n <= st.final_len and ref[st.table[-1]] == 1:  # into the own last block
                    st.num_tokens = n
                    fast += 1
                    if n == st.room:
                        self._register(seq, st)
                    continue
            elif n == st.room + 1 and n <= st.final_len and free:  # full: take one block
                b = pop()
                ref[b] = 1
                st.table.append(b)
                st.room += bs
                st.num_tokens = n
                self._reserved += min(st.room, st.final_len) - n + 1
                self._logical_blocks += 1
                fast += 1
                if bs == 1:  # the new block is full at once
                    self._register(seq, st)
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
        bs, k, ref = self.block_size, num_steps, self._ref
        states = [self._seqs[s.seq_id] for s in seqs]
        crossings = []  # (step, position in seqs): that step writes into a new block
        for j, st in enumerate(states):
            n = st.num_tokens
            if n + k > st.final_len or (n < st.room and ref[st.table[-1]] > 1):
                return None
            if st.room - n < k:
                crossings += [(t, j) for t in range(st.room - n + 1, k + 1, bs)]
        if len(crossings) > self.num_free_blocks:
            return None
        crossings.sort()  # per step, in sequence order: the order decode() takes blocks in
        new_blocks = [0] * (k + 1)  # blocks taken at each step
        new_room = [0] * (k + 1)  # slots those blocks add below the final lengths
        for t, j in crossings:
            st = states[j]
            b = self._pop_free()
            ref[b] = 1
            new_room[t] += min(bs, st.final_len - st.room)
            st.table.append(b)
            st.room += bs
            new_blocks[t] += 1
        usages = []
        cap, num_seqs = self.num_blocks * bs, len(states)
        used, reserved = (
            (self.num_blocks - self.num_free_blocks - len(crossings)) * bs,
            self._reserved,
        )
        tokens, logical, logical_blocks = self._tokens, self._logical, self._logical_blocks
        for t in range(1, k + 1):
            used += new_blocks[t] * bs
            tokens += num_seqs
            logical += num_seqs
            reserved += new_room[t] - num_seqs
            logical_blocks += new_blocks[t]
            usages.append(_new(MemoryUsage, (
                cap, tokens, reserved, used - tokens - reserved, 0, cap - used, logical,
                logical_blocks * bs)))  # fmt: skip
        self._tokens, self._logical, self._reserved = tokens, logical, reserved
        self._logical_blocks = logical_blocks
        for st in states:
            st.num_tokens += k
        if self.hashes_blocks:
            for seq, st in zip(seqs, states):
                self._register(seq, st)
        return usages

    def _count_fast(self, n: int) -> None:
        """n tokens went into exclusively held last blocks, each within its final length."""
        self._tokens += n
        self._logical += n
        self._reserved -= n

    def _admit(self, seq: SeqLike, num_tokens: int) -> Allocation | None:
        if num_tokens < 1:
            raise ValueError(f"sequence {seq.seq_id}: admission needs at least one token")
        need = cdiv(num_tokens, self.block_size)
        if need > self.num_free_blocks:
            return None
        st = _Seq(self._take(need), 0, seq.final_len, need * self.block_size)
        self._seqs[seq.seq_id] = st
        self._logical_blocks += need
        self._write(st, num_tokens)
        self._reserved += self._reserve_of(st)
        self._register(seq, st)
        return Allocation(tuple(st.table))

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
            (new,) = self._take(1)
            self._tokens += self._tail_fill(st)
            st.table[-1] = new
            self._unshare(last, seq.seq_id)
            copies = ((last, new, 1),)
        added = self._take(need)
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
        st = _Seq(
            list(p.table), p.num_tokens, child.final_len, p.room, list(p.hashes), len(p.table)
        )
        self._seqs[child.seq_id] = st
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
        self._release(freed)

    def abort(self, seq_ids: Sequence[int]) -> None:
        self._forget(seq_ids)
        for sid in seq_ids:
            self.free(sid)

    def _forget(self, seq_ids: Sequence[int]) -> None:
        """Prefix caching drops what the sequences registered (see `abort`)."""

    def swap_out(self, seq_ids: Sequence[int]) -> Swapped:
        host: dict[int, int] = {}  # device block -> host block, in order of first use
        tables = {}
        for sid in seq_ids:
            st = self._seqs[sid]
            tables[sid] = ([host.setdefault(b, len(host)) for b in st.table], st.num_tokens)
        for sid in seq_ids:
            self.free(sid)
        return Swapped(runs(host.items()), len(host), tables)

    def swap_in(
        self, swapped: Swapped, seqs: Sequence[SeqLike], num_tokens: int = 0
    ) -> Allocation | None:
        if len(seqs) != len(swapped.tables):
            raise ValueError("swap_in needs exactly the sequences that were swapped out")
        if swapped.num_host_blocks + self._growth(swapped, num_tokens) > self.num_free_blocks:
            return None
        bs, ref = self.block_size, self._ref
        dev = self._take(swapped.num_host_blocks)  # host block h -> device block dev[h]
        fill = [0] * len(dev)
        for table, n in swapped.tables.values():
            for i, h in enumerate(table):
                ref[dev[h]] += 1
                fill[h] = min(bs, n - i * bs)
        states = []
        for seq in seqs:
            table, n = swapped.tables[seq.seq_id]
            st = _Seq([dev[h] for h in table], n, seq.final_len, len(table) * bs)
            self._seqs[seq.seq_id] = st
            states.append(st)
            self._logical += n
            self._logical_blocks += len(table)
            if n % bs and ref[st.table[-1]] > 2:  # _take counted each block once already
                self._shared_tail.setdefault(st.table[-1], set()).add(seq.seq_id)
        for b in dev:
            ref[b] -= 1
        self._tokens += sum(fill)
        for seq, st in zip(seqs, states):
            self._reserved += self._reserve_of(st)
            self._register(seq, st)  # prefix caching: the full blocks are hittable again
        added: list[int] = []
        copies: list[Run] = []
        for seq, st in zip(seqs, states):
            if st.num_tokens < num_tokens:
                out = self.allocate(seq, num_tokens - st.num_tokens)
                assert out is not None, "swap_in growth was counted wrong"
                added += out.new_block_ids
                copies += out.copies
        pairs = ((h, b) for h, b in enumerate(dev))
        return Allocation((*dev, *added), copies=tuple(copies), swapped_in=runs(pairs))

    def _growth(self, swapped: Swapped, num_tokens: int) -> int:
        """Blocks that growing every sequence of `swapped` to num_tokens takes: new blocks,
        and a copy of each shared partial tail for all its holders but the last."""
        bs = self.block_size
        need = 0
        tails: dict[int, int] = {}
        for table, n in swapped.tables.values():
            if n < num_tokens:
                need += cdiv(num_tokens, bs) - len(table)
                if n % bs:
                    tails[table[-1]] = tails.get(table[-1], -1) + 1
        return need + sum(tails.values())

    def block_table(self, seq_id: int) -> Sequence[int]:
        return self._seqs[seq_id].table

    def num_tokens(self, seq_id: int) -> int:
        return self._seqs[seq_id].num_tokens

    def usage(self) -> MemoryUsage:
        bs = self.block_size
        cap = self.num_blocks * bs
        free = len(self._free) * bs  # type: ignore[arg-type]
        tokens, reserved = self._tokens, self._reserved
        # NOTE: tuple.__new__ skips the NamedTuple constructor's Python frame (hot path)
        return _new(
            MemoryUsage,
            (cap, tokens, reserved, cap - free - tokens - reserved, 0, free, self._logical,
             self._logical_blocks * bs),
        )  # fmt: skip

    def check_invariants(self) -> None:
        bs = self.block_size
        free = list(self._free)
        assert len(free) == len(set(free)), "a block is in the free queue twice"
        assert all(self._ref[b] == 0 for b in free), "a free block is referenced"
        refs = [0] * (self.num_blocks + 1)
        fill: dict[int, int] = {}
        for st in self._seqs.values():
            assert len(st.table) == cdiv(st.num_tokens, bs), "table length != ceil(tokens/bs)"
            assert st.room == len(st.table) * bs
            for i, b in enumerate(st.table):
                refs[b] += 1
                n = min(bs, st.num_tokens - i * bs)
                assert fill.setdefault(b, n) == n, f"holders of block {b} disagree on its tokens"
        assert refs == self._ref, "refcounts differ from the tables"
        assert refs[0] == 0, "the null block was handed out"
        assert len(free) + sum(r > 0 for r in refs) == self.num_blocks, "free + used != total"
        assert self._tokens == sum(fill.values()), "token states differ from the tables"
        assert self._logical == sum(st.num_tokens for st in self._seqs.values())
        assert self._logical_blocks == sum(len(st.table) for st in self._seqs.values())
        assert self._reserved == sum(self._reserve_of(st) for st in self._seqs.values())
        for b, holders in self._shared_tail.items():
            assert len(holders) == self._ref[b] > 1, f"shared tail {b} holders"
            assert all(self._seqs[s].table[-1] == b for s in holders)
        partial_shared = {
            st.table[-1]
            for st in self._seqs.values()
            if st.num_tokens % bs and self._ref[st.table[-1]] > 1
        }
        assert partial_shared == set(self._shared_tail), "untracked shared partial block"
        self.usage().check()
