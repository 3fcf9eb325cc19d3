"""kvbench-calibrate --add-steps: a GPU run's measured steps appended to a profile (checked
against its model, dtype and card; first-use compile stalls dropped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from engine.backends.profile import load_profile
from engine.backends.step_models import GridFit
from engine.metrics import FEATURES
from experiments.calibrate_runs import add_steps
from tests.engine.profile_cases import META, shape, truth, write_synthetic
from tests.experiments.test_cli import ROOT, assert_one_line_error

CALIBRATE = [sys.executable, "-m", "experiments.calibrate"]


def gpu_run(path, backend="model", card=META["card"], dtype="bfloat16", stall=True):
    """A served run's directory: 200 decode and mixed steps timed by the truth, the first
    one 20x longer (a first-use compile)."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    steps = [shape((int(b), int(c)), (int(p), 0, 1) if p else (0, 0, 0))
             for b, c, p in zip(rng.integers(1, 60, 200), rng.integers(100, 3000, 200),
                                rng.choice([0, 0, 0, 64, 700], 200))]  # fmt: skip
    cols = {n: np.array([f[j] for f in steps], float) for j, n in enumerate(FEATURES)}
    cols["duration_s"] = truth(cols) * 1.05  # the served steps run 5% slower than the grid
    if stall:
        cols["duration_s"][0] *= 20
    pd.DataFrame(cols).to_parquet(path / "steps.parquet")
    summary = {"backend": backend, "model": "llama3_8b", "gpu": card, "workload": "synthetic"}
    (path / "summary.json").write_text(json.dumps(summary))
    cfg = {"backend": {"dtype": dtype}, "model": {"name": "llama3_8b"}}
    (path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))


def test_steps_are_appended_as_one_held_out_group(tmp_path):
    base = write_synthetic(tmp_path / "p.parquet")
    gpu_run(tmp_path / "runs/a")
    gpu_run(tmp_path / "runs/b", stall=False)
    out, lines = add_steps(load_profile(tmp_path / "p.parquet"), [tmp_path / "runs"])
    n = len(base)
    assert len(out) == n + 199 + 200 and "dropped 1 over 3x" in lines[0]
    assert set(out.table["run"][:n]) == {0} and list(np.unique(out.table["run"][n:])) == [1, 2]
    assert len(np.unique(out.table["point"][n:])) == 2  # one group per run
    assert [r["dropped"] for r in out.meta["added_runs"]] == [1, 0]
    # the grid interpolates the grid's shapes only; the run's steps are the linear fit's
    grid = GridFit(out.features, out.table["duration_s"])
    alone = GridFit(base.features, base.table["duration_s"])
    q = base.features
    np.testing.assert_allclose(grid.predict(q), alone.predict(q))


@pytest.mark.parametrize(
    "run, message",
    [
        (dict(backend="sim"), "backend 'sim' measured nothing"),
        (dict(card="NVIDIA H200"), "card 'NVIDIA H200', but the profile's is 'NVIDIA H100"),
        (dict(dtype="float16"), "dtype 'float16', but the profile's is 'bfloat16'"),
    ],
)
def test_runs_of_another_setup_are_refused(tmp_path, run, message):
    write_synthetic(tmp_path / "p.parquet")
    gpu_run(tmp_path / "runs/a", **run)
    cmd = [*CALIBRATE, "--add-steps", str(tmp_path / "runs"), "--profile",
           str(tmp_path / "p.parquet"), "--out", str(tmp_path / "q.parquet")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert_one_line_error(r, str(tmp_path / "runs/a"), message)
    assert not (tmp_path / "q.parquet").exists()


def test_the_command_writes_the_extended_profile(tmp_path):
    write_synthetic(tmp_path / "p.parquet")
    gpu_run(tmp_path / "runs/a")
    cmd = [*CALIBRATE, "--add-steps", str(tmp_path / "runs"), "--profile",
           str(tmp_path / "p.parquet"), "--out", str(tmp_path / "q.parquet")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "added" in r.stdout and "199 steps, dropped 1" in r.stdout
    assert load_profile(tmp_path / "q.parquet").meta["added_runs"][0]["steps"] == 199
    r = subprocess.run([*CALIBRATE, "--add-steps", str(tmp_path)], capture_output=True,
                       text=True, timeout=120, env=env)  # fmt: skip
    assert r.returncode == 2 and "--add-steps takes --profile and --out" in r.stderr
