"""The attention backend under the engine on a GPU (pytest -m gpu): a few hundred steps with
forks, beams and preemption in both modes, every layer's output checked against the float32
reference computed from each sequence's tokens, for every allocator."""

from __future__ import annotations

import pytest
import torch

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from engine.backends.attention import AttentionBackend
from engine.models import ModelSpec
from engine.scheduler import Engine, EngineLimits
from workloads.synthetic import synthetic

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
SMALL = ModelSpec("small", num_layers=2, num_heads=8, num_kv_heads=2, head_dim=128,
                  hidden_size=1024, num_params=0)  # fmt: skip
ALLOCATORS = {
    "static-max-buddy": lambda: StaticAllocator(3000, 256, "max", "buddy"),
    "static-oracle-first-fit": lambda: StaticAllocator(3000, 256, "oracle", "first_fit"),
    "paged-16": lambda: PagedAllocator(120, 16),
    "prefix-16": lambda: PrefixAllocator(120, 16),
    "prefix-1": lambda: PrefixAllocator(1900, 1),
}
WORKLOADS = {
    "n=3": dict(n=3),
    "beam=3": dict(beam_width=3),
    "shared prefix": dict(num_prefixes=2, prefix_len=40),
}


CASES = [
    (name, workload, preemption, True)
    for name in sorted(ALLOCATORS)
    for workload in sorted(WORKLOADS)
    for preemption in ("recompute", "swap")
] + [(name, "beam=3", "swap", False) for name in sorted(ALLOCATORS)]  # eager, no graphs


@pytest.mark.parametrize(("name", "workload", "preemption", "graphs"), CASES)
def test_engine_steps_match_the_token_reference(name, workload, preemption, graphs):
    alloc = ALLOCATORS[name]()
    wl = synthetic(
        max_requests=30, seed=3, arrival={"process": "poisson", "rate": 400.0},
        prompt={"kind": "uniform", "low": 20, "high": 120},
        output={"kind": "uniform", "low": 10, "high": 120}, max_seq_len=256,
        **WORKLOADS[workload],
    )  # fmt: skip
    backend = AttentionBackend(SMALL, alloc, verify=True, graphs=graphs)
    engine = Engine(alloc, backend, EngineLimits(max_num_seqs=24, preemption=preemption))
    result = engine.run(wl.requests)
    assert len(result.finished) == len(wl.requests)
    if not name.startswith("static") and workload != "beam=3":  # these never preempt here
        assert result.num_preemptions > 0, "the pool is meant to be tight"
    assert backend.verifier.num_checked >= 100 * SMALL.num_layers
    assert backend.verifier.max_err < 1e-2
    if graphs:
        assert backend.graphs is not None and backend.graphs.graphs, "no step was replayed"
    alloc.check_invariants()


# --- vattention: physical pages mapped into virtual rows with the CUDA VMM API --------------
# 64 KV heads of 128 in bf16: 16 KiB per token and buffer, 128 tokens per 2 MiB page, so
# sequences of up to 512 tokens span 4 pages; 30 page groups keep the pool tight (the engine
# schedule with burst arrivals does not depend on step times: preemptions are certain).
WIDE = ModelSpec("wide", num_layers=2, num_heads=128, num_kv_heads=64, head_dim=128,
                 hidden_size=16384, num_params=0)  # fmt: skip
VATTN_CASES = [
    ("n=3", "recompute", True), ("n=3", "swap", True), ("beam=3", "swap", True),
    ("shared prefix", "recompute", True), ("beam=3", "recompute", False),
]  # fmt: skip


@pytest.mark.parametrize(("workload", "preemption", "graphs"), VATTN_CASES)
def test_vattention_maps_pages_and_matches_the_token_reference(workload, preemption, graphs):
    pytest.importorskip("cuda.bindings.driver")
    from allocators.vattention import VAttentionAllocator

    alloc = VAttentionAllocator(30, 128, 512)
    sampling = dict(WORKLOADS[workload])
    if "prefix_len" in sampling:
        sampling["prefix_len"] = 200
    wl = synthetic(
        max_requests=24, seed=3, arrival={"process": "burst"},
        prompt={"kind": "uniform", "low": 20, "high": 300},
        output={"kind": "uniform", "low": 10, "high": 150}, max_seq_len=512, **sampling,
    )  # fmt: skip
    backend = AttentionBackend(WIDE, alloc, verify=True, graphs=graphs, max_num_seqs=24)
    engine = Engine(alloc, backend, EngineLimits(max_num_seqs=24, preemption=preemption))
    result = engine.run(wl.requests)  # verify: every step also checks the mapping
    assert len(result.finished) == len(wl.requests) and result.num_preemptions > 0
    assert backend.verifier.num_checked >= 250 * WIDE.num_layers
    assert backend.verifier.max_err < 1e-2
    stats = backend.summary()
    assert stats["vmm_maps"] > 0 and stats["vmm_unmaps"] > 0
    print(f"\n{workload} {preemption}: {stats['vmm_maps']} maps, "
          f"{1e6 * stats['vmm_map_s'] / stats['vmm_maps']:.1f} us per page; "
          f"{stats['vmm_unmaps']} unmaps, {1e6 * stats['vmm_unmap_s'] / stats['vmm_unmaps']:.1f} "
          f"us per page; pages and view made in {stats['vmm_init_s']:.2f} s")  # fmt: skip
    if graphs:
        assert backend.graphs is not None and backend.graphs.graphs, "no step was replayed"
    backend.close()


def test_vattention_pages_below_the_granularity_are_refused():
    pytest.importorskip("cuda.bindings.driver")
    from allocators.vattention import VAttentionAllocator
    from workloads.errors import KvbenchError

    with pytest.raises(KvbenchError, match="CUDA maps whole multiples of"):
        AttentionBackend(WIDE, VAttentionAllocator(8, 4, 512))  # 64 KiB pages
