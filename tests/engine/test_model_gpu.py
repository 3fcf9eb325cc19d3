"""The model backend under the engine on a GPU (pytest -m gpu), bf16: every step's logits -
CUDA-graph replays included - against the same weights run in float32 by transformers with its
own cache, for static, paged and prefix allocators with forks (n=2), shared prefixes and
preemption in both modes, and vattention with real page maps."""

from __future__ import annotations

import pytest
import torch

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from engine.backends.base import StepBatch
from engine.backends.model import ModelBackend
from engine.scheduler import Engine, EngineLimits
from tests.engine.model_cases import (
    Recorder,
    bf16_floor,
    llama_config,
    max_rel_error,
    opt_config,
    spec_of,
)
from workloads.synthetic import synthetic

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
TOL = 3e-2  # bf16 against float32; a wrong block gives ~0.5 (CPU, float32: 0.63)
ALLOCATORS = {
    "static-oracle": lambda: StaticAllocator(2400, 256, "oracle", "first_fit"),
    "paged-16": lambda: PagedAllocator(90, 16),
    "prefix-16": lambda: PrefixAllocator(90, 16),
}


def small(cfg=None, alloc=None, **kw) -> ModelBackend:
    """Two layers of head_dim 128 (the kernels' real tile shapes), GQA 8/2."""
    cfg = cfg or llama_config(hidden=1024, heads=8, kv_heads=2)
    return ModelBackend(spec_of(cfg), alloc, config=cfg, max_seq_len=256, max_num_seqs=32, **kw)


def run_engine(backend: ModelBackend, preemption: str, seed: int = 3, requests: int = 16) -> tuple:
    # every request at t=0: which steps run, and which sequences are preempted, do not
    # depend on how fast the card runs them (Poisson arrivals did: a faster step once left
    # the prefix pool without a preemption)
    wl = synthetic(
        max_requests=requests, seed=seed, arrival={"process": "burst"},
        prompt={"kind": "uniform", "low": 20, "high": 100},
        output={"kind": "uniform", "low": 10, "high": 60}, max_seq_len=256, n=2,
        num_prefixes=2, prefix_len=32,
    )  # fmt: skip
    rec = Recorder(backend)
    engine = Engine(backend.alloc, backend, EngineLimits(max_num_seqs=24, preemption=preemption))
    result = engine.run(wl.requests)
    assert len(result.finished) == len(wl.requests)
    backend.alloc.check_invariants()
    return result, rec


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_engine_steps_match_transformers(name, preemption):
    backend = small(alloc=ALLOCATORS[name]())
    result, rec = run_engine(backend, preemption)
    if not name.startswith("static"):
        assert result.num_preemptions > 0, "the pool is meant to be tight"
    assert backend.graphs is not None and backend.graphs.graphs, "no step was replayed"
    assert backend.graphs.mixed, "no step with a prefill was replayed"
    assert len(rec.records) > 300
    assert max_rel_error(backend, rec.records) < TOL


def test_eager_and_captured_up_front():
    """Graphs off; and every bucket captured before the run (as the benchmark does)."""
    eager = small(alloc=PagedAllocator(90, 16), graphs=False)
    assert max_rel_error(eager, run_engine(eager, "recompute")[1].records) < TOL
    ahead = small(alloc=PrefixAllocator(90, 16))
    ahead.capture_graphs()
    assert sorted(ahead.graphs.graphs)[-1] == 32
    assert max_rel_error(ahead, run_engine(ahead, "swap")[1].records) < TOL


def test_vattention_maps_pages_for_the_model():
    """vattention with real page maps: CUDA maps 2 MiB pages, so 64 KV heads of 128 (16 KiB
    per token and buffer) make 128-token pages, as in the attention backend's GPU tests."""
    pytest.importorskip("cuda.bindings.driver")
    from allocators.vattention import VAttentionAllocator

    cfg = llama_config(hidden=8192, heads=64, kv_heads=64)
    backend = small(cfg, VAttentionAllocator(12, 128, 256))
    result, rec = run_engine(backend, "recompute", requests=10)
    print(f"\nvattention: {result.num_preemptions} preemptions, {len(rec.records)} rows")
    assert backend.graphs.graphs and backend.summary()["vmm_maps"] > 0
    # Hidden 8,192 rounds more in bf16 than the other tests' 1,024: on an H200 kvbench's
    # error here was 3.01% and transformers' own bf16 run's 3.00% (2026-11-28). Bound it by
    # the latter, measured on these sequences.
    err, floor = max_rel_error(backend, rec.records), bf16_floor(backend, rec.records)
    print(f"relative error {err:.4f}, transformers' own bf16 run {floor:.4f}")
    assert floor < 0.1, "transformers' own bf16 run is off (or NaN): no bound"
    assert err < max(TOL, 1.5 * floor)
    backend.close()


@pytest.mark.parametrize("kind", ["paged-16", "static-oracle"])
def test_fused_ops_with_graphs(kind):
    """kvbench's fused Llama forward inside captured decode and mixed graphs, with forks and
    swaps (paged: this pool is small enough to preempt), over paged and contiguous kernels."""
    backend = small(alloc=ALLOCATORS[kind](), fused_ops=True)
    result, rec = run_engine(backend, "swap")
    assert backend.graphs.graphs and backend.graphs.mixed
    assert result.num_preemptions > 0 or kind == "static-oracle"
    assert max_rel_error(backend, rec.records) < TOL


def test_opt_with_graphs():
    backend = small(opt_config(hidden=1024, heads=8), PagedAllocator(90, 16))
    assert max_rel_error(backend, run_engine(backend, "recompute")[1].records) < TOL


def test_a_wrong_block_is_caught():
    from tests.engine.test_model_backend import seq

    backend = small(alloc=PagedAllocator(40, 16))
    rec = Recorder(backend)
    s = seq(1, 40, 8)
    backend.alloc.allocate(s, 40)
    backend.step(StepBatch(prefills=[(s, 0, 40)]))
    backend.alloc.decode([s])
    backend.pool.k[:, 39].normal_()  # finite, wrong K/V
    backend.pool.v[:, 39].normal_()
    backend.rows.table[backend.rows._row[1], 0] = 39  # corrupt the device table
    backend.step(StepBatch(decode_seqs=[s]))
    assert max_rel_error(backend, rec.records) > 10 * TOL


def test_kvbench_cli_runs_the_model(tmp_path):
    """`kvbench backend=model` on a llama3_8b preset: a small burst served, with the card, the
    kernel and measured host/kernel seconds in the summary and the step table."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    run_dir = tmp_path / "run"
    args = [
        "backend=model", "model=llama3_8b", "workload=synthetic", "workload.max_requests=24",
        "workload.arrival.process=burst", "workload.prompt.kind=fixed",
        "+workload.prompt.value=200", "workload.output.kind=fixed", "+workload.output.value=40",
        "kv_budget_gib=1", "max_seq_len=1024", "engine.max_num_seqs=16", "progress=false",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    root = Path(__file__).parents[2]
    r = subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=root,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert (s["backend"], s["kernel"], s["requests_finished"]) == ("model", "triton_paged", 24)
    assert s["gpu"] == torch.cuda.get_device_name() and s["host_s"] > 0 and s["kernel_s"] > 0
    steps = pd.read_parquet(run_dir / "steps.parquet")
    assert (steps.kernel_s > 0).all() and (steps.duration_s >= steps.kernel_s).all()
