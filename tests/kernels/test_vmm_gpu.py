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
