"""Step-time profiles: Parquet round trip, checks on load, fits against a known function,
and the sim priced from a profile."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.backends import step_fit
from engine.backends.profile import load_profile
from engine.backends.sim import SimBackend
from engine.backends.step_fit import fit_best, relative_errors
from engine.backends.step_models import GridFit, LinearFit, nnls
from engine.metrics import FEATURES
from engine.scheduler import Engine
from tests.engine.profile_cases import (
    H100,
    LLAMA3_8B,
    META,
    profiled_cost,
    shape,
    synthetic_table,
    truth,
    write_synthetic,
)
from tests.engine.test_scheduler import make, workload
from workloads.errors import KvbenchError

H100_NAMED = type(H100)(**{**H100.__dict__, "device_name": "H100 80GB HBM3"})


def test_round_trip(tmp_path):
    saved = write_synthetic(tmp_path / "p.parquet")
    loaded = load_profile(tmp_path / "p.parquet")
    assert loaded.meta == saved.meta
    for name in (*FEATURES, "duration_s", "point"):
        np.testing.assert_array_equal(loaded.table[name], saved.table[name])


def _rewrite(path, drop=None, meta=b"keep", **values):
    t = pq.read_table(path)
    cols = {n: t.column(n).to_numpy().copy() for n in t.column_names if n != drop}
    for name, (row, v) in values.items():
        cols[name] = cols[name].astype(float)
        cols[name][row] = v
    md = t.schema.metadata if meta == b"keep" else meta
    pq.write_table(pa.table(cols).replace_schema_metadata(md), path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (dict(drop="prefill_cached"), "column 'prefill_cached' is missing"),
        (dict(duration_s=(7, 0.0)), "row 7, field 'duration_s': 0.0 (must be > 0)"),
        (dict(decode_context=(3, -1.0)), "row 3, field 'decode_context': -1.0 (must be >= 0)"),
        (dict(duration_s=(2, float("nan"))), "row 2, field 'duration_s': nan"),
        (dict(meta={}), "no kvbench.profile metadata"),
        (dict(meta={b"kvbench.profile": b"[1"}), "metadata is not a JSON object"),
        (dict(meta={b"kvbench.profile": b'{"card": "x"}'}), "field 'model' is missing"),
    ],
)
def test_bad_profiles_name_file_row_and_field(tmp_path, edit, message):
    path = tmp_path / "p.parquet"
    write_synthetic(path)
    _rewrite(path, **edit)
    with pytest.raises(KvbenchError, match=r"p\.parquet") as e:
        load_profile(path)
    assert message in str(e.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(KvbenchError, match="no such profile file"):
        load_profile(tmp_path / "none.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(KvbenchError, match="not a Parquet step profile"):
        load_profile(tmp_path / "bad.parquet")
    t = synthetic_table()
    few = {k: v[t["point"] < 2] for k, v in t.items()}
    with pytest.raises(KvbenchError, match="2 measured shape"):
        write_synthetic(tmp_path / "few.parquet", few)


def test_nnls_keeps_coefficients_non_negative():
    rng = np.random.default_rng(0)
    a = rng.random((50, 3))
    b = a @ np.array([1.0, -0.5, 2.0]) + 0.01 * rng.standard_normal(50)
    x = nnls(a, b)
    assert (x >= 0).all() and x[1] == 0
    free = np.linalg.lstsq(a[:, [0, 2]], b, rcond=None)[0]  # the optimum without column 1
    np.testing.assert_allclose(x[[0, 2]], free, rtol=1e-8)


def _held_out(t, test):
    train = {k: v[~test] for k, v in t.items()}
    held = {k: v[test] for k, v in t.items()}
    return train, held


def test_fits_predict_held_out_shapes_of_a_known_function():
    t = synthetic_table()
    cols = {k: t[k] for k in FEATURES}
    model, summary = fit_best(cols, t["duration_s"], t["point"])
    best = summary["chosen"]
    assert best["mean"] < 0.04 and best["p95"] < 0.12, summary
    # new shapes inside the measured range, noise-free truth: within 5% on average
    new = [shape((b, ctx)) for b in (2, 24, 96, 200) for ctx in (300, 1500, 3000)]
    new += [shape(prefill=(p, c, 1)) for p in (100, 700, 3000, 6000) for c in (0, 1000)]
    new += [shape((32, 700), (1000, 0, 1)), shape((8, 512), copied=64)]
    q = {n: np.array([f[j] for f in new], float) for j, n in enumerate(FEATURES)}
    err = np.abs(model.predict(q) - truth(q)) / truth(q)
    assert err.mean() < 0.05 and err.max() < 0.2, err


def test_a_wrong_fit_fails_the_same_check():
    """The check above can fail: the same fits on durations shuffled across shapes miss."""
    t = synthetic_table()
    t["duration_s"] = np.random.default_rng(1).permutation(t["duration_s"])
    _, summary = fit_best({k: t[k] for k in FEATURES}, t["duration_s"], t["point"])
    assert summary["chosen"]["mean"] > 0.3, summary


def test_grid_interpolates_the_decode_plane():
    t = synthetic_table(noise=0.0)
    grid = GridFit({k: t[k] for k in FEATURES}, t["duration_s"])
    q = [shape((b, ctx)) for b in (2, 10, 40, 100, 192) for ctx in (256, 1024, 3000)]
    cols = {n: np.array([f[j] for f in q], float) for j, n in enumerate(FEATURES)}
    assert relative_errors(grid, cols, truth(cols)).max() < 0.03
    linear = LinearFit({k: t[k] for k in FEATURES}, t["duration_s"])
    assert relative_errors(linear, cols, truth(cols)).mean() < 0.05


def test_missing_shapes_and_far_extrapolation_stop_the_run(tmp_path, capsys):
    t = synthetic_table()
    decode_only = {k: v[t["num_prefill_tokens"] == 0] for k, v in t.items()}
    write_synthetic(tmp_path / "d.parquet", decode_only)
    cost = profiled_cost(tmp_path / "d.parquet")
    cost.step(shape((64, 1000)))
    with pytest.raises(KvbenchError, match=r"num_prefill_tokens > 0 .* measured none"):
        cost.step(shape((64, 1000), (128, 0, 1)))
    cost.step(shape((300, 1000)))  # 300 > 256 measured: extrapolated, one warning
    cost.step(shape((400, 1000)))
    assert capsys.readouterr().err.count("warning:") == 1
    with pytest.raises(KvbenchError, match=r"num_decode_tokens = 600, beyond 2x .* \(256\)"):
        cost.step(shape((600, 1000)))
    with pytest.raises(KvbenchError, match="context_per_seq = 10,009, beyond 2x"):
        cost.decode_run(4, 40_000 - 4, 10, 0.0, 1e9)


def test_copies_are_priced_by_tokens_moved(tmp_path):
    """A static slot (1 token) copied costs 1/16 of the profile's 16-token block; the limits
    apply to blocks' worth of tokens."""
    write_synthetic(tmp_path / "p.parquet")
    block, slot = (
        profiled_cost(tmp_path / "p.parquet"),
        profiled_cost(tmp_path / "p.parquet", unit_tokens=1),
    )
    paged16 = profiled_cost(tmp_path / "p.parquet", unit_tokens=16)
    copied = [(0, 8, 8000.0, 0.0, 0, 0, n, 0) for n in (0, 2, 32)]
    assert [slot.step((*f[:6], 16 * f[6], 0)) for f in copied] == pytest.approx(
        [block.step(f) for f in copied]
    )
    assert paged16.unit_scale == 1.0 and block.unit_scale == 1.0
    assert block.step(copied[2]) > block.step(copied[1]) > block.step(copied[0])
    most = block.limits["num_copied_blocks"]
    slot.step((0, 8, 8000.0, 0.0, 0, 0, int(16 * 2 * most), 0))  # 2x in blocks: extrapolated
    with pytest.raises(KvbenchError, match=r"num_copied_blocks = .* \(in the profile's blocks\)"):
        slot.step((0, 8, 8000.0, 0.0, 0, 0, int(16 * 2 * most) + 32, 0))


