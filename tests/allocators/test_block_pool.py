"""The caching block pool (a stack and a deque with dead entries) against a plain list model of
vLLM's free queue: unhashed blocks return to the front, hashed ones to the back, hits leave
from the middle, blocks are handed out from the front."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from allocators.block_pool import CachingBlockPool

NUM_BLOCKS = 8


class Model:
    """The free queue as one list, front first."""

    def __init__(self) -> None:
        self.queue = list(range(1, NUM_BLOCKS + 1))
        self.evicted: list[int] = []  # hashed blocks handed out, in order

    def take(self, n: int, entry: list[object]) -> list[int]:
        out, self.queue = self.queue[:n], self.queue[n:]
        self.evicted += [b for b in out if entry[b] is not None]
        return out

    def release(self, blocks: list[int], entry: list[object]) -> None:
        for b in blocks:
            if entry[b] is None:
                self.queue.insert(0, b)
            else:
                self.queue.append(b)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 7), st.booleans()), max_size=80))
def test_pool_hands_out_blocks_in_the_model_queue_order(ops):
    entry: list[object] = [None] * (NUM_BLOCKS + 1)
    evicted: list[int] = []
    pool = CachingBlockPool(NUM_BLOCKS, entry, evicted.extend, evicted.append)
    model, held = Model(), []
    for op, x, hashed in ops:
        if op == 0 and len(pool):  # take
            n = 1 + x % len(pool)
            expected = model.take(n, entry)
            got = [pool.pop()] if n == 1 else pool.take(n)
            assert got == expected
            held += got
        elif op == 1 and held:  # fill or empty a held block, then free it
            b = held.pop(x % len(held))
            entry[b] = b if hashed else None
            pool.ref[b] = 0
            model.release([b], entry)
            pool.release([b])
        elif op == 2:  # a hit on a free hashed block
            hits = [b for b in model.queue if entry[b] is not None]
            if hits:
                b = hits[x % len(hits)]
                model.queue.remove(b)
                pool.revive([b])
                pool.ref[b] = 1
                held.append(b)
        assert pool.free == model.queue and len(pool) == len(model.queue)
        assert evicted == model.evicted
        pool.check_invariants()


def test_a_take_skips_the_entries_hits_left_behind():
    entry: list[object] = [None] * (NUM_BLOCKS + 1)
    pool = CachingBlockPool(NUM_BLOCKS, entry, lambda blocks: None, lambda b: None)
    assert pool.take(3) == [1, 2, 3]
    entry[1] = entry[2] = 0
    pool.ref[1] = pool.ref[2] = 0
    pool.release([1, 2])
    pool.revive([1])  # its entry in the queue is dead now
    assert pool.take(6) == [4, 5, 6, 7, 8, 2] and len(pool) == 0
    pool.ref[1] = 1
    pool.check_invariants()


def test_dead_entries_are_compacted():
    """Hits on freed blocks that never reach the front leave dead entries behind; they are
    dropped once they outnumber the live ones, and the queue order stays."""
    entry: list[object] = [None] * (NUM_BLOCKS + 1)
    pool = CachingBlockPool(NUM_BLOCKS, entry, lambda blocks: None, lambda b: None)
    a, b = pool.take(2)
    entry[a] = entry[b] = 0
    for _ in range(1500):
        pool.ref[a] = pool.ref[b] = 0
        pool.release([b, a])
        pool.revive([b, a])
        pool.ref[a] = pool.ref[b] = 1
    assert pool.num_dead < 1024 + 2
    assert len(pool.back) - pool.head == NUM_BLOCKS - 2 + pool.num_dead
    pool.ref[a] = pool.ref[b] = 0
    pool.release([a, b])
    assert pool.free == [3, 4, 5, 6, 7, 8, a, b]
    pool.check_invariants()


def test_the_entries_handed_out_are_dropped_in_bulk():
    """Hashed blocks go round the queue many times: the consumed part of `back` is cut off
    once it outgrows the rest, and the order stays the model's."""
    entry: list[object] = [0] * (NUM_BLOCKS + 1)
    pool = CachingBlockPool(NUM_BLOCKS, entry, lambda blocks: None, lambda b: None)
    model = Model()
    for i in range(3000):
        n = 1 + i % NUM_BLOCKS
        got = pool.take(n)
        assert got == model.take(n, entry)
        for b in got:
            pool.ref[b] = 0
        pool.release(got[::-1])
        model.release(got[::-1], entry)
        assert pool.free == model.queue
    assert pool.head < 2 * 1024 + NUM_BLOCKS and len(pool.back) < 4 * 1024
    pool.check_invariants()
