"""The seam between the engine and what executes a step: `StepBatch` in, seconds out.

The engine calls `Backend.step` once per step, after the step's allocations and before its
finishes. A backend is built with the model and the allocator (`backend(model=ModelSpec,
allocator=alloc, ...)`, a Hydra `_target_`) and reads block tables and token counts from the
allocator itself, so a batch carries no per-sequence lists beyond the sequences themselves.

A backend applies a batch in this order (each list in its own order):

    1. freed          drop what it keeps per sequence for these ids (they hold no blocks now)
    2. swap_out       (device_block, host_block, n): device -> host
    3. swap_in        (host_block, device_block, n): host -> device
    4. copies_before  (src, dst, n) device copies: copy-on-write of decode growth and of
                      swap-in growth, beam forks of the previous step
    5. writes         each decode sequence writes its newest token's K/V at position
                      num_tokens - 1; each prefill (seq, start, n) writes positions
                      [start, start + n); then attention for those queries. Per layer,
                      every write comes before any attention: a prefill may find its prefix
                      in blocks another prefill of the same step writes (a prefix hit on a
                      block registered this step), as in vLLM
    6. copies_after   forks made at admission: their source is this step's prefill

Units are the allocator's blocks (a static allocator's block is one slot, its "table" a
range of slot ids). Host blocks live in one host space owned by the engine. A block freed and
handed out again within the step is only ever written after it was read (the order above
makes that so; the shadow-memory test checks it for every allocator).

Sequences of `freed` are gone from the allocator; the other sequences of the batch are live
and `allocator.block_table(seq_id)` / `num_tokens(seq_id)` describe them after the step's
growth. The engine reuses one StepBatch and its lists across steps: a backend must not keep
them past `step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from allocators.base import Run
from engine.sequence import Seq


@dataclass(slots=True)
class StepBatch:
    step: int = 0
    decode_seqs: Sequence[Seq] = ()
    """Sequences that grow by one token this step, in running order (the engine's list)."""
    prefills: list[tuple[Seq, int, int]] = field(default_factory=list)
    """(seq, first new position = tokens already in KV, new tokens) admitted or resumed."""
    copies_before: list[Run] = field(default_factory=list)
    copies_after: list[Run] = field(default_factory=list)
    swap_out: list[Run] = field(default_factory=list)
    swap_in: list[Run] = field(default_factory=list)
    freed: list[int] = field(default_factory=list)
    # The roofline's inputs (the sim backend reads only these and the swaps):
    num_prefill: int = 0
    """New tokens of the prefills (the sum of their third fields)."""
    num_decode: int = 0
    decode_context: int = 0
    """KV tokens the decode tokens attend to, summed over decode sequences."""
    prefill_pairs: float = 0.0
    """Query-key pairs of the prefill tokens (causal)."""
    prefill_cached: int = 0
    """Tokens already in KV that the prefills attend to, summed."""

    def add_prefill(self, seq: Seq, start: int, num_new: int) -> None:
        """Prefill `num_new` tokens of `seq` from position `start` (the `start` tokens before
        it are in KV already, e.g. a prefix-cache hit): the entry and the roofline's counts."""
        self.prefills.append((seq, start, num_new))
        self.num_prefill += num_new
        self.prefill_cached += start
        self.prefill_pairs += num_new * (start + num_new / 2)

    def features(self) -> tuple[int, int, int, float, int, int, int, int]:
        """The step's shape, in engine/metrics.py FEATURES order: what a step-time model
        reads (prefill and decode tokens, KV read, attention pairs, blocks moved)."""
        copied = swapped = 0
        if self.copies_before or self.copies_after:
            copied = sum(n for _, _, n in self.copies_before) + sum(
                n for _, _, n in self.copies_after
            )
        if self.swap_out or self.swap_in:
            swapped = sum(n for _, _, n in self.swap_out) + sum(n for _, _, n in self.swap_in)
        return (
            self.num_prefill, self.num_decode, self.decode_context, self.prefill_pairs,
            self.prefill_cached, len(self.prefills), copied, swapped,
        )  # fmt: skip

    def clear(self) -> None:
        """Empty what the admissions and allocations filled (the engine reuses one batch)."""
        if self.prefills:
            self.prefills.clear()
            self.num_prefill = self.prefill_cached = 0
            self.prefill_pairs = 0.0
        for lst in (self.copies_before, self.copies_after, self.swap_out, self.swap_in):
            if lst:
                lst.clear()
        if self.freed:
            self.freed.clear()


class Backend(Protocol):
    name: str
    multi_step: bool
    """Whether the engine may run decode-only stretches through `stretch` (sim only)."""
    last_host_s: float
    """Host (CPU) seconds of the last step; 0 for the sim."""
    last_kernel_s: float
    """GPU kernel seconds of the last step; 0 for the sim."""
    gpu: str
    """The card (or the sim's profile) the steps are timed on, for the summary."""
    kernel: str
    """What times attention (the sim: "roofline")."""

    def step(self, batch: StepBatch) -> float:
        """Run (or price) one step; the engine's clock advances by the returned seconds."""
        ...

    def stretch(
        self, num_seqs: int, logical_tokens: int, max_steps: int, start_s: float, until_s: float
    ) -> list[float]:
        """Durations of up to `max_steps` decode-only steps of `num_seqs` sequences that
        hold `logical_tokens` tokens before the first: the steps that start before `until_s`,
        the clock starting at `start_s`. Only called when `multi_step` is true."""
        ...
