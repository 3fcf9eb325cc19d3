"""The allocator protocol, its results, and the memory accounting every allocator reports.

An allocator hands out KV slots (token positions of KV memory) to sequences. It manages ids
only: no tensors, no CUDA. The engine holds one allocator and never knows which kind.

Memory accounting (DESIGN.md), in slots, with capacity C, and for each live sequence r:
stored tokens s_r, allocated slots a_r and final length f_r (prompt + output tokens):

    token_states   = sum s_r                    (physical: a shared block counts once)
    reservation    = slots r holds and will still fill
    internal_frag  = slots r holds and will never fill
    external_frag  = free slots that no one can use now (see the static allocator)
    free           = C - the four above

Invariant: the five add up to C after every operation.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


def cdiv(a: int, b: int) -> int:
    """Ceiling division for non-negative ints."""
    return -(-a // b)


class TokenSource(Protocol):
    """The tokens of a sequence, read block by block by the prefix-sharing allocator."""

    def block_key(self, start: int, end: int) -> Hashable:
        """A key equal for two sources exactly when their tokens [start, end) are equal."""
        ...

    def block_keys(self, first: int, last: int, block_size: int) -> list[Hashable]:
        """The block_key of blocks first..last-1 of block_size tokens, in one call."""
        ...

    def runs(self, start: int, end: int) -> tuple[tuple[Hashable, int, int], ...]:
        """Tokens [start, end) as runs (source, offset, length): two tokens are equal exactly
        when their (source, position) are (allocators/token_runs.py)."""
        ...


class SeqLike(Protocol):
    """What an allocator reads of a sequence."""

    @property
    def seq_id(self) -> int: ...
    @property
    def prompt_len(self) -> int: ...
    @property
    def final_len(self) -> int:
        """Prompt plus output tokens (f_r): the slots the sequence can ever ask for."""
        ...

    @property
    def tokens(self) -> TokenSource: ...


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one successful `allocate` or `fork` changed."""

    new_block_ids: tuple[int, ...] = ()
    """Appended to the sequence's block table (for static: the slot range, once)."""
    num_cached_tokens: int = 0
    """Leading prompt tokens whose KV was found in the prefix cache (0 without sharing)."""
    copies: tuple[tuple[int, int, int], ...] = ()
    """(src_block, dst_block, num_blocks) runs the backend must copy (copy-on-write, fork)."""
    swapped_in: tuple[tuple[int, int, int], ...] = ()
    """`swap_in` only: (host_block, device_block, num_blocks) runs to copy back from host
    memory, before `copies` and before the sequences' new tokens are written."""


Run = tuple[int, int, int]
"""(src, dst, num_blocks): blocks src..src+n-1 go to dst..dst+n-1."""


def runs(pairs: Iterable[tuple[int, int]]) -> tuple[Run, ...]:
    """(src, dst) block pairs as runs; consecutive pairs that continue a run join it."""
    out: list[Run] = []
    for src, dst in pairs:
        if out and (last := out[-1])[0] + last[2] == src and last[1] + last[2] == dst:
            out[-1] = (last[0], last[1], last[2] + 1)
        else:
            out.append((src, dst, 1))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Swapped:
    """A group of sequences moved to host memory by `swap_out`: the copy plan and the tables.

    Host blocks are numbered 0..num_host_blocks-1 within the record (the engine places the
    record in its own host space). A device block several sequences of the group shared is
    copied once, and their host tables share its host block, so `swap_in` restores the same
    sharing.
    """

    runs: tuple[Run, ...]
    """(device_block, host_block, num_blocks) runs to copy to host memory."""
    num_host_blocks: int
    tables: Mapping[int, tuple[Sequence[int], int]]
    """seq_id -> (block table in host blocks, tokens stored)."""


NO_CHANGE = Allocation()


class MemoryUsage(NamedTuple):
    """The five memory quantities of DESIGN.md, in slots; they sum to `capacity`.

    A NamedTuple: the engine reads one every step, so it must be cheap to build.
    """

    capacity: int
    token_states: int
    reservation: int
    internal_frag: int
    external_frag: int
    free: int
    logical_tokens: int
    """Sum of every live sequence's stored tokens, counting shared ones once per sequence."""
    logical_slots: int
    """Slots the live sequences would hold without sharing (sum of their table sizes)."""

    def check(self) -> None:
        parts = (self.token_states, self.reservation, self.internal_frag, self.external_frag)
        if min(*parts, self.free) < 0 or sum(parts) + self.free != self.capacity:
            raise AssertionError(f"memory accounting does not add up: {self}")


