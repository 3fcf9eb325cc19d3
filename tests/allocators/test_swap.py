"""swap_out / swap_in and reported copies, for every allocator (the conformance parameters)."""

from __future__ import annotations

import pytest

from allocators import PagedAllocator, PrefixAllocator
from allocators.base import runs
from allocators.radix import RadixAllocator
from tests.allocators.seqs import child, seq
from tests.allocators.test_conformance import ALLOCATORS, make


@pytest.fixture(params=ALLOCATORS)
def alloc(request):
    return make(*request.param)


def family(a, prompt_len: int = 10, num_children: int = 2, output_len: int = 12):
    """A parent and children forked from it after its prompt, each grown by one token."""
    parent = seq(1, prompt_len, output_len)
    assert a.allocate(parent, prompt_len) is not None
    kids = [child(parent, 10 + i, prompt_len, output_len) for i in range(num_children)]
    for k in kids:
        assert a.fork(1, k) is not None
    return [parent, *kids]


def slots(a, s) -> list[int]:
    """The physical slots of the sequence's stored tokens, in token order."""
    table, bs = a.block_table(s.seq_id), a.block_size
    return [table[p // bs] * bs + p % bs for p in range(a.num_tokens(s.seq_id))]


def test_runs_join_consecutive_pairs():
    assert runs([(3, 0), (4, 1), (9, 2), (10, 3), (2, 4)]) == ((3, 0, 2), (9, 2, 2), (2, 4, 1))
    assert runs([]) == ()


def test_swap_out_then_in_restores_tables_sharing_and_usage(alloc):
    group = family(alloc)
    ids = [s.seq_id for s in group]
    before = alloc.usage()
    num = {i: alloc.num_tokens(i) for i in ids}
    shared = {(i, j) for i in ids for j in ids if set(slots(alloc, group[ids.index(i)])) & set(
        slots(alloc, group[ids.index(j)]))}  # fmt: skip
    swapped = alloc.swap_out(ids)
    alloc.check_invariants()
    assert alloc.usage().token_states == 0 and alloc.usage().logical_tokens == 0
    assert sum(n for _, _, n in swapped.runs) == swapped.num_host_blocks
    assert {i: n for i, (_, n) in swapped.tables.items()} == num
    out = alloc.swap_in(swapped, group)
    assert out is not None
    alloc.check_invariants()
    assert alloc.usage() == before
    assert {i: alloc.num_tokens(i) for i in ids} == num
    restored = {(i, j) for i in ids for j in ids if set(slots(alloc, group[ids.index(i)])) & set(
        slots(alloc, group[ids.index(j)]))}  # fmt: skip
    assert restored == shared
    host_to_dev = {h + k: d + k for h, d, n in out.swapped_in for k in range(n)}
    if isinstance(alloc, RadixAllocator):  # what its tree still caches is not copied back
        assert len(host_to_dev) <= swapped.num_host_blocks
    else:
        assert len(host_to_dev) == swapped.num_host_blocks
    for s in group:  # every copied host block lands where the sequence's table now points
        table, _ = swapped.tables[s.seq_id]
        dev = alloc.block_table(s.seq_id)
        assert [host_to_dev.get(h, d) for h, d in zip(table, dev)] == list(dev)[: len(table)]
    for s in group:
        alloc.free(s.seq_id)
    alloc.check_invariants()
    assert alloc.usage().free + alloc.usage().external_frag == alloc.capacity


def test_swap_in_grows_the_group_atomically(alloc):
    group = family(alloc)
    swapped = alloc.swap_out([s.seq_id for s in group])
    out = alloc.swap_in(swapped, group, num_tokens=11)
    assert out is not None
    alloc.check_invariants()
    assert all(alloc.num_tokens(s.seq_id) == 11 for s in group)
    if isinstance(alloc, PagedAllocator) and 10 % alloc.block_size:
        assert len(out.copies) == 2  # the shared partial tail: copied for all but one holder


def test_swap_in_that_does_not_fit_changes_nothing(alloc):
    group = family(alloc, prompt_len=20, num_children=1, output_len=20)
    swapped = alloc.swap_out([s.seq_id for s in group])
    fillers = []
    for i in range(1000):
        f = seq(100 + i, 30, 30)
        if alloc.allocate(f, 30) is None:
            break
        fillers.append(f)
    u = alloc.usage()
    held = (u.token_states, u.reservation, u.internal_frag, u.free + u.external_frag)
    tables = {f.seq_id: list(alloc.block_table(f.seq_id)) for f in fillers}
    assert alloc.swap_in(swapped, group, num_tokens=21) is None
    u = alloc.usage()
    assert (u.token_states, u.reservation, u.internal_frag, u.free + u.external_frag) == held
    assert tables == {f.seq_id: list(alloc.block_table(f.seq_id)) for f in fillers}
    alloc.check_invariants()
    for f in fillers:
        alloc.free(f.seq_id)
    assert alloc.swap_in(swapped, group, num_tokens=21) is not None
    alloc.check_invariants()


@pytest.mark.parametrize("cls", [PagedAllocator, PrefixAllocator])
def test_decode_reports_copy_on_write(cls):
    a = cls(16, 4)
    group = family(a, prompt_len=6, num_children=1, output_len=8)  # blocks [1, 2]; 2 shared
    copies: list = []
    assert a.decode(group, copies=copies) == 2
    assert copies == [(2, 3, 1)]  # the parent copies the shared tail; the child keeps it
    copies.clear()
    assert a.decode(group, copies=copies) == 2 and copies == []
    a.check_invariants()


def test_prefix_swap_in_makes_full_blocks_hittable_again():
    a = PrefixAllocator(8, 4)
    s1 = seq(1, prompt_len=9, output_len=4, shared_prefix=8)
    a.allocate(s1, 9)
    swapped = a.swap_out([1])
    for i in range(4):  # take all 8 blocks: every cached block of s1 is evicted
        assert a.allocate(seq(50 + i, 8, 2), 8) is not None
    for i in range(4):
        a.free(50 + i)
    out = a.swap_in(swapped, [s1])
    assert out is not None
    s2 = seq(3, prompt_len=9, output_len=4, shared_prefix=8)
    hit = a.allocate(s2, 9)
    assert hit.num_cached_tokens == 8
    assert a.block_table(3)[:2] == a.block_table(1)[:2]
    a.check_invariants()


def test_radix_swap_in_copies_back_only_what_the_tree_lost():
    a = RadixAllocator(6, 4)
    group = family(a, prompt_len=10, num_children=1, output_len=4)  # tree [1, 2], tails 3, 4
    swapped = a.swap_out([1, 10])
    assert swapped.runs == ((1, 0, 4),) and a.tree.evictable_size == 8
    out = a.swap_in(swapped, group)  # the prompt's two full blocks are still cached
    assert out.swapped_in == ((2, 5, 2),)
    assert (a.block_table(1), a.block_table(10)) == ([1, 2, 5], [1, 2, 6])
    swapped = a.swap_out([1, 10])
    filler = seq(7, 24, 2)
    assert a.allocate(filler, 24).new_block_ids == (3, 4, 5, 6, 1, 2)  # evicts the prompt
    a.free(7)
    out = a.swap_in(swapped, group)  # evicts the filler, copies all four host blocks back
    assert out.swapped_in == ((0, 3, 4),)
    assert (a.block_table(1), a.block_table(10)) == ([3, 4, 5], [3, 4, 6])
    a.check_invariants()
