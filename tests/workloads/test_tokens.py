"""Token sources: bulk block keys and runs agree with block_key."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import given, settings

from allocators.token_runs import common_len, key_len, normalize
from workloads.tokens import GENERATED, MOONCAKE, SYSTEM, UNIQUE, Tokens

chunks = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 40)), min_size=0, max_size=6
)  # (source id, length); repeated ids repeat content


def tokens(spec) -> Tokens:
    return Tokens.from_chunks([((MOONCAKE, s), n) for s, n in spec], tail=(GENERATED, 9))


@given(spec=chunks, fork_at=st.integers(0, 200), first=st.integers(0, 30), n=st.integers(0, 30),
       bs=st.sampled_from([1, 2, 3, 16]))  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_block_keys_equal_block_key(spec, fork_at, first, n, bs):
    t = tokens(spec).fork(fork_at, (GENERATED, 7))
    expect = [t.block_key(i * bs, (i + 1) * bs) for i in range(first, first + n)]
    assert t.block_keys(first, first + n, bs) == expect


@given(a=chunks, b=chunks, start=st.integers(0, 60), length=st.integers(0, 120))
@settings(max_examples=300, deadline=None)
def test_runs_compare_like_tokens(a, b, start, length):
    ta, tb = tokens(a), tokens(b)
    ra, rb = ta.runs(start, start + length), tb.runs(start, start + length)
    assert key_len(ra) == length and normalize(ra) == ra
    same = 0  # tokens equal from `start` on, by block_key of single tokens
    while same < length and ta.block_key(start + same, start + same + 1) == tb.block_key(
        start + same, start + same + 1
    ):
        same += 1
    assert common_len(ra, rb) == same


@given(spec=chunks, forks=st.lists(st.integers(0, 150), max_size=8), start=st.integers(0, 150),
       length=st.integers(0, 150))  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_ids_follow_their_pieces(spec, forks, start, length):
    """ids over any range are the whole sequence's ids there; equal runs give equal ids; a
    fork holds its parent's ids up to the fork (beams re-forked every step included)."""
    t = tokens(spec)
    for i, at in enumerate(sorted(forks)):
        parent, t = t, t.fork(at, (GENERATED, 100 + i))
        assert (t.ids(0, at, 997) == parent.ids(0, at, 997)).all()
    whole = t.ids(0, 300, 997)
    part = t.ids(start, start + length, 997)
    assert part.dtype == np.int64 and (part == whole[start : start + length]).all()
    assert whole.min(initial=0) >= 0 and whole.max(initial=0) < 997
    runs = t.runs(0, 300)
    pos = 0
    for src, off, n in runs:
        assert (whole[pos : pos + n] == Tokens([(0, src, off)]).ids(0, n, 997)).all()
        pos += n


def test_ids_are_the_streams_of_before():
    """The token stream is part of every committed model-backend result: it must not move
    (these are the ids of the piece-by-piece implementation it replaced, 2026-11-28)."""
    t = Tokens.from_chunks([((SYSTEM, 3), 5), ((UNIQUE, 7), 4)], (GENERATED, 9))
    c = t.fork(7, (GENERATED, 11)).fork(9, (GENERATED, 12))
    assert t.ids(0, 12, 50000).tolist() == [48901, 16966, 32911, 33559, 39459, 1482, 31017, 614,
                                            34633, 8635, 20808, 22284]  # fmt: skip
    assert c.ids(2, 13, 50000).tolist() == [32911, 33559, 39459, 1482, 31017, 33779, 46082,
                                            35805, 28835, 34990, 33543]  # fmt: skip
