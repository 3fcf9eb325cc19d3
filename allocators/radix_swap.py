"""Group operations of the radix allocator: swapping to host memory and back, and abort.

`swap_out` copies every block of the group's tables to host (a block several of them hold,
once) and frees the sequences as `free` does: their tokens stay in the tree as evictable
cache. `swap_in` first matches each sequence in the tree again and locks what is still
cached (that part needs no copy), then restores the rest from host, sequence by sequence,
publishing each before the next is matched: blocks the group shares come back once, and
the group shares them through the tree again, as before.

    host table of r:   [h0 | h1 | h2 | h3]            tokens [0, n)
    after swap_in:     [tree path   | own  | own]      h0, h1 still cached: not copied
                                      ^ h2, h3 copied to new device blocks (swapped_in runs)

So `swapped_in` lists only the host blocks whose tokens the device no longer caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from allocators.base import Allocation, SeqLike, Swapped, cdiv, runs

if TYPE_CHECKING:
    from allocators.radix import RadixAllocator


def swap_out(a: RadixAllocator, seq_ids: Sequence[int]) -> Swapped:
    host: dict[int, int] = {}  # device block -> host block, in order of first use
    tables = {}
    for sid in seq_ids:
        table = [host.setdefault(b, len(host)) for b in a.block_table(sid)]
        tables[sid] = (table, a.num_tokens(sid))
    for sid in seq_ids:
        a.free(sid)
    return Swapped(runs(host.items()), len(host), tables)


def swap_in(
    a: RadixAllocator, swapped: Swapped, seqs: Sequence[SeqLike], num_tokens: int = 0
) -> Allocation | None:
    from allocators.radix import _Seq

    if len(seqs) != len(swapped.tables):
        raise ValueError("swap_in needs exactly the sequences that were swapped out")
    bs, tree = a.block_size, a.tree
    tables = [swapped.tables[s.seq_id] for s in seqs]
    sources = [s.tokens for s in seqs]
    held = []  # what the tree still caches of each sequence, locked from here on
    for tokens, (_, n) in zip(sources, tables):
        node, cached, _ = tree.match(tokens.runs(0, n))
        tree.lock(node)
        held.append((node, cached))
    restore = {h for (table, _), (_, m) in zip(tables, held) for h in table[m // bs :]}
    grow = sum(cdiv(num_tokens, bs) - cdiv(n, bs) for _, n in tables if n < num_tokens)
    if len(restore) + grow > a.num_free_blocks:
        for node, _ in held:
            tree.unlock(node)
        return None
    pairs: list[tuple[int, int]] = []  # (host block, device block)
    taken: list[int] = []
    for seq, tokens, (table, n), (node, _) in zip(seqs, sources, tables, held):
        # NOTE: matching again finds what the sequences before this one just published
        again, cached, _ = tree.match(tokens.runs(0, n))
        tree.lock(again)
        tree.unlock(node)
        own = a._take(cdiv(n - cached, bs))
        assert own is not None, "swap_in counted its blocks wrong"
        pairs += zip(table[cached // bs :], own)
        taken += own
        st = _Seq(again, cached, own, n, seq.final_len, tokens)
        a._seqs[seq.seq_id] = st
        a._add(st, 1)
        a._publish(st)
    for seq, (_, n) in zip(seqs, tables):
        if n < num_tokens:
            out = a.allocate(seq, num_tokens - n)
            assert out is not None, "swap_in growth was counted wrong"
            taken += out.new_block_ids
    return Allocation(tuple(taken), swapped_in=runs(sorted(pairs)))


def abort(a: RadixAllocator, seq_ids: Sequence[int]) -> None:
    """Unlike `free`, publishes nothing, and takes back out of the tree the blocks their
    admission put there: their KV was never written."""
    states = [a._seqs.pop(sid) for sid in seq_ids]
    for st in states:
        a._add(st, -1)
        a._pool.drop(st.own)
        a.tree.unlock(st.node)
    for st in states:
        a.tree.drop_new_leaves(st.node, st.mark)
