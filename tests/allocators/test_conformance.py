"""One suite for every allocator, placement and several block sizes."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from allocators.base import DecodeDefaults, KVAllocator, MemoryUsage
from allocators.radix import RadixAllocator
from allocators.vattention import VAttentionAllocator
from tests.allocators.seqs import child, seq

MAX_SEQ_LEN = 64
SLOTS = 256
BLOCK_ALLOCATORS = {
    "paged": PagedAllocator,
    "prefix": PrefixAllocator,
    "radix": RadixAllocator,
    "vattention": lambda num_pages, bs: VAttentionAllocator(num_pages, bs, 128),
}


def make(kind: str, block_size: int = 4, reservation: str = "max", placement: str = "first_fit"):
    if kind == "static":
        return StaticAllocator(SLOTS, MAX_SEQ_LEN, reservation, placement)
    return BLOCK_ALLOCATORS[kind](SLOTS // block_size, block_size)


ALLOCATORS = [
    *[
        pytest.param(("static", 1, r, p), id=f"static-{r}-{p}")
        for r in ("max", "pow2", "oracle")
        for p in ("first_fit", "best_fit", "buddy")
    ],
    *[pytest.param((k, bs), id=f"{k}-bs{bs}") for k in BLOCK_ALLOCATORS for bs in (1, 4, 16)],
]


@pytest.fixture(params=ALLOCATORS)
def alloc(request) -> KVAllocator:
    return make(*request.param)


def snapshot(a: KVAllocator, ids) -> tuple[MemoryUsage, dict]:
    return a.usage(), {i: list(a.block_table(i)) for i in ids}


def grow_to_end(a: KVAllocator, s) -> None:
    """Decode one token per step until the sequence holds final_len - 1 tokens."""
    while a.num_tokens(s.seq_id) < s.final_len - 1:
        assert a.allocate(s, 1) is not None
        a.check_invariants()


def test_lifecycle_returns_every_slot(alloc):
    seqs = [seq(i, prompt_len=5 + 3 * i, output_len=7 + i) for i in range(4)]
    for s in seqs:
        assert alloc.allocate(s, s.prompt_len) is not None
        alloc.check_invariants()
    for s in seqs:
        grow_to_end(alloc, s)
        u = alloc.usage()
        assert u.token_states >= alloc.num_tokens(s.seq_id)
    assert alloc.usage().logical_tokens == sum(s.final_len - 1 for s in seqs)
    for s in seqs:
        alloc.free(s.seq_id)
        alloc.check_invariants()
    u = alloc.usage()
    assert u.free == alloc.capacity and u.token_states == u.reservation == 0


def test_tables_are_disjoint_and_skip_null_block(alloc):
    seqs = [seq(i, prompt_len=9, output_len=4) for i in range(SLOTS // MAX_SEQ_LEN)]
    for s in seqs:
        assert alloc.allocate(s, s.prompt_len) is not None
        grow_to_end(alloc, s)
    ids = [b for s in seqs for b in alloc.block_table(s.seq_id)]
    assert len(ids) == len(set(ids))
    assert 0 not in ids and max(ids) <= alloc.num_blocks
    for s in seqs:
        slots = len(alloc.block_table(s.seq_id)) * alloc.block_size
        assert slots >= alloc.num_tokens(s.seq_id)


def test_failed_allocate_changes_nothing(alloc):
    admitted = []
    for i in range(1000):
        s = seq(i, prompt_len=MAX_SEQ_LEN // 2, output_len=MAX_SEQ_LEN // 2)
        if alloc.allocate(s, s.prompt_len) is None:
            break
        admitted.append(s)
    else:
        pytest.fail("memory never ran out")
    before = snapshot(alloc, [s.seq_id for s in admitted])
    assert alloc.allocate(seq(999, MAX_SEQ_LEN // 2, 8), MAX_SEQ_LEN // 2) is None
    assert snapshot(alloc, [s.seq_id for s in admitted]) == before
    alloc.check_invariants()
    with pytest.raises(KeyError):
        alloc.block_table(999)


def test_usage_sums_to_capacity_while_growing(alloc):
    s = seq(1, prompt_len=3, output_len=20)
    alloc.allocate(s, 3)
    for _ in range(10):
        alloc.allocate(s, 1)
        u = alloc.usage()
        parts = (u.token_states, u.reservation, u.internal_frag, u.external_frag, u.free)
        assert sum(parts) == alloc.capacity
        assert u.token_states == 3 + _ + 1


def test_fork_shares_or_copies(alloc):
    parent = seq(1, prompt_len=6, output_len=10)
    alloc.allocate(parent, 6)
    kids = [child(parent, 10 + i, at=6, output_len=10) for i in range(3)]
    for k in kids:
        assert alloc.fork(1, k) is not None
        alloc.check_invariants()
        assert alloc.num_tokens(k.seq_id) == 6
    for s in [parent, *kids]:
        grow_to_end(alloc, s)
    u = alloc.usage()
    assert u.logical_tokens == 4 * 15
    if isinstance(alloc, StaticAllocator):
        assert u.token_states == u.logical_tokens
    else:  # the prompt's full blocks are held once
        shared = (6 // alloc.block_size) * alloc.block_size
        assert u.token_states == u.logical_tokens - 3 * shared
    for s in [*kids, parent]:
        alloc.free(s.seq_id)
        alloc.check_invariants()
    assert alloc.usage().free == alloc.capacity


def test_admission_reports_where_the_table_starts(alloc):
    s = seq(1, prompt_len=5, output_len=30)
    first = alloc.allocate(s, 5)
    assert first.new_block_ids[0] == alloc.block_table(1)[0]
    assert first.num_cached_tokens == 0


@pytest.mark.parametrize("placement", ["first_fit", "best_fit", "buddy"])
def test_static_grows_only_inside_its_reservation(placement):
    a = StaticAllocator(100, 16, "oracle", placement)
    s = seq(1, prompt_len=4, output_len=4)
    a.allocate(s, 4)
    a.allocate(s, 3)
    with pytest.raises(ValueError, match="outgrew"):
        a.allocate(s, 2)
    with pytest.raises(ValueError, match="max_seq_len"):
        a.allocate(seq(2, prompt_len=10, output_len=10), 10)


def test_paged_copy_on_write_of_shared_partial_block():
    a = PagedAllocator(16, 4)
    parent = seq(1, prompt_len=6, output_len=8)
    a.allocate(parent, 6)  # blocks [1, 2], block 2 holds 2 tokens
    kid = child(parent, 2, at=6, output_len=8)
    a.fork(1, kid)
    assert a.block_table(2) == [1, 2]
    u = a.usage()
    assert (u.token_states, u.reservation, u.internal_frag) == (6, 0, 2)
    out = a.allocate(parent, 1)  # parent writes into the shared tail: copy it
    assert out.copies == ((2, 3, 1),) and a.block_table(1) == [1, 3]
    assert a.usage().token_states == 6 + 2 + 1
    out = a.allocate(kid, 1)  # the child now owns block 2 alone: write in place
    assert out.copies == () and a.block_table(2) == [1, 2]
    a.check_invariants()


@given(
    lens=st.lists(
        st.tuples(st.integers(1, 40), st.integers(2, 60), st.sampled_from([0, 16])),
        min_size=1,
        max_size=6,
    ),
    forks=st.integers(0, 2),
    steps=st.integers(1, 30),
    blocks=st.integers(8, 60),
)
@settings(max_examples=150, deadline=None)
@pytest.mark.parametrize("kind", [*BLOCK_ALLOCATORS, "static"])
def test_decode_steps_equals_stepping_one_at_a_time(kind, lens, forks, steps, blocks):
    """Same usage after each step and the same block tables, or None and no change."""

    def build():
        if kind == "static":
            a = StaticAllocator(blocks * 8, 128, "oracle", "first_fit")
        else:
            a = BLOCK_ALLOCATORS[kind](blocks, 4)
        ghost = seq(99, 20, 5, shared_prefix=16)  # leaves cached blocks behind (evictable)
        if a.allocate(ghost, 20) is not None:
            a.free(ghost.seq_id)
        seqs = []
        for i, (p, o, shared) in enumerate(lens):
            s = seq(i, p, o, shared_prefix=shared)
            if a.allocate(s, p) is not None:
                seqs.append(s)
        for f in range(min(forks, len(seqs))):
            c = child(seqs[f], 100 + f, a.num_tokens(seqs[f].seq_id), output_len=10)
            if a.fork(seqs[f].seq_id, c) is not None:
                seqs.append(c)
        return a, seqs

    bulk, seqs = build()
    before = snapshot(bulk, [s.seq_id for s in seqs])
    usages = bulk.decode_steps(seqs, steps)
    bulk.check_invariants()
    if usages is None:
        assert snapshot(bulk, [s.seq_id for s in seqs]) == before
        return
    single, seqs2 = build()
    expected = []
    for _ in range(steps):
        assert single.decode(seqs2) == len(seqs2)
        expected.append(single.usage())
    assert usages == expected
    assert snapshot(bulk, [s.seq_id for s in seqs]) == snapshot(single, [s.seq_id for s in seqs2])


def test_vattention_maps_pages_into_contiguous_virtual_ranges():
    a = VAttentionAllocator(num_pages=8, tokens_per_page=4, max_seq_len=32)
    s1, s2, s3 = (seq(i, prompt_len=5, output_len=6) for i in (1, 2, 3))
    assert a.allocate(s1, 5).new_block_ids == (1, 2)
    a.allocate(s2, 5)
    assert (a.virtual_range(1), a.virtual_range(2)) == (range(0, 32), range(32, 64))
    u = a.usage()
    assert (u.token_states, u.reservation, u.internal_frag) == (10, 6, 0)
    grow_to_end(a, s1)  # 10 tokens in 3 pages: the 12th slot lies past the final length (11)
    assert a.usage().internal_frag == 1 and a.block_table(1) == [1, 2, 5]
    a.free(1)
    a.allocate(s3, 5)
    assert a.virtual_range(3) == range(0, 32) and a.num_rows == 2  # the lowest free row
    with pytest.raises(ValueError, match="virtual range"):
        a.allocate(seq(4, prompt_len=30, output_len=3), 30)
    a.check_invariants()


def test_decode_steps_stops_at_the_final_length(alloc):
    s = seq(1, prompt_len=4, output_len=4)
    alloc.allocate(s, 4)
    assert alloc.decode_steps([s], 5) is None  # 9 tokens: past the final length of 8
    usages = alloc.decode_steps([s], 4)
    assert usages is not None and all(u.reservation >= 0 for u in usages)
    alloc.check_invariants()


def test_static_refused_fork_of_an_admission_strands_the_free_slots():
    a = StaticAllocator(100, 64, "max")
    parent = seq(1, prompt_len=10, output_len=10)
    a.allocate(parent, 10)
    assert a.fork(1, child(parent, 2, at=10, output_len=10)) is None  # 36 slots left
    a.free(1)  # the engine undoes the group's admission: nothing of it fits
    assert (a.usage().external_frag, a.usage().free) == (100, 0)
    assert a.allocate(parent, 10) is not None  # the engine retries the group: same again
    assert a.fork(1, child(parent, 3, at=10, output_len=10)) is None
    a.free(1)
    assert a.usage().external_frag == 100
    a.allocate(seq(4, prompt_len=5, output_len=5), 5)  # another admission: placed
    assert (a.usage().external_frag, a.usage().free) == (0, 36)


@pytest.mark.parametrize("param", ALLOCATORS)
def test_default_decode_equals_each_fast_path(param):
    """base.DecodeDefaults.decode on the same operations: same growth, tables and copies."""

    def run(decode):
        a = make(*param)
        seqs = [seq(i, prompt_len=3 + i, output_len=55) for i in range(4)]
        for s in seqs:
            a.allocate(s, s.prompt_len)
        kid = child(seqs[0], 9, at=3, output_len=55)
        if a.fork(0, kid) is not None:
            seqs.append(kid)
        trace = []
        for _ in range(50):  # until memory runs out, for most allocators
            copies: list = []
            trace.append(
                (decode(a, seqs, 0, copies), copies, snapshot(a, [s.seq_id for s in seqs]))
            )
        return trace

    assert run(lambda a, *args: a.decode(*args)) == run(DecodeDefaults.decode)
