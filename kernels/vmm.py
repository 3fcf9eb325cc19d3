"""Physical KV pages mapped on demand into reserved virtual ranges: vAttention's mechanism,
with the CUDA virtual memory API through cuda-bindings (`cuda.bindings.driver`).

    rows      one virtual range per request, reserved once (cuMemAddressReserve):
              row r = [base + r * row_bytes, base + (r + 1) * row_bytes)
    pages     physical allocations of page_bytes each (cuMemCreate), made up front: the pool
    map       page p backs slot i of row r: cuMemMap(base + r * row_bytes + i * page_bytes)
              then cuMemSetAccess (read/write for this device); unmap gives p back

    row 0: [ p3 | p0 | .  | .  ]    (. = reserved, not backed: never read it)
    row 1: [ p1 | .  | .  | .  ]

`view(row)` is a torch tensor over a whole row (zero copy, through __cuda_array_interface__):
a contiguous kernel reads the mapped prefix as ordinary memory. Every map and unmap call is
timed (`map_s`, `unmap_s`: one entry per page), the cost vAttention reports at about 40 us.
page_bytes must be a multiple of the allocation granularity (`granularity()`, 2 MiB on
current NVIDIA GPUs; vAttention's smaller pages need its modified driver).

Invariants: a page backs at most one (row, slot); `mapped` holds exactly the backed slots;
free pages + mapped pages = num_pages.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def _driver() -> Any:
    from cuda.bindings import driver  # an optional dependency: GPU machines only

    return driver


def _check(result: Any, what: str) -> Any:
    """cuda-bindings returns (CUresult, values...): raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: CUresult {int(err)} ({err})")
    return values[0] if len(values) == 1 else tuple(values)


def _location(device: int) -> Any:
    drv = _driver()
    loc = drv.CUmemLocation()
    loc.type = drv.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    loc.id = device
    return loc


def granularity(device: int = 0) -> int:
    """The smallest page cuMemCreate accepts on this device, in bytes."""
    drv = _driver()
    _check(drv.cuInit(0), "cuInit")
    prop = _allocation_prop(device)
    flag = drv.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM
    return int(
        _check(drv.cuMemGetAllocationGranularity(prop, flag), "cuMemGetAllocationGranularity")
    )


def _allocation_prop(device: int) -> Any:
    drv = _driver()
    prop = drv.CUmemAllocationProp()
    prop.type = drv.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location = _location(device)
    return prop


class VmmPool:
    def __init__(
        self, num_pages: int, page_bytes: int, num_rows: int, pages_per_row: int, device: int = 0
    ) -> None:
        drv = _driver()
        torch.cuda.init()
        torch.empty(1, device=f"cuda:{device}")  # makes the device's primary context current
        if page_bytes % granularity(device):
            raise ValueError(f"page_bytes {page_bytes} is not a multiple of {granularity(device)}")
        self.device, self.page_bytes, self.num_rows = device, page_bytes, num_rows
        self.row_bytes = pages_per_row * page_bytes
        self.base = int(
            _check(drv.cuMemAddressReserve(num_rows * self.row_bytes, page_bytes, 0, 0), "reserve")
        )
        prop = _allocation_prop(device)
        self._pages = [_check(drv.cuMemCreate(page_bytes, prop, 0), "cuMemCreate")
                       for _ in range(num_pages)]  # fmt: skip
        self._free = list(range(num_pages))  # physical pages not mapped anywhere
        self.mapped: dict[tuple[int, int], int] = {}  # (row, slot) -> page
        self._access = drv.CUmemAccessDesc()
        self._access.location = _location(device)
        self._access.flags = drv.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self.map_s: list[float] = []
        self.unmap_s: list[float] = []

    @property
    def num_free(self) -> int:
        return len(self._free)

    def _addr(self, row: int, slot: int) -> int:
        if not (0 <= row < self.num_rows and 0 <= slot < self.row_bytes // self.page_bytes):
            raise IndexError(f"slot {slot} of row {row} is outside the reserved ranges")
        return self.base + row * self.row_bytes + slot * self.page_bytes

    def map(self, row: int, slot: int) -> int:
        """Back slot `slot` of row `row` with a free physical page; returns the page."""
        addr = self._addr(row, slot)
        if (row, slot) in self.mapped:
            raise ValueError(f"slot {slot} of row {row} is mapped already")
        if not self._free:
            raise MemoryError("no free physical page")
        page, drv = self._free.pop(), _driver()
        t = time.perf_counter()
        _check(drv.cuMemMap(addr, self.page_bytes, 0, self._pages[page], 0), "cuMemMap")
        _check(drv.cuMemSetAccess(addr, self.page_bytes, [self._access], 1), "cuMemSetAccess")
        self.map_s.append(time.perf_counter() - t)
        self.mapped[(row, slot)] = page
        return page

    def unmap(self, row: int, slot: int) -> None:
        """Give the page backing (row, slot) back to the pool (its contents are lost)."""
        page = self.mapped.pop((row, slot))
        t = time.perf_counter()
        _check(_driver().cuMemUnmap(self._addr(row, slot), self.page_bytes), "cuMemUnmap")
        self.unmap_s.append(time.perf_counter() - t)
        self._free.append(page)

    def view(self, row: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """Row `row` as a 1-D tensor of dtype (zero copy); read only its mapped slots."""
        interface = {"shape": (self.row_bytes,), "typestr": "|u1",
                     "data": (self._addr(row, 0), False), "version": 3}  # fmt: skip
        holder = type("_Range", (), {"__cuda_array_interface__": interface})()
        return torch.as_tensor(holder, device=f"cuda:{self.device}").view(dtype)

    def close(self) -> None:
        """Unmap everything, release the pages and the reservation."""
        drv = _driver()
        for row, slot in list(self.mapped):
            self.unmap(row, slot)
        for handle in self._pages:
            _check(drv.cuMemRelease(handle), "cuMemRelease")
        self._pages, self._free = [], []
        _check(drv.cuMemAddressFree(self.base, self.num_rows * self.row_bytes), "free")

    def check_invariants(self) -> None:
        pages = list(self.mapped.values())
        assert len(pages) == len(set(pages)), "a page backs two slots"
        assert not set(pages) & set(self._free), "a mapped page is free"
        assert len(pages) + len(self._free) == len(self._pages), "a page was lost"
