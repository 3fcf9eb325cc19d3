"""The fidelity table: GPU runs beside calibrated-sim runs of the same configs, from synthetic
result directories with known numbers; the report and the figure; experiment=fidelity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from experiments.fidelity import METRICS, latency, markdown, pairs, table
from plots.cli import plot_all
from tests.engine.profile_cases import write_synthetic
from tests.experiments.test_cli import ROOT
from tests.experiments.test_configs import cfg_with, options

ARRIVAL = np.arange(100) * 0.1


def write_run(path, backend, workload="azure_conv", speed=1.0, kernel="profile", profile=None,
              **summary):  # fmt: skip
    """A finished run: requests first-token 0.2 s and finishing 2 s after arrival (/ speed),
    10 output tokens each; summary numbers as given."""
    path.mkdir(parents=True)
    profile = {"profile": str(profile)} if profile else {}
    reqs = pd.DataFrame({
        "req_id": np.arange(100), "arrival_s": ARRIVAL, "first_token_s": ARRIVAL + 0.2 / speed,
        "finish_s": ARRIVAL + 2.0 / speed, "prompt_tokens": 50, "output_tokens": 10,
        "num_seqs": 1, "num_preemptions": 0, "cached_tokens": 0, "computed_tokens": 50,
    })  # fmt: skip
    reqs.to_parquet(path / "requests.parquet")
    cfg = {"workload": {"name": workload, "max_requests": 100}, "allocator": {"block_size": 16},
           "backend": {"_target_": backend, **profile}, "seed": 0, "progress": False}  # fmt: skip
    (path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    record = {"backend": backend, "kernel": kernel, "workload": workload, "allocator": "paged",
              "gpu": "NVIDIA H100 80GB HBM3", "requests_finished": 100, "sim_time_s": 12.0,
              "experiment": "fidelity", "num_requests": 100, **summary}  # fmt: skip
    (path / "summary.json").write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path):
    gpu = dict(throughput_tokens_per_s=1000.0, mean_batch_size=20.0, num_preemptions=4)
    write_run(tmp_path / "gpu/0", "model", **gpu)
    write_synthetic(tmp_path / "p.parquet")
    write_run(tmp_path / "sim/0", "sim", speed=1.25, throughput_tokens_per_s=1040.0,
              mean_batch_size=17.0, num_preemptions=6, profile=tmp_path / "p.parquet")  # fmt: skip
    write_run(tmp_path / "gpu/1", "model", workload="sharegpt_like", **gpu)  # no sim beside
    write_run(tmp_path / "sim/2", "sim", kernel="roofline", **gpu)  # not calibrated
    return tmp_path


def test_pairs_and_errors(results):
    assert [(m.name, p.name) for m, p in pairs(results)] == [("gpu/0", "sim/0")]
    t = table(results).set_index("metric")
    assert list(t.index) == list(METRICS)
    assert t.loc["throughput_tokens_per_s", "error"] == pytest.approx(0.04)
    assert t.loc["mean_ttft_s", "measured"] == pytest.approx(0.2)
    assert t.loc["mean_ttft_s", "error"] == pytest.approx(-0.2)  # 1.25x faster
    assert t.loc["p99_tpot_s", "measured"] == pytest.approx(1.8 / 9)
    assert t.loc["mean_batch_size", "error"] == pytest.approx(-0.15)
    within = t.within.to_dict()
    assert within["throughput_tokens_per_s"] and not within["mean_ttft_s"]
    assert not within["mean_batch_size"] and within["num_preemptions"] is None
    text = markdown(table(results))
    assert "**-20.0%**" in text and "(+4.0%)" in text and "within target: 1 of 6" in text
    assert "p.parquet: NVIDIA H100 80GB HBM3" in text and "predicts held-out shapes within" in text


def test_latency_skips_single_token_outputs(tmp_path):
    write_run(tmp_path / "r", "model")
    reqs = pd.read_parquet(tmp_path / "r/requests.parquet")
    reqs.loc[0, "output_tokens"] = 1
    reqs.to_parquet(tmp_path / "r/requests.parquet")
    assert latency(tmp_path / "r")["mean_tpot_s"] == pytest.approx(0.2)  # 1.8 s / 9 tokens


def test_report_and_figure(results):
    cmd = [sys.executable, "-c", "from experiments.report import main; main()", str(results)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "fidelity: calibrated sim" in r.stdout and "**-20.0%**" in r.stdout
    assert "fidelity: calibrated sim" in (results / "report.md").read_text()
    assert len(pd.read_csv(results / "fidelity.csv")) == len(METRICS)
    assert "fidelity.png" in {p.name for p in plot_all(results)}


@pytest.mark.parametrize("case", options("fidelity"))
def test_fidelity_cases_compose(case):
    for backend in ("model", "sim"):
        cfg = cfg_with("experiment=fidelity", f"fidelity={case}", f"backend={backend}")
        assert cfg.experiment_name == "fidelity" and cfg.engine.max_num_batched_tokens == 8192
        assert cfg.workload.max_requests <= 400 and cfg.model.name == "llama3_8b"
    sweep = cfg_with("experiment=fidelity").hydra.sweeper.params["fidelity"].split(",")
    assert case in sweep
