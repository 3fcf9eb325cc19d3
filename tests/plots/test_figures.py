"""Figures drawn from the committed reference results: nothing overlaps, references shown,
kernel shapes kept apart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.lines import Line2D

from experiments.reference import SUSTAINED_RATE_RATIOS, SUSTAINED_RATE_SOURCE
from experiments.report import collect, groups
from experiments.runs import find_runs
from plots import memory
from plots.kernels import NAMES, kernel_bandwidth

REFERENCE = Path(__file__).parents[2] / "results" / "reference"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return collect(REFERENCE / "paper")


def group(table: pd.DataFrame, experiment: str) -> pd.DataFrame:
    (g,) = [g for exp, _, g in groups(table) if exp == experiment]
    return g


def boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_block_size_labels_do_not_overlap_the_other_panel(table):
    fig = memory.block_size(group(table, "block_size"))
    fig.canvas.draw()
    left, right = fig.axes
    r = fig.canvas.get_renderer()
    assert not boxes_overlap(right.yaxis.label.get_window_extent(r), left.get_window_extent(r))
    assert not boxes_overlap(left.get_tightbbox(r), right.get_tightbbox(r))


def test_latency_legend_stays_off_the_curves_and_shows_the_paper(table):
    fig = memory.latency_vs_rate(
        group(table, "request_rate"), "", SUSTAINED_RATE_RATIOS, SUSTAINED_RATE_SOURCE
    )
    fig.canvas.draw()
    (ax,) = fig.axes
    r = fig.canvas.get_renderer()
    assert not boxes_overlap(ax.get_legend().get_window_extent(r), ax.get_window_extent(r))
    text = " ".join(t.get_text() for t in ax.texts)
    assert "(paper 1.7-2.7x)" in text and "(paper 2.7-8x)" in text


def test_rate_at_latency_interpolates_on_log_latency():
    rate, lat = pd.Series([1.0, 2.0, 3.0]), pd.Series([0.01, 0.01, 0.04])
    assert memory.rate_at_latency(rate, lat, 0.02) == pytest.approx(2.5)
    assert memory.rate_at_latency(rate, lat, 0.05) is None  # never reached
    assert memory.rate_at_latency(rate, lat, 0.005) is None  # above it from the start


def test_gpu_points_over_the_calibrated_sim_curve(tmp_path):
    """The committed GPU rate points drawn over the sim runs of the same setups (kvbench-plot
    --points): one cross per GPU run, in its system's colour, and said what they are."""
    from plots.cli import main

    gpu = REFERENCE / "model_h200" / "paper_gpu"
    sim = tmp_path / "sim"
    for d in (gpu / "rate_curve_100_sim").iterdir():
        if d.is_dir() and d.name != "figures":
            shutil.copytree(d, sim / d.name)
    main([str(sim), "--points", str(gpu / "rate_curve_100")])
    assert (sim / "figures" / "latency_vs_rate.png").exists()
    records = pd.DataFrame([r.record for r in find_runs(gpu / "rate_curve_100")])
    fig = memory.latency_vs_rate(collect(sim), points=records)
    (ax,) = fig.axes
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    lines = {ln.get_label(): ln.get_color() for ln in ax.get_lines() if ln.get_marker() == "o"}
    assert sum(len(ln.get_xdata()) for ln in crosses) == 13
    assert {ln.get_color() for ln in crosses} == set(lines.values())
    text = " ".join(t.get_text() for t in ax.texts)
    assert "crosses: NVIDIA H200, model backend (13 runs)" in text
    longer = tmp_path / "longer"  # another workload size: no cross may be drawn over it
    for d in sim.iterdir():
        if d.is_dir() and d.name != "figures":
            shutil.copytree(d, longer / d.name)
    for cfg in longer.rglob("config.yaml"):
        cfg.write_text(cfg.read_text().replace("max_requests: 100", "max_requests: 99"))
    with pytest.raises(SystemExit):
        main([str(longer), "--points", str(gpu / "rate_curve_100")])
    with pytest.raises(SystemExit) as exit_:
        main([str(sim), "--points", str(tmp_path / "missing")])
    assert exit_.value.code == 2


def test_titles_say_whether_the_numbers_are_simulated_and_on_which_card(table):
    fig = memory.block_size(group(table, "block_size"))
    assert "opt_13b, 12 GiB KV, a100_40gb roofline sim" in fig.get_suptitle()
    run = {"gpu": "NVIDIA H200", "backend": "sim", "kernel": "profile"}
    assert memory.source(pd.Series(run)) == "NVIDIA H200 calibrated sim"
    run.update(backend="model", kernel="triton_paged")
    assert memory.source(pd.Series(run)) == "NVIDIA H200, model backend"
    assert memory.source(pd.Series({"gpu": "h100_sxm"})) == "h100_sxm"  # older reports


def test_prefix_hit_rate_draws_the_trace_repeat_shares(table):
    fig = memory.hit_rate(group(table, "mooncake_prefix"))
    left = fig.axes[0]
    flat = {round(ln.get_ydata()[0], 1) for ln in left.get_lines() if ln.get_linestyle() == "--"}
    assert flat == {36.6, 64.0}


def test_sweep_figures_have_one_line_per_allocator(tmp_path):
    rows = [
        {
            "run": f"r{i}",
            "system": s,
            "label": s.upper(),
            "rank": {"orca_max": 10, "paged": 40}[s],
            "max_num_seqs": n,
            "metric": m,
            "value": v,
            "reference": None,
            "model": "llama3_8b",
            "kv_budget_gib": 16.0,
            "gpu": "h100_sxm",
        }
        for i, (s, n) in enumerate((s, n) for s in ("orca_max", "paged") for n in (8, 64))
        for m, v in (("share_token_states_all_steps", 10.0), ("throughput_tokens_per_s", 99.0))
    ]
    fig = memory.sweep_lines(pd.DataFrame(rows), "max_num_seqs", "max_num_seqs")
    for ax in fig.axes:
        assert len([ln for ln in ax.get_lines() if isinstance(ln, Line2D)]) == 2
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["ORCA_MAX", "PAGED"]


def test_kernel_figure_keeps_shapes_apart_and_names_kernels():
    fig = kernel_bandwidth(pd.read_csv(REFERENCE / "kernels_h100" / "kernels.csv"))
    main, blocks = fig.axes
    assert not [ln for ln in main.get_lines() if len(ln.get_xdata()) > 2]  # bars, not lines
    ticks = [t.get_text() for t in main.get_xticklabels()]
    assert any(t.startswith("ragged 64") for t in ticks) and "64 x 1024" in ticks
    legend = [t.get_text() for t in main.get_legend().get_texts()]
    assert "kvbench paged decode, block 16" in legend
    assert not [n for n in legend if "_" in n]  # display names, not raw identifiers
    assert set(NAMES.values()) >= {n.split(",")[0] for n in legend if "copy" not in n}
    assert len(blocks.get_legend().get_texts()) == 5  # blocks 8..128 relative to 16
