"""The model backend's bookkeeping on the CPU (tiny decoders, float32, kvbench's kernels through
the Triton interpreter): every step's logits equal those of the same weights run by
transformers eagerly with its own cache, for every layout, with prefix hits, forks, frees,
block reuse, preemption (both modes) and padded graph-bucket steps."""

from __future__ import annotations

import pytest
import torch

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from allocators.base import cdiv
from allocators.vattention import VAttentionAllocator
from engine.backends.base import StepBatch
from engine.backends.buckets import Padding
from engine.backends.model import ModelBackend
from engine.backends.model_graphs import ModelGraphs
from engine.sequence import Seq
from tests.engine.model_cases import Recorder, llama_config, max_rel_error, opt_config, spec_of
from workloads.errors import KvbenchError
from workloads.tokens import GENERATED, SYSTEM, UNIQUE, Tokens

TOL = 1e-4  # float32 throughout
ALLOCATORS = {
    "static": lambda: StaticAllocator(400, 64, "max", "first_fit"),
    "paged": lambda: PagedAllocator(60, 4),
    "prefix": lambda: PrefixAllocator(60, 4),
    "vattention": lambda: VAttentionAllocator(60, 4, 64, 4 * 2 * 16 * 4),
}


def backend_for(alloc, cfg=None, **kw) -> ModelBackend:
    cfg = cfg or llama_config()
    return ModelBackend(spec_of(cfg), alloc, "float32", device="cpu", config=cfg, **kw)


def seq(sid: int, prompt: int, out: int, shared: int = 0) -> Seq:
    chunks = [((SYSTEM, 0), shared), ((UNIQUE, sid), prompt - shared)]
    return Seq(sid, prompt, prompt + out, Tokens.from_chunks(chunks, (GENERATED, sid)))


def padded_graphs(backend: ModelBackend) -> ModelGraphs:
    """Every step through the graph path's padded static inputs, run eagerly; the graph's
    table is as narrow as max_len allows (the rows' table grows wider)."""
    width = 1 if backend.contiguous else cdiv(64, backend.alloc.block_size)
    assert backend.contiguous or backend.rows.table.shape[1] > width
    backend.graphs = ModelGraphs(backend, width, 64, 8, num_sms=4, capture=False)
    return backend.graphs


def run_scenario(backend: ModelBackend) -> None:
    """Admissions (the second hits the first's prefix under `prefix`), a fork with its
    copies, decode steps, a free whose blocks a newcomer reuses in the same step."""
    alloc = backend.alloc
    a, b = seq(1, 10, 12, shared=8), seq(2, 9, 12, shared=8)
    batch = StepBatch()
    for s in (a, b):
        cached = alloc.allocate(s, s.prompt_len).num_cached_tokens
        batch.prefills.append((s, cached, s.prompt_len - cached))
    backend.step(batch)
    child = Seq(3, a.prompt_len, a.final_len, a.tokens.fork(a.prompt_len, (GENERATED, 3)))
    fork = alloc.fork(a.seq_id, child)
    running = [a, b, child]
    for t in range(7):
        batch = StepBatch(decode_seqs=running)
        if t == 0:
            batch.copies_before.extend(fork.copies)
        assert alloc.decode(running, copies=batch.copies_before) == len(running)
        if t == 3:
            running.remove(b)
            alloc.free(b.seq_id)
            batch.freed.append(b.seq_id)
            c = seq(4, 6, 4)
            alloc.allocate(c, c.prompt_len)
            batch.prefills.append((c, 0, c.prompt_len))
            backend.step(batch)
            running.append(c)
            continue
        backend.step(batch)
        alloc.check_invariants()


def _shape(b: StepBatch) -> tuple:
    """FEATURES that a step's graph bucket depends on (run_scenario's batches set only the
    sequences: num_decode and num_prefill are the engine's)."""
    t, s = sum(n for _, _, n in b.prefills), len(b.prefills)
    return (t, len(b.decode_seqs), 0, 0, 0, s, 0, 0)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "padded"])
