"""The memory side of request groups: admission, forks and preemption, reported to the backend.

Everything the allocator reports lands in the engine's one StepBatch (engine/backends/base.py
gives the order a backend applies it in):

- admission of a new group: prefill the prompt for its first sequence, fork the others from
  it (paged: shared blocks; static: copies of the prompt, in `copies_after`);
- re-admission after `recompute`: a single sequence recomputes prompt and outputs; a group
  prefills its prompt's full blocks once for its first sequence, forks the others there
  (sharing those blocks again) and each sequence then recomputes the rest of its own tokens.
  Forking at a block boundary means no partial block is shared: nothing is copied from KV
  written in the same step;
- re-admission after `swap`: `swap_in` restores the group's blocks and sharing from host
  memory (`swap_in` runs) and grows each sequence by its newest token, which is written as
  a one-token prefill at its position;
- preemption frees the group's blocks (`recompute`) or moves them to host memory (`swap`):
  the engine owns one host block space (first fit, unbounded) so a backend keeps one pool.

Admission is atomic: on a refusal everything taken is freed and nothing reaches the batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal

from allocators.base import KVAllocator, Run, runs
from allocators.placement import FirstFit
from engine.backends.base import StepBatch
from engine.sequence import Group, Seq
from workloads.request import Request
from workloads.tokens import GENERATED

PreemptionMode = Literal["recompute", "swap"]
LPM_MAX_WAITING = 128
_HOST_SPACE = 1 << 62  # host memory is not limited


class GroupMemory:
    def __init__(self, alloc: KVAllocator, batch: StepBatch, preemption: PreemptionMode) -> None:
        if preemption not in ("recompute", "swap"):
            raise ValueError(f"preemption must be recompute or swap, got {preemption!r}")
        self.alloc, self.batch, self.preemption = alloc, batch, preemption
        self.host = FirstFit(_HOST_SPACE)
        self.num_host_blocks = 0
        """Host blocks holding swapped-out groups now."""
        self._next_seq_id = 0
        # NOTE: a new group refused admission keeps its first sequence for the next attempt,
        # so the allocator sees the same sequence (a prefix cache hashes its prompt once)
        self._refused: dict[int, Seq] = {}

    def new_seq(self, req: Request) -> Seq:
        self._next_seq_id += 1
        sid = self._next_seq_id
        return Seq(sid, req.prompt_len, req.prompt_len + req.output_len, req.tokens(sid))

    def fork(self, parent: Seq, at: int, copies: list[Run]) -> Seq | None:
        """A new sequence continuing `parent`'s `at` (all its) tokens; copies go to `copies`."""
        self._next_seq_id += 1
        sid = self._next_seq_id
        child = Seq(
            sid, parent.prompt_len, parent.final_len, parent.tokens.fork(at, (GENERATED, sid))
        )
        out = self.alloc.fork(parent.seq_id, child)
        if out is None:
            return None
        copies += out.copies
        return child

    def prefill_estimate(self, g: Group) -> int:
        """New tokens the group's admission computes, before cache hits (the token cap)."""
        if g.swapped is not None:
            return len(g.seqs)
        return g.resume_tokens() * max(len(g.seqs), 1)

    def order_by_prefix(self, waiting: deque[Group]) -> None:
        """SGLang's `lpm` policy: the waiting requests, longest cached prefix first (stable:
        arrival order among equals), when the allocator can tell (`prefix_match`) and at most
        LPM_MAX_WAITING wait (SGLang falls back to FCFS beyond 128)."""
        match = getattr(self.alloc, "prefix_match", None)
        if match is None or len(waiting) > LPM_MAX_WAITING:
            return
        ranked = sorted(waiting, key=lambda g: -self._match(g, match))
        waiting.clear()
        waiting.extend(ranked)

    def _match(self, g: Group, match: Callable[[Seq, int], int]) -> int:
        if g.swapped is not None:
            return 0
        if not g.seqs:  # the sequence its admission will use
            first = self._refused.get(g.req.req_id)
            if first is None:
                first = self._refused[g.req.req_id] = self.new_seq(g.req)
            return match(first, g.resume_tokens())
        return match(g.seqs[0], g.resume_tokens())

    # --- admission -------------------------------------------------------------------------
    def admit(self, g: Group) -> bool:
        """Allocate every sequence of g (atomically); False when memory is short."""
        if g.swapped is not None:
            return self._swap_back(g)
        n = g.resume_tokens()
        if not g.seqs:
            return self._admit_new(g, n)
        at = g.req.prompt_len // self.alloc.block_size * self.alloc.block_size
        if len(g.seqs) > 1 and at:
            return self._refork(g, n, at)
        prefills = []
        for s in g.seqs:
            out = self.alloc.allocate(s, n)
            if out is None:
                return self._undo(g.seqs[: len(prefills)])
            prefills.append((s, out.num_cached_tokens, n - out.num_cached_tokens))
        return self._admitted(g, prefills, sum(c for _, c, _ in prefills), [])

    def _admit_new(self, g: Group, n: int) -> bool:
        s = self._refused.pop(g.req.req_id, None) or self.new_seq(g.req)
        out = self.alloc.allocate(s, n)
        if out is None:
            self._refused[g.req.req_id] = s
            return False
        seqs, copies = [s], []
        while len(seqs) < g.num_seqs and (child := self.fork(s, n, copies)) is not None:
            seqs.append(child)
        if len(seqs) < g.num_seqs:
            self._refused[g.req.req_id] = s
            return self._undo(seqs)
        g.seqs = seqs
        hits = out.num_cached_tokens
        return self._admitted(g, [(s, hits, n - hits)], hits, copies)

    def _refork(self, g: Group, n: int, at: int) -> bool:
        first, alloc = g.seqs[0], self.alloc
        out = alloc.allocate(first, at)
        if out is None:
            return False
        done, copies = [first], []
        for s in g.seqs[1:]:
            forked = alloc.fork(first.seq_id, s)
            if forked is None:
                return self._undo(done)
            done.append(s)
            copies += forked.copies
        for s in g.seqs:
            if n > at and alloc.allocate(s, n - at) is None:
                return self._undo(done)
        hits = out.num_cached_tokens
        prefills = [(first, hits, n - hits), *((s, at, n - at) for s in g.seqs[1:])]
        return self._admitted(g, prefills, hits, copies)

    def _swap_back(self, g: Group) -> bool:
        assert g.swapped is not None
        swapped, base = g.swapped
        n = g.resume_tokens()
        out = self.alloc.swap_in(swapped, g.seqs, n)
        if out is None:
            return False
        self.host.release(base)
        self.num_host_blocks -= swapped.num_host_blocks
        g.swapped = None
        b = self.batch
        b.swap_in += [(base + h, d, k) for h, d, k in out.swapped_in]
        b.copies_before += out.copies
        for s in g.seqs:  # the newest token: a decode, in a prefill's clothes
            b.add_prefill(s, n - 1, 1)
        return True

    def _admitted(
        self, g: Group, prefills: list[tuple[Seq, int, int]], hits: int, copies: list[Run]
    ) -> bool:
        """Record a successful admission: its prefills, prefix-cache hits and fork copies."""
        b = self.batch
        for s, cached, computed in prefills:
            b.add_prefill(s, cached, computed)
            g.num_computed_tokens += computed
        g.num_cached_tokens += hits
        b.copies_after += copies
        return True

    def _undo(self, seqs: list[Seq]) -> bool:
        self.alloc.abort([s.seq_id for s in seqs])
        return False

    # --- preemption ------------------------------------------------------------------------
    def preempt(self, g: Group) -> None:
        ids = [s.seq_id for s in g.seqs]
        self.batch.freed += ids
        if self.preemption == "recompute":
            for sid in ids:
                self.alloc.free(sid)
            return
        swapped = self.alloc.swap_out(ids)
        placed = self.host.place(swapped.num_host_blocks)
        assert placed is not None, "the host space is unbounded"
        base = placed[0]
        self.num_host_blocks += swapped.num_host_blocks
        g.swapped = (swapped, base)
        out = _redirect(swapped.runs, self.batch.copies_before)
        self.batch.swap_out += [(d, base + h, k) for d, h, k in out]


def _redirect(plan: tuple[Run, ...], pending: list[Run]) -> tuple[Run, ...]:
    """Swap-out runs that read a block a pending copy has yet to fill read its source instead.

    A group preempted after some of its sequences grew in this step holds copy-on-write
    blocks whose copies come after the swap-out (backends/base.py's order); their sources
    still hold the tokens then.
    """
    if not pending:
        return plan
    src_of = {d + j: s + j for s, d, k in pending for j in range(k)}
    return runs((src_of.get(d + j, d + j), h + j) for d, h, k in plan for j in range(k))
