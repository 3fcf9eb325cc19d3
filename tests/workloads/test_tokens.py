"""Token sources: bulk block keys and runs agree with block_key."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from allocators.token_runs import common_len, key_len, normalize
from workloads.tokens import GENERATED, MOONCAKE, Tokens

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