class KVAllocator(Protocol):
    """One protocol for static, paged and prefix-sharing allocation."""

    block_size: int
    """Tokens per block (static contiguous: 1, the slot granularity)."""
    num_blocks: int
    """Usable blocks; ids 1..num_blocks, block 0 is the reserved null block."""

    @property
    def capacity(self) -> int:
        """Slots the allocator manages: the sum of the five usage quantities."""
        ...

    def allocate(self, seq: SeqLike, num_new_tokens: int) -> Allocation | None:
        """Make room for `num_new_tokens` more tokens of `seq` (admission when it holds none).

        Atomic: returns None and changes nothing when memory is short.
        """
        ...

    def decode(
        self, seqs: Sequence[SeqLike], start: int = 0, copies: list[Run] | None = None
    ) -> int:
        """One more token for each of seqs[start:], in order: the engine's decode step.

        Equivalent to `allocate(s, 1)` for each, stopping at the first that returns None;
        the copies those allocations report are appended to `copies` (when given).
        Returns the index of that sequence, or len(seqs) when all grew.
        """
        ...

    def decode_steps(self, seqs: Sequence[SeqLike], num_steps: int) -> list[MemoryUsage] | None:
        """`num_steps` decode steps of all of seqs at once: the usage after each step.

        The same as calling `decode(seqs)` then `usage()` num_steps times, blocks handed out
        in the same order. Returns None and changes nothing when that might not all fit
        (too few free blocks, a sequence within num_steps of its final length, or a shared
        partial block that would need copying): the caller then steps one at a time.
        """
        ...

    def fork(self, parent_id: int, child: SeqLike) -> Allocation | None:
        """Give `child` the parent's tokens (shared where the allocator can share)."""
        ...

    def free(self, seq_id: int) -> None: ...

    def abort(self, seq_ids: Sequence[int]) -> None:
        """Free sequences whose admission in this step is rolled back (a group that did not
        fit whole): their new KV is never written, so none of it may stay hittable in a
        prefix cache. What they found already in KV (prefix hits) stays cached."""
        ...

    def swap_out(self, seq_ids: Sequence[int]) -> Swapped:
        """Free the device blocks of a group of sequences; return how to keep them on host."""
        ...

    def swap_in(
        self, swapped: Swapped, seqs: Sequence[SeqLike], num_tokens: int = 0
    ) -> Allocation | None:
        """Give `swapped`'s sequences device blocks again (one per host block, same sharing).

        Then every sequence holding fewer than `num_tokens` tokens grows to `num_tokens`, as
        `allocate` would. Atomic: returns None and changes nothing when memory is short.
        The result's `swapped_in` runs say where each host block goes, `new_block_ids` lists
        every device block taken and `copies` the copy-on-write of the growth.
        """
        ...

    def block_table(self, seq_id: int) -> Sequence[int]: ...

    def num_tokens(self, seq_id: int) -> int:
        """Tokens `seq_id` holds KV slots for."""
        ...

    def usage(self) -> MemoryUsage: ...

    def check_invariants(self) -> None:
        """Recompute every counter from scratch; raise AssertionError on any mismatch."""
        ...


class DecodeDefaults:
    """`decode` and `decode_steps` from `allocate` alone: an allocator class that lists this
    as a base needs only the core methods. Allocators with fast paths override both (the
    conformance tests prove them equal to these)."""

    def decode(
        self: KVAllocator, seqs: Sequence[SeqLike], start: int = 0, copies: list[Run] | None = None
    ) -> int:
        for i in range(start, len(seqs)):
            out = self.allocate(seqs[i], 1)
            if out is None:
                return i
            if copies is not None:
                copies.extend(out.copies)
        return len(seqs)

    def decode_steps(
        self: KVAllocator, seqs: Sequence[SeqLike], num_steps: int
    ) -> list[MemoryUsage] | None:
        """None: the engine then steps one at a time (always a valid answer)."""
        return None
