"""Where a batch-64 / 1k decode step of llama3_8b goes, and what fused projections and fused
elementwise work would give (a measurement, not the backend)."""
import collections, types, torch, torch.nn.functional as F
from experiments import model_bench as mb
from engine.backends.hf_model import build_model
from engine.models import model_spec
import transformers.models.llama.modeling_llama as ml
import engine.backends.model_graphs as mg

spec = model_spec("llama3_8b"); cfg = mb.hf_config("llama3_8b")
hf = build_model(cfg, torch.bfloat16, torch.device("cuda"))
bw = 4.267e12
floor = (spec.weight_bytes + 64 * 1024 * spec.kv_bytes_per_token) / bw
def report(tag, warm=False):
    if warm:
        f = mg.ModelGraphs.fits; mg.ModelGraphs.fits = lambda self, b: False
        mb.decode_step(hf, spec, 64, 1024, steps=1); mb.decode_step(hf, spec, 16, 512, steps=1)
        mg.ModelGraphs.fits = f
    d = mb.decode_step(hf, spec, 64, 1024, steps=12)
    print(f"{tag:<40} step {1e3*d['step_s']:.2f} ms gpu {1e3*d['kernel_s']:.2f} ms vs floor {d['step_s']/floor:.3f}x", flush=True)
report("baseline")

# per-kernel breakdown of an eager step (profiler over eager forward of the same batch)
from engine.backends import model as mod
import engine.backends.model_graphs as mg
orig_fits = mg.ModelGraphs.fits
mg.ModelGraphs.fits = lambda self, b: False
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    mb.decode_step(hf, spec, 64, 1024, steps=2)
mg.ModelGraphs.fits = orig_fits
agg = collections.defaultdict(lambda: [0.0, 0])
for e in prof.key_averages():
    if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0:
        agg[e.key][0] += e.self_device_time_total; agg[e.key][1] += e.count
tot = sum(v[0] for v in agg.values())
print(f"eager profile: {tot/1e3/5:.2f} ms GPU per step (5 steps)")
for k, (t, c) in sorted(agg.items(), key=lambda x: -x[1][0])[:25]:
    print(f"  {t/tot*100:5.1f}% {t/1e3/5:8.3f} ms/step {c//5:6d}/step  {k[:90]}")

# fused projections
def fuse(layer):
    a, m = layer.self_attn, layer.mlp
    a.qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).contiguous()
    a.nq, a.nk = a.q_proj.weight.shape[0], a.k_proj.weight.shape[0]
    m.gu_w = torch.cat([m.gate_proj.weight, m.up_proj.weight]).contiguous()
    m.ni = m.gate_proj.weight.shape[0]
def attn_fwd(self, hidden_states, position_embeddings=None, attention_mask=None, **kw):
    input_shape = hidden_states.shape[:-1]
    hs = (*input_shape, -1, self.head_dim)
    qkv = F.linear(hidden_states, self.qkv_w)
    q, k, v = qkv.split([self.nq, self.nk, self.nk], dim=-1)
    q = q.view(hs).transpose(1, 2); k = k.view(hs).transpose(1, 2); v = v.view(hs).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = ml.apply_rotary_pos_emb(q, k, cos, sin)
    out, _ = ml.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, None)(
        self, q, k, v, attention_mask, scaling=self.scaling, **kw)
    return self.o_proj(out.reshape(*input_shape, -1).contiguous()), None
def mlp_fwd(self, x):
    gu = F.linear(x, self.gu_w)
    return self.down_proj(F.silu(gu[..., :self.ni]) * gu[..., self.ni:])
for L in hf.model.layers:
    fuse(L)
    L.self_attn.forward = types.MethodType(attn_fwd, L.self_attn)
    L.mlp.forward = types.MethodType(mlp_fwd, L.mlp)
report("fused qkv + gate_up")

@torch.compile(dynamic=True)
def rms(w, x, eps: float):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
@torch.compile(dynamic=True)
def silu_mul(gu, n: int):
    return F.silu(gu[..., :n]) * gu[..., n:]
@torch.compile(dynamic=True)
def rope(q, k, cos, sin):
    return ml.apply_rotary_pos_emb(q, k, cos, sin)
def mlp_fwd2(self, x):
    return self.down_proj(silu_mul(F.linear(x, self.gu_w), self.ni))
for mname, m in hf.named_modules():
    if isinstance(m, ml.LlamaRMSNorm):
        m.forward = types.MethodType(lambda self, x: rms(self.weight, x, self.variance_epsilon), m)
for L in hf.model.layers:
    L.mlp.forward = types.MethodType(mlp_fwd2, L.mlp)
report("+ compiled rmsnorm, silu*mul", warm=True)
ml.apply_rotary_pos_emb = rope
report("+ compiled rotary", warm=True)
