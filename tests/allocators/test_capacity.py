"""KV bytes per token from transformers configs, and the analytic check of DESIGN.md."""

from __future__ import annotations

import pytest

from allocators import StaticAllocator
from engine.models import derive_spec, model_spec
from tests.allocators.seqs import seq


@pytest.mark.parametrize(
    ("name", "kv_bytes", "params_b"),
    [
        ("opt_13b", 819_200, 12.85),
        ("llama2_7b", 524_288, 6.74),
        ("llama_13b", 819_200, 13.02),
        ("llama3_8b", 131_072, 8.03),
        ("llama3_70b", 327_680, 70.55),
    ],
)
def test_kv_bytes_per_token(name, kv_bytes, params_b):
    spec = derive_spec(name)
    assert spec.kv_bytes_per_token == kv_bytes
    assert spec.num_params / 1e9 == pytest.approx(params_b, abs=0.01)
    assert model_spec(name) == spec  # the cached spec is the derived one


def test_opt13b_12gib_gives_15729_slots_and_max_admits_exactly_7():
    slots = derive_spec("opt_13b").kv_capacity_slots(12)
    assert slots == 15_729
    for placement in ("first_fit", "best_fit", "buddy"):
        a = StaticAllocator(slots, 2048, "max", placement)
        admitted = 0
        while a.allocate(seq(admitted, 100, 100), 100) is not None:
            admitted += 1
        assert admitted == 7
        u = a.usage()
        assert u.external_frag == slots - 7 * 2048 == 1393  # 8.86% left over, stranded