@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_steps_match_transformers(name, graphs):
    backend = backend_for(ALLOCATORS[name]())
    if graphs:
        padded_graphs(backend)
    rec = Recorder(backend)
    feats, step = [], backend.step
    backend.step = lambda b: feats.append(_shape(b)) or step(b)
    run_scenario(backend)
    assert len(rec.records) == 2 + 3 * 7  # b leaves in the step c arrives
    assert max_rel_error(backend, rec.records) < TOL
    if graphs:
        assert sorted(backend.graphs.graphs) == [4], "decode-only steps of 3 ran in bucket 4"
        # the admissions (no decode rows) and the step with 2 decode rows and a prefill
        assert sorted(backend.graphs.mixed) == [(0, 64), (8, 64)]
        # the shapes the sim prices a profile's steps at are the graphs' (buckets.Padding)
        pad = [Padding(True, backend.graphs.max_batch).one(f) for f in feats]
        assert {f[1] for f in pad if not f[0]} == set(backend.graphs.graphs)
        assert {(f[1], f[0]) for f in pad if f[0]} == set(backend.graphs.mixed)


@pytest.mark.parametrize("kind", ["paged", "static"])
def test_fused_ops_match_transformers(kind):
    """fused_ops runs kvbench's Llama forward (every layer through the fused kernels) with the
    logits of transformers' own; the modules' q/k/v and gate/up weights become views of the
    packed tensors, so transformers' forward of the same model (fused_ops=False) is
    unchanged."""
    from engine.backends import fused_llama

    cfg = llama_config()
    plain = backend_for(ALLOCATORS[kind](), cfg, fused_ops=False)
    assert plain.fused is None
    before = {name: p.clone() for name, p in plain.hf.named_parameters()}
    backend = backend_for(ALLOCATORS[kind](), cfg, fused_ops=True, hf_model=plain.hf)
    for layer, w in zip(backend.hf.base_model.layers, backend.fused.packed, strict=True):
        attn, mlp = layer.self_attn, layer.mlp
        parts = (attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)
        for whole, linears in zip((w.qkv, w.gate_up), parts, strict=True):
            assert torch.equal(whole, torch.cat([m.weight for m in linears]))
            assert linears[0].weight.data_ptr() == whole.data_ptr(), "views, not copies"
    after = dict(backend.hf.named_parameters())
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], p) for name, p in before.items())
    calls, steps = [], []
    real = fused_llama.rotary
    fused_llama.rotary = lambda *a: calls.append(a[0].shape[0]) or real(*a)
    rec = Recorder(backend)
    step = backend.step
    backend.step = lambda batch: steps.append(batch) or step(batch)
    try:
        run_scenario(backend)
    finally:
        fused_llama.rotary = real
    assert len(calls) == cfg.num_hidden_layers * len(steps), "every layer of every step"
    assert max_rel_error(backend, rec.records) < TOL
    rec = Recorder(plain)  # transformers' forward (over the packed views) through kvbench's KV
    run_scenario(plain)
    assert max_rel_error(plain, rec.records) < TOL


def test_fused_ops_auto_is_on_where_the_model_takes_it():
    assert backend_for(PagedAllocator(60, 4)).fused is not None  # a Llama config
    assert backend_for(PagedAllocator(60, 4), opt_config()).fused is None
    with pytest.raises(
        KvbenchError, match=r"backend\.fused_ops must be true, false or auto, got 'on'"
    ):
        backend_for(PagedAllocator(60, 4), fused_ops="on")


def test_fused_ops_refuse_what_they_cannot_run():
    with pytest.raises(KvbenchError, match=r"backend\.fused_ops: test \(opt\) is not a Llama"):
        backend_for(PagedAllocator(60, 4), opt_config(), fused_ops=True)
    cfg = llama_config()
    cfg.attention_bias = True
    with pytest.raises(KvbenchError, match="has projection biases"):
        backend_for(PagedAllocator(60, 4), cfg, fused_ops=True)


def test_prefix_hit_computes_only_the_new_tokens():
    backend = backend_for(PrefixAllocator(60, 4))
    a, b = seq(1, 10, 4, shared=8), seq(2, 9, 4, shared=8)
    backend.alloc.allocate(a, 10)
    backend.step(StepBatch(prefills=[(a, 0, 10)]))
    cached = backend.alloc.allocate(b, 9).num_cached_tokens
    assert cached == 8
    rec = Recorder(backend)
    ids, _, _ = backend._token_inputs(StepBatch(prefills=[(b, cached, 1)]), with_rows=False)
    assert ids.numel() == 1
    backend.step(StepBatch(prefills=[(b, cached, 1)]))
    assert max_rel_error(backend, rec.records) < TOL  # its logits saw all 9 tokens


