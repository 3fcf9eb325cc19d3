"""Reports never mix or hide runs: setups apart, references only where they hold, missing
jobs named, one job shown once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from experiments import runs
from experiments.reference import REFERENCES, reference_for, system_of
from experiments.report import collect, groups, markdown
from plots.cli import _note, plot_all
from plots.memory import fig2_bars
from tests.experiments.test_cli import ROOT, kvbench

FIG2 = ["experiment=vllm_fig2", "workload.max_requests=60", "progress=false"]


@pytest.fixture(scope="module")
def two_budgets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig2")
    kvbench(*FIG2, f"hydra.sweep.dir={root / 'gib12'}")
    kvbench(*FIG2, "kv_budget_gib=6", f"hydra.sweep.dir={root / 'gib6'}")
    return root


def report_cli(root) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from experiments.report import main; main()", str(root)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)


def test_setups_are_never_mixed(two_budgets):
    table = collect(two_budgets)
    found = groups(table)
    assert [exp for exp, _, _ in found] == ["vllm_fig2", "vllm_fig2"]
    for _, title, g in found:
        assert g.kv_budget_gib.nunique() == 1 and g.run.nunique() == 5  # 4 paper bars + vattention
        assert f"kv_budget_gib={g.kv_budget_gib.iloc[0]}" in title
    paths = {p.name for p in plot_all(two_budgets)}
    for setup in table.setup.unique():
        assert f"fig2_memory_shares_{setup[:8]}.png" in paths
        assert f"batch_and_memory_over_time_{setup[:8]}.png" in paths


def test_timed_backends_are_grouped_by_the_card_they_ran_on(two_budgets, tmp_path):
    """A model or attention run's `backend/gpu=` is a sim profile it does not use: runs on one
    card with different profiles are one setup; one job run on two cards is two runs of two
    setups, also within one sweep."""
    src = next((two_budgets / "gib12").rglob("summary.json")).parent
    for name, card, profile, job in (("a", "NVIDIA H200", "h100_sxm", "x"),
                                     ("b", "NVIDIA H200", "h200", "y"),
                                     ("c", "NVIDIA H100 80GB HBM3", "h100_sxm", "x")):  # fmt: skip
        run = tmp_path / name / "0"
        shutil.copytree(src, run)
        summary = json.loads((run / "summary.json").read_text())
        summary.update(backend="model", gpu=card, job_hash=job)
        (run / "summary.json").write_text(json.dumps(summary))
        cfg = OmegaConf.load(run / "config.yaml")
        cfg.backend.gpu.name = profile
        OmegaConf.save(cfg, run / "config.yaml")
    setups = {r.name.split("/")[0]: r.setup for r in runs.find_runs(tmp_path)}
    assert sorted(setups) == ["a", "b", "c"]
    assert setups["a"] == setups["b"] != setups["c"]
    sim = {r.setup for r in runs.find_runs(two_budgets / "gib12")}
    assert len(sim) == 1 and sim.isdisjoint(setups.values())
    members = [r for r in runs.find_runs(tmp_path) if r.name != "b/0"]
    for r in members:  # a and c as two jobs of one sweep
        r.sweep = runs.sweeps.Sweep(tmp_path, [[], []], ["allocator"])
    runs._set_setups(members)
    assert members[0].setup != members[1].setup


def test_setup_labels_show_file_names_and_say_where_they_are_cut():
    profile = {"backend.profile": "results/reference/profiles/opt_13b_h200_bfloat16.parquet",
               "workload.max_requests": 80, "kv_budget_gib": None}  # fmt: skip
    assert runs.label(profile, sorted(profile)) == (
        "backend.profile=opt_13b_h200_bfloat16.parquet, kv_budget_gib=None, "
        "workload.max_requests=80"
    )
    long = runs.label({"a": "x" * 200}, ["a"])
    assert len(long) == runs.LABEL_CHARS and long.endswith("...")


def test_references_only_beside_runs_of_the_reference_setup(two_budgets):
    table = collect(two_budgets)
    at12, at6 = table[table.kv_budget_gib == 12], table[table.kv_budget_gib == 6]
    paper = REFERENCES["vllm_fig2"].values
    has = at12.apply(lambda r: r.metric in paper.get(r.system, {}), axis=1)
    assert has.sum() >= 8 and at12[has].reference.notna().all()
    assert at12[~has].reference.isna().all()
    assert at6.reference.isna().all()
    in_paper = at6[at6.system != "vattention"]  # vAttention has no bar in the paper
    assert set(in_paper.no_reference) == {"kv_budget_gib is 6.0, the reference setup has 12"}
    text = report_cli(two_budgets).stdout
    assert "(20.4)" in text and "no reference beside some runs: kv_budget_gib is 6.0" in text
    g6 = next(g for _, _, g in groups(table) if (g.kv_budget_gib == 6).all())
    title = fig2_bars(g6, _note(g6)).axes[0].get_title()
    assert "no paper bars: kv_budget_gib is 6.0" in title


def test_reference_rules():
    run = {"experiment": "vllm_fig2", "allocator": "paged", "block_size": 16, "model": "opt_13b"}
    run |= {"kv_budget_gib": 12.0, "max_seq_len": 2048, "workload": "sharegpt_like"}
    assert reference_for(run, system_of(run))[0] == {"share_token_states": 96.3}
    assert reference_for({**run, "block_size": 32}, "paged") == (
        {},
        "block_size is 32, the reference setup has 16",
    )
    moon = {"experiment": "mooncake_prefix", "workload": "mooncake_conv", "kv_budget_gib": None}
    moon |= {"block_size": 512, "clipped_requests": 2825, "allocator": "prefix"}
    assert reference_for(moon, system_of(moon))[1] == (
        "clipped_requests is 2825, the reference setup has 0"
    )
    # sharing: named by sampling, and by system where not vLLM's (its allocator config's)
    share = {"experiment": "sharing", "n": 2, "beam_width": 1, "allocator": "prefix"}
    assert system_of({**share, "system": "prefix_b64"}) == "prefix_b64 n2"
    assert system_of({**share, "allocator": "static", "reservation": "max"}) == "orca_max n2"
    assert system_of({**share, "allocator": "paged", "system": "paged"}) == "n2"
    assert system_of({**share, "n": 1, "beam_width": 1, "allocator": "paged"}) == "single"


def test_a_killed_sweep_says_how_many_jobs_are_missing(tmp_path):
    sweep = tmp_path / "sweep"
    kvbench(*FIG2, f"hydra.sweep.dir={sweep}")
    (sweep / "2" / "summary.json").unlink()
    r = report_cli(sweep)
    assert "incomplete: 1 of 5 jobs missing" in r.stdout
    assert "incomplete: 1 of 5 jobs missing" in (sweep / "report.md").read_text()
    assert set(pd.read_csv(sweep / "report.csv").incomplete) == {"incomplete: 1 of 5 jobs missing"}
    ((_, _, g),) = groups(collect(sweep))
    assert "incomplete: 1 of 5 jobs missing" in fig2_bars(g, _note(g)).axes[0].get_title()


def test_one_job_in_two_folders_is_shown_once(tmp_path):
    kvbench(*FIG2, f"hydra.sweep.dir={tmp_path / 'a'}")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    table = collect(tmp_path)
    assert table.run.nunique() == 5 and table.incomplete.isna().all()


def test_runs_without_an_experiment_and_unlimited_budgets(tmp_path):
    args = ["workload.max_requests=30", "progress=false", "kv_budget_gib=null"]
    r = kvbench(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert "slots (unlimited: room for every sequence at once)" in r.stdout
    text = markdown(collect(tmp_path))
    assert "### runs without an experiment" in text and "(none)" not in text
