"""The kvbench command end to end: a run, sweeps on each launcher, resume, and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from engine.metrics import SHARES

ROOT = Path(__file__).parents[2]
KVBENCH = [sys.executable, "-m", "experiments.cli"]
SMALL = ["workload.max_requests=40", "progress=false", "kv_budget_gib=1", "max_seq_len=4096"]
SUMMARY_KEYS = {
    "allocator",
    "block_size",
    "reservation",
    "placement",
    "workload",
    "num_requests",
    "requests_finished",
    "prompt_tokens",
    "generated_tokens",
    "clipped_requests",
    "capacity_slots",
    "max_batch_size",
    "mean_batch_size",
    "num_preemptions",
    "prefix_hit_rate",
    "sim_time_s",
    "wall_time_s",
    "throughput_tokens_per_s",
    *(f"share_{k}" for k in SHARES),
    *(f"share_{k}_all_steps" for k in SHARES),
}


def kvbench(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (this checkout's code, from any working directory)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **kwargs.pop("env", {})}
    r = subprocess.run(
        [*KVBENCH, *args], capture_output=True, text=True, timeout=300, env=env, **kwargs
    )
    if check and r.returncode:
        pytest.fail(f"kvbench {args} failed:\n{r.stdout}\n{r.stderr}")
    return r


def assert_one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one line `error: ...` on stderr naming every fragment, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_single_run_writes_every_result(tmp_path):
    r = kvbench(*SMALL, f"hydra.run.dir={tmp_path}")
    assert "token states" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["requests_finished"] == summary["num_requests"] == 40
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert (sum(steps[k] for k in SHARES) == steps["capacity"]).all()
    assert len(pd.read_parquet(tmp_path / "requests.parquet")) == 40
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["seed"] == 0 and "git_sha" in env and env["versions"]["numpy"]
    assert "kv_budget_gib: 1" in (tmp_path / "config.yaml").read_text()


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_two_job_sweep(tmp_path, launcher):
    kvbench(
        "-m",
        "allocator=static,paged",
        *SMALL,
        f"hydra.sweep.dir={tmp_path}",
        f"hydra/launcher={launcher}",
    )
    allocs = {
        json.loads((tmp_path / str(i) / "summary.json").read_text())["allocator"] for i in range(2)
    }
    assert allocs == {"static", "paged"}


def test_rerun_skips_finished_jobs(tmp_path):
    args = ["-m", "allocator.block_size=8,32", *SMALL, f"hydra.sweep.dir={tmp_path}"]
    kvbench(*args)
    kept = (tmp_path / "0" / "summary.json").read_text()
    (tmp_path / "1" / "summary.json").unlink()  # as if the sweep was killed during job 1
    r = kvbench(*args)
    assert r.stdout.count("skipped") == 1
    assert (tmp_path / "0" / "summary.json").read_text() == kept
    assert json.loads((tmp_path / "1" / "summary.json").read_text())["block_size"] == 32


def test_bad_input_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,10,x\n")
    r = kvbench(
        "workload=azure_conv",
        f"workload.path={bad}",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert r.returncode == 2
    assert f"error: {bad}, line 2, field 'GeneratedTokens'" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    r = kvbench("allocator=nope", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    for bad, message in (
        ("allocator.block_size=0", "block_size must be >= 1"),
        ("kv_budget_gib=-1", "kv_budget_gib must be > 0"),
        ("engine.max_num_seqs=0", "max_num_seqs must be >= 1"),
    ):
        r = kvbench(bad, "progress=false", f"hydra.run.dir={tmp_path / 'bad'}", check=False)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr
