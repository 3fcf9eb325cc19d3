"""The radix tree on its own: exact ids, splits, eviction order and locks (after SGLang's
test_radix_cache_unit.py), and a state machine against a model of cached prefixes."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from allocators.radix_tree import RadixTree
from allocators.token_runs import (
    common_len,
    key_len,
    normalize,
    split_key,
    token_key,
)


def tree(block_size: int = 1) -> tuple[RadixTree, list[list[int]]]:
    released: list[list[int]] = []
    return RadixTree(block_size, released.append), released


def test_keys_are_runs():
    assert token_key([1, 2, 3]) == ((1, 0, 1), (2, 0, 1), (3, 0, 1))
    assert normalize([("s", 0, 4), ("s", 4, 4), ("t", 0, 0), ("s", 0, 2)]) == (
        ("s", 0, 8),
        ("s", 0, 2),
    )
    key = (("s", 0, 512), ("u", 0, 16))
    assert split_key(key, 500) == ((("s", 0, 500),), (("s", 500, 12), ("u", 0, 16)))
    assert split_key(key, 512) == ((("s", 0, 512),), (("u", 0, 16),))
    assert split_key(key, 0) == ((), key) and split_key(key, 999) == (key, ())
    assert common_len(key, (("s", 0, 100), ("s", 100, 412), ("u", 0, 3), ("v", 0, 9))) == 515
    assert common_len(key, (("s", 1, 10),)) == 0 and key_len(key) == 528


def test_insert_and_match_basic():
    t, _ = tree()
    assert t.insert(token_key([1, 2, 3]), [10, 20, 30])[0] == 0
    assert t.total_size == t.evictable_size == 3
    node, n, got = t.match(token_key([1, 2, 3]))
    assert (n, got) == (3, [10, 20, 30])
    node, n, got = t.match(token_key([1, 2]))  # splits the edge [1, 2, 3]
    assert (n, got) == (2, [10, 20]) and node.length == 2 and t.total_size == 3
    assert t.match(token_key([7]))[1:] == (0, [])
    t.check_invariants()


def test_insert_reports_the_cached_prefix_and_splits():
    t, _ = tree()
    t.insert(token_key([1, 2, 3]), [10, 20, 30])
    assert t.insert(token_key([1, 2, 3]), [11, 21, 31])[0] == 3  # all cached: nothing added
    cached, node = t.insert(token_key([1, 2, 4, 5]), [11, 21, 41, 51])
    assert cached == 2 and node.block_ids == [41, 51] and t.total_size == 5
    assert t.match(token_key([1, 2, 4, 5, 6]))[1:] == (4, [10, 20, 41, 51])
    cached, node = t.insert(token_key([1, 2, 4, 5, 6, 7]), [0, 0, 0, 0, 61, 71])
    assert cached == 4 and t.total_size == 7
    assert sorted(len(n.key) for n in t.root.children.values()) == [2]  # [1, 2] is shared
    t.check_invariants()


def test_advanced_prefix_match_with_node_splits():
    for bs in (1, 2):
        t, _ = tree(bs)
        seq1 = [1, 2, 3, 4, 5, 6, 7, 8]
        val1 = [x * 10 for x in seq1][: 8 // bs]
        t.insert(token_key(seq1), val1)
        t.insert(token_key([1, 2, 9, 10]), [11, 21, 91, 101][: 4 // bs])
        assert t.total_size == 10
        assert t.match(token_key([1, 2, 3, 4, 999, 1000]))[2] == val1[: 4 // bs]
        assert t.match(token_key(seq1))[2] == val1
        assert t.match(token_key([1, 2, 3, 4, 5, 6, 777, 888]))[2] == val1[: 6 // bs]
        assert t.total_size == 10
        t.check_invariants()


@pytest.mark.parametrize(("bs", "length", "expect"), [(1, 5, 5), (2, 5, 4), (4, 6, 4)])
def test_block_alignment(bs, length, expect):
    t, _ = tree(bs)
    t.insert(token_key(list(range(length))), list(range(length // bs)))
    _, n, got = t.match(token_key(list(range(length))))
    assert n == expect and len(got) == expect // bs
    t.check_invariants()


def test_blocks_split_only_at_block_boundaries():
    t, _ = tree(2)
    t.insert(token_key([1, 2, 3, 4]), [7, 8])
    cached, _ = t.insert(token_key([1, 2, 3, 9]), [5, 6])  # differs inside the second block
    assert cached == 2
    assert sorted(n.block_ids for n in t.nodes()) == [[6], [7], [8]]
    t.check_invariants()


def test_lock_ref_operations():
    t, _ = tree()
    t.insert(token_key([1, 2, 3]), [10, 20, 30])
    node, _, _ = t.match(token_key([1, 2, 3]))
    t.lock(node)
    assert (t.protected_size, t.evictable_size) == (3, 0)
    t.match(token_key([1, 9]))  # a split under a lock: both halves stay locked
    assert (t.protected_size, t.evictable_size) == (3, 0)
    t.check_invariants({node.node_id: 1})
    assert t.evict(10) == 0
    t.unlock(node)
    assert (t.protected_size, t.evictable_size) == (0, 3)
    t.check_invariants()


def test_evict_order_is_lru_then_parents():
    t, released = tree()
    t.insert(token_key([1, 2]), [10, 20])  # tick 1
    t.insert(token_key([3, 4]), [30, 40])  # tick 2
    t.insert(token_key([1, 2, 5]), [0, 0, 50])  # tick 3: [1, 2] touched, [5] under it
    t.match(token_key([3, 4]))  # tick 4
    assert t.evict(1) == 1 and released == [[50]]  # leaf [5]: tick 3; [1, 2] is not a leaf
    assert t.evict(1) == 2 and released[-1] == [10, 20]  # now [1, 2] (tick 3) before [3, 4]
    assert t.evict(5) == 2 and released[-1] == [30, 40]
    assert t.total_size == 0 and t.evict(1) == 0
    t.check_invariants()


def test_evict_skips_locked_paths_and_ties_go_to_the_older_node():
    t, released = tree()
    _, a = t.insert(token_key([1]), [10])
    t.insert(token_key([2]), [20])
    t.insert(token_key([3]), [30])
    t.lock(a)
    assert t.evict(2) == 2 and released == [[20], [30]]
    t.unlock(a)
    assert t.evict(1) == 1 and released[-1] == [10]
    t.check_invariants()


def test_touched_leaf_moves_to_the_back():
    t, released = tree()
    t.insert(token_key([1]), [10])
    t.insert(token_key([2]), [20])
    t.match(token_key([1]))
    t.evict(1)
    assert released == [[20]]
    t.check_invariants()


def test_runs_of_one_long_source():
    t, _ = tree(16)
    a = (("sys", 0, 512), ("u1", 0, 100))
    b = (("sys", 0, 512), ("u2", 0, 40))
    t.insert(a, list(range(1, 39)))  # 612 tokens: 38 blocks, 4 tokens left out
    cached, node = t.insert(b, list(range(100, 134)))
    assert cached == 512 and node.block_ids == [132, 133]
    _, n, got = t.match((("sys", 0, 300),))
    assert n == 288 and got == list(range(1, 19))
    t.check_invariants()


class TreeMachine(RuleBasedStateMachine):
    """Insert / match / lock / unlock / evict against a model: cached block prefixes -> id."""

    @initialize(bs=st.sampled_from([1, 2, 4]))
    def setup(self, bs):
        self.bs = bs
        self.released: list[list[int]] = []
        self.t = RadixTree(bs, self.released.append)
        self.model: dict[tuple[int, ...], int] = {}  # token prefix ending a block -> block id
        self.locks: list = []  # (node, its token prefix)
        self.next_id = 1

    def _prefixes(self, tokens):
        return [tuple(tokens[: i + self.bs]) for i in range(0, len(tokens) - self.bs + 1, self.bs)]

    def _cached_blocks(self, tokens):
        n = 0
        for p in self._prefixes(tokens):
            if p not in self.model:
                break
            n += 1
        return n

    @rule(tokens=st.lists(st.integers(0, 2), min_size=1, max_size=12))
    def insert(self, tokens):
        new = [self.next_id + i for i in range(len(tokens) // self.bs)]
        self.next_id += len(new)
        expect = self._cached_blocks(tokens)
        cached, _ = self.t.insert(token_key(tokens), new)
        assert cached == expect * self.bs
        for p, b in zip(self._prefixes(tokens), new):
            self.model.setdefault(p, b)

    @rule(tokens=st.lists(st.integers(0, 2), min_size=1, max_size=12), lock=st.booleans())
    def match(self, tokens, lock):
        node, n, got = self.t.match(token_key(tokens))
        k = self._cached_blocks(tokens)
        assert n == k * self.bs
        assert got == [self.model[p] for p in self._prefixes(tokens)[:k]]
        if lock and n:
            self.t.lock(node)
            self.locks.append((node, tuple(tokens[:n])))

    @precondition(lambda self: self.locks)
    @rule(data=st.data())
    def unlock(self, data):
        i = data.draw(st.integers(0, len(self.locks) - 1))
        self.t.unlock(self.locks.pop(i)[0])

    @rule(n=st.integers(1, 12))
    def evict(self, n):
        before = len(self.released)
        freed = self.t.evict(n)
        gone = {b for blocks in self.released[before:] for b in blocks}
        assert freed == len(gone) * self.bs
        assert freed >= n or self.t.evictable_size == 0
        locked = {p[: i + self.bs] for _, p in self.locks for i in range(0, len(p), self.bs)}
        for p, b in list(self.model.items()):
            if b in gone:
                assert p not in locked, "evicted a locked block"
                del self.model[p]
        for p in self.model:  # only leaves go: what stays is closed under prefixes
            assert len(p) == self.bs or p[: -self.bs] in self.model

    @invariant()
    def consistent(self):
        if not hasattr(self, "t"):
            return
        locks: dict[int, int] = {}
        for node, _ in self.locks:
            locks[node.node_id] = locks.get(node.node_id, 0) + 1
        held = self.t.check_invariants(locks)
        assert sorted(held) == sorted(self.model.values()), "cached blocks differ from the model"
        assert self.t.total_size == len(self.model) * self.bs


TestTreeMachine = TreeMachine.TestCase
TestTreeMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
