"""kernels/vmm.py on a GPU (pytest -m gpu; needs the cuda-bindings package): pages mapped
into reserved rows hold data, move between rows, and each map costs tens of microseconds."""

from __future__ import annotations

import statistics

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def pool():
    pytest.importorskip("cuda.bindings.driver")
    from kernels.vmm import VmmPool, granularity

    page = granularity()
    p = VmmPool(num_pages=4, page_bytes=page, num_rows=3, pages_per_row=3)
    yield p
    p.close()


def test_mapped_pages_hold_data_and_move_between_rows(pool):
    page = pool.page_bytes
    pool.map(0, 0)
    pool.map(0, 1)
    row0 = pool.view(0, torch.float32)
    n = 2 * page // 4  # the two mapped pages, as float32
    row0[:n] = torch.arange(n, dtype=torch.float32, device=row0.device)
    torch.cuda.synchronize()
    assert torch.equal(row0[:n].cpu(), torch.arange(n, dtype=torch.float32))
    moved = pool.mapped[(0, 1)]
    pool.unmap(0, 1)
    assert pool.map(2, 0) == moved  # the page freed last is handed out next
    row2 = pool.view(2, torch.float32)
    second = torch.arange(page // 4, n, dtype=torch.float32)
    assert torch.equal(row2[: page // 4].cpu(), second)  # same physical memory, new address
    row2[: page // 4].fill_(-1.0)
    torch.cuda.synchronize()
    assert torch.equal(row0[: page // 4].cpu(), torch.arange(page // 4, dtype=torch.float32))
    pool.check_invariants()


def test_a_contiguous_kernel_reads_a_mapped_range(pool):
    for slot in range(3):
        pool.map(1, slot)
    kv = pool.view(1, torch.bfloat16)
    kv.normal_()
    copy = kv.clone()  # a plain allocation with the same values
    assert torch.equal(torch.softmax(kv.float(), 0), torch.softmax(copy.float(), 0))
    pool.check_invariants()


def test_refusals_and_bounds(pool):
    for slot in range(3):
        pool.map(0, slot)
    pool.map(1, 0)
    with pytest.raises(MemoryError):
        pool.map(1, 1)  # 4 physical pages, all mapped
    with pytest.raises(ValueError):
        pool.map(0, 0)
    with pytest.raises(IndexError):
        pool.map(0, 3)  # past the row's reservation
    pool.check_invariants()


def test_map_cost_per_page(pool):
    """vAttention reports about 40 us per map (cuMemMap + cuMemSetAccess) of a 2 MiB page."""
    for _ in range(20):
        pool.map(0, 0)
        pool.unmap(0, 0)
    us = statistics.median(pool.map_s) * 1e6
    print(f"\nmap {us:.1f} us, unmap {statistics.median(pool.unmap_s) * 1e6:.1f} us per page "
          f"of {pool.page_bytes >> 10} KiB")  # fmt: skip
    assert 0 < us < 5_000


def test_one_page_at_two_addresses_and_access_over_adjacent_mappings():
    """What vattention's layout relies on: a physical page mapped at several addresses (the
    view by id and a row; a fork's two rows) and one cuMemSetAccess over adjacent maps."""
    pytest.importorskip("cuda.bindings.driver")
    from kernels import vmm

    page = vmm.granularity()
    desc = vmm.access(0)
    handles = [vmm.create(page, 0) for _ in range(2)]
    a, b = vmm.reserve(2 * page, page), vmm.reserve(2 * page, page)
    for i, h in enumerate(handles):
        vmm.map_page(a + i * page, page, h)
    vmm.map_page(b + page, page, handles[0])  # page 0 again, behind b's second slot
    vmm.set_access(a, 2 * page, desc)
    vmm.set_access(b + page, page, desc)
    x, y = vmm.as_tensor(a, 2 * page, 0), vmm.as_tensor(b + page, page, 0)
    x.copy_(torch.arange(2 * page, device="cuda").to(torch.uint8))
    torch.cuda.synchronize()
    assert torch.equal(y, x[:page])
    y.fill_(7)
    torch.cuda.synchronize()
    assert int(x[:page].min()) == int(x[:page].max()) == 7
    for addr in (a, a + page, b + page):
        vmm.unmap(addr, page)
    for h in handles:
        vmm.release(h)
    vmm.free_range(a, 2 * page)
    vmm.free_range(b, 2 * page)
