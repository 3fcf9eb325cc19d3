"""Placement policies: exact choices, merging, and external fragmentation in the accounting."""

from __future__ import annotations

import pytest

from allocators import StaticAllocator
from allocators.placement import BestFit, Buddy, FirstFit, make_placement
from tests.allocators.seqs import seq


def test_buddy_cuts_the_space_into_aligned_power_of_two_blocks():
    b = Buddy(15729)
    assert b._top == [
        (0, 13),
        (8192, 12),
        (12288, 11),
        (14336, 10),
        (15360, 8),
        (15616, 6),
        (15680, 5),
        (15712, 4),
        (15728, 0),
    ]
    b.check_invariants()


def test_buddy_splits_rounds_and_merges():
    b = Buddy(64)
    assert b.place(5) == (0, 8)  # rounds up to 8, splits 64 -> 32 -> 16 -> 8
    assert b.place(8) == (8, 8)
    assert b.place(20) == (32, 32)
    assert b.place(16) == (16, 16)
    assert b.place(1) is None and b.num_free == 0
    b.release(8)
    b.release(0)  # 0 and 8 merge into 0..16, which waits for its buddy 16..32
    assert b._free[4] == {0}
    b.release(16)
    b.release(32)
    assert b._free[6] == {0} and b.num_free == 64
    b.check_invariants()


def test_first_and_best_fit_choose_different_holes():
    for cls, expect in ((FirstFit, 0), (BestFit, 30)):
        f = cls(40)
        starts = [f.place(n)[0] for n in (10, 5, 15, 4, 6)]  # 0, 10, 15, 30, 34
        f.release(starts[0])  # hole 0..10
        f.release(starts[3])  # hole 30..34
        assert f.place(4) == (expect, 4)
        f.check_invariants()


def test_fit_merges_neighbouring_holes():
    f = FirstFit(30)
    a, b, c = (f.place(10)[0] for _ in range(3))
    f.release(a)
    f.release(c)
    f.release(b)
    assert f._starts == [0] and f._len == {0: 30}
    f.check_invariants()


def test_unknown_placement_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown placement"):
        make_placement("worst_fit", 10)  # type: ignore[arg-type]


def test_external_fragmentation_is_counted_when_admission_fails():
    a = StaticAllocator(30, 30, "oracle", "first_fit")
    for i, n in enumerate((10, 10, 10)):
        a.allocate(seq(i, n - 1, 1), n - 1)
    a.free(0)
    a.free(2)  # holes of 10 at 0 and 20: 20 free slots, none 15 long
    assert a.allocate(seq(9, 14, 1), 14) is None
    u = a.usage()
    assert (u.external_frag, u.free) == (20, 0)
    a.free(1)  # memory changed: the stranded slots are free again
    u = a.usage()
    assert (u.external_frag, u.free) == (0, 30)


def test_buddy_slack_is_external_fragmentation():
    a = StaticAllocator(64, 64, "oracle", "buddy")
    a.allocate(seq(1, 10, 10), 10)  # 20 slots in a 32-slot buddy block
    u = a.usage()
    assert (u.token_states, u.reservation, u.internal_frag, u.external_frag, u.free) == (
        10,
        10,
        0,
        12,
        32,
    )
