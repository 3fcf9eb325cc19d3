"""Where the host time of a graphed decode step goes (batch 64, 1k contexts, llama3_8b, fused
ops). Run as committed here it built the batch itself (the same as model_bench.decode_batch,
KV left unrandomized); it now calls decode_batch."""
import cProfile, pstats, time
import torch
from engine.backends.hf_model import build_model
from engine.models import hf_config, model_spec
from experiments.model_bench import decode_batch

spec, cfg = model_spec("llama3_8b"), hf_config("llama3_8b")
hf = build_model(cfg, torch.bfloat16, torch.device("cuda"), seed=0)
be, step = decode_batch(hf, spec, 64, 1024, 60, fused_ops=True)
for t in range(5):
    step()
# sections by hand
acc = {"metadata": 0.0, "token_inputs": 0.0, "prepare": 0.0, "replay": 0.0}
def timed(name, fn):
    def w(*a, **k):
        t = time.perf_counter(); r = fn(*a, **k); acc[name] += time.perf_counter() - t; return r
    return w
be._metadata = timed("metadata", be._metadata); be._token_inputs = timed("token_inputs", be._token_inputs)
be.graphs.prepare = timed("prepare", be.graphs.prepare)
wall = kern = 0.0
N = 20
for t in range(N):
    wall += step(); kern += be.last_kernel_s
print(f"step {wall/N*1e3:.3f} ms kernel {kern/N*1e3:.3f} ms host {(wall-kern)/N*1e3:.3f}")
print({k: round(v / N * 1e3, 3) for k, v in acc.items()})
# graph replay alone (host side, then GPU)
g = be.graphs.graphs[64]
torch.cuda.synchronize(); t = time.perf_counter(); g.replay(); h = time.perf_counter() - t; torch.cuda.synchronize(); tt = time.perf_counter() - t
print(f"replay call host {h*1e3:.3f} ms, with sync {tt*1e3:.3f} ms")
pr = cProfile.Profile(); pr.enable()
for t in range(N):
    step()
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(25)
