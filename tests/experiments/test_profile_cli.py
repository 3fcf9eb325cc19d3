"""`kvbench backend.profile=FILE` end to end: a calibrated sim run, and every bad profile
ending in one line `error: ...`, exit 2, naming the file and what is wrong."""

from __future__ import annotations

import json

import pytest

from tests.engine.profile_cases import synthetic_table, write_synthetic
from tests.experiments.test_cli import SMALL, assert_one_line_error, kvbench


def test_a_run_priced_from_a_profile(tmp_path):
    write_synthetic(tmp_path / "p.parquet")
    kvbench(*SMALL, f"backend.profile={tmp_path / 'p.parquet'}", f"hydra.run.dir={tmp_path / 'r'}")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["gpu"] == "NVIDIA H100 80GB HBM3" and summary["kernel"] == "profile"
    assert summary["requests_finished"] == 40


def _subset(keep) -> dict:
    t = synthetic_table()
    return {k: v[keep(t)] for k, v in t.items()}


@pytest.mark.parametrize(
    "profile, overrides, fragments",
    [
        (None, [], ["none.parquet", "no such profile file"]),
        ("corrupt", [], ["p.parquet", "not a Parquet step profile"]),
        ({}, ["model=opt_13b"], ["measured for model 'llama3_8b'", "model=opt_13b"]),
        ({}, ["backend/gpu=h200"], ["measured on 'NVIDIA H100 80GB HBM3'", "h200"]),
        ({"dtype": "float16"}, [], ["measured for dtype 'float16'", "backend.dtype=bfloat16"]),
        ({"table": lambda t: t["num_prefill_tokens"] == 0}, [],
         ["num_prefill_tokens > 0", "profile measured none"]),
        ({"table": lambda t: t["num_decode_tokens"] <= 4}, [],
         ["num_decode_tokens", "beyond 2x the largest measured (4)"]),
    ],
)  # fmt: skip
def test_bad_profiles(tmp_path, profile, overrides, fragments):
    path = tmp_path / ("none.parquet" if profile is None else "p.parquet")
    if profile == "corrupt":
        path.write_bytes(b"PAR1" + bytes(range(64)))
    elif isinstance(profile, dict):
        keep = profile.pop("table", None)
        write_synthetic(path, _subset(keep) if keep else None, **profile)
    run_dir = tmp_path / "r"
    r = kvbench(*SMALL, f"backend.profile={path}", *overrides, f"hydra.run.dir={run_dir}",
                check=False)  # fmt: skip
    r.stderr = "".join(ln for ln in r.stderr.splitlines(True) if not ln.startswith("warning:"))
    assert_one_line_error(r, *fragments)
    assert not (run_dir / "summary.json").exists()


def test_mild_extrapolation_warns_once_per_quantity(tmp_path):
    t = synthetic_table()
    keep = t["num_decode_tokens"] <= 4  # the run's batches reach 6
    write_synthetic(tmp_path / "p.parquet", {k: v[keep] for k, v in t.items()})
    r = kvbench(*SMALL, f"backend.profile={tmp_path / 'p.parquet'}", "engine.max_num_seqs=6",
                f"hydra.run.dir={tmp_path / 'r'}")  # fmt: skip
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert any("num_decode_tokens" in w for w in warnings), r.stderr
    names = [w.split(": ")[2].split(" =")[0] for w in warnings]
    assert len(names) == len(set(names)), warnings
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["max_batch_size"] == 6


def test_a_new_profile_at_the_same_path_is_a_new_job(tmp_path):
    path, run = tmp_path / "p.parquet", f"hydra.run.dir={tmp_path / 'r'}"
    write_synthetic(path)
    kvbench(*SMALL, f"backend.profile={path}", run)
    assert "skipped" in kvbench(*SMALL, f"backend.profile={path}", run).stdout
    t = synthetic_table()
    t["duration_s"] = t["duration_s"] * 2  # a slower card
    write_synthetic(path, t)
    r = kvbench(*SMALL, f"backend.profile={path}", run)
    assert "rerunning" in r.stdout and "backend.profile" in r.stdout
