"""The attention backend's bookkeeping on the CPU (Triton interpreter, tiny model): K/V derived
from tokens, every layer's output checked against the token reference after admissions, decode
growth, forks with copy-on-write, frees and block reuse, for every layout."""

from __future__ import annotations

import pytest
import torch

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from allocators.vattention import VAttentionAllocator
from engine.backends.attention import AttentionBackend
from engine.backends.base import StepBatch
from engine.models import ModelSpec
from engine.sequence import Seq
from workloads.tokens import GENERATED, SYSTEM, UNIQUE, Tokens

TINY = ModelSpec("tiny", num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 hidden_size=64, num_params=0)  # fmt: skip


def seq(sid: int, prompt: int, out: int, shared: int = 0) -> Seq:
    chunks = [((SYSTEM, 0), shared), ((UNIQUE, sid), prompt - shared)]
    return Seq(sid, prompt, prompt + out, Tokens.from_chunks(chunks, (GENERATED, sid)))


ALLOCATORS = {
    "static": lambda: StaticAllocator(400, 64, "max", "first_fit"),
    "paged": lambda: PagedAllocator(60, 4),
    "prefix": lambda: PrefixAllocator(60, 4),
    "vattention": lambda: VAttentionAllocator(60, 4, 64),  # emulated mapping on the CPU
}
KERNEL = {"static": "triton_contiguous", "vattention": "triton_contiguous"}


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_steps_match_the_token_reference(name):
    alloc = ALLOCATORS[name]()
    backend = AttentionBackend(TINY, alloc, dtype="float32", verify=True, device="cpu")
    a, b = seq(1, 10, 12, shared=8), seq(2, 9, 12, shared=8)
    batch = StepBatch()
    for s in (a, b):  # admission: b hits a's cached prefix under the prefix allocator
        cached = alloc.allocate(s, s.prompt_len).num_cached_tokens
        batch.prefills.append((s, cached, s.prompt_len - cached))
    backend.step(batch)
    child = Seq(3, a.prompt_len, a.final_len, a.tokens.fork(a.prompt_len, (GENERATED, 3)))
    fork = alloc.fork(a.seq_id, child)
    running = [a, b, child]
    for t in range(8):
        batch = StepBatch(decode_seqs=running)
        if t == 0:
            batch.copies_before.extend(fork.copies)  # a static fork copies the prompt range
        assert alloc.decode(running, copies=batch.copies_before) == len(running)
        if t == 4:  # b leaves; a newcomer reuses its blocks in the same step
            running.remove(b)
            alloc.free(b.seq_id)
            batch.freed.append(b.seq_id)
            c = seq(4, 6, 4)
            alloc.allocate(c, c.prompt_len)
            batch.prefills.append((c, 0, c.prompt_len))
            backend.step(batch)
            running.append(c)
            continue
        backend.step(batch)
        alloc.check_invariants()
    assert backend.verifier.num_checked == 9 * TINY.num_layers
    assert backend.verifier.max_err < 1e-4
    assert backend.kernel == KERNEL.get(name, "triton_paged")


def test_a_wrong_block_is_caught():
    alloc = PagedAllocator(20, 4)
    backend = AttentionBackend(TINY, alloc, dtype="float32", verify=True, device="cpu")
    s = seq(1, 7, 4)
    alloc.allocate(s, 7)
    backend.step(StepBatch(prefills=[(s, 0, 7)]))
    alloc.decode([s])
    backend.rows.table[backend.rows._row[1], 0] = 19  # corrupt the GPU table
    with pytest.raises(AssertionError, match="differs from the token reference"):
        backend.step(StepBatch(decode_seqs=[s]))


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_warm_up_launches_every_kernel_and_writes_no_kv(name):
    backend = AttentionBackend(TINY, ALLOCATORS[name](), "float32", device="cpu")
    backend.pool.k.normal_()
    backend.pool.v.normal_()
    k, v = backend.pool.k.clone(), backend.pool.v.clone()
    backend._warm_up()
    assert torch.equal(backend.pool.k, k) and torch.equal(backend.pool.v, v)


def test_needs_a_gpu_for_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from workloads.errors import KvbenchError

    with pytest.raises(KvbenchError, match="needs a CUDA GPU"):
        AttentionBackend(TINY, PagedAllocator(4, 4))


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_engine_with_forks_and_preemption(name, preemption):
    """The engine drives the backend: parallel samples forked at admission, preempted and
    resumed as groups under a tight pool; every step checked against the tokens."""
    from engine.scheduler import Engine, EngineLimits
    from workloads.synthetic import synthetic

    alloc = {
        "static": lambda: StaticAllocator(200, 48, "oracle", "first_fit"),
        "paged": lambda: PagedAllocator(14, 4),
        "prefix": lambda: PrefixAllocator(14, 4),
        "vattention": lambda: VAttentionAllocator(14, 4, 48),
    }[name]()
    wl = synthetic(
        max_requests=5, seed=2, arrival={"process": "poisson", "rate": 100.0},
        prompt={"kind": "uniform", "low": 5, "high": 12},
        output={"kind": "uniform", "low": 6, "high": 14}, n=2, max_seq_len=48,
        num_prefixes=1, prefix_len=4,
    )  # fmt: skip
    backend = AttentionBackend(TINY, alloc, "float32", verify=True, device="cpu", num_layers=1)
    result = Engine(alloc, backend, EngineLimits(max_num_seqs=8, preemption=preemption)).run(
        wl.requests
    )
    assert len(result.finished) == len(wl.requests)
    assert backend.verifier.max_err < 1e-4 and backend.verifier.num_checked > 15
    if name != "static":
        assert result.num_preemptions > 0
