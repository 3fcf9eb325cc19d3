"""Per-kernel GPU time of a graphed decode step (batch 64, 1k contexts, llama3_8b, fused ops),
from torch.profiler over 10 replays; grouped by kind."""
import torch
from torch.profiler import ProfilerActivity, profile
from allocators import PagedAllocator
from allocators.base import cdiv
from engine.backends.base import StepBatch
from engine.backends.hf_model import build_model
from engine.backends.model import ModelBackend
from engine.models import hf_config, model_spec
from engine.sequence import Seq
from workloads.tokens import GENERATED, UNIQUE, Tokens

spec, cfg = model_spec("llama3_8b"), hf_config("llama3_8b")
hf = build_model(cfg, torch.bfloat16, torch.device("cuda"), seed=0)
batch, context, grow = 64, 1024, 40
final = context + grow
alloc = PagedAllocator(batch * cdiv(final, 16), 16)
seqs = [Seq(i + 1, context - 1, final, Tokens.from_chunks([((UNIQUE, i), context)], (GENERATED, i))) for i in range(batch)]
for s in seqs:
    alloc.allocate(s, s.prompt_len)
be = ModelBackend(spec, alloc, max_seq_len=final, max_num_seqs=batch, hf_model=hf, config=hf.config, fused_ops=True)
be.pool.k.normal_(); be.pool.v.normal_()
be.capture_graphs()
for t in range(5):
    alloc.decode(seqs); be.step(StepBatch(decode_seqs=seqs, num_decode=batch))
N = 10
kern = 0.0
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for t in range(N):
        alloc.decode(seqs); be.step(StepBatch(decode_seqs=seqs, num_decode=batch)); kern += be.last_kernel_s
print(f"event-timed GPU time per step {kern / N * 1e3:.3f} ms")
rows = [(e.key, e.device_time_total / N / 1e3, e.count // N) for e in prof.key_averages() if e.device_time_total > 0]
rows.sort(key=lambda r: -r[1])
total = sum(r[1] for r in rows)
print(f"profiled kernel time per step {total:.3f} ms")
groups = {}
for name, ms, n in rows:
    low = name.lower()
    kind = ("gemm" if any(k in low for k in ("gemm", "nvjet", "cutlass", "sm90", "matmul", "xmma"))
            else "attention" if "decode" in low or "attn" in low
            else "kv write" if "write_kv" in low
            else "fused elementwise" if any(k in low for k in ("rms", "silu", "rotary"))
            else "other")
    groups[kind] = groups.get(kind, 0) + ms
for k, v in sorted(groups.items(), key=lambda x: -x[1]):
    print(f"  {k:<18} {v:7.3f} ms  {100 * v / total:5.1f}%")
for name, ms, n in rows[:25]:
    print(f"{ms:8.3f} ms  x{n:<4} {name[:110]}")
