"""The step table records each step's shape: the sim's step time is a function of the logged
features alone, so any run's steps.parquet is a step-time sample (features -> duration)."""

from __future__ import annotations

import numpy as np
import pytest

from allocators import PrefixAllocator
from engine.backends.base import StepBatch
from engine.backends.sim import RooflineCost
from engine.metrics import FEATURES
from engine.models import model_spec
from engine.sequence import Seq
from tests.engine.test_scheduler import H100, make, run, workload
from workloads.request import Request


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("kind", ["paged", "prefix", "static-oracle"])
def test_logged_features_give_the_logged_durations(kind, preemption):
    w = workload(n=2, num_prefixes=2, prefix_len=64, max_requests=80)
    _r, steps, _q = run(make(kind, 2400), w, preemption=preemption)
    cost = RooflineCost(model_spec("llama3_8b"), H100)
    alloc = make(kind, 2400)
    per_block = alloc.block_size * cost.model.kv_bytes_per_token / H100.pcie_bytes_per_s
    args = ["num_prefill_tokens", "num_decode_tokens", "decode_context", "prefill_pairs",
            "prefill_cached"]  # fmt: skip
    expected = [
        cost.step_time(*(steps[a][i] for a in args)) + steps["num_swapped_blocks"][i] * per_block
        for i in range(len(steps["time_s"]))
    ]
    np.testing.assert_allclose(steps["duration_s"], expected, rtol=1e-12)
    assert steps["num_prefill_seqs"].max() >= 2  # several admissions in one step
    assert steps["prefill_cached"].max() > 0 or kind != "prefix"  # prefix hits read KV
    assert steps["num_copied_blocks"].max() > 0  # n=2 forks copy (static) or copy-on-write
    preempted = steps["num_preempted"].sum() > 0  # static oracle reserves all: never
    assert preempted or kind == "static-oracle"
    assert (steps["num_swapped_blocks"].max() > 0) == (preemption == "swap" and preempted)
    decode_only = steps["num_prefill_tokens"] == 0
    assert (steps["decode_context"][decode_only] == steps["logical_tokens"][decode_only]).all()


def test_features_of_a_batch_by_hand():
    alloc = PrefixAllocator(20, 4)
    batch = StepBatch()
    s = Seq(1, 10, 20, Request(1, 0.0, 10, 10).tokens(1))
    alloc.allocate(s, 10)
    batch.add_prefill(s, 4, 6)
    batch.copies_before.append((1, 2, 3))
    batch.copies_after.append((4, 5, 1))
    batch.swap_in.append((0, 7, 2))
    batch.num_decode, batch.decode_context = 3, 300
    assert dict(zip(FEATURES, batch.features())) == {
        "num_prefill_tokens": 6,
        "num_decode_tokens": 3,
        "decode_context": 300,
        "prefill_pairs": 6 * (4 + 3),
        "prefill_cached": 4,
        "num_prefill_seqs": 1,
        "num_copied_blocks": 4,
        "num_swapped_blocks": 2,
    }
