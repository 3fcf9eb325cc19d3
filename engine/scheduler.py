"""Iteration-level (continuous) batching, FCFS, as in vLLM v1 and Orca.

Each step:
  1. every running sequence grows by one token (allocator `decode`); when memory is short,
     the most recently admitted request is preempted (`recompute`: its blocks are freed;
     `swap`: they move to host memory) and returns to the front of the queue, until the
     growth fits or the growing request itself goes;
  2. if nothing was preempted, waiting requests are admitted (or swapped back) in arrival
     order while the allocator accepts them and the caps allow (`max_num_seqs` sequences,
     `max_num_batched_tokens` new tokens per step); a refusal by the allocator marks the step
     as memory-limited (the steps Fig. 2 of the PagedAttention paper averages over);
  3. memory usage is recorded and the backend runs (or prices) the step: one StepBatch with
     everything the allocator reported (engine/backends/base.py);
  4. requests that produced their last token are freed; beams are pruned.

Parallel sampling forks n - 1 sequences from the prefilled prompt. Beam search keeps
`beam_width` beams; after every step each beam's parent is drawn uniformly at random (seeded)
from the current beams, beams nobody drew are freed and beams drawn several times fork: a
random stand-in for score-based pruning, which keeps beams closer together than real scores do
(see the README). A fork the allocator refuses (static allocators copy) leaves the group with
fewer beams and is counted in `num_forks_refused`. A preempted group comes back as a group
(engine/groups.py): swapped back with its sharing, or recomputed and re-forked from its prompt.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from allocators.base import KVAllocator
from engine.backends.base import Backend, StepBatch
from engine.groups import GroupMemory, PreemptionMode
from engine.metrics import StepLog
from engine.sequence import Group, Seq
from workloads.errors import KvbenchError
from workloads.request import Request

MAX_STRETCH = 4096  # steps one decode_steps call may cover


@dataclass
class EngineLimits:
    max_num_seqs: int = 256
    """Running sequences at most."""
    max_num_batched_tokens: int | None = None
    """New tokens per step at most (prefill + decode); None: no cap."""
    preemption: PreemptionMode = "recompute"
    """What a preempted request's KV becomes: freed and recomputed later, or swapped to host."""
    policy: str = "fcfs"
    """Admission order: fcfs, or lpm (longest cached prefix first, as SGLang; engine/groups.py)."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise KvbenchError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise KvbenchError("max_num_batched_tokens must be >= 1 or null")
        if self.preemption not in ("recompute", "swap"):
            raise KvbenchError(f"engine.preemption must be recompute or swap: {self.preemption}")
        if self.policy not in ("fcfs", "lpm"):
            raise KvbenchError(f"engine.policy must be fcfs or lpm, got {self.policy}")


@dataclass
class EngineResult:
    steps: StepLog
    finished: list[Group] = field(default_factory=list)
    num_preemptions: int = 0
    num_forks_refused: int = 0


class Engine:
    def __init__(
        self,
        allocator: KVAllocator,
        backend: Backend,
        limits: EngineLimits | None = None,
        seed: int = 0,
        on_finish: Callable[[int], None] | None = None,
        multi_step: bool = True,
    ) -> None:
        """
        Args:
            multi_step: when the backend allows it, run stretches of decode-only steps (no
                arrival, admission, finish or beam pruning) through one `decode_steps` call;
                the step log is the same.
        """
        self.multi_step = multi_step and backend.multi_step
        self.alloc = allocator
        self.backend = backend
        self.limits = limits or EngineLimits()
        self.rng = np.random.default_rng(seed)
        self.on_finish = on_finish

    # --- the step loop ---------------------------------------------------------------------
    def run(self, requests: Sequence[Request]) -> EngineResult:
        """Serve `requests` to the end; one StepLog row per step."""
        self._validate(requests)
        self._batch = batch = StepBatch()
        self._mem = GroupMemory(self.alloc, batch, self.limits.preemption)
        self._pending = deque(sorted(requests, key=lambda r: r.arrival_s))
        self._waiting: deque[Group] = deque()
        self._running: list[Group] = []  # in admission order
        self._seqs: list[Seq] = []  # their sequences, in the same order
        self._beams: list[Group] = []
        self._finish_at: dict[int, list[Group]] = {}
        self._finish_heap: list[int] = []  # the keys of _finish_at, for the earliest
        self._result = EngineResult(StepLog())
        # NOTE: the loop body is the simulator's hot path (one pass per step); the rare
        # events - arrivals, admissions, preemptions, finishes - live in the methods below.
        pending, waiting, running = self._pending, self._waiting, self._running
        decode, usage = self.alloc.decode, self.alloc.usage
        backend, copies = self.backend, batch.copies_before
        finish_at, log = self._finish_at, self._result.steps
        log_row, timing_row = log.values.extend, log.timing.extend
        timed = not backend.multi_step  # a backend that runs steps measures them
        mem = self._mem
        clock, step = 0.0, 0
        next_arrival = pending[0].arrival_s if pending else float("inf")
        while pending or waiting or running:
            if not running and not waiting:
                clock = max(clock, next_arrival)  # idle: jump to the next arrival
            if clock >= next_arrival:
                next_arrival = self._arrive(clock)
            seqs = self._seqs
            if self.multi_step and seqs and not waiting and not self._beams and not copies:
                done, clock = self._stretch(step, clock, next_arrival)
                if done:
                    step += done
                    if step - 1 in finish_at:
                        self._finish(step - 1, clock)
                    continue
            preempted = 0
            if seqs:  # 1. decode growth
                i = decode(seqs, 0, copies)
                if i < len(seqs):
                    preempted = self._preempt_for(i, step)
            decode_seqs = self._seqs
            num_decode = len(decode_seqs)
            admitted_logical, mem_limited, new = 0, False, ()
            if waiting and not preempted:  # 2. admission
                admitted_logical, mem_limited, new = self._admit_waiting(step, num_decode)
            if not running:
                if not pending:
                    raise KvbenchError(self._never_fits(waiting[0]))
                copies.clear()  # every group was preempted: they copied into freed blocks
                clock = max(clock, next_arrival)
                continue
            u = usage()  # 3. account and run the step
            batch.step, batch.decode_seqs, batch.num_decode = step, decode_seqs, num_decode
            batch.decode_context = u.logical_tokens - admitted_logical
            dt = backend.step(batch)
            log_row((clock, dt, len(running), len(self._seqs), len(waiting), mem_limited,
                     preempted, mem.num_host_blocks, *batch.features(), *u))  # fmt: skip
            if timed:
                timing_row((backend.last_host_s, backend.last_kernel_s))
            batch.clear()
            clock += dt
            if new:
                for g in new:
                    if g.first_token_s < 0:
                        g.first_token_s = clock
            if step in finish_at:  # 4. finish and prune
                self._finish(step, clock)
            if self._beams:
                self._prune_beams(step)
            step += 1
        return self._result

    def _stretch(self, step: int, clock: float, next_arrival: float) -> tuple[int, float]:
        """Run the quiet steps from `step` on in one allocator call: decode only, up to the
        next finish (included) and before the next arrival. Returns (steps run, clock)."""
        heap, finish_at = self._finish_heap, self._finish_at
        while heap and heap[0] not in finish_at:
            heapq.heappop(heap)  # finished already
        k_max = min(heap[0] - step + 1 if heap else MAX_STRETCH, MAX_STRETCH)
        if k_max < 2 or clock >= next_arrival:
            return 0, clock
        seqs = self._seqs
        num = len(seqs)
        logical = self.alloc.usage().logical_tokens
        durations = self.backend.stretch(num, logical, k_max, clock, next_arrival)
        if len(durations) < 2:
            return 0, clock
        usages = self.alloc.decode_steps(seqs, len(durations))
        if usages is None:
            return 0, clock
        log_row, num_running = self._result.steps.values.extend, len(self._running)
        host = self._mem.num_host_blocks
        for dt, u in zip(durations, usages):  # decode only: the context is every token
            log_row((clock, dt, num_running, num, 0, False, 0, host, 0, num, u.logical_tokens,
                     0.0, 0, 0, 0, 0, *u))  # fmt: skip
            clock += dt
        return len(durations), clock

    def _arrive(self, clock: float) -> float:
        """Queue the requests that arrived by `clock`; returns the next arrival time."""
        pending = self._pending
        while pending and pending[0].arrival_s <= clock:
            self._waiting.append(Group(pending.popleft()))
        return pending[0].arrival_s if pending else float("inf")

    def _preempt_for(self, i: int, step: int) -> int:
        """Sequence i could not grow: preempt the latest admissions until the rest grow."""
        seqs, running = self._seqs, self._running
        preempted = 0
        while i < len(seqs):
            victim = running.pop()
            if victim in self._beams:
                self._beams.remove(victim)
            self._mem.preempt(victim)
            victim.num_out += step - victim.base  # tokens produced by the end of the last step
            victim.finish_step = -1
            victim.num_preemptions += 1
            self._waiting.appendleft(victim)
            self._result.num_preemptions += 1
            preempted += 1
            del seqs[len(seqs) - len(victim.seqs) :]
            if i < len(seqs):
                i = self.alloc.decode(seqs, i, self._batch.copies_before)
        return preempted

    def _admit_waiting(self, step: int, num_decode: int) -> tuple:
        """Admit waiting requests in order while memory and the caps allow.

        Returns (logical tokens the admitted hold, memory-limited, the admitted groups).
        """
        waiting, batch = self._waiting, self._batch
        if self.limits.policy == "lpm" and len(waiting) > 1:
            self._mem.order_by_prefix(waiting)
        budget = (self.limits.max_num_batched_tokens or 1 << 62) - num_decode
        admitted_logical = 0
        mem_limited = False
        admitted: list[Group] = []
        seqs = self._seqs
        while waiting and len(seqs) + waiting[0].num_seqs <= self.limits.max_num_seqs:
            g = waiting[0]
            if self._mem.prefill_estimate(g) > budget and (admitted or num_decode):
                break  # a prompt over the cap runs alone (no chunked prefill)
            before = batch.num_prefill
            if not self._mem.admit(g):
                mem_limited = True
                break
            waiting.popleft()
            budget -= batch.num_prefill - before
            admitted_logical += g.resume_tokens() * len(g.seqs)
            g.base = step
            g.finish_step = step + g.req.output_len - g.num_out - 1
            if g.finish_step not in self._finish_at:
                heapq.heappush(self._finish_heap, g.finish_step)
            self._finish_at.setdefault(g.finish_step, []).append(g)
            self._running.append(g)
            if not admitted:  # a new list: the old one is the batch's decode_seqs
                seqs = self._seqs = list(seqs)
            seqs.extend(g.seqs)
            admitted.append(g)
            if g.req.beam_width > 1:
                self._beams.append(g)
        return admitted_logical, mem_limited, admitted

    def _finish(self, step: int, clock: float) -> None:
        done = [g for g in self._finish_at.pop(step) if g.finish_step == step]
        if not done:
            return  # all were preempted since
        freed = self._batch.freed
        for g in done:
            for s in g.seqs:
                self.alloc.free(s.seq_id)
                freed.append(s.seq_id)
            self._running.remove(g)
            if g in self._beams:
                self._beams.remove(g)
            g.finish_s = clock
            self._result.finished.append(g)
        if self.on_finish:
            self.on_finish(len(done))
        self._seqs = [s for g in self._running for s in g.seqs]

    def _prune_beams(self, step: int) -> None:
        for g in self._beams:
            if g.finish_step >= 0:
                self._prune(g, step)
        self._seqs = [s for g in self._running for s in g.seqs]

    def _prune(self, g: Group, step: int) -> None:
        """Redraw g's beams: each new beam continues a uniformly drawn current one.

        Runs after the step: fork copies go to the next step's `copies_before`."""
        k = len(g.seqs)
        counts = np.bincount(self.rng.integers(0, k, g.req.beam_width), minlength=k)
        stored = g.req.prompt_len + g.num_out + (step - g.base + 1) - 1
        keep = [s for s, c in zip(g.seqs, counts) if c]
        for s, c in zip(g.seqs, counts):
            if not c:
                self.alloc.free(s.seq_id)
                self._batch.freed.append(s.seq_id)
        new = list(keep)
        for s, c in zip(keep, counts[counts > 0]):
            for _ in range(c - 1):
                child = self._mem.fork(s, stored, self._batch.copies_before)
                if child is None:
                    self._result.num_forks_refused += 1
                else:
                    new.append(child)
        g.seqs = new

    def _validate(self, requests: Sequence[Request]) -> None:
        cap = self.alloc.capacity
        for r in requests:
            if r.prompt_len + r.output_len - 1 > cap:
                raise KvbenchError(
                    f"request {r.req_id} needs {r.prompt_len + r.output_len - 1} KV slots, more "
                    f"than the whole capacity of {cap}; raise kv_budget_gib or lower max_seq_len"
                )

    def _never_fits(self, g: Group) -> str:
        return (
            f"request {g.req.req_id} ({g.req.prompt_len} + {g.req.output_len} tokens, "
            f"{g.num_seqs} sequence(s)) cannot be placed even in empty memory of "
            f"{self.alloc.capacity} slots under this allocator"
        )
