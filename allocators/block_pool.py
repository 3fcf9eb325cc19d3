"""The block pool under every block allocator (vLLM v1's BlockPool): ids, refcounts, free queue.

    ids          1..num_blocks; block 0 is the null block and is never handed out
    ref[b]       the tables (or tree nodes) holding block b; 0 exactly when b is free
    free queue   front -> back: [ handed out first ...            ... returned last ]

`pop`/`take` hand blocks out from the front (refcount 1); `release` puts free blocks back at
the back, or, in the caching pool, those without a cache entry at the front (the prefix cache
puts blocks it can never hit again first); `revive` takes a free block out of the middle (a
cache hit on a freed block). Paged, prefix and radix allocators each own one
pool; a cache policy on top that keeps freed blocks hittable sets `on_reuse`, which hears of
the blocks leaving the queue for reuse (their cached contents are then gone).
"""

from __future__ import annotations

from collections import deque
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
    the front; a hit takes a free block out of the middle; evictions are reported.

    The queue is two plain lists, so that handing out and returning blocks costs what the
    FIFO pool's deque does (an OrderedDict costs 5x that per block):

        queue (front -> back) = reversed(front) ++ the live entries of back[head:]
        front   a stack: the unhashed blocks returned, the last one returned on top
        back    the initial blocks, then the hashed blocks in the order returned; blocks
                leave from `head` on (a slice); a hit on a free block leaves its entry
                behind, dead (`dead[b]` counts the dead entries of b, which all lie before
                b's one live entry, if any)

    Unhashed blocks are never hit (nothing is found in them), and a free block neither gains
    nor loses its hash while free, so hits come from `back` only. Dead entries are skipped
    when they reach the head; they, and the entries before the head, are dropped when they
    outnumber the live ones (linear, amortized O(1)).
    """

    def __init__(
        self,
        num_blocks: int,
        entry: Sequence[object],
        on_reuse: Callable[[list[int]], object],
        on_reuse_one: Callable[[int], object],
    ) -> None:
        """entry[b]: block b's cache entry, None when it has none (it is never hit);
        on_reuse (on_reuse_one): hears of the blocks (the block) with an entry that leave
        the queue for reuse."""
        if num_blocks < 1:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self.ref = [0] * (num_blocks + 1)
        self.entry = entry
        self.on_reuse = on_reuse
        self.on_reuse_one = on_reuse_one
        self.front: list[int] = []
        self.back = list(range(1, num_blocks + 1))
        self.head = 0
        self.dead = [0] * (num_blocks + 1)
        self.num_dead = 0
        self.num_free = num_blocks
        self.num_returned = 0  # blocks released so far: the only way the queue grows

    def __len__(self) -> int:
        return self.num_free

    @property
    def free(self) -> list[int]:
        """The free queue, front first (for checks and tests: built on each call)."""
        dead = list(self.dead)
        live = []
        for b in self.back[self.head :]:
            if dead[b]:
                dead[b] -= 1
            else:
                live.append(b)
        return self.front[::-1] + live

    def _pop_back(self) -> int:
        """The first live entry of `back`, taken off."""
        back, dead, h = self.back, self.dead, self.head
        b = back[h]
        while dead[b]:
            dead[b] -= 1
            self.num_dead -= 1
            h += 1
            b = back[h]
        self.head = h + 1
        return b

    def pop(self) -> int:
        self.num_free -= 1
        if self.front:
            b = self.front.pop()
        else:
            b = self.back[self.head]
            if self.dead[b]:
                b = self._pop_back()
            else:
                self.head += 1
            if self.entry[b] is not None:
                self.on_reuse_one(b)
        self.ref[b] = 1
        return b

    def take(self, n: int) -> list[int]:
        self.num_free -= n
        front, ref = self.front, self.ref
        k = min(n, len(front))
        out = front[len(front) - k :][::-1]  # the top k, top first
        del front[len(front) - k :]
        if n > k:
            h = self.head
            got = self.back[h : h + n - k]
            self.head = h + n - k
            if self.num_dead:
                got = self._skip_dead(got)
            entry = self.entry
            hashed = [b for b in got if entry[b] is not None]
            if hashed:
                self.on_reuse(hashed)
            out += got
        for b in out:
            ref[b] = 1
        return out

    def _skip_dead(self, got: list[int]) -> list[int]:
        """`got`, sliced off `back`, without its dead entries, refilled to its length."""
        dead = self.dead
        live = []
        for b in got:
            if dead[b]:
                dead[b] -= 1
                self.num_dead -= 1
            else:
                live.append(b)
        while len(live) < len(got):
            live.append(self._pop_back())
        return live

    def release(self, blocks: list[int]) -> None:
        """Blocks whose refcount reached 0 go back, in order; those without a cache entry
        to the front (the last of them first)."""
        self.num_returned += len(blocks)
        self.num_free += len(blocks)
        entry = self.entry
        unhashed = [b for b in blocks if entry[b] is None]
        if unhashed:
            self.front += unhashed
            if unhashed == blocks[:1]:  # a sequence's partial last block, freed first
                blocks = blocks[1:]
            else:
                blocks = [b for b in blocks if entry[b] is not None]
        self.back += blocks
        if self.head > 1024 and 2 * self.head > len(self.back):
            del self.back[: self.head]
            self.head = 0

    def revive(self, blocks: list[int]) -> None:
        """Free blocks with a cache entry are held again (the caller sets their refcounts)."""
        dead = self.dead
        for b in blocks:
            dead[b] += 1
        self.num_free -= len(blocks)
        self.num_dead += len(blocks)
        if self.num_dead > 1024 and 2 * self.num_dead > len(self.back) - self.head:
            self.back = self.free[len(self.front) :]
            self.head = 0
            self.dead = [0] * (self.num_blocks + 1)
            self.num_dead = 0

    def check_invariants(self, refs: list[int] | None = None) -> None:
        entry = self.entry
        assert all(entry[b] is None for b in self.front), "a hashed block at the front"
        assert sum(self.dead) == self.num_dead, "dead entries miscounted"
        assert self.num_free == len(self.free), "free blocks miscounted"
        _check(self.free, self.ref, self.num_blocks, refs)


def _check(free: list[int], ref: list[int], num_blocks: int, refs: list[int] | None) -> None:
    """The queue holds exactly the blocks of refcount 0; with `refs` (recounted from the
    holders), the refcounts are exact."""
    assert len(free) == len(set(free)), "a block is in the free queue twice"
    assert ref[0] == 0, "the null block was handed out"
    assert all(ref[b] == 0 for b in free), "a free block is referenced"
    assert len(free) + sum(r > 0 for r in ref) == num_blocks, "free + used != total"
    if refs is not None:
        assert refs == ref, "refcounts differ from the holders"