def test_decode_runs_match_single_steps(tmp_path):
    write_synthetic(tmp_path / "p.parquet")
    cost = profiled_cost(tmp_path / "p.parquet")
    run = cost.decode_run(16, 16 * 500, 100, 0.0, 1e9)
    single = [cost.step(shape((16, 500 + i + 1))) for i in range(100)]
    np.testing.assert_allclose(run, single, rtol=1e-9)
    short = cost.decode_run(16, 16 * 500, 100, 0.0, sum(single[:40]) - 1e-9)
    assert len(short) == 40  # the steps that start before the deadline


def test_the_sim_priced_from_a_profile_tracks_the_truth(tmp_path):
    """The synthetic profile's truth is the roofline: a run priced from the fit serves the
    same workload within 3% of the roofline's throughput, through every step kind."""
    write_synthetic(tmp_path / "p.parquet")
    w = workload(n=2, num_prefixes=2, prefix_len=64, max_requests=150)
    out = {}
    for profile in (None, str(tmp_path / "p.parquet")):
        alloc = make("prefix", 3000)
        sim = SimBackend(H100_NAMED, LLAMA3_8B, alloc, profile=profile)
        steps = Engine(alloc, sim, seed=0).run(w.requests).steps.columns()
        out[profile is None] = steps["time_s"][-1] + steps["duration_s"][-1]
    assert abs(out[False] / out[True] - 1) < 0.03, out
    assert sim.gpu == META["card"] and sim.kernel == "profile"


