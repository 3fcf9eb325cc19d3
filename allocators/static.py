"""Static contiguous allocation: the Orca baselines of the PagedAttention paper (section 6.1).

Each sequence gets one contiguous slot range at admission, sized by a reservation policy, and
keeps it for life; it never grows. Slots are numbered 1..capacity (slot 0 is the null slot,
as block 0 is for paged allocators), so the "block table" is a `range` of slot ids:

    slot space  0 |  r1: [##########......]  hole  r2: [#####.........]  slack  ...
                     stored ^     ^ reserved                              ^ buddy rounding

`fork` copies the parent's stored tokens into the child's new range (`Allocation.copies`, in
slots). `swap_out` keeps each range's stored tokens on host (one run per sequence); `swap_in`
places new ranges for them.

Reservation (a_r): `max` = max_seq_len; `pow2` = prompt + next power of two of the output
length (capped at max_seq_len); `oracle` = prompt + output, the true final length.

Accounting (see base.py): a_r counts as token states, reservation and internal fragmentation
as defined there. The buddy slack (footprint - a_r) can serve no other request, so it is
external fragmentation. When an admission fails, every free slot is external fragmentation
until the next free: a static allocator's free slots can serve nothing but a new admission,
and the head-of-line request cannot be placed in them (NOTE: DESIGN.md counts them only when
the free total would fit the request; the PagedAttention paper's Fig. 2 bar for Orca-Max
counts the leftover of 7 x 2048 in 15,729 slots as external, and so do we). A group with
n > 1 sequences is admitted as its first sequence plus forks of it: a refused fork refuses
the admission, and the frees that undo the group's placed sequences keep the slots stranded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from allocators.base import NO_CHANGE, Allocation, MemoryUsage, Run, SeqLike, Swapped
from allocators.placement import PlacementName, make_placement

ReservationName = Literal["max", "pow2", "oracle"]


@dataclass(slots=True)
class _Range:
    start: int  # offset in the slot space; slot ids are start + 1 ...
    size: int  # a_r
    footprint: int
    num_tokens: int  # s_r
    final_len: int  # f_r


class StaticAllocator:
    block_size = 1
    layout = "contiguous"  # one slot range per sequence: GPU backends use contiguous kernels

    def __init__(
        self,
        num_slots: int,
        max_seq_len: int,
        reservation: ReservationName = "max",
        placement: PlacementName = "first_fit",
    ) -> None:
        if reservation not in ("max", "pow2", "oracle"):
            raise ValueError(f"unknown reservation {reservation!r}; choose max, pow2 or oracle")
        if num_slots < 1 or max_seq_len < 1:
            raise ValueError("num_slots and max_seq_len must be positive")
        self.num_blocks = num_slots
        self.max_seq_len = max_seq_len
        self.reservation = reservation
        self.placement = placement
        self._space = make_placement(placement, num_slots)
        self._seqs: dict[int, _Range] = {}
        self._tokens = 0  # sum s_r
        self._committed = 0  # sum min(a_r, f_r)
        self._internal = 0  # sum max(0, a_r - f_r)
        self._slack = 0  # sum footprint - a_r
        self._blocked = False  # the last admission failed and nothing was freed since
        # The group being admitted: its first sequence and the forks of it so far. A fork of
        # it that fails refuses the whole admission; the frees that undo it keep _blocked.
        self._admitting: list[int] = []
        self._undo: set[int] = set()

    @property
    def capacity(self) -> int:
        return self.num_blocks

    def reserve_size(self, prompt_len: int, final_len: int) -> int:
        """a_r for a sequence of this prompt and final length."""
        if self.reservation == "max":
            return self.max_seq_len
        if self.reservation == "oracle":
            return final_len
        output_len = max(final_len - prompt_len, 1)
        return min(prompt_len + (1 << (output_len - 1).bit_length()), self.max_seq_len)

    def _place(self, seq: SeqLike, num_tokens: int) -> _Range | None:
        size = self.reserve_size(seq.prompt_len, seq.final_len)
        if num_tokens > size or seq.final_len > self.max_seq_len:
            raise ValueError(
                f"sequence {seq.seq_id} needs {max(num_tokens, seq.final_len)} slots; "
                f"{self.reservation} reserves {size} (max_seq_len {self.max_seq_len})"
            )
        placed = self._space.place(size)
        if placed is None:
            return None
        r = _Range(placed[0], size, placed[1], num_tokens, seq.final_len)
        self._seqs[seq.seq_id] = r
        self._tokens += num_tokens
        self._committed += min(size, r.final_len)
        self._internal += max(0, size - r.final_len)
        self._slack += r.footprint - size
        return r

    def allocate(self, seq: SeqLike, num_new_tokens: int) -> Allocation | None:
        r = self._seqs.get(seq.seq_id)
        if r is not None:
            if r.num_tokens + num_new_tokens > r.size:
                raise ValueError(f"sequence {seq.seq_id} outgrew its reservation of {r.size}")
            r.num_tokens += num_new_tokens
            self._tokens += num_new_tokens
            return NO_CHANGE
        r = self._place(seq, num_new_tokens)
        self._blocked = r is None
        self._admitting = [] if r is None else [seq.seq_id]
        self._undo.clear()
        if r is None:
            return None
        return Allocation(new_block_ids=(r.start + 1,))

    def decode(
        self, seqs: Sequence[SeqLike], start: int = 0, copies: list[Run] | None = None
    ) -> int:
        """Growth stays inside the reservation: it never copies and never fails."""
        ranges = self._seqs
        for i in range(start, len(seqs)):
            r = ranges[seqs[i].seq_id]
            if r.num_tokens >= r.size:
                raise ValueError(f"sequence {seqs[i].seq_id} outgrew its reservation of {r.size}")
            r.num_tokens += 1
        self._tokens += len(seqs) - start
        return len(seqs)

    def decode_steps(self, seqs: Sequence[SeqLike], num_steps: int) -> list[MemoryUsage] | None:
        ranges = [self._seqs[s.seq_id] for s in seqs]
        # NOTE: the final length, not the reservation, bounds growth (as for paged): tokens past
        # it would make the reservation negative
        if any(r.num_tokens + num_steps > r.final_len for r in ranges):
            return None
        before = self.usage()
        for r in ranges:
            r.num_tokens += num_steps
        self._tokens += num_steps * len(ranges)
        grow = len(ranges)
        return [
            before._replace(
                token_states=before.token_states + t * grow,
                reservation=before.reservation - t * grow,
                logical_tokens=before.logical_tokens + t * grow,
            )
            for t in range(1, num_steps + 1)
        ]

    def fork(self, parent_id: int, child: SeqLike) -> Allocation | None:
        parent = self._seqs[parent_id]
        r = self._place(child, parent.num_tokens)
        admitting = self._admitting[:1] == [parent_id]
        if r is None:
            if admitting:  # the group's admission is refused: its frees will undo it
                self._blocked = True
                self._undo = set(self._admitting)
            return None
        if admitting:
            self._admitting.append(child.seq_id)
        return Allocation((r.start + 1,), copies=((parent.start + 1, r.start + 1, r.num_tokens),))

    def free(self, seq_id: int) -> None:
        r = self._seqs.pop(seq_id)
        self._space.release(r.start)
        self._tokens -= r.num_tokens
        self._committed -= min(r.size, r.final_len)
        self._internal -= max(0, r.size - r.final_len)
        self._slack -= r.footprint - r.size
        if seq_id in self._undo:
            self._undo.discard(seq_id)
        else:
            self._blocked = False
            self._undo.clear()
        self._admitting = []

    def abort(self, seq_ids: Sequence[int]) -> None:
        """A refused group admission: its free slots stay stranded, as after any refusal."""
        for sid in seq_ids:
            self.free(sid)
        self._blocked = True

    def swap_out(self, seq_ids: Sequence[int]) -> Swapped:
        """One host run per sequence: its stored tokens (host blocks are slots here too)."""
        plan: list[Run] = []
        tables: dict[int, tuple[Sequence[int], int]] = {}
        h = 0
        for sid in seq_ids:
            r = self._seqs[sid]
            plan.append((r.start + 1, h, r.num_tokens))
            tables[sid] = (range(h, h + r.num_tokens), r.num_tokens)
            h += r.num_tokens
        for sid in seq_ids:
            self.free(sid)
        return Swapped(tuple(p for p in plan if p[2]), h, tables)

    def swap_in(
        self, swapped: Swapped, seqs: Sequence[SeqLike], num_tokens: int = 0
    ) -> Allocation | None:
        if len(seqs) != len(swapped.tables):
            raise ValueError("swap_in needs exactly the sequences that were swapped out")
        placed: list[_Range] = []
        for seq in seqs:
            n = swapped.tables[seq.seq_id][1]
            r = self._place(seq, max(n, num_tokens))
            if r is None:
                for done in seqs[: len(placed)]:
                    self.free(done.seq_id)
                self._blocked = True
                return None
            placed.append(r)
        self._blocked = False
        back = [
            (swapped.tables[seq.seq_id][0][0], r.start + 1, swapped.tables[seq.seq_id][1])
            for seq, r in zip(seqs, placed)
            if swapped.tables[seq.seq_id][1]
        ]
        return Allocation(tuple(r.start + 1 for r in placed), swapped_in=tuple(back))

    def block_table(self, seq_id: int) -> Sequence[int]:
        r = self._seqs[seq_id]
        return range(r.start + 1, r.start + 1 + r.size)

    def num_tokens(self, seq_id: int) -> int:
        return self._seqs[seq_id].num_tokens

    def usage(self) -> MemoryUsage:
        stranded = self._space.num_free if self._blocked else 0
        return MemoryUsage(
            capacity=self.capacity,
            token_states=self._tokens,
            reservation=self._committed - self._tokens,
            internal_frag=self._internal,
            external_frag=self._slack + stranded,
            free=self._space.num_free - stranded,
            logical_tokens=self._tokens,
            logical_slots=self._committed + self._internal,
        )

    def check_invariants(self) -> None:
        self._space.check_invariants()
        rs = self._seqs.values()
        assert all(0 <= r.num_tokens <= r.size <= r.footprint for r in rs)
        assert self._tokens == sum(r.num_tokens for r in rs)
        assert self._committed == sum(min(r.size, r.final_len) for r in rs)
        assert self._internal == sum(max(0, r.size - r.final_len) for r in rs)
        assert self._slack == sum(r.footprint - r.size for r in rs)
        assert self._space.num_free + sum(r.footprint for r in rs) == self.capacity
        self.usage().check()
