"""Mappers: what backs the virtual rows of the `virtual` KV layout (vattention) with pages.

    phys    [2, num_layers, num_pages + 1, tokens_per_page, kv_heads, head_dim]
            every physical page of every K and V buffer, mapped here once for good (page 0 is
            the null page): copies and swaps, whose units are the allocator's page ids, and
            filling the pool go through it
    rows    2 x num_layers tensors [num_rows * row_tokens, kv_heads, head_dim] (K of every
            layer, then V): the virtual rows the kernels read and write_kv writes
    mapped  (row, slot) -> page: page p backs slot `slot` of row `row` in every buffer at
            once (a page group: one physical page per buffer, as vAttention keeps K and V of
            each layer in separate buffers)

    rows[b]:  row 0 [ p0 | .  | .  ]      . = reserved address space, nothing behind it
              row 1 [ p3 | p7 | .  ]      phys[b]: [ p0 | p1 | ... | pN ]  (the same memory)
              row 2 [ p3 | p5 | .  ]      <- a fork: p3 backs two rows

`CudaMapper` does this with the CUDA virtual memory API (kernels/vmm.py): rows and phys are
two views of the same physical memory. `EmulatedMapper` is the CPU stand-in for tests: plain
tensors with phys the only storage. `load(layer)` fills that layer's rows from phys through
the mapping, NaN in every unmapped token, before the layer runs; `store` writes the tokens the
layer wrote in its rows back to their pages and reloads (so every row mapping a page sees the
write, as aliases do on the GPU). A write outside a mapped page raises (a GPU would fault).

`apply(unmaps, maps)` does one step's mapping work: every unmap first, then every map
(cuMemMap per buffer page, then one cuMemSetAccess per run of adjacent slots), counted and
timed in `stats` (per buffer page: a page group of L layers is 2L pages).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kernels.cache_ops import write_kv
from workloads.errors import KvbenchError

Map = tuple[int, int, int]  # (row, slot, page)


@dataclass(frozen=True, slots=True)
class Geometry:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    num_pages: int  # the allocator's page groups, ids 1..num_pages (0: the null page)
    tokens_per_page: int
    pages_per_row: int
    num_rows: int  # virtual rows, the null row 0 included

    @property
    def num_buffers(self) -> int:
        return 2 * self.num_layers

    @property
    def page_bytes(self) -> int:
        elem = torch.empty(0, dtype=self.dtype).element_size()
        return self.tokens_per_page * self.num_kv_heads * self.head_dim * elem

    @property
    def row_tokens(self) -> int:
        return self.pages_per_row * self.tokens_per_page

    def phys_shape(self) -> tuple[int, ...]:
        return (2, self.num_layers, self.num_pages + 1, self.tokens_per_page,
                self.num_kv_heads, self.head_dim)  # fmt: skip

    def offset(self, row: int, slot: int) -> int:
        """Byte offset of (row, slot) in each buffer's reservation."""
        if not (0 <= row < self.num_rows and 0 <= slot < self.pages_per_row):
            raise IndexError(f"slot {slot} of row {row} is outside the reserved rows")
        return (row * self.pages_per_row + slot) * self.page_bytes


@dataclass(slots=True)
class MapStats:
    num_maps: int = 0  # buffer pages mapped (cuMemMap calls)
    num_unmaps: int = 0
    map_s: float = 0.0  # cuMemMap + cuMemSetAccess
    unmap_s: float = 0.0
    init_s: float = 0.0  # creating the pages and the physical view

    def summary(self) -> dict[str, float]:
        return {"vmm_maps": self.num_maps, "vmm_map_s": self.map_s,
                "vmm_unmaps": self.num_unmaps, "vmm_unmap_s": self.unmap_s,
                "vmm_init_s": self.init_s}  # fmt: skip


