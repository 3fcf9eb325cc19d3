"""kvbench sweeps on a real SLURM cluster (experiments/cluster/local_slurm.sh): summaries equal
the basic launcher's, a cancelled job reruns while finished ones are skipped, and a crashing
job fails the sweep in seconds instead of hanging it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pytest

pytestmark = pytest.mark.cluster
T = TypeVar("T")

KVBENCH = [sys.executable, "-m", "experiments.cli"]
# 4 jobs over two allocators; 1,500 requests keep Orca jobs busy for seconds (cancel test).
SWEEP = [
    "-m",
    "sweep=request_rate",
    "allocator=orca_max,paged",
    "workload.arrival.rate=1.0,2.0",
    "workload.max_requests=1500",
    "progress=false",
]
NUM_JOBS = 4
# The shipped GPU-cluster config, shrunk to this one small node.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=5",
]
# A job's wall-clock time differs between any two runs; every other field must be equal.
TIMING_FIELDS = {"wall_time_s"}


def kvbench(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [*KVBENCH, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and r.returncode:
        pytest.fail(f"kvbench {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))
    }


def untimed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_FIELDS}


def assert_equal_results(sweep_dir: Path, basic_dir: Path) -> None:
    """Every job's summary (but its timing) and step table equal the basic launcher's."""
    got, want = summaries(sweep_dir), summaries(basic_dir)
    assert sorted(got) == sorted(want) == [str(i) for i in range(NUM_JOBS)]
    for job, s in got.items():
        assert untimed(s) == untimed(want[job]), f"job {job}"
        steps = pd.read_parquet(sweep_dir / job / "steps.parquet")
        pd.testing.assert_frame_equal(steps, pd.read_parquet(basic_dir / job / "steps.parquet"))


def sacct(array_id: str, num_tasks: int) -> dict[str, tuple[str, str]]:
    """Task id -> (state, requested TRES) of every task of a job array, once slurmdbd holds
    all of them ended (slurmctld sends its records there asynchronously)."""

    def ended() -> dict[str, tuple[str, str]]:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State,ReqTRES", "-j", array_id],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [line.split("|") for line in out.splitlines() if line]
        tasks = {job.split("_")[1]: (state.split()[0], tres) for job, state, tres in rows}
        live = {"PENDING", "RUNNING", "COMPLETING", "REQUEUED"}
        done = len(tasks) == num_tasks and not live & {s for s, _ in tasks.values()}
        return tasks if done else {}

    return wait_until(ended, 30, f"sacct records of job array {array_id}")


def array_ids(sweep_dir: Path) -> list[str]:
    """The SLURM job arrays of a sweep directory, oldest first (submitit's folder names)."""
    return sorted(
        (p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()), key=int
    )


def squeue(*args: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, check=True)
    return out.stdout.split()


def wait_until(cond: Callable[[], T], timeout: float, what: str) -> T:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := cond():
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(autouse=True)
def empty_queue():
    """Each test starts and ends with no job on the cluster."""
    wait_until(lambda: not squeue("-o", "%i"), 60, "an empty queue")
    yield
    wait_until(lambda: not squeue("-o", "%i"), 60, "an empty queue")


@pytest.fixture(scope="module")
def basic(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("basic")
    kvbench(*SWEEP, f"hydra.sweep.dir={sweep_dir}")
    return sweep_dir


def report_and_plot(sweep_dir: Path) -> None:
    for module in ("experiments.report", "plots.cli"):
        code = f"from {module} import main; main()"
        r = subprocess.run(
            [sys.executable, "-c", code, str(sweep_dir)], capture_output=True, text=True
        )
        assert r.returncode == 0, f"{module}: {r.stderr}"
    assert len(pd.read_csv(sweep_dir / "report.csv").run.unique()) == NUM_JOBS
    assert (sweep_dir / "figures" / "latency_vs_rate.png").exists()


def test_sweep_equals_basic_launcher(tmp_path, basic):
    r = kvbench(*SWEEP, *SLURM, f"hydra.sweep.dir={tmp_path}")
    assert "### request_rate" in r.stdout  # the report callback ran after the jobs
    assert_equal_results(tmp_path, basic)
    (array_id,) = array_ids(tmp_path)
    tasks = sacct(array_id, NUM_JOBS)
    assert sorted(tasks) == [str(i) for i in range(NUM_JOBS)]
    for state, tres in tasks.values():
        assert state == "COMPLETED" and "cpu=1" in tres and "gpu" not in tres  # sim: no GPU
    report_and_plot(tmp_path)


def test_cancelled_job_reruns(tmp_path, basic):
    args = [*SWEEP, *SLURM, f"hydra.sweep.dir={tmp_path}"]
    sweep = subprocess.Popen(
        [*KVBENCH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    running = wait_until(lambda: squeue("-t", "RUNNING", "-o", "%i"), 60, "a running job")
    cancelled = min(running, key=lambda j: int(j.split("_")[1]))
    subprocess.run(["scancel", cancelled], check=True)
    out, _ = sweep.communicate(timeout=120)
    assert sweep.returncode != 0 and "CANCELLED" in out, out
    wait_until(lambda: not squeue("-o", "%i"), 60, "the other jobs")
    task = cancelled.split("_")[1]
    finished = {job: (tmp_path / job / "summary.json").stat() for job in summaries(tmp_path)}
    assert task not in finished, "the cancelled job finished before SLURM killed it"
    assert len(finished) == NUM_JOBS - 1
    states = sacct(array_ids(tmp_path)[0], NUM_JOBS)
    assert states.pop(task)[0] == "CANCELLED"
    assert {state for state, _ in states.values()} == {"COMPLETED"}

    kvbench(*args)  # the rerun: finished jobs skipped, the cancelled one runs
    for job, before in finished.items():
        after = (tmp_path / job / "summary.json").stat()
        assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    rerun_logs = "".join(
        p.read_text() for p in (tmp_path / ".submitit").glob(f"{array_ids(tmp_path)[-1]}_*/*.out")
    )
    assert rerun_logs.count("skipped:") == NUM_JOBS - 1
    assert_equal_results(tmp_path, basic)
    report_and_plot(tmp_path)


def test_crashing_job_fails_the_sweep(tmp_path, need_trace):
    good, bad = need_trace("azure_conv"), tmp_path / "missing" / "trace.csv"
    start = time.monotonic()
    r = kvbench(
        "-m",
        "workload=azure_conv",
        "workload.max_requests=100",
        f"workload.path={good},{bad}",
        "progress=false",
        *SLURM,
        f"hydra.sweep.dir={tmp_path}",
        check=False,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    out = r.stdout + r.stderr
    assert r.returncode != 0 and elapsed < 60, f"exit {r.returncode} after {elapsed:.0f} s"
    assert f"error: {bad}" in out  # the job's own one-line error, passed on
    (array_id,) = array_ids(tmp_path)
    assert sacct(array_id, 2)["1"][0] == "FAILED"
    assert (tmp_path / "0" / "summary.json").exists()
    assert not (tmp_path / "1" / "summary.json").exists()
