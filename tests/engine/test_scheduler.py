"""Engine invariants on small workloads, for every allocator, with and without memory pressure."""

from __future__ import annotations

import numpy as np
import pytest

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from allocators.radix import RadixAllocator
from allocators.vattention import VAttentionAllocator
from engine.backends.sim import GpuProfile, SimBackend
from engine.metrics import SHARES, request_columns, summarize
from engine.models import model_spec
from engine.scheduler import Engine, EngineLimits
from workloads.errors import KvbenchError
from workloads.synthetic import synthetic

H100 = GpuProfile("h100", 3.35e12, 989e12)


def sim(alloc) -> SimBackend:
    return SimBackend(H100, model_spec("llama3_8b"), alloc)


def make(kind: str, slots: int, max_seq_len: int = 512):
    if kind == "static-max":
        return StaticAllocator(slots, max_seq_len, "max", "buddy")
    if kind == "static-oracle":
        return StaticAllocator(slots, max_seq_len, "oracle", "first_fit")
    if kind == "radix":
        return RadixAllocator(slots, 1)
    if kind == "vattention":
        return VAttentionAllocator(slots // 32, 32, max_seq_len)
    return (PagedAllocator if kind == "paged" else PrefixAllocator)(slots // 16, 16)


KINDS = ["static-max", "static-oracle", "paged", "prefix", "radix", "vattention"]


def workload(**kw):
    base = dict(
        max_requests=120,
        seed=1,
        arrival={"process": "poisson", "rate": 50.0},
        prompt={"kind": "uniform", "low": 10, "high": 200},
        output={"kind": "uniform", "low": 5, "high": 150},
        max_seq_len=512,
    )
    return synthetic(**(base | kw))


def run(alloc, w, **limits):
    engine = Engine(alloc, sim(alloc), EngineLimits(**limits), seed=0)
    result = engine.run(w.requests)
    return result, result.steps.columns(), request_columns(result.finished)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("slots", [2048, 20_000])
def test_every_request_finishes_once_and_memory_adds_up(kind, slots):
    w = workload(num_prefixes=2, prefix_len=48)
    alloc = make(kind, slots)
    _result, steps, reqs = run(alloc, w)
    assert sorted(reqs["req_id"]) == [r.req_id for r in w.requests]
    assert reqs["output_tokens"].sum() == w.num_output_tokens
    assert (reqs["first_token_s"] >= reqs["arrival_s"]).all()
    assert (reqs["finish_s"] >= reqs["first_token_s"]).all()
    parts = sum(steps[k] for k in SHARES)
    assert (parts == steps["capacity"]).all()
    u = alloc.usage()
    assert u.token_states == u.reservation == u.internal_frag == 0
    assert u.free + u.external_frag == alloc.capacity
    alloc.check_invariants()
    if slots == 2048:  # under pressure, memory limited admission
        assert steps["mem_limited"].any()


def test_pressure_preempts_and_still_finishes():
    w = workload(output={"kind": "uniform", "low": 200, "high": 300})
    result, _steps, reqs = run(make("paged", 1024), w)
    assert result.num_preemptions > 0
    assert reqs["num_preemptions"].sum() == result.num_preemptions
    assert reqs["output_tokens"].sum() == w.num_output_tokens


def test_parallel_sampling_and_beams_share_blocks():
    for kw in ({"n": 4}, {"beam_width": 4}):
        w = workload(max_requests=40, **kw)
        alloc = make("paged", 100_000)
        _result, steps, reqs = run(alloc, w)
        assert reqs["output_tokens"].sum() == w.num_output_tokens
        assert (reqs["num_seqs"] == 4).all()
        s = summarize(steps, reqs)
        assert s["block_saving"] > 0.05
        assert s["logical_physical_token_ratio"] > 1.0
        assert steps["num_running_seqs"].max() <= 4 * steps["num_running_reqs"].max()


def test_prefix_sharing_hits_and_never_holds_more_than_paged():
    w = workload(num_prefixes=1, prefix_len=160, arrival={"process": "burst"})
    _, steps_paged, _ = run(make("paged", 8192), w)
    _, steps_prefix, reqs = run(make("prefix", 8192), w)
    assert reqs["cached_tokens"].sum() > 0
    assert summarize(steps_prefix, reqs)["prefix_hit_rate"] > 0.3
    assert steps_prefix["time_s"][-1] <= steps_paged["time_s"][-1]


def test_caps_limit_the_batch():
    w = workload(arrival={"process": "burst"})
    _, steps, _ = run(make("paged", 100_000), w, max_num_seqs=8, max_num_batched_tokens=1000)
    assert steps["num_running_seqs"].max() <= 8
    assert (steps["num_prefill_tokens"] + steps["num_decode_tokens"] <= 1000).all()


def test_same_seed_same_run():
    w = workload(beam_width=3, max_requests=30)
    a = run(make("paged", 4096), w)[1]
    b = run(make("paged", 4096), w)[1]
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_opt13b_12gib_static_max_runs_exactly_7():
    slots = model_spec("opt_13b").kv_capacity_slots(12)
    w = workload(
        max_requests=60,
        arrival={"process": "burst"},
        max_seq_len=2048,
        prompt={"kind": "lognormal", "mean": 161, "std": 120},
        output={"kind": "lognormal", "mean": 338, "std": 250},
    )
    _, steps, _reqs = run(StaticAllocator(slots, 2048, "max", "buddy"), w)
    assert steps["num_running_reqs"].max() == 7
    saturated = steps["mem_limited"]
    assert saturated.any() and (steps["num_running_reqs"][saturated] == 7).all()


def test_a_request_larger_than_memory_is_a_clear_error():
    w = workload(max_requests=3, prompt={"kind": "fixed", "value": 300}, max_seq_len=512)
    with pytest.raises(KvbenchError, match="more than the whole capacity"):
        run(make("paged", 256), w)
    with pytest.raises(KvbenchError, match="cannot be placed"):  # buddy blocks too small
        run(StaticAllocator(700, 600, "max", "buddy"), workload(max_requests=3, max_seq_len=600))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kw", [{}, {"n": 3}, {"num_prefixes": 2, "prefix_len": 48}])
def test_multi_step_stretches_log_the_same_steps(kind, kw):
    w = workload(arrival={"process": "poisson", "rate": 5.0}, **kw)
    logs = []
    for multi in (True, False):
        alloc = make(kind, 3000)
        engine = Engine(alloc, sim(alloc), seed=0, multi_step=multi)
        result = engine.run(w.requests)
        logs.append((result.steps.values, [(g.req.req_id, g.finish_s) for g in result.finished]))
        alloc.check_invariants()
    assert logs[0] == logs[1]
    limited = result.steps.columns()["mem_limited"]
    assert limited.any() or kind != "static-max"  # memory got tight somewhere


@pytest.mark.parametrize("kind", ["prefix", "radix"])
def test_lpm_admits_the_longest_cached_prefix_first(kind):
    """Two requests wait behind a running one; the later shares its cached prefix: lpm takes
    it first, fcfs in arrival order. Without a cache (paged) lpm is fcfs."""
    w = workload(max_requests=60, num_prefixes=3, prefix_len=160, output={"kind": "fixed",
                 "value": 40}, prompt={"kind": "uniform", "low": 170, "high": 200})  # fmt: skip
    order = {}
    for policy in ("fcfs", "lpm"):
        _r, _s, reqs = run(make(kind, 1024), w, policy=policy)
        order[policy] = reqs
    fcfs, lpm = order["fcfs"], order["lpm"]
    assert sorted(lpm["req_id"]) == sorted(fcfs["req_id"])
    assert lpm["cached_tokens"].sum() > fcfs["cached_tokens"].sum()
    _r, _s, paged_lpm = run(make("paged", 1024), w, policy="lpm")
    _r, _s, paged_fcfs = run(make("paged", 1024), w)
    assert np.array_equal(paged_lpm["finish_s"], paged_fcfs["finish_s"])


def test_unknown_policy_is_refused():
    with pytest.raises(KvbenchError, match="policy"):
        EngineLimits(policy="sjf")


def test_saturated_capacity_counts_only_memory_limited_steps():
    from engine.metrics import FEATURES

    n = 4
    steps = {k: np.zeros(n) for k in (*FEATURES, "time_s", "free", "external_frag",
             "logical_slots", "logical_tokens", "token_states", "reservation", "internal_frag",
             "host_s", "kernel_s", "num_host_blocks", "num_running_seqs")}  # fmt: skip
    steps |= {
        "capacity": np.full(n, 100), "mem_limited": np.array([False, True, True, False]),
        "duration_s": np.array([1.0, 0.5, 1.5, 9.0]), "time_s": np.array([0.0, 1, 1.5, 3]),
        "num_decode_tokens": np.array([99, 10, 30, 99]),
        "num_running_reqs": np.array([1, 10, 30, 1]),
    }  # fmt: skip
    reqs = {k: np.ones(1) for k in ("cached_tokens", "computed_tokens", "output_tokens",
            "finish_s", "arrival_s", "num_seqs", "first_token_s")}  # fmt: skip
    steps["num_waiting"] = np.array([0, 3, 0, 5])  # queued: steps 1 and 3
    steps["num_running_seqs"] = np.array([2, 20, 60, 4])
    s = summarize(steps, reqs)
    assert s["decode_tokens_per_s_saturated"] == 40 / 2.0
    assert s["mean_batch_size_saturated"] == 20
    assert s["decode_tokens_per_s_queued"] == (10 + 99) / (0.5 + 9.0)
    assert s["mean_running_seqs_queued"] == 12
    steps["mem_limited"][:] = False
    steps["num_waiting"][:] = 0
    s = summarize(steps, reqs)
    assert s["decode_tokens_per_s_saturated"] is None and s["decode_tokens_per_s_queued"] is None
