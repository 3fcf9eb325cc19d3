"""The block pool under every block allocator (vLLM v1's BlockPool): ids, refcounts, free queue.

    ids          1..num_blocks; block 0 is the null block and is never handed out
    ref[b]       the tables (or tree nodes) holding block b; 0 exactly when b is free
    free queue   front -> back: [ handed out first ...            ... returned last ]

`pop`/`take` hand blocks out from the front (refcount 1); `release` puts free blocks back at
the back, or, given the cache's block -> entry list, those without an entry at the front (the
prefix cache puts blocks it can never hit again first); `revive` takes a free block out of
the middle (a cache hit on a freed block). Paged, prefix and radix allocators each own one
pool; a cache policy on top that keeps freed blocks hittable sets `on_reuse`, which hears of
the blocks leaving the queue for reuse (their cached contents are then gone).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence


class BlockPool:
    """FIFO: every block returns to the back (paged, radix)."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self.ref = [0] * (num_blocks + 1)
        self.free: deque[int] = deque(range(1, num_blocks + 1))

    def __len__(self) -> int:
        return len(self.free)

    def pop(self) -> int:
        """The block at the front of the free queue, now held once."""
        b = self.free.popleft()
        self.ref[b] = 1
        return b

    def take(self, n: int) -> list[int]:
        popleft, ref = self.free.popleft, self.ref
        out = [popleft() for _ in range(n)]
        for b in out:
            ref[b] = 1
        return out

    def release(self, blocks: list[int]) -> None:
        """Blocks whose refcount reached 0 go back, in order."""
        self.free.extend(blocks)

    def drop(self, blocks: list[int]) -> None:
        """Blocks held once (by one owner) go back to the end of the queue."""
        ref = self.ref
        for b in blocks:
            ref[b] = 0
        self.free.extend(blocks)

    def check_invariants(self, refs: list[int] | None = None) -> None:
        _check(list(self.free), self.ref, self.num_blocks, refs)


class CachingBlockPool:
    """For a prefix cache: freed blocks it can hit again go to the back (LRU), the others to
    the front; a hit takes a free block out of the middle; evictions are reported."""

    def __init__(self, num_blocks: int, on_reuse: Callable[[list[int]], object]) -> None:
        if num_blocks < 1:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self.ref = [0] * (num_blocks + 1)
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks + 1))
        self.on_reuse = on_reuse

    def __len__(self) -> int:
        return len(self.free)

    def pop(self) -> int:
        b = self.free.popitem(False)[0]
        self.ref[b] = 1
        self.on_reuse([b])
        return b

    def take(self, n: int) -> list[int]:
        popitem, ref = self.free.popitem, self.ref
        out = [popitem(False)[0] for _ in range(n)]
        for b in out:
            ref[b] = 1
        if out:
            self.on_reuse(out)
        return out

    def release(self, blocks: list[int], entry: Sequence[object]) -> None:
        """Blocks whose refcount reached 0 go back, in order; those without a cache entry
        (entry[b] is None) to the front."""
        free = self.free
        to_front = free.move_to_end
        for b in blocks:
            free[b] = None
            if entry[b] is None:
                to_front(b, False)

    def revive(self, b: int) -> None:
        """A free block is held again (the caller sets its refcount)."""
        del self.free[b]

    def check_invariants(self, refs: list[int] | None = None) -> None:
        _check(list(self.free), self.ref, self.num_blocks, refs)


def _check(free: list[int], ref: list[int], num_blocks: int, refs: list[int] | None) -> None:
    """The queue holds exactly the blocks of refcount 0; with `refs` (recounted from the
    holders), the refcounts are exact."""
    assert len(free) == len(set(free)), "a block is in the free queue twice"
    assert ref[0] == 0, "the null block was handed out"
    assert all(ref[b] == 0 for b in free), "a free block is referenced"
    assert len(free) + sum(r > 0 for r in ref) == num_blocks, "free + used != total"
    if refs is not None:
        assert refs == ref, "refcounts differ from the holders"
