"""Placement of variable-length slot ranges in one linear slot space [0, capacity).

Three policies, as the static (contiguous) allocator needs them:

- `FirstFit`: the lowest-addressed hole that is large enough.
- `BestFit`: the smallest hole that is large enough (lowest address on ties).
- `Buddy`: a binary buddy system. The space is cut into maximal aligned power-of-two top
  blocks (e.g. 15729 = 8192 + 4096 + 2048 + 1024 + 256 + 64 + 32 + 16 + 1); a request of n
  slots takes a block of 2^ceil(log2 n) slots, split from the smallest larger free block, and
  a freed block merges with its buddy while both are free and inside one top block.

A range's *footprint* is what placement takes from the space: its size for the fits, its
power-of-two block for buddy. Invariant: num_free + sum of live footprints == capacity.
"""

from __future__ import annotations

import bisect
from typing import Literal, Protocol

PlacementName = Literal["first_fit", "best_fit", "buddy"]


class Placement(Protocol):
    capacity: int
    num_free: int

    def place(self, size: int) -> tuple[int, int] | None:
        """Return (start, footprint) of a new range of `size` slots, or None if none fits."""
        ...

    def release(self, start: int) -> None: ...

    def check_invariants(self) -> None: ...


class _Fit:
    """Holes kept sorted by start; neighbours merge on release."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.num_free = capacity
        self._starts: list[int] = [0] if capacity else []
        self._len: dict[int, int] = {0: capacity} if capacity else {}
        self._live: dict[int, int] = {}

    def _choose(self, size: int) -> int | None:
        raise NotImplementedError

    def place(self, size: int) -> tuple[int, int] | None:
        start = self._choose(size)
        if start is None:
            return None
        rest = self._len.pop(start) - size
        i = bisect.bisect_left(self._starts, start)
        if rest:
            self._starts[i] = start + size
            self._len[start + size] = rest
        else:
            del self._starts[i]
        self._live[start] = size
        self.num_free -= size
        return start, size

    def release(self, start: int) -> None:
        size = self._live.pop(start)
        self.num_free += size
        i = bisect.bisect_left(self._starts, start)
        end = start + size
        if i < len(self._starts) and self._starts[i] == end:  # merge with the next hole
            size += self._len.pop(end)
            del self._starts[i]
        if i and (prev := self._starts[i - 1]) + self._len[prev] == start:  # and the previous
            self._len[prev] += size
            return
        self._starts.insert(i, start)
        self._len[start] = size

    def check_invariants(self) -> None:
        spans = sorted(
            [(s, n, "hole") for s, n in self._len.items()]
            + [(s, n, "live") for s, n in self._live.items()]
        )
        assert self._starts == sorted(self._len), "hole index out of sync"
        pos = 0
        for (s, n, kind), nxt in zip(spans, [*spans[1:], None]):
            assert s == pos and n > 0, f"gap or overlap at slot {pos}: {spans}"
            assert not (kind == "hole" and nxt and nxt[2] == "hole"), "unmerged holes"
            pos = s + n
        assert pos == self.capacity, "spans do not cover the slot space"
        assert self.num_free == sum(self._len.values())


class FirstFit(_Fit):
    def _choose(self, size: int) -> int | None:
        return next((s for s in self._starts if self._len[s] >= size), None)


class BestFit(_Fit):
    def _choose(self, size: int) -> int | None:
        fits = [(self._len[s], s) for s in self._starts if self._len[s] >= size]
        return min(fits)[1] if fits else None


class Buddy:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.num_free = capacity
        self._top: list[tuple[int, int]] = []  # (start, order) of the top blocks
        self._free: list[set[int]] = [set() for _ in range(max(capacity, 1).bit_length())]
        self._live: dict[int, int] = {}  # start -> order
        start = 0
        while start < capacity:
            order = (capacity - start).bit_length() - 1
            while start % (1 << order):
                order -= 1
            self._top.append((start, order))
            self._free[order].add(start)
            start += 1 << order

    def _top_order(self, start: int) -> int:
        i = bisect.bisect_right(self._top, (start, 99)) - 1
        return self._top[i][1]

    def place(self, size: int) -> tuple[int, int] | None:
        order = max(size - 1, 0).bit_length()
        have = next((o for o in range(order, len(self._free)) if self._free[o]), None)
        if have is None:
            return None
        start = min(self._free[have])
        self._free[have].remove(start)
        while have > order:  # split, keeping the lower half
            have -= 1
            self._free[have].add(start + (1 << have))
        self._live[start] = order
        self.num_free -= 1 << order
        return start, 1 << order

    def release(self, start: int) -> None:
        order = self._live.pop(start)
        self.num_free += 1 << order
        top = self._top_order(start)
        while order < top and (buddy := start ^ (1 << order)) in self._free[order]:
            self._free[order].remove(buddy)
            start = min(start, buddy)
            order += 1
        self._free[order].add(start)

    def check_invariants(self) -> None:
        spans = sorted(
            [(s, 1 << o) for o, starts in enumerate(self._free) for s in starts]
            + [(s, 1 << o) for s, o in self._live.items()]
        )
        pos = 0
        for s, n in spans:
            assert s == pos and s % n == 0, f"buddy block at {s} misplaced or overlapping"
            pos += n
        assert pos == self.capacity
        assert self.num_free == sum(len(f) << o for o, f in enumerate(self._free))
        for o, starts in enumerate(self._free):
            for s in starts:
                if o < self._top_order(s):
                    assert (s ^ (1 << o)) not in starts, f"unmerged buddies at {s}, order {o}"


def make_placement(name: PlacementName, capacity: int) -> Placement:
    policies: dict[str, type[FirstFit] | type[BestFit] | type[Buddy]] = {
        "first_fit": FirstFit,
        "best_fit": BestFit,
        "buddy": Buddy,
    }
    if name not in policies:
        raise ValueError(f"unknown placement {name!r}; choose one of {sorted(policies)}")
    return policies[name](capacity)
