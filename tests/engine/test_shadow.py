"""The shadow-memory conformance test: replaying what the engine reports (swaps, copies,
writes) on a memory of token identities reproduces every live sequence's KV exactly, after
every step, for every allocator, with forks, beams, copy-on-write, preemption and resume."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from allocators.radix import RadixAllocator
from allocators.vattention import VAttentionAllocator
from engine.backends.shadow import ShadowBackend
from engine.backends.sim import GpuProfile
from engine.models import model_spec
from engine.scheduler import Engine, EngineLimits
from workloads.synthetic import synthetic

H100 = GpuProfile("h100", 3.35e12, 989e12)
MAX_SEQ_LEN = 128

STATIC = [(r, p) for r in ("max", "pow2", "oracle") for p in ("first_fit", "best_fit", "buddy")]
PAGED = [(k, bs) for k in ("paged", "prefix", "radix", "vattention") for bs in (1, 4, 16)]
BLOCKS = {
    "paged": PagedAllocator,
    "prefix": PrefixAllocator,
    "radix": RadixAllocator,
    "vattention": lambda pages, bs: VAttentionAllocator(pages, bs, MAX_SEQ_LEN),
}


def make(kind: str, arg, slots: int):
    if kind == "static":
        return StaticAllocator(slots, MAX_SEQ_LEN, *arg)
    return BLOCKS[kind](slots // arg, arg)


def workload(seed: int = 1, num_requests: int = 30, **kw):
    return synthetic(
        max_requests=num_requests,
        seed=seed,
        arrival={"process": "poisson", "rate": 40.0},
        prompt={"kind": "uniform", "low": 3, "high": 60},
        output={"kind": "uniform", "low": 2, "high": 60},
        max_seq_len=MAX_SEQ_LEN,
        **kw,
    )


def serve(alloc, w, preemption: str = "recompute", backend=None):
    backend = backend or ShadowBackend(H100, model_spec("llama3_8b"), alloc)
    engine = Engine(alloc, backend, EngineLimits(preemption=preemption), seed=0)
    result = engine.run(w.requests)
    alloc.check_invariants()
    assert alloc.usage().token_states == 0
    assert backend.num_checked_tokens > 0
    assert result.steps.columns()["num_host_blocks"][-1] == 0  # every swapped group came back
    return result


SAMPLING = {"single": {}, "n3": {"n": 3}, "beam3": {"beam_width": 3}}
SAMPLING["prefix"] = {"num_prefixes": 2, "prefix_len": 40}


@pytest.mark.parametrize("sampling", sorted(SAMPLING))
@pytest.mark.parametrize("reservation, placement", STATIC)
def test_static_allocators(reservation, placement, sampling):
    serve(make("static", (reservation, placement), 1200), workload(**SAMPLING[sampling]))


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("sampling", sorted(SAMPLING))
@pytest.mark.parametrize("kind, block_size", PAGED)
def test_paged_allocators_under_preemption(kind, block_size, sampling, preemption):
    result = serve(make(kind, block_size, 640), workload(**SAMPLING[sampling]), preemption)
    assert result.num_preemptions > 0  # memory is tight enough to preempt and resume


@given(
    seed=st.integers(0, 1000),
    kind=st.sampled_from(["static", *BLOCKS]),
    block_size=st.sampled_from([1, 2, 4, 8, 16]),
    slack=st.integers(0, 1000),
    n=st.integers(1, 4),
    beam=st.booleans(),
    prefix=st.booleans(),
    preemption=st.sampled_from(["recompute", "swap"]),
)
@settings(max_examples=40, deadline=None)
def test_random_workloads(seed, kind, block_size, slack, n, beam, prefix, preemption):
    """Memory from just enough for the largest group (n sequences of MAX_SEQ_LEN) upwards."""
    arg = STATIC[seed % len(STATIC)] if kind == "static" else block_size
    slots = n * (MAX_SEQ_LEN + block_size) + slack
    kw = {"beam_width": n} if beam else {"n": n}
    if prefix:
        kw |= {"num_prefixes": 1 + seed % 3, "prefix_len": 8 + seed % 48}
    alloc = make(kind, arg, slots)
    if kind == "static" and alloc.reserve_size(60, MAX_SEQ_LEN) * n > slots:
        return  # a group that cannot be placed in empty memory is an error, tested elsewhere
    serve(alloc, workload(seed, num_requests=15, **kw), preemption)


class Lossy(ShadowBackend):
    """Drops one kind of what the engine reports: the shadow check must notice."""

    def __init__(self, drop: str, alloc) -> None:
        super().__init__(H100, model_spec("llama3_8b"), alloc)
        self.drop = drop

    def step(self, batch):
        getattr(batch, self.drop).clear()
        return super().step(batch)


@pytest.mark.parametrize(
    "drop, kind, arg, kw, preemption",
    [
        ("copies_before", "paged", 4, {"n": 3}, "recompute"),  # copy-on-write of decode
        ("copies_before", "static", ("oracle", "first_fit"), {"beam_width": 3}, "recompute"),
        ("copies_after", "static", ("oracle", "first_fit"), {"n": 3}, "recompute"),
        ("swap_out", "paged", 4, {"n": 3}, "swap"),
        ("swap_in", "prefix", 4, {}, "swap"),
        ("prefills", "paged", 16, {}, "recompute"),
    ],
)
def test_a_dropped_report_is_caught(drop, kind, arg, kw, preemption):
    alloc = make(kind, arg, 640 if kind != "static" else 1200)
    with pytest.raises((AssertionError, KeyError)):
        serve(alloc, workload(**kw), preemption, backend=Lossy(drop, alloc))


def test_shadow_steps_are_the_sims_steps():
    """`backend=shadow` checks a run without changing it: the same step log as the sim's."""
    from engine.backends.sim import SimBackend
    from experiments.job import build_backend
    from tests.experiments.test_configs import cfg_with

    w = workload(n=2)
    logs = []
    for name in ("sim", "shadow"):
        alloc = make("paged", 4, 640)
        cfg = cfg_with(f"backend={name}", "backend/gpu=h100_sxm")
        backend = build_backend(cfg, model_spec("llama3_8b"), alloc)
        assert isinstance(backend, ShadowBackend if name == "shadow" else SimBackend)
        logs.append(Engine(alloc, backend, seed=0).run(w.requests).steps.values)
    assert logs[0] == logs[1]
