"""Preemption by recompute and by swap: groups come back as groups, swaps are priced."""

from __future__ import annotations

import pytest

from allocators import PagedAllocator
from engine.backends.base import StepBatch
from engine.backends.sim import GpuProfile, SimBackend
from engine.metrics import request_columns, summarize
from engine.models import model_spec
from engine.scheduler import Engine, EngineLimits
from workloads.errors import KvbenchError
from workloads.synthetic import synthetic

H100 = GpuProfile("h100", 3.35e12, 989e12, pcie_bytes_per_s=64e9)
LLAMA = model_spec("llama3_8b")


def alpaca_n4():
    """Alpaca-like lengths (the sharing experiment's), 4 parallel samples per request."""
    return synthetic(
        max_requests=150,
        seed=1,
        arrival={"process": "poisson", "rate": 30.0},
        prompt={"kind": "lognormal", "mean": 19, "std": 19},
        output={"kind": "lognormal", "mean": 58, "std": 58},
        max_seq_len=512,
        n=4,
    )


def serve(num_blocks: int, preemption: str):
    alloc = PagedAllocator(num_blocks, 16)
    engine = Engine(alloc, SimBackend(H100, LLAMA, alloc), EngineLimits(preemption=preemption))
    result = engine.run(alpaca_n4().requests)
    steps = result.steps.columns()
    return result, steps, summarize(steps, request_columns(result.finished))


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_preempted_groups_keep_their_sharing(preemption):
    """Before groups came back as groups, 143 preemptions cut the saving from 8.8% to 5.5%."""
    _, _, free = serve(100_000, "recompute")
    result, steps, tight = serve(200, preemption)
    assert result.num_preemptions > 100
    assert tight["block_saving"] >= 0.95 * free["block_saving"] > 0.08
    swapped = steps["num_host_blocks"]
    assert (swapped.max() > 0) == (preemption == "swap") and swapped[-1] == 0
    assert tight["max_host_blocks"] == swapped.max()


def test_swaps_are_priced_at_the_pcie_bandwidth():
    alloc = PagedAllocator(64, 16)
    sim = SimBackend(H100, LLAMA, alloc)
    batch = StepBatch(num_decode=8, decode_context=800)
    base = sim.step(batch)
    batch.swap_out += [(3, 0, 4), (9, 4, 2)]
    block_bytes = 16 * LLAMA.kv_bytes_per_token
    assert sim.step(batch) == pytest.approx(base + 6 * block_bytes / 64e9)
    batch.swap_out.clear()
    batch.swap_in.append((0, 5, 6))
    assert sim.step(batch) == pytest.approx(base + 6 * block_bytes / 64e9)


def test_stretch_durations_are_single_steps():
    alloc = PagedAllocator(64, 16)
    sim = SimBackend(H100, LLAMA, alloc)
    durations = sim.stretch(8, 800, 10, 1.0, float("inf"))
    assert durations == [sim.step(StepBatch(num_decode=8, decode_context=800 + 8 * (t + 1)))
                         for t in range(10)]  # fmt: skip
    first = durations[0]
    assert sim.stretch(8, 800, 10, 1.0, 1.0 + 2.5 * first) == durations[:3]  # starts < until


def test_unknown_preemption_mode_is_a_config_error():
    with pytest.raises(KvbenchError, match="preemption"):
        EngineLimits(preemption="drop")  # type: ignore[arg-type]
