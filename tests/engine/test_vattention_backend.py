"""The `virtual` layout (allocator=vattention) of the attention backend on the CPU: the emulated
mapper keeps every live sequence's pages mapped at its row, step by step, and a page that is
not mapped where the kernels read or write is caught."""

from __future__ import annotations

import pytest

from allocators.vattention import VAttentionAllocator
from engine.backends.attention import AttentionBackend
from engine.backends.base import StepBatch
from engine.backends.vmm_map import adjacent_runs
from engine.scheduler import Engine, EngineLimits
from tests.engine.test_attention_backend import TINY, seq
from workloads.errors import KvbenchError
from workloads.synthetic import synthetic


def backend_with_two_seqs(check: bool = True):
    alloc = VAttentionAllocator(20, 4, 32)
    backend = AttentionBackend(TINY, alloc, "float32", verify=True, device="cpu", max_num_seqs=4)
    backend.rows.check = check
    a, b = seq(1, 7, 8), seq(2, 9, 8)
    for s in (a, b):
        alloc.allocate(s, s.prompt_len)
    backend.step(StepBatch(prefills=[(a, 0, 7), (b, 0, 9)]))
    return alloc, backend, [a, b]


def test_decode_steps_read_mapped_pages_only():
    alloc, backend, seqs = backend_with_two_seqs()
    for _ in range(6):  # a grows into its 3rd page, b into its 4th
        alloc.decode(seqs)
        backend.step(StepBatch(decode_seqs=seqs))
    assert backend.verifier.num_checked == 7 * TINY.num_layers
    mapped = backend.pool.mapper.mapped
    assert [mapped[(1, i)] for i in range(4)] == list(alloc.block_table(1))
    assert [mapped[(2, i)] for i in range(4)] == list(alloc.block_table(2))


def test_an_unmapped_page_the_kernels_read_is_caught():
    alloc, backend, seqs = backend_with_two_seqs()
    alloc.decode(seqs)
    backend.pool.mapper.apply([(2, 1)], [])  # b's second page vanishes behind the rows' back
    with pytest.raises(AssertionError, match=r"virtual row 2: token 4 .* unmapped page"):
        backend.step(StepBatch(decode_seqs=seqs))


def test_without_the_access_check_the_unmapped_page_reads_as_garbage():
    alloc, backend, seqs = backend_with_two_seqs(check=False)
    alloc.decode(seqs)
    backend.pool.mapper.apply([(2, 1)], [])
    with pytest.raises(AssertionError, match="differs from the token reference"):
        backend.step(StepBatch(decode_seqs=seqs))


def test_a_map_left_out_of_a_step_is_caught(monkeypatch):
    alloc, backend, _ = backend_with_two_seqs()
    mapper = backend.pool.mapper
    apply = mapper.apply
    monkeypatch.setattr(mapper, "apply", lambda unmaps, maps: apply(unmaps, maps[:-1]))
    c = seq(3, 6, 4)
    alloc.allocate(c, 6)
    with pytest.raises(AssertionError, match=r"virtual row 3: token 4 .* unmapped page"):
        backend.step(StepBatch(prefills=[(c, 0, 6)]))
    backend.rows.check = False  # the write itself then finds no page
    d = seq(4, 6, 4)
    alloc.allocate(d, 6)
    with pytest.raises(AssertionError, match=r"KV written at virtual slot .*: no page mapped"):
        backend.step(StepBatch(prefills=[(d, 0, 6)]))


def test_unmaps_wait_for_the_launches_unless_their_slot_is_mapped_again(monkeypatch):
    alloc, backend, (a, b) = backend_with_two_seqs()  # b holds 3 pages in virtual row 2
    mapper = backend.pool.mapper
    calls, apply = [], mapper.apply
    monkeypatch.setattr(
        mapper, "apply", lambda u, m: (calls.append((list(u), list(m))), apply(u, m))
    )
    alloc.free(b.seq_id)
    c = seq(3, 3, 4)
    alloc.allocate(c, 3)  # takes b's row; its one page goes where b's first was
    alloc.decode([a])
    backend.step(StepBatch(decode_seqs=[a], prefills=[(c, 0, 3)], freed=[b.seq_id]))
    page = alloc.block_table(c.seq_id)[0]
    assert calls == [([(2, 0)], [(2, 0, page)]), ([(2, 1), (2, 2)], [])]  # before, after launch


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("sampling", [{"n": 2}, {"beam_width": 2}])
def test_mapped_pages_are_the_allocators_after_every_step(sampling, preemption):
    """Forks map shared pages in two rows, copy-on-write remaps a tail, frees and preemption
    unmap: after every step the mapping is the allocator's tables, and the counters add up."""
    alloc = VAttentionAllocator(14, 4, 48)
    wl = synthetic(
        max_requests=5, seed=2, arrival={"process": "poisson", "rate": 100.0},
        prompt={"kind": "uniform", "low": 5, "high": 12},
        output={"kind": "uniform", "low": 6, "high": 14}, max_seq_len=48, **sampling,
    )  # fmt: skip
    backend = AttentionBackend(TINY, alloc, "float32", verify=True, device="cpu", num_layers=1)
    mapper, step = backend.pool.mapper, backend.step
    num_steps = []

    def checked_step(batch: StepBatch) -> float:
        dt = step(batch)
        backend.rows.check_mapping(alloc)
        s = mapper.stats
        assert s.num_maps - s.num_unmaps == len(mapper.mapped) * mapper.g.num_buffers
        num_steps.append(1)
        return dt

    backend.step = checked_step  # type: ignore[method-assign]
    limits = EngineLimits(max_num_seqs=8, preemption=preemption)
    result = Engine(alloc, backend, limits).run(wl.requests)
    assert len(result.finished) == len(wl.requests) and len(num_steps) > 15
    assert backend.verifier.max_err < 1e-4
    assert mapper.stats.num_unmaps > 0 and backend.summary()["vmm_maps"] == mapper.stats.num_maps
    if "n" in sampling:
        assert result.num_preemptions > 0


def test_more_live_sequences_than_reserved_rows_is_an_error():
    alloc = VAttentionAllocator(20, 4, 32)
    backend = AttentionBackend(TINY, alloc, "float32", device="cpu", max_num_seqs=1)
    a, b = seq(1, 5, 4), seq(2, 5, 4)
    for s in (a, b):
        alloc.allocate(s, 5)
    with pytest.raises(KvbenchError, match="only 1 are reserved"):
        backend.step(StepBatch(prefills=[(a, 0, 5), (b, 0, 5)]))


def test_adjacent_slots_share_one_access_call():
    maps = [(2, 1, 9), (1, 0, 3), (2, 0, 4), (1, 1, 5), (2, 3, 6)]
    assert adjacent_runs(maps) == [(1, 0, 2), (2, 0, 2), (2, 3, 1)]
