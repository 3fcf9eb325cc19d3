"""The `shadow` backend: KV memory as token identities, checked after every step.

Each device slot (block_id * block_size + offset; a static allocator's slot ids directly)
holds the identity of the token whose K/V it stores - `seq.tokens.block_key(p, p + 1)`, equal
for two sequences exactly when they hold the same token at p - and each host block a list of
them. Every step applies the batch in the order of engine/backends/base.py (swap out, swap in,
copies, writes, copies after) and then checks that every live sequence's slots hold exactly its
tokens: a dropped or misordered copy, a block handed out twice, a lost swap all show up as a
wrong token at a named sequence and position.

    device  [None | k(s1,0) k(s1,1) k(s1,2) None | k(s2,0) ...]   slots, block by block
    host    {host_block: [keys of its block_size slots]}

Step times come from the sim's roofline on the same GPU profile, so `kvbench backend=shadow`
reproduces the sim's numbers (multi-step stretches off) while it checks. For debugging
allocators and the engine on small workloads: memory and time grow with capacity and tokens.
"""

from __future__ import annotations

from collections.abc import Hashable

from allocators.base import KVAllocator, Run
from engine.backends.base import StepBatch
from engine.backends.sim import GpuProfile, SimBackend
from engine.models import ModelSpec
from engine.sequence import Seq


class ShadowBackend:
    name = "shadow"
    multi_step = False
    kernel = "shadow"
    last_host_s = 0.0
    last_kernel_s = 0.0

    def __init__(self, gpu: GpuProfile, model: ModelSpec, allocator: KVAllocator) -> None:
        self.gpu = gpu.name
        self._sim = SimBackend(gpu, model, allocator)
        self.alloc = allocator
        self.bs = allocator.block_size
        self.device: list[Hashable] = [None] * ((allocator.num_blocks + 1) * self.bs)
        self.host: dict[int, list[Hashable]] = {}
        self.live: dict[int, Seq] = {}
        self._keys: dict[int, list[Hashable]] = {}  # seq_id -> its tokens' keys so far
        self.num_checked_tokens = 0

    def step(self, batch: StepBatch) -> float:
        if batch.freed:
            back = {s.seq_id for s, _, _ in batch.prefills}  # freed, then admitted again
            for sid in batch.freed:
                self._keys.pop(sid, None)
                if self.live.pop(sid, None) is not None and sid not in back:
                    self._check_gone(sid)
        bs, device, host = self.bs, self.device, self.host
        for d, h, n in batch.swap_out:
            for j in range(n):
                host[h + j] = device[(d + j) * bs : (d + j + 1) * bs]
        for h, d, n in batch.swap_in:
            for j in range(n):
                device[(d + j) * bs : (d + j + 1) * bs] = host.pop(h + j)
        self._copy(batch.copies_before)
        for s in batch.decode_seqs:
            n = self.alloc.num_tokens(s.seq_id)
            self._write(s, n - 1, n)
        for s, start, n in batch.prefills:
            self._write(s, start, start + n)
        self._copy(batch.copies_after)
        for s in batch.decode_seqs:
            self.live[s.seq_id] = s
        for s, _, _ in batch.prefills:
            self.live[s.seq_id] = s
        self._check(batch.step)
        return self._sim.step(batch)

    def stretch(
        self, num_seqs: int, logical_tokens: int, max_steps: int, start_s: float, until_s: float
    ) -> list[float]:
        raise NotImplementedError("the shadow backend checks every step: no stretches")

    # --- memory ----------------------------------------------------------------------------
    def _slot(self, table, p: int) -> int:  # type: ignore[no-untyped-def]
        return table[p // self.bs] * self.bs + p % self.bs

    def _copy(self, copies: list[Run]) -> None:
        bs, device = self.bs, self.device
        for src, dst, n in copies:
            device[dst * bs : (dst + n) * bs] = device[src * bs : (src + n) * bs]

    def _key(self, s: Seq, p: int) -> Hashable:
        keys = self._keys.setdefault(s.seq_id, [])
        while len(keys) <= p:
            keys.append(s.tokens.block_key(len(keys), len(keys) + 1))
        return keys[p]

    def _write(self, s: Seq, start: int, end: int) -> None:
        table = self.alloc.block_table(s.seq_id)
        for p in range(start, end):
            self.device[self._slot(table, p)] = self._key(s, p)

    # --- checks ----------------------------------------------------------------------------
    def _check(self, step: int) -> None:
        for sid, s in self.live.items():
            n = self.alloc.num_tokens(sid)
            table = self.alloc.block_table(sid)
            self._key(s, n - 1)
            want = self._keys[sid]
            for p in range(n):
                if self.device[self._slot(table, p)] != want[p]:
                    raise AssertionError(
                        f"step {step}: sequence {sid} position {p} (slot "
                        f"{self._slot(table, p)}) holds {self.device[self._slot(table, p)]!r}, "
                        f"not its token {want[p]!r}"
                    )
            self.num_checked_tokens += n

    def _check_gone(self, sid: int) -> None:
        try:
            self.alloc.num_tokens(sid)
        except KeyError:
            return
        raise AssertionError(f"sequence {sid} was reported freed but still holds KV")
