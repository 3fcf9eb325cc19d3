"""Iteration-level (continuous) batching, FCFS, as in vLLM v1 and Orca.

Each step:
  1. every running sequence grows by one token (allocate 1); when memory is short, the most
     recently admitted request is preempted (recompute: its blocks are freed and it returns
     to the front of the queue) until the growth fits or the growing request itself goes;
  2. if nothing was preempted, waiting requests are admitted in arrival order while the
     allocator accepts them and the caps allow (`max_num_seqs` sequences,
     `max_num_batched_tokens` new tokens per step); a refusal by the allocator marks the step
     as memory-limited (the steps Fig. 2 of the PagedAttention paper averages over);
  3. memory usage is recorded and the backend prices the step;
  4. requests that produced their last token are freed; beams are pruned.

Parallel sampling forks n - 1 sequences from the prefilled prompt. Beam search keeps
`beam_width` beams; after every step each beam's parent is drawn uniformly at random (seeded)
from the current beams, beams nobody drew are freed and beams drawn several times fork: a
random stand-in for score-based pruning, which keeps beams closer together than real scores do
(see the README). A fork the allocator refuses (static allocators copy) leaves the group with
fewer beams and is counted in `num_forks_refused`. A preempted group is resumed sequence by
sequence: each one recomputes its own prompt and outputs (sharing returns only through the
prefix cache).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from allocators.base import KVAllocator
from engine.metrics import StepLog
from engine.sequence import Group, Seq
from workloads.errors import KvbenchError
from workloads.request import Request
from workloads.tokens import GENERATED

StepTime = Callable[[int, int, int, float, int], float]
# prefill tokens, cached tokens, query-key pairs, logical tokens, memory-limited, admitted
_NO_ADMISSION: tuple = (0, 0, 0.0, 0, False, ())
MAX_STRETCH = 4096  # steps one decode_steps call may cover


@dataclass
class EngineLimits:
    max_num_seqs: int = 256
    """Running sequences at most."""
    max_num_batched_tokens: int | None = None
    """New tokens per step at most (prefill + decode); None: no cap."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise KvbenchError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise KvbenchError("max_num_batched_tokens must be >= 1 or null")


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
        step_time: StepTime,
        limits: EngineLimits | None = None,
        seed: int = 0,
        on_finish: Callable[[int], None] | None = None,
        multi_step: bool = True,
    ) -> None:
        """
        Args:
            multi_step: run stretches of decode-only steps (no arrival, admission, finish or
                beam pruning) through one `decode_steps` call; the step log is the same.
        """
        self.multi_step = multi_step
        self.alloc = allocator
        self.step_time = step_time
        self.limits = limits or EngineLimits()
        self.rng = np.random.default_rng(seed)
        self.on_finish = on_finish
        self._next_seq_id = 0

    # --- sequences -----------------------------------------------------------------------
    def _new_seq(self, req: Request) -> Seq:
        self._next_seq_id += 1
        sid = self._next_seq_id
        return Seq(sid, req.prompt_len, req.prompt_len + req.output_len, req.tokens(sid))

    def _fork(self, parent: Seq, at: int) -> Seq | None:
        self._next_seq_id += 1
        sid = self._next_seq_id
        tokens = parent.tokens.fork(at, (GENERATED, sid))
        child = Seq(sid, parent.prompt_len, parent.final_len, tokens)
        return child if self.alloc.fork(parent.seq_id, child) is not None else None

    def _admit(self, g: Group) -> bool:
        """Allocate every sequence of g (atomically); False when memory is short."""
        alloc = self.alloc
        n = g.resume_tokens()
        fresh = not g.seqs
        seqs = [self._new_seq(g.req)] if fresh else g.seqs
        done: list[Seq] = []
        cached = 0
        for s in seqs:
            out = alloc.allocate(s, n)
            if out is None:
                break
            done.append(s)
            cached += out.num_cached_tokens
        if fresh and len(done) == 1:
            while len(done) < g.num_seqs and (child := self._fork(done[0], n)) is not None:
                done.append(child)
        if len(done) < g.num_seqs:
            for s in done:
                alloc.free(s.seq_id)
            return False
        g.seqs = done
        g.num_cached_tokens += cached
        g.num_computed_tokens += (n if fresh else n * len(done)) - cached
        return True

    def _preempt(self, g: Group, step: int) -> None:
        if g in self._beams:
            self._beams.remove(g)
        for s in g.seqs:
            self.alloc.free(s.seq_id)
        g.num_out += step - g.base  # tokens produced by the end of the previous step
        g.finish_step = -1
        g.num_preemptions += 1

    # --- the step loop ---------------------------------------------------------------------
    def run(self, requests: Sequence[Request]) -> EngineResult:
        """Serve `requests` to the end; one StepLog row per step."""
        self._validate(requests)
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
        decode, usage, step_time = self.alloc.decode, self.alloc.usage, self.step_time
        finish_at, log = self._finish_at, self._result.steps
        log_row = log.values.extend
        clock, step = 0.0, 0
        next_arrival = pending[0].arrival_s if pending else float("inf")
        while pending or waiting or running:
            if not running and not waiting:
                clock = max(clock, next_arrival)  # idle: jump to the next arrival
            if clock >= next_arrival:
                next_arrival = self._arrive(clock)
            seqs = self._seqs
            if self.multi_step and seqs and not waiting and not self._beams:
                done, clock = self._stretch(step, clock, next_arrival)
                if done:
                    step += done
                    if step - 1 in finish_at:
                        self._finish(step - 1, clock)
                    continue
            preempted = 0
            if seqs:  # 1. decode growth
                i = decode(seqs)
                if i < len(seqs):
                    preempted = self._preempt_for(i, step)
            num_decode = len(self._seqs)
            batch = _NO_ADMISSION
            if waiting and not preempted:  # 2. admission
                batch = self._admit_waiting(step, num_decode)
            if not running:
                if not pending:
                    raise KvbenchError(self._never_fits(waiting[0]))
                clock = max(clock, next_arrival)
                continue
            num_prefill, prefill_cached, prefill_pairs, admitted_logical, mem_limited, new = batch
            u = usage()  # 3. account and price the step
            dt = step_time(
                num_prefill,
                num_decode,
                u.logical_tokens - admitted_logical,
                prefill_pairs,
                prefill_cached,
            )
            log_row((clock, dt, len(running), len(self._seqs), len(waiting), num_prefill,
                     num_decode, mem_limited, preempted, *u))  # fmt: skip
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
        durations = []
        end = clock
        while len(durations) < k_max and end < next_arrival:
            logical += num
            durations.append(self.step_time(0, num, logical, 0.0, 0))
            end += durations[-1]
        if len(durations) < 2:
            return 0, clock
        usages = self.alloc.decode_steps(seqs, len(durations))
        if usages is None:
            return 0, clock
        log_row, num_running = self._result.steps.values.extend, len(self._running)
        for dt, u in zip(durations, usages):
            log_row((clock, dt, num_running, num, 0, 0, num, False, 0, *u))
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
            self._preempt(victim, step)
            self._waiting.appendleft(victim)
            self._result.num_preemptions += 1
            preempted += 1
            del seqs[len(seqs) - len(victim.seqs) :]
            if i < len(seqs):
                i = self.alloc.decode(seqs, i)
        return preempted

    def _admit_waiting(self, step: int, num_decode: int) -> tuple:
        """Admit waiting requests in order while memory and the caps allow."""
        waiting, seqs = self._waiting, self._seqs
        budget = (self.limits.max_num_batched_tokens or 1 << 62) - num_decode
        num_prefill = prefill_cached = admitted_logical = 0
        prefill_pairs = 0.0
        mem_limited = False
        admitted: list[Group] = []
        while waiting and len(seqs) + waiting[0].num_seqs <= self.limits.max_num_seqs:
            g = waiting[0]
            n = g.resume_tokens()
            if n * max(len(g.seqs), 1) > budget and (admitted or num_decode):
                break  # a prompt over the cap runs alone (no chunked prefill)
            cached0, computed0 = g.num_cached_tokens, g.num_computed_tokens
            if not self._admit(g):
                mem_limited = True
                break
            waiting.popleft()
            computed = g.num_computed_tokens - computed0
            cached = g.num_cached_tokens - cached0
            budget -= computed
            num_prefill += computed
            prefill_cached += cached
            prefill_pairs += computed * (cached + computed / 2)
            admitted_logical += n * len(g.seqs)
            g.base = step
            g.finish_step = step + g.req.output_len - g.num_out - 1
            if g.finish_step not in self._finish_at:
                heapq.heappush(self._finish_heap, g.finish_step)
            self._finish_at.setdefault(g.finish_step, []).append(g)
            self._running.append(g)
            seqs.extend(g.seqs)
            admitted.append(g)
            if g.req.beam_width > 1:
                self._beams.append(g)
        return num_prefill, prefill_cached, prefill_pairs, admitted_logical, mem_limited, admitted

    def _finish(self, step: int, clock: float) -> None:
        done = [g for g in self._finish_at.pop(step) if g.finish_step == step]
        if not done:
            return  # all were preempted since
        for g in done:
            for s in g.seqs:
                self.alloc.free(s.seq_id)
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
        """Redraw g's beams: each new beam continues a uniformly drawn current one."""
        k = len(g.seqs)
        counts = np.bincount(self.rng.integers(0, k, g.req.beam_width), minlength=k)
        stored = g.req.prompt_len + g.num_out + (step - g.base + 1) - 1
        keep = [s for s, c in zip(g.seqs, counts) if c]
        for s, c in zip(g.seqs, counts):
            if not c:
                self.alloc.free(s.seq_id)
        new = list(keep)
        for s, c in zip(keep, counts[counts > 0]):
            for _ in range(c - 1):
                child = self._fork(s, stored)
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
