"""A serving run compiles nothing after the backend's warm-up (pytest -m gpu): Triton compiles
a kernel variant on first use (0.3-1 s), and a compile inside a step would be timed as serving.
Ragged long contexts (16+ split-K pieces), equal-length decode rows, mixed steps with 1-3
decode rows and prefills at every offset, for the paged and the contiguous kernels."""

from __future__ import annotations

import pytest
import torch
import triton

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from engine.backends.attention import AttentionBackend
from engine.models import ModelSpec
from engine.scheduler import Engine, EngineLimits
from kernels import cache_ops, paged_decode, paged_prefill
from workloads.synthetic import synthetic

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
SMALL = ModelSpec("small", num_layers=2, num_heads=8, num_kv_heads=2, head_dim=128,
                  hidden_size=1024, num_params=0)  # fmt: skip
KERNELS = (paged_decode._decode_kernel, paged_decode._merge_kernel,
           paged_prefill._prefill_kernel, cache_ops._write_kv_kernel)  # fmt: skip
ALLOCATORS = {
    "static-oracle": lambda: StaticAllocator(40000, 4096, "oracle", "first_fit"),
    "paged-16": lambda: PagedAllocator(2500, 16),
    "prefix-16": lambda: PrefixAllocator(2500, 16),
}


@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_no_compile_after_warm_up(name, graphs):
    for kernel in KERNELS:  # as in a fresh process (Triton's disk cache keeps this quick)
        kernel.device_caches.clear()
    alloc = ALLOCATORS[name]()
    backend = AttentionBackend(SMALL, alloc, graphs=graphs, max_seq_len=4096)
    compiled: list[str] = []
    hook = lambda **kw: compiled.append(kw["repr"].split("(")[0]) and False  # noqa: E731
    triton.knobs.runtime.jit_cache_hook = hook
    try:
        wl = synthetic(
            max_requests=60, seed=5, arrival={"process": "poisson", "rate": 50.0},
            prompt={"kind": "uniform", "low": 1, "high": 3000},
            output={"kind": "uniform", "low": 1, "high": 200}, max_seq_len=4096,
            num_prefixes=3, prefix_len=700,
        )  # fmt: skip
        limits = EngineLimits(max_num_seqs=32, max_num_batched_tokens=2048)
        result = Engine(alloc, backend, limits).run(wl.requests)
    finally:
        triton.knobs.runtime.jit_cache_hook = None
    assert len(result.finished) == len(wl.requests)
    assert compiled == [], f"compiled during the run: {compiled}"
