"""Per-kernel GPU time of a graphed decode step (batch 64, 1k contexts, llama3_8b, fused ops),
from torch.profiler over 10 replays; grouped by kind."""
import torch
from torch.profiler import ProfilerActivity, profile
from engine.backends.hf_model import build_model
from engine.models import hf_config, model_spec
from experiments.model_bench import decode_batch

spec, cfg = model_spec("llama3_8b"), hf_config("llama3_8b")
hf = build_model(cfg, torch.bfloat16, torch.device("cuda"), seed=0)
be, step = decode_batch(hf, spec, 64, 1024, 40, fused_ops=True)  # (as run: the same, inline)
for t in range(5):
    step()
N = 10
kern = 0.0
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for t in range(N):
        step(); kern += be.last_kernel_s
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