def test_opt_scales_its_queries_itself():
    cfg = opt_config()
    backend = backend_for(PagedAllocator(60, 4), cfg)
    rec = Recorder(backend)
    run_scenario(backend)
    assert max_rel_error(backend, rec.records) < TOL


def test_a_wrong_block_is_caught():
    backend = backend_for(PagedAllocator(20, 4))
    rec = Recorder(backend)
    s = seq(1, 7, 4)
    backend.alloc.allocate(s, 7)
    backend.step(StepBatch(prefills=[(s, 0, 7)]))
    backend.alloc.decode([s])
    backend.pool.k[:, 19].normal_()  # finite, wrong K/V
    backend.pool.v[:, 19].normal_()
    backend.rows.table[backend.rows._row[1], 0] = 19  # corrupt the device table
    backend.step(StepBatch(decode_seqs=[s]))
    assert max_rel_error(backend, rec.records) > 100 * TOL


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_engine_with_forks_and_preemption(name, preemption):
    """The engine drives the backend: two samples per request forked at admission, shared
    prefixes, preempted and resumed under a tight pool; every step's logits checked. The
    swap runs go through the graph path's padded inputs (decode-only and mixed buckets)."""
    from engine.scheduler import Engine, EngineLimits
    from workloads.synthetic import synthetic

    alloc = {
        "static": lambda: StaticAllocator(200, 48, "oracle", "first_fit"),
        "paged": lambda: PagedAllocator(14, 4),
        "prefix": lambda: PrefixAllocator(14, 4),
        "vattention": lambda: VAttentionAllocator(14, 4, 48),
    }[name]()
    wl = synthetic(
        max_requests=5, seed=2, arrival={"process": "poisson", "rate": 100.0},
        prompt={"kind": "uniform", "low": 5, "high": 12},
        output={"kind": "uniform", "low": 6, "high": 14}, n=2, max_seq_len=48,
        num_prefixes=1, prefix_len=4,
    )  # fmt: skip
    backend = backend_for(alloc)
    if preemption == "swap":
        padded_graphs(backend)
    rec = Recorder(backend)
    result = Engine(alloc, backend, EngineLimits(max_num_seqs=8, preemption=preemption)).run(
        wl.requests
    )
    if preemption == "swap":
        assert backend.graphs.graphs and backend.graphs.mixed
    assert len(result.finished) == len(wl.requests)
    if name != "static":
        assert result.num_preemptions > 0
    assert len(rec.records) > 40
    assert max_rel_error(backend, rec.records) < TOL


def test_token_ids_come_from_the_workload():
    backend = backend_for(PagedAllocator(20, 4))
    s = seq(1, 7, 4)
    backend.alloc.allocate(s, 7)
    ids, pos, rows = backend._token_inputs(StepBatch(prefills=[(s, 0, 7)]), with_rows=True)
    assert ids.tolist() == s.tokens.ids(0, 7, backend.vocab_size).tolist()
    assert pos.tolist() == list(range(7)) and rows.tolist() == [6]


def test_needs_a_gpu_for_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from workloads.errors import KvbenchError

    with pytest.raises(KvbenchError, match="needs a CUDA GPU"):
        ModelBackend(spec_of(llama_config()), PagedAllocator(4, 4), config=llama_config())


def test_config_and_spec_must_agree():
    from workloads.errors import KvbenchError

    with pytest.raises(KvbenchError, match="transformers config"):
        ModelBackend(spec_of(llama_config(layers=3)), PagedAllocator(4, 4), "float32",
                     device="cpu", config=llama_config())  # fmt: skip


def test_steps_past_the_mixed_buckets_run_eagerly():
    """More prefills than a mixed graph holds, or a prefill row longer than its table: the
    eager forward, with the same logits."""
    from engine.backends.buckets import MAX_PREFILLS

    backend = backend_for(PagedAllocator(60, 4))
    graphs = padded_graphs(backend)
    rec = Recorder(backend)
    many = [seq(i + 1, 3, 2) for i in range(MAX_PREFILLS + 1)]
    for s in many:
        backend.alloc.allocate(s, 3)
    backend.step(StepBatch(prefills=[(s, 0, 3) for s in many]))
    long = seq(99, 70, 2)  # 70 tokens > the graphs' max_len of 64
    backend.alloc.allocate(long, 70)
    backend.step(StepBatch(prefills=[(long, 0, 70)]))
    assert graphs.mixed == {} and graphs.graphs == {}
    assert len(rec.records) == MAX_PREFILLS + 2 and max_rel_error(backend, rec.records) < TOL


