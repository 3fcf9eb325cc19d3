"""Parsers on every shared trace, checked against ../shared/traces/README.md."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.stats import repeat_share, trace_stats
from workloads.traces import load_trace, read_rows

README = {  # rows, duration_s, input mean/median/p99, output mean/median/p99
    "azure_conv": (19366, 3501.7, (1154.7, 1020, 4142), (211.1, 129, 601)),
    "mooncake_conv": (12031, 3537.0, (12035.1, 6909, 85400.4), (342.6, 350, 1118.5)),
    "mooncake_synth": (3993, 1022.0, (15325.5, 11587, 66456.2), (149.1, 69, 768.1)),
    "sharegpt": (30731, None, (2340.0, 1730, 7433.7), (438.7, 415, 998)),
}


@pytest.mark.parametrize("name", sorted(README))
def test_trace_statistics_match_the_readme(name, need_trace):
    need_trace(name)
    rows, duration, inp, out = README[name]
    s = trace_stats(read_rows(name)[1])
    assert s["rows"] == rows
    if duration is not None:
        assert s["duration_s"] == pytest.approx(duration, abs=0.1)
    for key, want in zip(("input", "output"), (inp, out)):
        got = (s[f"{key}_mean"], s[f"{key}_median"], s[f"{key}_p99"])
        assert got == pytest.approx(want, abs=0.06)


@pytest.mark.parametrize(
    ("name", "share", "refs"),
    [("mooncake_conv", 0.366, 288_500), ("mooncake_synth", 0.640, 121_877)],
)
def test_mooncake_repeat_share(name, share, refs, need_trace):
    need_trace(name)
    rows = read_rows(name)[1]
    assert sum(map(len, rows.hash_ids)) == refs
    assert repeat_share(rows.hash_ids) == pytest.approx(share, abs=0.0005)


def test_azure_rate_and_first_rows(need_trace):
    need_trace("azure_conv")
    w = load_trace("azure_conv")
    assert len(w.requests) == 19366 and w.num_clipped == 0
    assert w.requests[0].arrival_s == 0.0
    assert len(w.requests) / w.requests[-1].arrival_s == pytest.approx(5.53, abs=0.01)
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(w.requests, w.requests[1:]))


def test_azure_code_parser_reads_the_conv_file_as_a_path(need_trace):
    path = need_trace("azure_conv")  # azure_code has the same columns; no local copy exists
    w = load_trace(str(path), format="azure", max_requests=10)
    assert [r.prompt_len for r in w.requests[:2]] == [374, 396]


def test_options_window_scale_max_and_clip(need_trace):
    need_trace("azure_conv")
    w = load_trace("azure_conv", window_start_s=600, window_end_s=900, rate_scale=2.0)
    full = load_trace("azure_conv").requests
    inside = [r for r in full if 600 <= r.arrival_s < 900]
    assert len(w.requests) == len(inside)
    for got, want in ((w.requests[0], inside[0]), (w.requests[-1], inside[-1])):
        assert got.arrival_s == pytest.approx((want.arrival_s - 600) / 2)  # window start = 0
    clipped = load_trace("azure_conv", max_seq_len=2048)
    long = sum(r.prompt_len + r.output_len > 2048 for r in full)
    assert clipped.num_clipped == long > 0 and len(clipped.requests) == len(full)
    assert max(r.prompt_len + r.output_len for r in clipped.requests) == 2048
    assert len(load_trace("azure_conv", max_requests=7).requests) == 7


def test_sharegpt_gets_generated_arrivals(need_trace):
    need_trace("sharegpt")
    a = load_trace(
        "sharegpt", max_requests=2000, arrival={"process": "poisson", "rate": 4.0}, seed=3
    )
    b = load_trace(
        "sharegpt", max_requests=2000, arrival={"process": "poisson", "rate": 4.0}, seed=3
    )
    times = np.array([r.arrival_s for r in a.requests])
    assert times[0] == 0 and len(times) / times[-1] == pytest.approx(4.0, rel=0.1)
    assert a == b


def test_mooncake_shared_hash_ids_share_token_blocks(need_trace):
    need_trace("mooncake_conv")
    reqs = load_trace("mooncake_conv").requests
    first = {}
    for r in reqs:  # two requests with the same two leading hash ids, then different ones
        if len(r.chunks) > 2 and r.chunks[1][1] == 512:
            other = first.setdefault(r.chunks[:2], r)
            if other is not r and other.chunks[2] != r.chunks[2]:
                a, b = other, r
                break
    ta, tb = a.tokens(1), b.tokens(2)
    for bs in (16, 128, 512):
        assert ta.block_key(1024 - bs, 1024) == tb.block_key(1024 - bs, 1024)
        assert ta.block_key(1024, 1024 + bs) != tb.block_key(1024, 1024 + bs)
    assert (ta.ids(0, 1024, 32000) == tb.ids(0, 1024, 32000)).all()
    assert (ta.ids(1024, 1040, 32000) != tb.ids(1024, 1040, 32000)).any()
    last = a.chunks[-1][1]
    assert sum(n for _, n in a.chunks) == a.prompt_len and 0 < last <= 512
