"""Where the host time of a graphed decode step goes (batch 64, 1k contexts, llama3_8b)."""
import cProfile, pstats, time, sys
import numpy as np, torch
from allocators import PagedAllocator
from allocators.base import cdiv
from engine.models import hf_config, model_spec
from engine.backends.hf_model import build_model
from engine.backends.base import StepBatch
from engine.backends.model import ModelBackend
from engine.sequence import Seq
from workloads.tokens import GENERATED, UNIQUE, Tokens

spec, cfg = model_spec("llama3_8b"), hf_config("llama3_8b")
hf = build_model(cfg, torch.bfloat16, torch.device("cuda"), seed=0)
batch, context, grow = 64, 1024, 60
final = context + grow
alloc = PagedAllocator(batch * cdiv(final, 16), 16)
seqs = [Seq(i + 1, context - 1, final, Tokens.from_chunks([((UNIQUE, i), context)], (GENERATED, i))) for i in range(batch)]
for s in seqs:
    alloc.allocate(s, s.prompt_len)
be = ModelBackend(spec, alloc, max_seq_len=final, max_num_seqs=batch, hf_model=hf, config=hf.config, fused_ops=True)
be.capture_graphs()
for t in range(5):
    alloc.decode(seqs); be.step(StepBatch(decode_seqs=seqs, num_decode=batch))
# sections by hand
import engine.backends.attention as A
orig_meta, orig_tok, orig_prep = be._metadata, be._token_inputs, be.graphs.prepare
acc = {"metadata": 0.0, "token_inputs": 0.0, "prepare": 0.0, "replay": 0.0}
def timed(name, fn):
    def w(*a, **k):
        t = time.perf_counter(); r = fn(*a, **k); acc[name] += time.perf_counter() - t; return r
    return w
be._metadata = timed("metadata", orig_meta); be._token_inputs = timed("token_inputs", orig_tok)
be.graphs.prepare = timed("prepare", orig_prep)
wall = kern = 0.0
N = 20
for t in range(N):
    alloc.decode(seqs); wall += be.step(StepBatch(decode_seqs=seqs, num_decode=batch)); kern += be.last_kernel_s
print(f"step {wall/N*1e3:.3f} ms kernel {kern/N*1e3:.3f} ms host {(wall-kern)/N*1e3:.3f}")
print({k: round(v / N * 1e3, 3) for k, v in acc.items()})
# graph replay alone (host side, then GPU)
g = be.graphs.graphs[64]
torch.cuda.synchronize(); t = time.perf_counter(); g.replay(); h = time.perf_counter() - t; torch.cuda.synchronize(); tt = time.perf_counter() - t
print(f"replay call host {h*1e3:.3f} ms, with sync {tt*1e3:.3f} ms")
pr = cProfile.Profile(); pr.enable()
for t in range(N):
    alloc.decode(seqs); be.step(StepBatch(decode_seqs=seqs, num_decode=batch))
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(25)
