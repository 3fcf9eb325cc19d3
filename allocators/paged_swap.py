"""Group operations of the paged allocators: swapping to host memory and back, and abort.

`swap_out` frees a group's blocks and returns a host copy plan that holds each shared block
once; `swap_in` takes one new block per host block and rebuilds the tables with the same
sharing (with prefix caching, the full ones are registered again). `abort` frees a group
whose admission is rolled back in its step: with prefix caching, the blocks it took (not
those it found) were registered before their KV was written, so they are unregistered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from allocators.base import Allocation, Run, SeqLike, Swapped, cdiv, runs

if TYPE_CHECKING:
    from allocators.paged import PagedAllocator


def swap_out(a: PagedAllocator, seq_ids: Sequence[int]) -> Swapped:
    host: dict[int, int] = {}  # device block -> host block, in order of first use
    tables = {}
    for sid in seq_ids:
        st = a._seqs[sid]
        tables[sid] = ([host.setdefault(b, len(host)) for b in st.table], st.num_tokens)
    for sid in seq_ids:
        a.free(sid)
    return Swapped(runs(host.items()), len(host), tables)


def swap_in(
    a: PagedAllocator, swapped: Swapped, seqs: Sequence[SeqLike], num_tokens: int = 0
) -> Allocation | None:
    from allocators.paged import _Seq

    if len(seqs) != len(swapped.tables):
        raise ValueError("swap_in needs exactly the sequences that were swapped out")
    if swapped.num_host_blocks + _growth(a, swapped, num_tokens) > a.num_free_blocks:
        return None
    bs, ref = a.block_size, a._ref
    dev = a._pool.take(swapped.num_host_blocks)  # host block h -> device block dev[h]
    fill = [0] * len(dev)
    for table, n in swapped.tables.values():
        for i, h in enumerate(table):
            ref[dev[h]] += 1
            fill[h] = min(bs, n - i * bs)
    states = []
    for seq in seqs:
        table, n = swapped.tables[seq.seq_id]
        st = _Seq([dev[h] for h in table], n, seq.final_len, len(table) * bs)
        a._seqs[seq.seq_id] = st
        states.append(st)
        a._logical += n
        a._logical_blocks += len(table)
        if n % bs and ref[st.table[-1]] > 2:  # take() counted each block once already
            a._shared_tail.setdefault(st.table[-1], set()).add(seq.seq_id)
    for b in dev:
        ref[b] -= 1
    a._tokens += sum(fill)
    for seq, st in zip(seqs, states):
        a._reserved += a._reserve_of(st)
        a._register(seq, st)  # prefix caching: the full blocks are hittable again
    added: list[int] = []
    copies: list[Run] = []
    for seq, st in zip(seqs, states):
        if st.num_tokens < num_tokens:
            out = a.allocate(seq, num_tokens - st.num_tokens)
            assert out is not None, "swap_in growth was counted wrong"
            added += out.new_block_ids
            copies += out.copies
    pairs = ((h, b) for h, b in enumerate(dev))
    return Allocation((*dev, *added), copies=tuple(copies), swapped_in=runs(pairs))


def _growth(a: PagedAllocator, swapped: Swapped, num_tokens: int) -> int:
    """Blocks that growing every sequence of `swapped` to num_tokens takes: new blocks,
    and a copy of each shared partial tail for all its holders but the last."""
    bs = a.block_size
    need = 0
    tails: dict[int, int] = {}
    for table, n in swapped.tables.values():
        if n < num_tokens:
            need += cdiv(num_tokens, bs) - len(table)
            if n % bs:
                tails[table[-1]] = tails.get(table[-1], -1) + 1
    return need + sum(tails.values())


def abort(a: PagedAllocator, seq_ids: Sequence[int]) -> None:
    """Free the sequences; what their admission took stays out of the cache."""
    if a._cache is not None:  # blocks past the found ones were registered unwritten
        for sid in seq_ids:
            st = a._seqs[sid]
            a._cache.uncache(st.table[st.num_found :])
    for sid in seq_ids:
        a.free(sid)
