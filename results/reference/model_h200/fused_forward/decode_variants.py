"""Decode step batch 64 / 1k, llama3_8b on this card: transformers' forward vs kvbench's fused
Llama forward, split-K variants, a per-kernel profile of the fused step, host sections."""
import collections, sys, time
import numpy as np, torch
from torch.profiler import ProfilerActivity, profile
from allocators import PagedAllocator
from allocators.base import cdiv
from engine.backends.base import StepBatch
from engine.backends.hf_model import build_model
from engine.backends.model import ModelBackend
from engine.models import hf_config, model_spec
from engine.sequence import Seq
from experiments.kernel_bench import copy_ceiling
from workloads.tokens import GENERATED, UNIQUE, Tokens

spec, cfg = model_spec("llama3_8b"), hf_config("llama3_8b")
hf = build_model(cfg, torch.bfloat16, torch.device("cuda"), seed=0)
bw = copy_ceiling()
B, L = 64, 1024
floor = (spec.weight_bytes + B * L * spec.kv_bytes_per_token) / bw
print(f"card {torch.cuda.get_device_name()} copy bw {bw/1e12:.3f} TB/s floor {floor*1e3:.3f} ms", flush=True)

def make(fused, splits=None, steps=60):
    final = L + steps
    alloc = PagedAllocator(B * cdiv(final, 16), 16)
    seqs = [Seq(i + 1, L - 1, final, Tokens.from_chunks([((UNIQUE, i), L)], (GENERATED, i))) for i in range(B)]
    for s in seqs:
        alloc.allocate(s, s.prompt_len)
    be = ModelBackend(spec, alloc, max_seq_len=final, max_num_seqs=B, hf_model=hf, config=hf.config,
                      fused_ops=fused, graph_splits=splits)
    be.pool.k.normal_(); be.pool.v.normal_()
    be.capture_graphs()
    def step():
        alloc.decode(seqs)
        return be.step(StepBatch(decode_seqs=seqs, num_decode=B))
    return be, step

def timeit(tag, fused, splits=None, n=20):
    be, step = make(fused, splits)
    for _ in range(3): step()
    w, k = [], []
    for _ in range(n):
        w.append(step()); k.append(be.last_kernel_s)
    w, k = np.median(w), np.median(k)
    print(f"{tag:<28} step {w*1e3:7.3f} ms  gpu {k*1e3:7.3f} ms  host {1e3*(w-k):6.3f}  step/floor {w/floor:.3f}x  gpu/floor {k/floor:.3f}x", flush=True)
    return be, step

del_ = []
for tag, fused, splits in (("transformers forward", False, None), ("fused forward", True, None),
                           ("fused, 1 split", True, 1), ("fused forward again", True, None)):
    be, step = timeit(tag, fused, splits)
    del be, step
    torch.cuda.empty_cache()

be, step = make(True)
for _ in range(5): step()
acc = collections.defaultdict(float)
def timed(name, fn):
    def w(*a, **k):
        t = time.perf_counter(); r = fn(*a, **k); acc[name] += time.perf_counter() - t; return r
    return w
be._replay_decode = timed("replay_decode", be._replay_decode); be.graphs.decode = timed("graphs.decode", be.graphs.decode)
be.rows.sync = timed("rows.sync", be.rows.sync); be.graphs._gather = timed("gather", be.graphs._gather)
be.rows.apply = timed("apply", be.rows.apply)
N = 20
wall = 0.0
for _ in range(N): wall += step()
print(f"step {wall/N*1e3:.3f} ms (timed sections)"); print("host sections ms/step", {k: round(v / N * 1e3, 3) for k, v in acc.items()}, flush=True)
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(10): step()
rows = [(e.key, e.device_time_total / 10 / 1e3, e.count // 10) for e in prof.key_averages() if e.device_time_total > 0]
rows.sort(key=lambda r: -r[1])
print(f"profiled kernel time per step {sum(r[1] for r in rows):.3f} ms")
for name, ms, n in rows[:30]:
    print(f"{ms:8.3f} ms  x{n:<4} {name[:110]}")