def adjacent_runs(maps: Sequence[Map]) -> list[tuple[int, int, int]]:
    """(row, first slot, count) runs of adjacent mapped slots."""
    out: list[tuple[int, int, int]] = []
    for row, slot, _ in sorted(maps):
        if out and out[-1][0] == row and out[-1][1] + out[-1][2] == slot:
            out[-1] = (row, out[-1][1], out[-1][2] + 1)
        else:
            out.append((row, slot, 1))
    return out


class EmulatedMapper:
    """Plain tensors on the CPU; see the module docstring."""

    def __init__(self, g: Geometry, device: torch.device) -> None:
        self.g, self.stats = g, MapStats()
        self.mapped: dict[tuple[int, int], int] = {}
        self.phys = torch.zeros(g.phys_shape(), dtype=g.dtype, device=device)
        n = g.num_rows * g.row_tokens
        shape = (n, g.num_kv_heads, g.head_dim)
        self.rows = [torch.full(shape, float("nan"), dtype=g.dtype, device=device)
                     for _ in range(g.num_buffers)]  # fmt: skip
        self._where = np.full(n, -1, np.int64)  # virtual token -> its token of phys[kv, layer]
        self._index = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))

    def apply(self, unmaps: Sequence[tuple[int, int]], maps: Sequence[Map]) -> None:
        t0, tpp = time.perf_counter(), self.g.tokens_per_page
        for row, slot in unmaps:
            del self.mapped[(row, slot)]
            first = self.g.offset(row, slot) // self.g.page_bytes * tpp
            self._where[first : first + tpp] = -1
        t1 = time.perf_counter()
        for row, slot, page in maps:
            if (row, slot) in self.mapped:
                raise ValueError(f"slot {slot} of row {row} is mapped already")
            self.mapped[(row, slot)] = page
            first = self.g.offset(row, slot) // self.g.page_bytes * tpp
            self._where[first : first + tpp] = np.arange(page * tpp, (page + 1) * tpp)
        virtual = np.flatnonzero(self._where >= 0)
        self._index = (torch.from_numpy(virtual), torch.from_numpy(self._where[virtual]))
        s = self.stats
        s.unmap_s += t1 - t0
        s.map_s += time.perf_counter() - t1
        s.num_unmaps += len(unmaps) * self.g.num_buffers
        s.num_maps += len(maps) * self.g.num_buffers

    def write(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, slots: torch.Tensor
    ) -> None:
        """write_kv at virtual slots of this layer's rows, with the rows loaded first and the
        written tokens stored to their pages after."""
        self.load(layer)
        k, v = self.rows[layer], self.rows[self.g.num_layers + layer]
        write_kv(k_new, v_new, k.unsqueeze(1), v.unsqueeze(1), slots)
        self.store(layer, slots)

    def load(self, layer: int) -> None:
        """Rows of this layer's K and V := their pages (NaN where nothing is mapped)."""
        virtual, phys = self._index
        for kv in (0, 1):
            rows = self.rows[kv * self.g.num_layers + layer]
            rows.fill_(float("nan"))
            rows[virtual] = self.phys[kv, layer].flatten(0, 1)[phys]

    def store(self, layer: int, slots: torch.Tensor) -> None:
        """Tokens written at these virtual slots (< 0: none) go to their pages."""
        s = slots[slots >= 0].cpu().numpy()
        w = self._where[s]
        if (w < 0).any():
            raise AssertionError(f"KV written at virtual slot {s[w < 0][0]}: no page mapped there")
        for kv in (0, 1):
            rows = self.rows[kv * self.g.num_layers + layer]
            self.phys[kv, layer].flatten(0, 1)[torch.from_numpy(w)] = rows[torch.from_numpy(s)]
        self.load(layer)

    def close(self) -> None:
        pass


