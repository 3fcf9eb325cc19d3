"""kvbench-calibrate on the CPU: the driver's step shapes (in process, a tiny model through
Triton's interpreter) and the command end to end (llama3_8b shapes, one layer, a few points)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from allocators import PagedAllocator, StaticAllocator
from engine.backends.attention import AttentionBackend
from engine.backends.profile import load_profile
from engine.models import ModelSpec
from experiments.calibrate import QUICK, _ints, points
from experiments.calibrate_grid import Driver, Point, contexts, run_grid
from tests.experiments.test_cli import ROOT, assert_one_line_error, kvbench

TINY = ModelSpec("tiny", num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16,
                 hidden_size=64, num_params=0)  # fmt: skip
CALIBRATE = [sys.executable, "-m", "experiments.calibrate"]
CPU = ["backend=attention", "backend.device=cpu", "+backend.num_layers=1", "backend.graphs=false",
       "kv_budget_gib=0.05", "progress=false"]  # fmt: skip
SMALL_GRID = ["--decode-batches", "1,2", "--decode-contexts", "16,40", "--prefill-tokens", "16",
              "--prefill-cached", "0,16", "--prefill-seqs", "1", "--mixed-batches", "1",
              "--mixed-tokens", "16", "--fork-batches", "1", "--swap-tokens", "32",
              "--mixed-context", "20", "--moves-context", "19",
              "--repeats", "2", "--warmup", "0"]  # fmt: skip


def _run(alloc, grid: list[Point], repeats: int = 2):
    backend = AttentionBackend(TINY, alloc, dtype="float32", device="cpu", graphs=False)
    seen = []
    rows, ids = run_grid(Driver(alloc, backend), grid, 1, repeats, lambda p, r: seen.append(r))
    return np.array(rows), np.array(ids), seen


# NOTE: decode KV is never prefilled (times do not depend on values): garbage may overflow
pytestmark = pytest.mark.filterwarnings("ignore:(overflow|invalid value|All-NaN slice) encountered")


@pytest.mark.parametrize(
    "alloc",
    [lambda: PagedAllocator(400, 4), lambda: StaticAllocator(1600, 128, "oracle", "first_fit")],
)
def test_each_shape_is_the_step_it_names(alloc):
    a = alloc()
    grid = [Point(decode=(3, 20)), Point(prefill=(24, 8, 2)), Point(decode=(2, 9), fork=True),
            Point(decode=(2, 9), swap=12), Point(decode=(2, 9), prefill=(5, 0, 1))]  # fmt: skip
    rows, ids, _ = _run(a, grid)
    assert list(ids) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    f = {n: rows[:, j] for j, n in enumerate(("prefill", "decode", "context", "pairs", "cached",
                                              "seqs", "copied", "swapped"))}  # fmt: skip
    # decode 3 x 20 after one warm-up step: contexts 3 x 22, then 3 x 23
    assert list(f["decode"][:2]) == [3, 3] and list(f["context"][:2]) == [66, 69]
    assert list(f["prefill"][2:4]) == [24, 24] and list(f["cached"][2:4]) == [16, 16]
    assert f["seqs"][2] == 2 and f["pairs"][2] == 2 * 12 * (8 + 6)
    assert (f["decode"][4:6] == 4).all() and (f["copied"][4:6] > 0).all()  # forks copy
    assert (f["swapped"][6:8] > 0).all() and f["prefill"][6:8].tolist().count(1) == 1
    assert (f["prefill"][8:] == 5).all() and (f["decode"][8:] == 2).all()
    assert (rows[:, 8] > 0).all()  # durations
    u = a.usage()
    assert u.token_states == u.reservation == 0  # every point freed what it held
    a.check_invariants()


def test_shapes_that_do_not_fit_are_skipped():
    _, ids, seen = _run(PagedAllocator(30, 4), [Point(decode=(2, 8)), Point(decode=(64, 8))])
    assert seen[1] is None and set(ids) == {0}


def test_the_quick_grid_covers_every_kind():
    grid = points({k: _ints(v) for k, v in QUICK.items()})
    assert any(p.fork for p in grid) and any(p.swap for p in grid)
    assert any(p.decode[0] and p.prefill[0] for p in grid)
    assert {p.prefill[1] for p in grid} == {0, 32}


def test_the_command_writes_a_profile(tmp_path):
    out = tmp_path / "p.parquet"
    args = [*CPU, "max_seq_len=41", "--out", str(out), *SMALL_GRID]  # 40 + 2 steps: too long
    r = subprocess.run([*CALIBRATE, *args], capture_output=True,
                       text=True, timeout=600, env={**os.environ,
                                                    "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "held-out relative error" in r.stdout and f"wrote {out}" in r.stdout
    p = load_profile(out)
    assert p.meta["card"] == "cpu" and p.meta["model"] == "llama3_8b"
    assert p.meta["dtype"] == "bfloat16" and p.meta["backend"] == "attention"
    assert p.meta["versions"]["torch"] and "--decode-batches 1,2" in p.meta["command"]
    assert set(p.meta["fit"]["kinds"].values()) <= {"linear", "grid"}
    assert "skipped: decode 1x40 (longer than max_seq_len); decode 2x40" in r.stdout
    assert len(np.unique(p.table["point"])) == 2 + 2 + 1 + 1 + 1 and len(p) == 14
    # a profile of the CPU cannot price an H100's steps: the card rule
    r = kvbench(
        "workload.max_requests=5",
        "progress=false",
        f"backend.profile={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert_one_line_error(r, "measured on 'cpu'", "h100_sxm")


@pytest.mark.parametrize(
    "args, message",
    [
        (["kv_budget_gib=1"], "times a GPU backend: add backend=model"),
        (["backend=attention", "kv_budget_gib=null"], "needs kv_budget_gib"),
        (["backend=attention", "model=nope"], "Could not find 'model/nope'"),
    ],
)
def test_errors(args, message):
    r = subprocess.run([*CALIBRATE, *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert_one_line_error(r, message)


def test_the_model_backend_runs_every_kind_of_shape():
    from engine.backends.model import ModelBackend
    from tests.engine.model_cases import llama_config, spec_of

    cfg = llama_config()
    alloc = PagedAllocator(200, 4)
    backend = ModelBackend(spec_of(cfg), alloc, dtype="float32", device="cpu", graphs=False,
                           config=cfg)  # fmt: skip
    grid = points({k: _ints(v) for k, v in QUICK.items()})
    _, ids = run_grid(Driver(alloc, backend), grid, 1, 1, lambda p, r: None)
    assert sorted(set(ids)) == list(range(len(grid)))  # every shape ran
    # the last shape: a swap-in step, 8 decode rows and the swapped sequence's newest token
    assert tuple(backend.last_logits.shape) == (9, cfg.vocab_size)
    assert alloc.usage().token_states == 0


def test_ragged_contexts_keep_their_mean():
    assert contexts(1, 100, True) == [100] and contexts(3, 100, False) == [100] * 3
    for n, mean in ((2, 128), (7, 1000), (256, 128)):
        c = contexts(n, mean, True)
        assert sum(c) == n * mean and min(c) >= mean // 2 - 1 and max(c) <= 3 * mean // 2 + 1
        assert len(set(c)) > n // 2  # spread: a served batch, not one length


def test_the_profile_records_the_forward_it_measured():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from experiments.calibrate import _config

    cfg = OmegaConf.create({"backend": {"fused_ops": "auto", "graphs": True}})
    assert _config(cfg, SimpleNamespace(fused=object())) == {"fused_ops": True, "graphs": True}
    assert _config(cfg, SimpleNamespace(fused=None))["fused_ops"] is False
    assert _config(cfg, SimpleNamespace())["fused_ops"] == "auto"  # no such option to resolve
