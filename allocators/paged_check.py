"""The paged allocators' invariants, recounted from the block tables (see allocators/paged.py).

- a block is free (refcount 0, in the queue once) or used (refcount = number of tables that
  hold it); free + used = num_blocks;
- every table has exactly ceil(num_tokens / block_size) blocks, filled in order, and the
  holders of a block agree on how many tokens it holds;
- a partial block is shared only right after a fork, and `_shared_tail` lists exactly those;
- every running total (tokens, logical tokens and blocks, reservation) matches a recount;
  with prefix caching, the cache's own invariants hold too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from allocators.base import cdiv

if TYPE_CHECKING:
    from allocators.paged import PagedAllocator


def check_invariants(a: PagedAllocator) -> None:
    bs, seqs = a.block_size, a._seqs.values()
    refs = [0] * (a.num_blocks + 1)
    fill: dict[int, int] = {}
    for st in seqs:
        assert len(st.table) == cdiv(st.num_tokens, bs), "table length != ceil(tokens/bs)"
        assert st.room == len(st.table) * bs
        for i, b in enumerate(st.table):
            refs[b] += 1
            n = min(bs, st.num_tokens - i * bs)
            assert fill.setdefault(b, n) == n, f"holders of block {b} disagree on its tokens"
    a._pool.check_invariants(refs)
    assert a._tokens == sum(fill.values()), "token states differ from the tables"
    assert a._logical == sum(st.num_tokens for st in seqs)
    assert a._logical_blocks == sum(len(st.table) for st in seqs)
    assert a._reserved == sum(a._reserve_of(st) for st in seqs)
    for b, holders in a._shared_tail.items():
        assert len(holders) == a._ref[b] > 1, f"shared tail {b} holders"
        assert all(a._seqs[s].table[-1] == b for s in holders)
    shared = {st.table[-1] for st in seqs if st.num_tokens % bs and refs[st.table[-1]] > 1}
    assert shared == set(a._shared_tail), "untracked shared partial block"
    if a._cache is not None:
        a._cache.check_invariants({i: (st.table, st.num_tokens) for i, st in a._seqs.items()})
    a.usage().check()
