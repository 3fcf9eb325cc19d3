"""Every bad input to the real CLI ends in one line `error: ...`, exit 2, no traceback."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time

import pytest

from tests.experiments.test_cli import KVBENCH, ROOT, SMALL, assert_one_line_error, kvbench


@pytest.mark.parametrize(
    "override, message",
    [
        ("kv_budget_gib=abc", "kv_budget_gib must be a finite number, got 'abc'"),
        ("kv_budget_gib=inf", "kv_budget_gib must be a finite number, got inf"),
        ("kv_budget_gib=nan", "kv_budget_gib must be a finite number, got nan"),
        ("kv_budget_gib=1e6", "more than this workload can ever use"),
        ("kv_budget_gib=1e12", "more than this workload can ever use"),
        ("seed=abc", "seed must be an integer"),
        ("allocator=nope", "Could not find 'allocator/nope'; options: orca_max"),
        ("workload.nope=1", "Key 'nope' is not in struct"),
        ("max_seq_len=${nope}", "Interpolation key 'nope' not found"),
        ("kv_budget_gib=[1,", "cannot parse the override 'kv_budget_gib=[1,'"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    r = kvbench(*SMALL, override, f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert_one_line_error(r, message)
    assert not (tmp_path / "run").exists()


def test_a_budget_the_workload_can_use_runs(tmp_path):
    # 40 sequences x 4,096 slots of llama3_8b (128 KiB each) = 20 GiB: the largest budget
    kvbench(*SMALL, "kv_budget_gib=20", f"hydra.run.dir={tmp_path}")
    assert json.loads((tmp_path / "summary.json").read_text())["capacity_slots"] == 163_840


def test_unwritable_output_directories(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = kvbench(*SMALL, f"hydra.run.dir={blocker}", check=False)
    assert_one_line_error(r, str(blocker), "File exists")
    r = kvbench(*SMALL, f"hydra.run.dir={blocker}/run", check=False)
    assert_one_line_error(r, str(blocker), "Not a directory")
    r = kvbench("-m", *SMALL, f"hydra.sweep.dir={blocker}", check=False)
    assert_one_line_error(r, str(blocker))
    r = kvbench(*SMALL, "hydra.run.dir=/proc/kvbench-run", check=False)  # read-only, even as root
    assert_one_line_error(r, "/proc/kvbench-run")


def test_a_full_disk(tmp_path):
    def small_files() -> None:  # writes beyond 16 KiB fail as they would on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    r = kvbench(*SMALL, f"hydra.run.dir={tmp_path}", preexec_fn=small_files, check=False)
    assert_one_line_error(r, str(tmp_path), "File too large")
    assert not tmp_path.exists()  # nothing was written: no directory, no temporary files


def test_a_corrupt_summary(tmp_path):
    tmp_path.joinpath("summary.json").write_text('{"allocator": "paged", ')
    r = kvbench(*SMALL, f"hydra.run.dir={tmp_path}", check=False)
    assert_one_line_error(r, f"{tmp_path}/summary.json: not a kvbench summary", "remove it")


def test_ctrl_c_during_a_sweep_says_what_finished(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "allocator.block_size=1,2,4,8,16,32,64,128", "workload.max_requests=600"]
    args += ["progress=false", "kv_budget_gib=2", f"hydra.sweep.dir={sweep}"]
    p = subprocess.Popen(
        [*KVBENCH, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (sweep / "0" / "summary.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in out + err, (p.returncode, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    finished = len(list(sweep.rglob("summary.json")))
    assert 1 <= finished < 8 and len(lines) == 1, (finished, out, err)
    assert lines[0] == (
        f"interrupted: {finished} of 8 jobs finished in {sweep}; run the same command with "
        f"hydra.sweep.dir={sweep} to run the rest (finished jobs are skipped)"
    )
    r = kvbench(*args)
    assert r.stdout.count("skipped") == finished
    assert len(list(sweep.rglob("summary.json"))) == 8


@pytest.mark.parametrize(
    "module",
    ["experiments.kernel_bench", "experiments.attention_overhead", "experiments.model_bench"],
)
def test_gpu_benchmarks_without_cuda(module):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(r, "needs a CUDA GPU")


@pytest.mark.parametrize(("value", "says"), [("0", "must be at least 1, got 0"),
                                            ("x", "not a whole number: 'x'")])  # fmt: skip
def test_attention_overhead_rounds_must_be_positive(value, says):
    r = subprocess.run(
        [sys.executable, "-m", "experiments.attention_overhead", "--rounds", value],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(f"argument --rounds: {says}")


def test_an_interrupt_that_hydra_wraps_still_exits_130(monkeypatch, capsys):
    """Ctrl-C while Hydra composes the next job's config reaches us as one of its own
    exceptions (seen: ConfigCompositionException "'NoneType' object has no attribute
    '_invalidate_flags_cache'"); it is still an interrupt, not a user error."""
    import os

    from hydra.errors import ConfigCompositionException

    from experiments import cli

    def composing_when_interrupted():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ConfigCompositionException("'NoneType' object has no attribute 'x'") from None

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored afterwards: guarded sets it
    monkeypatch.setattr(cli, "CTRL_C", [])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.guarded(composing_when_interrupted)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert exit_.value.code == 130
    assert capsys.readouterr().err.startswith("interrupted: ")
