"""The shapes kvbench-calibrate times, and the driver that times them on a GPU backend.

A point is one step shape; it is run `warmup + repeats` times and each timed step becomes a
profile row (engine/backends/profile.py). Every batch is built the way the engine builds it,
so block tables, slots and copies are the allocator's own:

    decode (batch, context)     sequences allocated at `context` tokens on average
                                (`allocate`), then grown one token per step (`decode`);
                                ragged by default - lengths spread evenly over [context / 2,
                                3 context / 2], as in a served batch, so kernels do not take
                                their equal-length paths and some sequence crosses into a new
                                block in most steps. Their KV is never written by a prefill
                                (its values do not change the time)
    prefill (tokens, cached, n) n sequences of cached + tokens/n tokens (`allocate`); each step
                                computes positions [cached, cached + tokens/n) of each
                                (`StepBatch.add_prefill`, as an admission with a prefix hit)
    fork                        the decode sequences are forked first (`GroupMemory.fork`,
                                `allocate.fork`): the step's growth copies what they share
                                (copy-on-write of the partial last block; a static range)
    swap (tokens)               a request of `tokens` held beside the decode batch is swapped
                                out in one step and back in the next (`GroupMemory.preempt`
                                and `admit`, preemption=swap)

A point whose sequences the KV budget cannot hold is skipped and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from allocators.base import KVAllocator
from engine.backends.base import Backend, StepBatch
from engine.groups import GroupMemory
from engine.sequence import Group, Seq
from workloads.request import Request

Row = tuple[float, ...]  # FEATURES, duration_s, host_s, kernel_s


@dataclass(frozen=True)
class Point:
    decode: tuple[int, int] = (0, 0)
    """(sequences, tokens each holds before the first timed step)."""
    prefill: tuple[int, int, int] = (0, 0, 0)
    """(new tokens of the step, cached tokens before each sequence's new ones, sequences)."""
    fork: bool = False
    swap: int = 0
    """Tokens of the request swapped out and in on alternate steps."""

    def longest(self, steps: int, ragged: bool = True) -> int:
        """Tokens of the point's longest sequence after `steps` steps."""
        tokens, cached, n = self.prefill
        lengths = contexts(*self.decode, ragged and not self.fork) or [0]
        return max(max(lengths) + steps, cached + tokens // max(n, 1), self.swap + 1)

    def label(self) -> str:
        parts = []
        if self.decode[0]:
            parts.append(f"decode {self.decode[0]}x{self.decode[1]}")
        if self.prefill[0]:
            t, c, n = self.prefill
            parts.append(f"prefill {t} in {n} seq(s) after {c} cached")
        if self.fork:
            parts.append("forked")
        if self.swap:
            parts.append(f"swap {self.swap} tokens")
        return ", ".join(parts)


class Driver:
    """Runs points on one backend over one allocator; GroupMemory hands out sequence ids."""

    def __init__(self, alloc: KVAllocator, backend: Backend, ragged: bool = True) -> None:
        self.alloc, self.backend, self.ragged = alloc, backend, ragged
        self.batch = StepBatch()
        self.mem = GroupMemory(alloc, self.batch, "swap")
        self._next_req = 0
        self._freed: list[int] = []  # released by the backend in the next step
        self._groups: list[Group] = []
        self._steps = 0

    def measure(self, p: Point, warmup: int, repeats: int) -> list[Row] | None:
        """The timed rows of point p, or None when its sequences do not fit."""
        held: list[Seq] = []
        self._steps = warmup + repeats
        try:
            return self._measure(p, warmup, repeats, held)
        except _NoRoom:
            return None
        finally:
            self._free_all(held)

    def _free_all(self, held: list[Seq]) -> None:
        """Free the point's sequences; a group swapped out last comes back in first (its
        swap-in never runs: the next step's batch starts empty)."""
        in_groups = {s.seq_id for g in self._groups for s in g.seqs}
        for s in held:
            if s.seq_id not in in_groups:
                self.alloc.free(s.seq_id)
        for g in self._groups:
            if g.swapped is not None:
                assert self.mem.admit(g), "the rest is free: its blocks fit again"
            for s in g.seqs:
                self.alloc.free(s.seq_id)
        self._freed += [s.seq_id for s in held]
        self._groups.clear()

    def _measure(self, p: Point, warmup: int, repeats: int, held: list[Seq]) -> list[Row]:
        tokens, cached, n = p.prefill
        prefill = [self._seq(cached + tokens // n, held) for _ in range(n)]
        group = self._swap_group(p.swap, held) if p.swap else None
        lengths = [] if p.fork else contexts(*p.decode, self.ragged)
        decode = [self._seq(n, held) for n in lengths]
        rows = []
        for r in range(warmup + repeats):
            batch = self._start()
            if p.fork:  # fresh parents and children every step: each step copies
                decode = self._forked(p.decode, held)
            if group is not None:
                self._swap(group, r)
            self._decode(decode)
            for s in prefill:
                batch.add_prefill(s, cached, tokens // n)
            dt = self.backend.step(batch)
            if r >= warmup:
                rows.append((*batch.features(), dt, self.backend.last_host_s,
                             self.backend.last_kernel_s))  # fmt: skip
            if p.fork:
                self._release(decode, held)
        return rows

    def _start(self) -> StepBatch:
        batch = self.batch
        batch.clear()
        batch.freed += self._freed
        self._freed.clear()
        batch.decode_seqs, batch.num_decode, batch.decode_context = (), 0, 0
        return batch

    def _decode(self, seqs: list[Seq]) -> None:
        if not seqs:
            return
        batch = self.batch
        if self.alloc.decode(seqs, 0, batch.copies_before) < len(seqs):
            raise _NoRoom
        batch.decode_seqs, batch.num_decode = seqs, len(seqs)
        batch.decode_context = sum(self.alloc.num_tokens(s.seq_id) for s in seqs)

    def _request(self, prompt: int) -> Request:
        """A request that can grow through every step of a point (no more: a static
        allocator reserves its final length, the model backend draws its token ids)."""
        self._next_req += 1
        return Request(self._next_req, 0.0, prompt, self._steps + 1)

    def _seq(self, tokens: int, held: list[Seq]) -> Seq:
        s = self.mem.new_seq(self._request(tokens))
        if self.alloc.allocate(s, tokens) is None:
            raise _NoRoom
        held.append(s)
        return s

    def _forked(self, decode: tuple[int, int], held: list[Seq]) -> list[Seq]:
        parents = [self._seq(decode[1], held) for _ in range(decode[0])]
        children = []
        for s in parents:
            child = self.mem.fork(s, decode[1], self.batch.copies_after)
            if child is None:
                raise _NoRoom
            held.append(child)
            children.append(child)
        return parents + children

    def _release(self, seqs: list[Seq], held: list[Seq]) -> None:
        for s in seqs:
            self.alloc.free(s.seq_id)
            self._freed.append(s.seq_id)
            held.remove(s)

    def _swap_group(self, tokens: int, held: list[Seq]) -> Group:
        g = Group(self._request(tokens))
        if not self.mem.admit(g):
            raise _NoRoom
        self.batch.clear()  # admitted, never prefilled: only its blocks move
        held.extend(g.seqs)
        self._groups.append(g)
        return g

    def _swap(self, g: Group, r: int) -> None:
        """Even steps swap the group out, odd steps back in (its newest token a prefill)."""
        if g.swapped is None:
            self.mem.preempt(g)  # its sequences are listed as freed, as in the engine
        elif not self.mem.admit(g):
            raise _NoRoom


def contexts(num_seqs: int, mean: int, ragged: bool) -> list[int]:
    """Lengths of `num_seqs` sequences averaging `mean` tokens: all equal, or (ragged)
    spread evenly over [mean / 2, 3 mean / 2] with the remainder on the shortest."""
    if not ragged or num_seqs < 2:
        return [mean] * num_seqs
    step = mean / (num_seqs - 1)
    out = [max(1, round(mean / 2 + i * step)) for i in range(num_seqs)]
    out[0] += mean * num_seqs - sum(out)
    return out


class _NoRoom(Exception):
    """The KV budget cannot hold the point's sequences."""


def run_grid(
    driver: Driver,
    points: list[Point],
    warmup: int,
    repeats: int,
    progress: Callable[[Point, list[Row] | None], None],
) -> tuple[list[Row], list[int]]:
    """Every point's rows and the index of the point each row measured."""
    rows: list[Row] = []
    point_ids: list[int] = []
    for i, p in enumerate(points):
        got = driver.measure(p, warmup, repeats)
        progress(p, got)
        for row in got or []:
            rows.append(row)
            point_ids.append(i)
    return rows, point_ids
