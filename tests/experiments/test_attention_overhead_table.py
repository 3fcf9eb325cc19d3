"""The attention-overhead table and figure from a small hand-made result table (no GPU)."""

from __future__ import annotations

import pandas as pd

from allocators.vattention import VAttentionAllocator
from experiments.attention_overhead import allocator_for, markdown, time_steps
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


def with_vattention() -> pd.DataFrame:
    t = table().assign(step_mean_ms=lambda d: d.step_ms * 1.01)
    v = t[t.layout == "static"].assign(
        layout="vattention", block_size=1024, page_kib=2048, maps_per_step=12.8,
        map_us_per_page=33.1, map_ms_per_step=0.4, kernel_ms=lambda d: d.kernel_ms * 1.02,
    )  # fmt: skip
    v["step_mean_ms"] = v.step_mean_ms + 0.4
    return pd.concat([t, v], ignore_index=True)


def test_markdown_compares_vattention_with_static_and_paged():
    md = markdown(with_vattention())
    assert "| vattention | 1024 |" in md and "12.8 (33.1)" in md
    # static 32 ms against vattention 32.64 ms: 0.980x; paged 16 (32.512 ms): 0.996x
    assert "graph batch 32, 2048 KiB pages: vs static 0.980x;" in md
    assert "paged 16 0.996x;" in md and "(maps 0.400 ms per step)" in md


def test_vattention_pools_hold_the_batch_in_pages_of_whole_tokens():
    a = allocator_for("vattention", 2048, [1000, 1025, 40])
    assert isinstance(a, VAttentionAllocator) and a.block_size == 1024  # llama3_8b: 2 KiB
    assert a.num_blocks == 1 + 2 + 1 and a.max_seq_len == 8192  # llama3_8b's context
    assert allocator_for("vattention", 2048, [9000], row_tokens=4096).max_seq_len == 9000
    assert allocator_for("vattention", 64, [100]).block_size == 32


def test_time_steps_runs_vattention_on_the_cpu():
    from tests.engine.test_attention_backend import TINY

    alloc = VAttentionAllocator(8, 4, 32)
    r = time_steps(alloc, [5, 9], steps=3, warmup=1, graphs=False, model=TINY, device="cpu")
    # in the last of 3 timed steps both grow into a new page (tokens 9 and 13; 4 per page)
    assert r["maps_per_step"] * 3 == 2 * 2 * TINY.num_layers
    assert r["step_mean_ms"] > 0 and r["map_us_per_page"] > 0


def test_rounds_rotate_the_cases_and_the_table_keeps_their_medians(monkeypatch, tmp_path):
    import argparse

    from experiments import attention_overhead as ao

    calls: list[tuple[str, int | None]] = []
    times = {("static", None): [3.0, 1.0, 2.0], ("paged", 16): [9.0, 4.0, 5.0]}

    def fake(args, lens, layout, size, mode):
        calls.append((layout, size))
        kernel = times[layout, size][sum(c == (layout, size) for c in calls) - 1]
        return dict(mode=mode, layout=layout, block_size=size, page_kib=None, row_tokens=None,
                    batch=len(lens),
                    mean_len=10.0, max_len=12, card="test card", step_ms=kernel + 1,
                    step_mean_ms=kernel + 1, kernel_ms=kernel, host_ms=1.0)  # fmt: skip

    monkeypatch.setattr(ao, "measure", fake)
    monkeypatch.setattr(ao, "azure_lengths", lambda b: [10] * b)
    args = argparse.Namespace(batches=(4,), blocks=(16,), vattention=(), modes=["graph"],
                              rounds=3, out=tmp_path)  # fmt: skip
    table = ao.run(args)
    # round r starts r cases later: static, paged | paged, static | static, paged
    assert calls == [("static", None), ("paged", 16), ("paged", 16), ("static", None),
                     ("static", None), ("paged", 16)]  # fmt: skip
    got = table.set_index("layout")
    assert got.kernel_ms.to_dict() == {"static": 2.0, "paged": 5.0}
    assert got.rounds.to_dict() == {"static": 3, "paged": 3}
    assert got.overhead_vs_contiguous["paged"] == 1.5
    assert len(pd.read_csv(tmp_path / "attention_overhead_rounds.csv")) == 6
