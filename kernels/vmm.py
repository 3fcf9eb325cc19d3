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

The primitives below (reserve, create, map_page, set_access, unmap, ...) are one driver call
each; the attention backend's vattention layout builds on them (engine/backends/vmm_map.py),
mapping one physical page at several addresses (forks, and a view of every page by id).
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


# --- the primitives (one driver call each; addresses are ints) --------------------------------
def reserve(size: int, alignment: int) -> int:
    """Reserve `size` bytes of virtual address space (no memory behind it)."""
    return int(_check(_driver().cuMemAddressReserve(size, alignment, 0, 0), "cuMemAddressReserve"))


def free_range(addr: int, size: int) -> None:
    """Give a reservation back (every page in it unmapped first)."""
    _check(_driver().cuMemAddressFree(addr, size), "cuMemAddressFree")


def create(page_bytes: int, device: int) -> Any:
    """One physical allocation of page_bytes on the device (a handle)."""
    return _check(_driver().cuMemCreate(page_bytes, _allocation_prop(device), 0), "cuMemCreate")


def release(handle: Any) -> None:
    """Free a physical allocation (its memory goes once its last mapping is gone)."""
    _check(_driver().cuMemRelease(handle), "cuMemRelease")


def map_page(addr: int, page_bytes: int, handle: Any) -> None:
    """Back [addr, addr + page_bytes) with the whole allocation `handle` (not yet accessible:
    `set_access`). One allocation may back several addresses at once."""
    _check(_driver().cuMemMap(addr, page_bytes, 0, handle, 0), "cuMemMap")


def access(device: int) -> Any:
    """The descriptor `set_access` takes: read/write from this device."""
    drv = _driver()
    desc = drv.CUmemAccessDesc()
    desc.location = _location(device)
    desc.flags = drv.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    return desc


def set_access(addr: int, size: int, desc: Any) -> None:
    """Make a mapped range accessible (`access(device)`); one call may cover several adjacent
    mappings, as PyTorch's expandable segments do."""
    _check(_driver().cuMemSetAccess(addr, size, [desc], 1), "cuMemSetAccess")


def unmap(addr: int, size: int) -> None:
    """Remove the mapping of one allocation at addr (its contents stay with the handle)."""
    _check(_driver().cuMemUnmap(addr, size), "cuMemUnmap")


def as_tensor(addr: int, nbytes: int, device: int) -> torch.Tensor:
    """[addr, addr + nbytes) as a uint8 tensor (zero copy): read only mapped parts of it."""
    interface = {"shape": (nbytes,), "typestr": "|u1", "data": (addr, False), "version": 3}
    holder = type("_Range", (), {"__cuda_array_interface__": interface})()
    return torch.as_tensor(holder, device=f"cuda:{device}")


class VmmPool:
    def __init__(
        self, num_pages: int, page_bytes: int, num_rows: int, pages_per_row: int, device: int = 0
    ) -> None:
        torch.cuda.init()
        torch.empty(1, device=f"cuda:{device}")  # makes the device's primary context current
        if page_bytes % granularity(device):
            raise ValueError(f"page_bytes {page_bytes} is not a multiple of {granularity(device)}")
        self.device, self.page_bytes, self.num_rows = device, page_bytes, num_rows
        self.row_bytes = pages_per_row * page_bytes
        self.base = reserve(num_rows * self.row_bytes, page_bytes)
        self._pages = [create(page_bytes, device) for _ in range(num_pages)]
        self._free = list(range(num_pages))  # physical pages not mapped anywhere
        self.mapped: dict[tuple[int, int], int] = {}  # (row, slot) -> page
        self._access = access(device)
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
        page = self._free.pop()
        t = time.perf_counter()
        map_page(addr, self.page_bytes, self._pages[page])
        set_access(addr, self.page_bytes, self._access)
        self.map_s.append(time.perf_counter() - t)
        self.mapped[(row, slot)] = page
        return page

    def unmap(self, row: int, slot: int) -> None:
        """Give the page backing (row, slot) back to the pool (its contents are lost)."""
        page = self.mapped.pop((row, slot))
        t = time.perf_counter()
        unmap(self._addr(row, slot), self.page_bytes)
        self.unmap_s.append(time.perf_counter() - t)
        self._free.append(page)

    def view(self, row: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """Row `row` as a 1-D tensor of dtype (zero copy); read only its mapped slots."""
        return as_tensor(self._addr(row, 0), self.row_bytes, self.device).view(dtype)

    def close(self) -> None:
        """Unmap everything, release the pages and the reservation."""
        for row, slot in list(self.mapped):
            self.unmap(row, slot)
        for handle in self._pages:
            release(handle)
        self._pages, self._free = [], []
        free_range(self.base, self.num_rows * self.row_bytes)

    def check_invariants(self) -> None:
        pages = list(self.mapped.values())
        assert len(pages) == len(set(pages)), "a page backs two slots"
        assert not set(pages) & set(self._free), "a mapped page is free"
        assert len(pages) + len(self._free) == len(self._pages), "a page was lost"
