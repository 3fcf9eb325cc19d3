"""CudaMapper's driver calls on the CPU, against a strict stand-in for kernels/vmm.py: every
map lands on a reserved, unmapped, page-aligned address, access is set only over mapped
pages, unmaps hit mapped pages, and close gives everything back. (The GPU tests run the
real driver; this keeps the bookkeeping honest where no GPU is.)"""

from __future__ import annotations

import itertools

import pytest
import torch

from allocators.vattention import VAttentionAllocator
from engine.backends.vmm_map import CudaMapper, Geometry
from engine.backends.vmm_pool import VirtualRows
from tests.engine.test_attention_backend import seq


class FakeDriver:
    """Address space bookkeeping with the CUDA VMM rules kvbench relies on."""

    def __init__(self, page_bytes: int) -> None:
        self.page_bytes = page_bytes
        self.ranges: dict[int, int] = {}  # base -> size
        self.mapped: dict[int, int] = {}  # address -> handle
        self.handles: set[int] = set()
        self.accessible: set[int] = set()
        self._ids = itertools.count(1)
        self.num_access_calls = 0

    def granularity(self, device: int) -> int:
        return self.page_bytes

    def access(self, device: int) -> object:
        return object()

    def reserve(self, size: int, alignment: int) -> int:
        base = (1 + len(self.ranges)) << 40
        assert size % self.page_bytes == 0 and alignment == self.page_bytes
        self.ranges[base] = size
        return base

    def create(self, page_bytes: int, device: int) -> int:
        handle = next(self._ids)
        self.handles.add(handle)
        return handle

    def _page(self, addr: int) -> None:
        assert addr % self.page_bytes == 0, "unaligned address"
        assert any(b <= addr < b + s for b, s in self.ranges.items()), "outside a reservation"

    def map_page(self, addr: int, page_bytes: int, handle: int) -> None:
        self._page(addr)
        assert page_bytes == self.page_bytes and handle in self.handles
        assert addr not in self.mapped, "mapped twice"
        self.mapped[addr] = handle

    def set_access(self, addr: int, size: int, desc: object) -> None:
        self.num_access_calls += 1
        for a in range(addr, addr + size, self.page_bytes):
            assert a in self.mapped, "access over an unmapped page"
            self.accessible.add(a)

    def unmap(self, addr: int, size: int) -> None:
        assert size == self.page_bytes and addr in self.mapped, "unmapping a hole"
        del self.mapped[addr]
        self.accessible.discard(addr)

    def release(self, handle: int) -> None:
        self.handles.remove(handle)

    def free_range(self, addr: int, size: int) -> None:
        assert self.ranges.pop(addr) == size
        assert not any(addr <= a < addr + size for a in self.mapped), "freeing mapped space"

    def as_tensor(self, addr: int, nbytes: int, device: int) -> torch.Tensor:
        return torch.zeros(nbytes, dtype=torch.uint8)


@pytest.fixture
def driver(monkeypatch):
    from kernels import vmm

    fake = FakeDriver(page_bytes=4 * 2 * 16 * 4)  # 4 tokens of 2 KV heads x 16, float32
    for name in ("granularity", "access", "reserve", "create", "map_page", "set_access",
                 "unmap", "release", "free_range", "as_tensor"):  # fmt: skip
        monkeypatch.setattr(vmm, name, getattr(fake, name))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    return fake


def test_mapping_follows_the_allocator_through_the_driver(driver):
    alloc = VAttentionAllocator(12, 4, 32)
    g = Geometry(2, 2, 16, torch.float32, 12, 4, 8, 5)
    mapper = CudaMapper(g, torch.device("cpu", 0))
    assert len(driver.mapped) == g.num_buffers * 13  # every page in the view, by id
    rows = VirtualRows(mapper, check=True)
    a, b = seq(1, 7, 9), seq(2, 5, 9)
    for s in (a, b):
        alloc.allocate(s, s.prompt_len)
    child = seq(3, 7, 9)
    alloc.fork(a.seq_id, child)  # a's two pages in two rows; the first write copies the tail
    for step in range(9):
        if step == 4:
            alloc.free(b.seq_id)
            rows.release([b.seq_id])
        live = [s for s in (a, b, child) if s.seq_id in alloc.live_rows()]
        assert alloc.decode(live) == len(live)
        rows.sync([s.seq_id for s in live], alloc)
        rows.settle()
        row_pages = len(mapper.mapped) * g.num_buffers
        assert len(driver.mapped) == g.num_buffers * 13 + row_pages
        assert set(driver.mapped) == driver.accessible
    assert driver.num_access_calls < mapper.stats.num_maps  # adjacent slots: one call
    mapper.close()
    assert not driver.mapped and not driver.handles and not driver.ranges
