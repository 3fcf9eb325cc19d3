"""A job is its resolved config and its inputs: reruns, locking, clutter, permissions."""

from __future__ import annotations

import fcntl
import json
import os
import stat

from omegaconf import OmegaConf

from experiments import identity
from tests.experiments.test_cli import SMALL, assert_one_line_error, kvbench


def azure_csv(path, rows: int = 30, output: int = 20) -> None:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2023-11-16 18:15:{i:02d}.0,{100 + i},{output}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_cosmetic_overrides_skip_the_finished_job(tmp_path):
    run = tmp_path / "run"
    kvbench(*SMALL, "seed=1", f"hydra.run.dir={run}")
    first = summary(run)
    assert len(first["job_hash"]) == 64 and first["kvbench_version"]
    for args in (
        ["progress=true", *SMALL, "seed=1"],  # progress on, overrides reordered
        [*SMALL, "seed=01"],  # the same number spelled differently
        [*SMALL, "seed=1", "allocator=paged", "kv_budget_gib=1.0"],  # defaults named
    ):
        r = kvbench(*args, f"hydra.run.dir={run}")
        assert "skipped" in r.stdout, args
    assert summary(run) == first


def test_another_config_in_the_same_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    kvbench(*SMALL, f"hydra.run.dir={run}")
    r = kvbench(*SMALL, "kv_budget_gib=2", f"hydra.run.dir={run}", check=False)
    assert_one_line_error(r, "holds the results of another job", "kv_budget_gib: 1.0 -> 2.0")


def test_an_edited_input_file_reruns_the_job(tmp_path):
    trace = tmp_path / "trace.csv"
    azure_csv(trace, output=20)
    args = ["workload=azure_conv", f"workload.path={trace}", "progress=false"]
    kvbench(*args, f"hydra.run.dir={tmp_path / 'run'}")
    before = summary(tmp_path / "run")
    assert before["inputs"] == {"path": identity.sha256_of(trace)}
    assert "skipped" in kvbench(*args, f"hydra.run.dir={tmp_path / 'run'}").stdout
    azure_csv(trace, output=40)
    r = kvbench(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert "rerunning" in r.stdout and "inputs.path" in r.stdout
    after = summary(tmp_path / "run")
    assert after["job_hash"] != before["job_hash"]
    assert after["generated_tokens"] == 2 * before["generated_tokens"] == 2 * 30 * 20


def test_identity_ignores_presentation_and_spelling():
    base = OmegaConf.create(
        {"seed": 1, "max_seq_len": 64, "kv_budget_gib": 12, "progress": True, "workload": {}}
    )
    same = OmegaConf.create(
        {
            "seed": "01",
            "max_seq_len": 64,
            "kv_budget_gib": 12.0,
            "progress": False,
            "sweep_name": "x",
            "workload": {},
        }
    )
    assert identity.identify(base)["job_hash"] == identity.identify(same)["job_hash"]
    other = OmegaConf.merge(base, {"seed": 2})
    assert identity.identify(base)["job_hash"] != identity.identify(other)["job_hash"]


def test_a_second_writer_gets_a_clear_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("kvbench pid 12345 on testhost\n")
        held.flush()
        r = kvbench(*SMALL, f"hydra.run.dir={run}", check=False)
    assert_one_line_error(r, f"{run} is being written by kvbench pid 12345 on testhost")
    assert not (run / "summary.json").exists() and (run / ".lock").exists()
    kvbench(*SMALL, f"hydra.run.dir={run}")  # the lock is free again
    assert (run / "summary.json").exists()


def test_a_failed_run_leaves_no_run_directory(tmp_path):
    r = kvbench(*SMALL, "kv_budget_gib=-1", cwd=tmp_path, check=False)
    assert_one_line_error(r, "kv_budget_gib must be > 0")
    assert not (tmp_path / "results" / "runs").exists() or not any(
        (tmp_path / "results" / "runs").iterdir()
    )
    r = kvbench("-m", *SMALL, "kv_budget_gib=-1,-2", cwd=tmp_path, check=False)
    assert_one_line_error(r, "kv_budget_gib must be > 0")
    assert not (tmp_path / "results" / "sweep").exists() or not any(
        (tmp_path / "results" / "sweep").iterdir()
    )


def test_result_files_follow_the_umask(tmp_path):
    run = tmp_path / "run"
    kvbench(*SMALL, f"hydra.run.dir={run}", preexec_fn=lambda: os.umask(0o022))
    for name in ("summary.json", "steps.parquet", "requests.parquet", "config.yaml", "env.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name