@pytest.mark.parametrize("fit", [LinearFit, GridFit])
def test_one_step_equals_the_vectorized_prediction(fit):
    t = synthetic_table()
    model = fit({k: t[k] for k in FEATURES}, t["duration_s"])
    rng = np.random.default_rng(3)
    steps = [shape((int(b), int(c)), (int(p), int(k), 1), copied=int(n), swapped=int(w))
             for b, c, p, k, n, w in rng.integers(0, 3000, (40, 6)) if b + p]  # fmt: skip
    cols = {n: np.array([f[j] for f in steps], float) for j, n in enumerate(FEATURES)}
    np.testing.assert_allclose([model.one(f) for f in steps], model.predict(cols), rtol=1e-9)


def test_each_kind_of_step_gets_its_better_model(monkeypatch):
    t = synthetic_table()
    cols = {k: t[k] for k in FEATURES}
    kind = step_fit.kinds(cols)
    assert set(kind) == {0, 1, 2, 3}
    # held-out errors set by hand: grid better on mixed steps only
    errors = {"linear": np.where(kind == 2, 0.3, 0.02), "grid": np.where(kind == 2, 0.1, 0.2)}
    monkeypatch.setattr(step_fit, "cross_validate", lambda *a, **k: errors)
    model, summary = step_fit.fit_best(cols, t["duration_s"], t["point"])
    assert summary["kinds"] == {"decode": "linear", "prefill": "linear", "mixed": "grid",
                                "moves": "linear"}  # fmt: skip
    assert summary["chosen"]["mean"] == pytest.approx(np.where(kind == 2, 0.1, 0.02).mean())
    grid = GridFit(cols, t["duration_s"])
    linear = LinearFit(cols, t["duration_s"])
    expected = np.where(kind == 2, grid.predict(cols), linear.predict(cols))
    np.testing.assert_allclose(model.predict(cols), expected, rtol=1e-12)
    steps = [tuple(cols[n][i] for n in FEATURES) for i in range(len(kind))]
    np.testing.assert_allclose([model.one(f) for f in steps], expected, rtol=1e-9)
