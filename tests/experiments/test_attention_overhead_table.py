"""The attention-overhead table and figure from a small hand-made result table (no GPU)."""

from __future__ import annotations

import pandas as pd

from experiments.attention_overhead import markdown
from plots.attention import attention_overhead


def table() -> pd.DataFrame:
    rows = [dict(layout="static", block_size=None, batch=b, kernel_ms=1.0 * b) for b in (32, 64)]
    rows += [
        dict(layout="paged", block_size=bs, batch=b, kernel_ms=b * (1 + bs / 1000))
        for b in (32, 64)
        for bs in (8, 16, 256)
    ]
    t = pd.DataFrame(rows).assign(mean_len=1000.0, max_len=4000, card="test card", mode="graph")
    t["step_ms"] = t.kernel_ms * 1.05
    t["host_ms"] = t.step_ms - t.kernel_ms
    base = t[t.layout == "static"].set_index("batch").kernel_ms
    t["overhead_vs_contiguous"] = t.kernel_ms / t.batch.map(base) - 1
    t["host_share"] = t.host_ms / t.step_ms
    return t


def test_markdown_reports_overhead_and_host_share():
    md = markdown(table())
    assert "test card" in md
    assert "+1.6%" in md and "+25.6%" in md
    assert "(4.8%)" in md  # host share of the step


def test_figure_is_written(tmp_path):
    both = pd.concat([table(), table().assign(mode="eager")])
    paths = attention_overhead(both, tmp_path / "fig")
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