def test_mixed_graphs_can_be_turned_off():
    """backend.mixed_graphs=false: steps with prefills run eagerly, decode steps replay."""
    backend = backend_for(PagedAllocator(60, 4))
    width = cdiv(64, 4)
    backend.graphs = ModelGraphs(backend, width, 64, 8, num_sms=4, capture=False, mixed=False)
    rec = Recorder(backend)
    run_scenario(backend)
    assert backend.graphs.mixed == {} and sorted(backend.graphs.graphs) == [4]
    assert max_rel_error(backend, rec.records) < TOL


@pytest.mark.parametrize("kind", ["paged", "static", "vattention"])
def test_graph_replays_split_decode_per_step(kind, monkeypatch):
    """Decode graphs captured with 8 splits, each replay's split_tokens set to one tile: long
    sequences are cut (the merge runs), short ones stay in one piece; a mixed step between
    decode steps; every step's logits against transformers."""
    from engine.backends import model_graphs

    calls = []
    monkeypatch.setattr(
        model_graphs, "step_split_tokens", lambda *a: calls.append(a) or 64
    )  # fmt: skip
    alloc = {
        "paged": lambda: PagedAllocator(200, 4),
        "static": lambda: StaticAllocator(2000, 400, "max", "first_fit"),
        "vattention": lambda: VAttentionAllocator(200, 4, 400, 4 * 2 * 16 * 4),
    }[kind]()
    backend = backend_for(alloc)
    width = 1 if backend.contiguous else cdiv(1024, alloc.block_size)
    backend.graphs = ModelGraphs(backend, width, 1024, 8, num_sms=4, capture=False)
    assert backend.graphs._grid_splits(4) == 8
    rec = Recorder(backend)
    running = [seq(1, 150, 8), seq(2, 20, 8), seq(3, 70, 8)]
    for s in running:
        alloc.allocate(s, s.prompt_len)
    backend.step(StepBatch(prefills=[(s, 0, s.prompt_len) for s in running]))
    for _ in range(3):
        alloc.decode(running)
        backend.step(StepBatch(decode_seqs=running))
    late = seq(4, 5, 4)
    alloc.decode(running)
    alloc.allocate(late, 5)
    backend.step(StepBatch(decode_seqs=running, prefills=[(late, 0, 5)]))
    running.append(late)
    alloc.decode(running)
    backend.step(StepBatch(decode_seqs=running))
    assert len(calls) == 5 and sorted(backend.graphs.graphs) == [4]
    assert max_rel_error(backend, rec.records) < TOL


def test_decode_steps_the_graphs_do_not_take_run_eagerly():
    """More rows than the graphs hold, or a sequence longer than their tables, between
    replayed steps: the general path runs them, with the table entries the declined fast
    path already wrote."""
    backend = backend_for(PagedAllocator(200, 4))
    backend.graphs = ModelGraphs(backend, 16, 64, 2, num_sms=4, capture=False)
    rec = Recorder(backend)
    alloc = backend.alloc
    seqs = [seq(i + 1, 10, 8) for i in range(3)]
    for s in seqs:
        alloc.allocate(s, s.prompt_len)
    backend.step(StepBatch(prefills=[(s, 0, s.prompt_len) for s in seqs]))
    alloc.decode(seqs[:2])
    backend.step(StepBatch(decode_seqs=seqs[:2]))
    alloc.decode(seqs)  # 3 rows: more than max_batch 2
    backend.step(StepBatch(decode_seqs=seqs))
    long = seq(9, 70, 3)
    alloc.allocate(long, 70)
    backend.step(StepBatch(prefills=[(long, 0, 70)]))
    alloc.decode([long, seqs[0]])  # 71 tokens: past the graphs' 64
    backend.step(StepBatch(decode_seqs=[long, seqs[0]]))
    alloc.decode(seqs[:2])
    backend.step(StepBatch(decode_seqs=seqs[:2]))
    assert sorted(backend.graphs.graphs) == [2]
    assert len(rec.records) == 3 + 2 + 3 + 1 + 2 + 2
    assert max_rel_error(backend, rec.records) < TOL
