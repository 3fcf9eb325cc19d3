"""kvbench's own forward of a transformers Llama decoder (the `model` backend's `fused_ops`),
as vLLM's and nano-vllm's model code runs one: the modules' weights and arithmetic, in fewer
and larger kernels than transformers' eager modules launch (~20 per layer there, 11 here):

    h = embed(ids); residual = h; x = rms_norm(h)                    (first layer's norm)
    per layer   qkv = x @ [Wq; Wk; Wv]^T        one GEMM
                q, k = rotary(qkv)              one kernel for the queries and keys
                attention                       kvbench's: K/V write, decode/prefill kernels
                h = o_proj(attention)
                x = add_rms_norm(h, residual)   residual += h, then the post-attention norm
                gu = x @ [Wg; Wu]^T             one GEMM
                h = down_proj(silu_mul(gu))
                x = add_rms_norm(h, residual)   the next layer's input norm (last: the final)

The projections are packed once per model (`pack`): per layer, one tensor holds q/k/v's
weights and one gate/up's, and the modules' own weights become views of them, so
transformers' forward of the same model reads the same memory (nothing is doubled) and
computes the same values. The modules' weight tensors are replaced by that packing: a graph
captured before it, over the old tensors, must not be replayed after (a backend sharing the
model builds its graphs after its own packing). The
kernels round where the eager ops round (kernels/elementwise.py); the packed GEMMs sum in
another order than three separate ones, within bf16 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kernels.elementwise import add_rms_norm, rms_norm, rotary, silu_mul
from workloads.errors import KvbenchError


@dataclass(frozen=True, slots=True)
class _Packed:
    qkv: torch.Tensor  # [(heads + 2 kv_heads) * head_dim, hidden]
    gate_up: torch.Tensor  # [2 * intermediate, hidden]


class FusedLlama:
    def __init__(self, model: torch.nn.Module) -> None:
        """Packs the projections of `model`, a transformers Llama causal LM whose config
        passed `check_fusable`."""
        cfg = model.config
        self.body = model.base_model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.packed = [pack(layer) for layer in self.body.layers]

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, ctx: Any) -> torch.Tensor:
        """The final hidden states [num_new, hidden] of the packed tokens ids/pos [num_new];
        ctx: the step's StepContext (attention through its backend's pools and tables)."""
        body, layers = self.body, self.body.layers
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        n = ids.shape[0]
        h = body.embed_tokens(ids)
        cos, sin = (t[0] for t in body.rotary_emb(h[None], pos[None]))
        residual = h
        x = _norm(layers[0].input_layernorm, h)
        for i, (layer, w) in enumerate(zip(layers, self.packed, strict=True)):
            attn, mlp = layer.self_attn, layer.mlp
            qkv = F.linear(x, w.qkv)
            qk = rotary(qkv, cos, sin, heads + kv)
            v = qkv[:, (heads + kv) * dim :].view(n, kv, dim)
            out = qkv.new_empty(n, heads, dim)
            ctx.backend.layer(attn.layer_idx, qk[:, :heads], qk[:, heads:], v, ctx.batch, out)
            h = attn.o_proj(out.view(n, heads * dim))
            x = _norm(layer.post_attention_layernorm, h, residual)
            gate, up = F.linear(x, w.gate_up).chunk(2, dim=-1)
            h = mlp.down_proj(silu_mul(gate, up))
            nxt = layers[i + 1].input_layernorm if i + 1 < len(layers) else body.norm
            x = _norm(nxt, h, residual)
        return x


def pack(layer: torch.nn.Module) -> _Packed:
    """One layer's q/k/v and gate/up weights in one tensor each; the modules' weights become
    views of them (the old tensors are freed). A layer packed before (a shared model) keeps
    its packing."""
    attn, mlp = layer.self_attn, layer.mlp
    return _Packed(
        _concat(attn, attn.q_proj, attn.k_proj, attn.v_proj),
        _concat(mlp, mlp.gate_proj, mlp.up_proj),
    )


def _concat(owner: torch.nn.Module, *linears: torch.nn.Module) -> torch.Tensor:
    whole = owner.__dict__.get("kvbench_packed")
    if whole is not None and whole.data_ptr() == linears[0].weight.data_ptr():
        return whole
    whole = torch.cat([m.weight for m in linears])
    at = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(whole[at : at + rows], requires_grad=False)
        at += rows
    owner.kvbench_packed = whole
    return whole


def _norm(module: torch.nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None):
    eps = module.variance_epsilon
    if residual is None:
        return rms_norm(x, module.weight, eps)
    return add_rms_norm(x, residual, module.weight, eps)


def resolve_fused_ops(value: bool | str, cfg: Any, name: str) -> bool:
    """backend.fused_ops for this config (`name`, the model preset): true (refused where
    kvbench's Llama forward cannot run it), false, or auto (true where it can)."""
    if value == "auto":
        return unfusable(cfg) is None
    if not isinstance(value, bool):
        raise KvbenchError(f"backend.fused_ops must be true, false or auto, got {value!r}")
    if value:
        check_fusable(cfg, name)
    return value


def check_fusable(cfg: Any, name: str) -> None:
    """Refuses a config kvbench's Llama forward cannot run (before its model is built);
    `name`, the model preset, names it."""
    why = unfusable(cfg)
    if why:
        raise KvbenchError(f"backend.fused_ops: {name} {why}; set backend.fused_ops=false")


def unfusable(cfg: Any) -> str | None:
    """Why kvbench's Llama forward cannot run this config, or None."""
    if getattr(cfg, "model_type", None) != "llama":
        kind = getattr(cfg, "model_type", "?")
        return f"({kind}) is not a Llama model, and kvbench's fused forward is Llama's"
    if cfg.hidden_act != "silu":
        return f"uses the {cfg.hidden_act} activation; the fused MLP is SiLU's"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "has projection biases; the fused projections have none"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "splits its projections (pretraining_tp > 1)"
    return None
