"""Synthetic generators: statistics at fixed seeds, determinism, shared prefixes, the default."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.errors import KvbenchError
from workloads.stats import fit
from workloads.synthetic import Dist, arrival_times, azure_default, azure_fit, synthetic
from workloads.tokens import SYSTEM
from workloads.traces import read_rows


@pytest.mark.parametrize(
    ("process", "cv"), [("poisson", 1.0), ("gamma", 2.5), ("gamma", 0.5), ("fixed", 0.0)]
)
def test_arrival_rate_and_cv(process, cv):
    t = arrival_times(process, 20_000, rate=8.0, cv=cv, rng=np.random.default_rng(0))
    gaps = np.diff(t)
    assert t[0] == 0 and (gaps >= 0).all()
    assert 1 / gaps.mean() == pytest.approx(8.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.06)


def test_burst_puts_everyone_at_zero():
    assert not arrival_times("burst", 5, 1.0, 1.0, np.random.default_rng(0)).any()


@pytest.mark.parametrize(
    ("dist", "mean", "std"),
    [
        (Dist("fixed", value=77), 77, 0),
        (Dist("uniform", low=10, high=30), 20, np.sqrt((21**2 - 1) / 12)),
        (Dist("lognormal", mean=300, std=200), 300, 200),
    ],
)
def test_length_distributions(dist, mean, std):
    x = dist.sample(np.random.default_rng(1), 50_000)
    assert x.min() >= 1 and x.dtype == np.int64
    assert x.mean() == pytest.approx(mean, rel=0.02)
    assert x.std() == pytest.approx(std, rel=0.03, abs=0.01)


def test_same_seed_same_requests_other_seed_other_requests():
    kw = dict(max_requests=300, prompt={"kind": "lognormal", "mean": 100, "std": 50})
    assert synthetic(seed=4, **kw) == synthetic(seed=4, **kw)
    assert synthetic(seed=4, **kw).requests != synthetic(seed=5, **kw).requests


def test_shared_prefixes_parallel_sampling_and_beams():
    w = synthetic(
        max_requests=200,
        num_prefixes=3,
        prefix_len=64,
        n=4,
        seed=2,
        prompt={"kind": "fixed", "value": 20},
    )
    groups = {r.chunks[0][0] for r in w.requests}
    assert groups == {(SYSTEM, 0), (SYSTEM, 1), (SYSTEM, 2)}
    assert all(r.prompt_len == 84 and r.n == 4 and r.num_seqs == 4 for r in w.requests)
    a, b = [r for r in w.requests if r.chunks[0][0] == (SYSTEM, 1)][:2]
    assert a.tokens(1).block_key(0, 64) == b.tokens(2).block_key(0, 64)
    assert a.tokens(1).block_key(64, 80) != b.tokens(2).block_key(64, 80)
    assert synthetic(max_requests=3, beam_width=4).requests[0].num_seqs == 4
    with pytest.raises(ValueError, match="n or beam_width"):
        synthetic(max_requests=3, beam_width=4, n=2)


def test_clipping_is_counted_or_refused():
    kw = dict(max_requests=500, prompt={"kind": "uniform", "low": 1, "high": 3000}, seed=0)
    w = synthetic(max_seq_len=2048, **kw)
    assert w.num_clipped > 0 and max(r.prompt_len + r.output_len for r in w.requests) <= 2048
    with pytest.raises(KvbenchError, match="exceed max_seq_len 2048"):
        synthetic(max_seq_len=2048, clip=False, **kw)


def test_bad_settings_are_clear_errors():
    with pytest.raises(KvbenchError, match="unknown length distribution"):
        synthetic(prompt={"kind": "zipf"})
    with pytest.raises(KvbenchError, match="bad dist settings"):
        synthetic(prompt={"kind": "fixed", "mu": 3})
    with pytest.raises(KvbenchError, match="unknown arrival process"):
        synthetic(arrival={"process": "weibull"})
    for bad in ({"num_prefixes": 1, "prefix_len": -5}, {"num_prefixes": 1, "prefix_len": 0},
                {"num_prefixes": -1}):  # fmt: skip
        with pytest.raises(KvbenchError, match=r"workload\.prefix_len >= 1"):
            synthetic(**bad)
    for key, value in (("prefix_len", "abc"), ("max_requests", 1.5), ("n", None)):
        with pytest.raises(KvbenchError, match=rf"workload\.{key} must be an integer"):
            synthetic(num_prefixes=1, **{key: value})
    with pytest.raises(KvbenchError, match=r"workload\.arrival\.rate must be a finite number"):
        synthetic(arrival={"rate": "abc"})
    with pytest.raises(KvbenchError, match=r"workload\.arrival\.cv must be a finite number"):
        synthetic(arrival={"cv": float("nan")})
    assert synthetic(max_requests="3").requests[2].req_id == 2  # Hydra reads 03 as a string
    assert len(synthetic(max_requests=np.int64(4), arrival={"rate": np.float32(2)}).requests) == 4


def test_embedded_default_is_the_fit_of_the_azure_trace(need_trace):
    need_trace("azure_conv")
    assert azure_fit() == fit(read_rows("azure_conv")[1])


def test_embedded_default_resembles_the_azure_trace():
    w = azure_default(max_requests=20_000, seed=0)
    f = azure_fit()
    prompts = np.array([r.prompt_len for r in w.requests])
    times = np.array([r.arrival_s for r in w.requests])
    assert prompts.mean() == pytest.approx(f["prompt"]["mean"], rel=0.03)
    assert prompts.max() <= f["prompt"]["max"]
    gaps = np.diff(times)
    assert 1 / gaps.mean() == pytest.approx(f["rate"], rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(f["cv"], rel=0.05)
