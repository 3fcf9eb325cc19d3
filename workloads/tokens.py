"""Token ids of a sequence, described by segments instead of stored one by one.

A *source* is a deterministic pseudo-random token stream named by a pair of ints
(kind, ident): a Mooncake hash id, a shared system prompt, one request's own prompt, one
sequence's generated tokens. A sequence's tokens are consecutive pieces of sources:

    position   0          512         1024            1500
               | src (2,0) | src (2,7) | src (2,9)[:476] | gen (4, seq_id) ... (open ended)

Two sequences hold the same tokens over a range exactly when the same source pieces cover it,
so `block_key` (what the prefix cache hashes and re-checks) names those pieces rather than
materializing ids. `ids` materializes real token ids when a model needs them.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence

import numpy as np

Source = tuple[int, int]

# Source kinds.
UNIQUE = 1  # a request's own prompt tokens
MOONCAKE = 2  # one 512-token Mooncake block, by hash id
SYSTEM = 3  # a shared system prompt / few-shot prefix
GENERATED = 4  # the output tokens of one sequence


class Tokens:
    """Pieces (start position, source, offset in source); the last piece is open ended."""

    __slots__ = ("_offsets", "_sources", "_starts")

    def __init__(self, pieces: Sequence[tuple[int, Source, int]]) -> None:
        if not pieces or pieces[0][0] != 0:
            raise ValueError("token pieces must start at position 0")
        self._starts = [p[0] for p in pieces]
        self._sources = [p[1] for p in pieces]
        self._offsets = [p[2] for p in pieces]

    @classmethod
    def from_chunks(cls, chunks: Sequence[tuple[Source, int]], tail: Source) -> Tokens:
        """Chunks (source, length) from position 0, then `tail` (open ended)."""
        pieces: list[tuple[int, Source, int]] = []
        pos = 0
        for src, length in chunks:
            if length > 0:
                pieces.append((pos, src, 0))
                pos += length
        pieces.append((pos, tail, 0))
        return cls(pieces)

    def fork(self, at: int, tail: Source) -> Tokens:
        """The first `at` tokens of this sequence, then `tail`."""
        i = bisect.bisect_left(self._starts, at)
        pieces = list(zip(self._starts[:i], self._sources[:i], self._offsets[:i]))
        return Tokens([*pieces, (at, tail, 0)])

    def block_key(self, start: int, end: int) -> Hashable:
        i = bisect.bisect_right(self._starts, start) - 1
        key = []
        while start < end:
            stop = self._starts[i + 1] if i + 1 < len(self._starts) else end
            piece_end = min(end, stop)
            off = self._offsets[i] + start - self._starts[i]
            key.append((self._sources[i], off, piece_end - start))
            start = piece_end
            i += 1
        return key[0] if len(key) == 1 else tuple(key)

    def block_keys(self, first: int, last: int, block_size: int) -> list[Hashable]:
        """[block_key(i * block_size, (i + 1) * block_size) for i in range(first, last)]:
        the blocks inside one piece in one comprehension (the prefix cache hashes them all)."""
        starts, bs = self._starts, block_size
        if first * bs >= starts[-1]:  # all in the open-ended last piece (generated tokens)
            src, off = self._sources[-1], self._offsets[-1] + first * bs - starts[-1]
            return [(src, o, bs) for o in range(off, off + (last - first) * bs, bs)]
        out: list[Hashable] = []
        i = first
        while i < last:
            p = bisect.bisect_right(starts, i * bs) - 1
            inside = last if p + 1 == len(starts) else min(last, starts[p + 1] // bs)
            if inside > i:  # blocks i .. inside-1 lie in piece p
                src, off = self._sources[p], self._offsets[p] + i * bs - starts[p]
                out += [(src, o, bs) for o in range(off, off + (inside - i) * bs, bs)]
                i = inside
            else:  # the block spans a piece boundary
                out.append(self.block_key(i * bs, (i + 1) * bs))
                i += 1
        return out

    def runs(self, start: int, end: int) -> tuple[tuple[Source, int, int], ...]:
        """Tokens [start, end) as runs (source, offset, length), in order (the radix tree's
        keys). Adjacent pieces never continue one another, so equal tokens give equal runs."""
        if end <= start:
            return ()
        key = self.block_key(start, end)
        return (key,) if isinstance(key[1], int) else key  # type: ignore[index, return-value]

    def ids(self, start: int, end: int, vocab_size: int) -> np.ndarray:
        """Token ids [start, end) as int64, each source a fixed pseudo-random stream: one
        vectorized pass however many pieces (a beam re-forked every step holds one per step)."""
        lo = bisect.bisect_right(self._starts, start) - 1
        hi = bisect.bisect_left(self._starts, end)  # pieces lo..hi-1 overlap [start, end)
        bounds = np.clip(np.array([*self._starts[lo + 1 : hi], end], np.int64), start, end)
        first = np.concatenate([[start], bounds[:-1]])  # each piece's first position
        counts = bounds - first
        off = np.array(self._offsets[lo:hi], np.int64) + first - self._starts[lo:hi]
        seeds = np.array([_seed(src) for src in self._sources[lo:hi]], np.uint64)
        x = ranges(off, counts).astype(np.uint64) + np.repeat(seeds, counts)
        return _mix(x, vocab_size)


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """arange(s, s + c) for each (s, c), concatenated, as int64 (one pass, no Python loop)."""
    counts = np.asarray(counts, np.int64)
    before = np.cumsum(counts) - counts  # where each range begins in the output
    shift = np.repeat(np.asarray(starts, np.int64) - before, counts)
    return np.arange(counts.sum(), dtype=np.int64) + shift


def _seed(src: Source) -> int:
    return (src[0] * 0x9E3779B97F4A7C15 + src[1] * 0xBF58476D1CE4E5B9) % (1 << 64)


def _mix(x: np.ndarray, vocab_size: int) -> np.ndarray:
    """A splitmix64 hash of (source seed + position), as token ids below vocab_size."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(vocab_size)).astype(np.int64)
