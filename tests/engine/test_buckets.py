"""The graphs' buckets (engine/backends/buckets.py): what the model backend's graphs run a
step at, and the sim pricing a profiled step at that padded shape."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.backends.buckets import BUCKETS, MAX_PREFILLS, MIXED_TOKENS, Padding
from engine.backends.profile import load_profile
from engine.metrics import FEATURES
from tests.engine.profile_cases import profiled_cost, shape, synthetic_table, write_synthetic

MODEL = Padding.of("model", {"graphs": True, "mixed_graphs": True, "max_num_seqs": 128})


def test_which_backends_pad_what():
    assert Padding(mixed=True, largest=128) == MODEL
    assert Padding.of("model", {"graphs": True, "mixed_graphs": False, "max_num_seqs": 20}) == (
        Padding(mixed=False, largest=24)
    )
    assert Padding.of("attention", {"graphs": True, "max_num_seqs": 8}) == (
        Padding(mixed=False, largest=BUCKETS[-1])
    )
    on_card = {"graphs": True, "mixed_graphs": True, "max_num_seqs": 8, "device": "cuda:1"}
    assert Padding.of("model", on_card) == Padding(mixed=True, largest=8)
    assert Padding.of("model", {"graphs": False}) is None
    assert Padding.of("model", {"graphs": True, "device": "cpu"}) is None
    assert Padding.of("synthetic", {}) is None


def test_steps_run_at_their_buckets():
    f = shape((65, 300))  # decode only: the bucket of 65 sequences
    assert MODEL.one(f)[:3] == (0, 80, 65 * 300)
    f = shape((65, 300), (200, 0, 1))  # beside a prefill: the mixed graphs' sizes
    assert MODEL.one(f)[:2] == (256, 96)
    assert MODEL.one(f)[2:] == f[2:]  # the KV attended is the real sequences'
    for eager in (shape((129, 300)), shape((8, 300), (3000, 0, 1)),
                  shape((8, 300), (9 * 16, 0, MAX_PREFILLS + 1))):  # fmt: skip
        assert MODEL.one(eager) == eager


steps = st.tuples(
    st.integers(0, MIXED_TOKENS[-1] + 100), st.integers(0, 200), st.integers(1, MAX_PREFILLS + 2)
)


@given(st.lists(steps, min_size=1, max_size=30))
def test_columns_pad_as_one_step_does(rows):
    feats = [shape((n, 100), (t * s, 0, s) if t else (0, 0, 0)) for t, n, s in rows]
    cols = {name: np.array([f[j] for f in feats], np.float64) for j, name in enumerate(FEATURES)}
    padded = MODEL.columns(cols)
    for i, f in enumerate(feats):
        assert tuple(padded[name][i] for name in FEATURES) == pytest.approx(MODEL.one(f))


def test_the_sim_prices_a_step_at_its_bucket(tmp_path):
    """A profile of the model backend with graphs: 65 sequences cost what the 80-sequence
    bucket costs, a prefill of 200 tokens beside 65 what 256 beside 96 do; a profile of
    unpadded steps prices each shape as it is."""
    config = {"graphs": True, "mixed_graphs": True, "max_num_seqs": 256}
    write_synthetic(tmp_path / "model.parquet", backend="model", config=config)
    write_synthetic(tmp_path / "plain.parquet")
    model, plain = (
        profiled_cost(tmp_path / "model.parquet"),
        profiled_cost(tmp_path / "plain.parquet"),
    )
    decode = shape((65, 300))
    assert model.step(decode) == pytest.approx(plain.step((0, 80, *decode[2:])))
    mixed = shape((65, 300), (200, 0, 1))
    assert model.step(mixed) == pytest.approx(plain.step((256, 96, *mixed[2:])))
    assert model.step(mixed) > plain.step(mixed)
    run = model.decode_run(65, 65 * 300, 3, 0.0, 1e9)
    assert run == pytest.approx(
        [plain.step((0, 80, 65 * (300 + i), 0, 0, 0, 0, 0)) for i in (1, 2, 3)]
    )


def test_a_profile_fits_the_shapes_its_graphs_ran(tmp_path):
    """An off-bucket shape (65 sequences) is fitted as the 80 rows its graph ran; the limits
    the sim checks a run against stay the scheduled shapes'."""
    t = synthetic_table()
    off = np.array(shape((65, 500)), np.float64)
    extra = {name: np.full(3, off[j]) for j, name in enumerate(FEATURES)}
    extra["duration_s"], extra["point"] = np.full(3, 0.01), np.full(3, t["point"].max() + 1)
    t = {k: np.concatenate([v, extra[k]]) for k, v in t.items()}
    config = {"graphs": True, "mixed_graphs": True, "max_num_seqs": 256}
    write_synthetic(tmp_path / "p.parquet", t, backend="model", config=config)
    p = load_profile(tmp_path / "p.parquet")
    assert p.features["num_decode_tokens"][-3:].tolist() == [80] * 3
    assert p.table["num_decode_tokens"][-3:].tolist() == [65] * 3
    cost = profiled_cost(tmp_path / "p.parquet")
    assert cost.limits["num_decode_tokens"] == 256
    f = shape((65, 500))
    assert cost.step(f) == pytest.approx(cost.step((0, 80, *f[2:])))
