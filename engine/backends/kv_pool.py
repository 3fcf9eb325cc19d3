"""KV memory on the GPU in the allocator's own layout, and the sequences' metadata there.

    paged (paged, prefix):  k, v  [num_layers, num_blocks + 1, block_size, kv_heads, head_dim]
    contiguous (static):    k, v  [num_layers, num_slots + 1, kv_heads, head_dim]
                            (block 0 / slot 0 is the null block, never handed out)

Ids are the allocator's: a paged block id indexes axis 1, a static slot id too (a static
sequence's "block table" is its slot range). Copies and swaps are runs (src, dst, n) of those
units, done for every layer at once (a copy: one Triton kernel over every unit and layer).
Host memory for swapped blocks is a pinned pool indexed by the engine's host block ids,
unit-major ([units, num_layers, ...]: a run of units is one contiguous range there), grown
on demand. A swap moves each run with one DMA between that
range and a unit-major staging copy on the GPU, in stream order (no host sync: a block freed
by a swap-out is rewritten only by kernels queued after the copy).

`SeqRows` keeps each live sequence's block table (or first slot) in one row of a GPU table
and updates it incrementally: per step only the entries that changed since the last step
(new blocks, a copy-on-write tail, a new sequence) travel to the GPU, in one scatter. A batch
then reads `table[rows]`: nothing is rebuilt from Python lists per step (vAttention measured
vLLM's block-table preparation at 30% of a decode iteration).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from allocators.base import KVAllocator, Run
from kernels.cache_ops import copy_blocks
from workloads.tokens import ranges


def run_pairs(runs: Sequence[Run]) -> np.ndarray:
    """Runs (src, dst, n) as int64 [units, 2] (src, dst) of every unit they move."""
    src, dst, n = np.asarray(runs, dtype=np.int64).reshape(-1, 3).T
    return np.stack([ranges(src, n), ranges(dst, n)], 1)


class KVPool:
    """K and V of every layer, in one tensor each; per-layer views for the kernels."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        contiguous: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        unit = (num_kv_heads, head_dim) if contiguous else (block_size, num_kv_heads, head_dim)
        shape = (num_layers, num_blocks + 1, *unit)
        k = torch.empty(shape, dtype=dtype, device=device)
        v = torch.empty(shape, dtype=dtype, device=device)
        self._adopt(k, v, [(k[i], v[i]) for i in range(num_layers)])

    def _adopt(
        self, k: torch.Tensor, v: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Units (what copies and swaps move) k, v [num_layers, units, ...]; the kernels'
        per-layer tensors `layers` (views of k and v here; the virtual rows of vmm_pool)."""
        self.k, self.v, self.layers, self.device = k, v, layers, k.device
        self._host_k = self._host_v = torch.empty((0, k.shape[0], *k.shape[2:]), dtype=k.dtype)

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def copy(self, runs: Sequence[Run]) -> None:
        """Copy-on-write and fork copies: units src.. onto dst.., every layer, in one kernel
        (the allocators copy into fresh units only: no destination is also a source)."""
        if not runs:
            return
        pairs_np = run_pairs(runs)
        dst = pairs_np[:, 1]
        if np.unique(dst).size < dst.size or np.isin(dst, pairs_np[:, 0]).any():
            raise ValueError(f"copies {list(runs)}: a unit is written twice or read and written")
        pairs = torch.from_numpy(pairs_np)
        if self.device.type == "cuda":
            pairs = pairs.pin_memory().to(self.device, non_blocking=True)
        copy_blocks(self.k, self.v, pairs)

    def swap_out(self, runs: Sequence[Run]) -> None:
        """(device unit, host unit, n) runs to host memory."""
        if not runs:
            return
        self._grow_host(max(h + n for _, h, n in runs))
        for d, h, n in runs:
            for dev, host in ((self.k, self._host_k), (self.v, self._host_v)):
                staged = dev[:, d : d + n].transpose(0, 1).contiguous()
                host[h : h + n].copy_(staged, non_blocking=True)

    def swap_in(self, runs: Sequence[Run]) -> None:
        """(host unit, device unit, n) runs back to the device."""
        for h, d, n in runs:
            for dev, host in ((self.k, self._host_k), (self.v, self._host_v)):
                staged = host[h : h + n].to(self.device, non_blocking=True)
                dev[:, d : d + n] = staged.transpose(0, 1)

    def _grow_host(self, units: int) -> None:
        have = self._host_k.shape[0]
        if units <= have:
            return
        if self.device.type == "cuda":  # the copy into the old pool may still be in flight
            torch.cuda.current_stream(self.device).synchronize()
        new = max(units, 2 * have)
        pin = self.device.type == "cuda"
        for name in ("_host_k", "_host_v"):
            old = getattr(self, name)
            grown = torch.empty((new, *old.shape[1:]), dtype=old.dtype, pin_memory=pin)
            grown[:have] = old
            setattr(self, name, grown)


class SeqRows:
    """seq_id -> a row of a GPU table holding its block table (paged) or first slot. Row 0 is
    nobody's and stays zero (the null row: padded graph rows read it)."""

    def __init__(self, device: torch.device, contiguous: bool) -> None:
        self.device, self.contiguous = device, contiguous
        self.table = torch.zeros((64, 1 if contiguous else 64), dtype=torch.int32, device=device)
        self._row: dict[int, int] = {}
        self._free: list[int] = list(range(63, 0, -1))
        self._known: list[tuple[int, int]] = [(0, 0)] * 64  # (entries on the GPU, last entry)

    def release(self, seq_ids: Sequence[int]) -> None:
        for sid in seq_ids:
            row = self._row.pop(sid, None)
            if row is not None:
                self._free.append(row)

    def sync(
        self, seq_ids: Sequence[int], alloc: KVAllocator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of these sequences, the tokens each holds, and the table entries that changed
        since the last step as int64 [3, n] (row, column, block id) for `apply`."""
        rows = np.empty(len(seq_ids), dtype=np.int64)
        lens = np.empty(len(seq_ids), dtype=np.int64)
        upd_rows: list[int] = []
        upd_cols: list[int] = []
        upd_vals: list[int] = []
        row_of, known, contiguous = self._row, self._known, self.contiguous
        block_table, num_tokens = alloc.block_table, alloc.num_tokens
        for i, sid in enumerate(seq_ids):
            table = block_table(sid)
            lens[i] = num_tokens(sid)
            row = row_of.get(sid)
            if row is None:
                row = row_of[sid] = self._new_row()
                have = 0
            else:
                have, last = known[row]
                if have == len(table) and table[-1] == last:
                    rows[i] = row
                    continue
                if have and table[have - 1] != last:  # copy-on-write replaced the tail
                    have -= 1
            rows[i] = row
            if contiguous:
                upd_rows.append(row)
                upd_cols.append(0)
                upd_vals.append(table[0])
            else:
                new = table[have:]
                upd_rows += [row] * len(new)
                upd_cols += range(have, len(table))
                upd_vals += new
            known[row] = (len(table), table[-1])
        updates = np.array([upd_rows, upd_cols, upd_vals], dtype=np.int64).reshape(3, -1)
        if updates.shape[1] and updates[1].max() >= self.table.shape[1]:
            width = max(int(updates[1].max()) + 1, 2 * self.table.shape[1])
            self.table = _grown(self.table, self.table.shape[0], width)
        return rows, lens, updates

    def widen(self, cols: int) -> None:
        """At least this many table columns from now on (a graph gathers rows as wide as its
        own table in one launch)."""
        if not self.contiguous and cols > self.table.shape[1]:
            self.table = _grown(self.table, self.table.shape[0], cols)

    def apply(self, updates: torch.Tensor) -> None:
        """Write `sync`'s changed entries (now on the device) into the table."""
        if updates.shape[1]:
            self.table[updates[0], updates[1]] = updates[2].to(torch.int32)

    def settle(self) -> None:
        """Work left for after the step's launches: none here (vmm_pool.VirtualRows)."""

    def _new_row(self) -> int:
        if not self._free:
            n = self.table.shape[0]
            self.table = _grown(self.table, 2 * n, self.table.shape[1])
            self._known += [(0, 0)] * n
            self._free = list(range(2 * n - 1, n - 1, -1))
        return self._free.pop()


def _grown(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    out = torch.zeros((rows, cols), dtype=t.dtype, device=t.device)
    out[: t.shape[0], : t.shape[1]] = t
    return out