@dataclass
class _Held:
    """What a CudaMapper must give back (kept apart from it, for the finalizer)."""

    page_bytes: int
    handles: list[list[Any]] = field(default_factory=list)  # [buffer][page]
    ranges: list[tuple[int, int]] = field(default_factory=list)  # reservations (addr, bytes)
    mapped: set[int] = field(default_factory=set)  # addresses with a page mapped

    def close(self) -> None:
        from kernels import vmm

        for addr in self.mapped:
            vmm.unmap(addr, self.page_bytes)
        for handle in (h for buffer in self.handles for h in buffer):
            vmm.release(handle)
        for addr, size in self.ranges:
            vmm.free_range(addr, size)
        self.mapped, self.handles, self.ranges = set(), [], []


class CudaMapper:
    """Physical pages on the GPU, mapped with the CUDA VMM API; see the module docstring."""

    def __init__(self, g: Geometry, device: torch.device) -> None:
        from kernels import vmm

        torch.empty(1, device=device)  # makes the device's primary context current
        dev = device.index if device.index is not None else torch.cuda.current_device()
        gran = vmm.granularity(dev)
        if g.page_bytes % gran:
            raise KvbenchError(
                f"vattention pages of {g.tokens_per_page} tokens x "
                f"{g.page_bytes // g.tokens_per_page} bytes per K/V buffer: CUDA maps whole "
                f"multiples of {gran >> 10} KiB on this GPU; allocator.page_kib must be one "
                "that holds whole tokens"
            )
        self.g, self.stats = g, MapStats()
        self.mapped: dict[tuple[int, int], int] = {}
        self._desc, self._dev = vmm.access(dev), dev
        held = self._held = _Held(g.page_bytes)
        weakref.finalize(self, held.close).atexit = False  # the process exit frees it all
        t = time.perf_counter()
        pb, pages = g.page_bytes, g.num_pages + 1
        held.handles = [[vmm.create(pb, dev) for _ in range(pages)] for _ in range(g.num_buffers)]
        size = g.num_buffers * pages * pb
        base = vmm.reserve(size, pb)
        held.ranges.append((base, size))
        for i, handle in enumerate(h for buffer in held.handles for h in buffer):
            vmm.map_page(base + i * pb, pb, handle)
            held.mapped.add(base + i * pb)
        vmm.set_access(base, size, self._desc)
        self.phys = vmm.as_tensor(base, size, dev).view(g.dtype).view(g.phys_shape())
        size = g.num_rows * g.pages_per_row * pb
        self._bases = [vmm.reserve(size, pb) for _ in range(g.num_buffers)]
        held.ranges += [(b, size) for b in self._bases]
        shape = (g.num_rows * g.row_tokens, g.num_kv_heads, g.head_dim)
        self.rows = [vmm.as_tensor(b, size, dev).view(g.dtype).view(shape) for b in self._bases]
        self.stats.init_s = time.perf_counter() - t

    def apply(self, unmaps: Sequence[tuple[int, int]], maps: Sequence[Map]) -> None:
        from kernels import vmm

        pb, held, s = self.g.page_bytes, self._held, self.stats
        t0 = time.perf_counter()
        for row, slot in unmaps:
            del self.mapped[(row, slot)]
            off = self.g.offset(row, slot)
            for base in self._bases:
                vmm.unmap(base + off, pb)
                held.mapped.discard(base + off)
        t1 = time.perf_counter()
        for row, slot, page in maps:
            if (row, slot) in self.mapped:
                raise ValueError(f"slot {slot} of row {row} is mapped already")
            self.mapped[(row, slot)] = page
            off = self.g.offset(row, slot)
            for base, handles in zip(self._bases, held.handles):
                vmm.map_page(base + off, pb, handles[page])
                held.mapped.add(base + off)
        for row, slot, n in adjacent_runs(maps):
            off = self.g.offset(row, slot)
            for base in self._bases:
                vmm.set_access(base + off, n * pb, self._desc)
        s.unmap_s += t1 - t0
        s.map_s += time.perf_counter() - t1
        s.num_unmaps += len(unmaps) * self.g.num_buffers
        s.num_maps += len(maps) * self.g.num_buffers

    def close(self) -> None:
        """Unmap and free everything now (the tensors over it must not be used again)."""
        torch.cuda.synchronize(self._dev)
        self._held.close()
