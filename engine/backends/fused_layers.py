"""Kernel-backed forwards for a transformers decoder's elementwise modules (the `model`
backend's `fused_ops`), as vLLM's custom ops and transformers' own kernel hub replace them:

    LlamaRMSNorm          one rms_norm kernel (kernels/elementwise.py) instead of eager ops
    LlamaMLP              down(silu_mul(gate(x), up(x))): activation and product as one kernel
    apply_rotary_pos_emb  one rotary kernel per queries and keys, inside `fused_rotary` only

Each swapped module gets an instance attribute `forward` (its class is untouched, so other
models in the process are not); `unfuse` removes them again (references, baselines). The
rotary embedding is a module-level function of transformers' Llama code: `fused_rotary`
swaps it for the duration of one forward (graph captures included), so other Llama models
of the process - a reference run between steps - keep transformers' own. The weights and
the arithmetic are the modules'; the kernels round where the eager ops round. Other module
classes are left as they are.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch

from kernels.elementwise import rms_norm, rotary, silu_mul


def _norm_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


FORWARDS = {"LlamaRMSNorm": _norm_forward, "LlamaMLP": _mlp_forward}  # class name: forward


def fuse(model: torch.nn.Module) -> int:
    """Swap the forwards of the model's fusable modules; returns how many were swapped."""
    count = 0
    for m in model.modules():
        forward = FORWARDS.get(type(m).__name__)
        if forward is None or (forward is _mlp_forward and m.config.hidden_act != "silu"):
            continue
        m.forward = types.MethodType(forward, m)
        count += 1
    return count


def unfuse(model: torch.nn.Module) -> None:
    """The modules' own forwards again."""
    for m in model.modules():
        if type(m).__name__ in FORWARDS:
            m.__dict__.pop("forward", None)


@contextlib.contextmanager
def fused_rotary(model: torch.nn.Module) -> Iterator[None]:
    """Llama's rotary embedding as kernels while the block runs (other models: no change)."""
    if getattr(model.config, "model_type", None) != "llama":
        yield
        return
    from transformers.models.llama import modeling_llama

    own = modeling_llama.apply_rotary_pos_emb
    modeling_llama.apply_rotary_pos_emb = _rotary_pair
    try:
        yield
    finally:
        modeling_llama.apply_rotary_pos_emb = own


def _rotary_pair(q, k, cos, sin, unsqueeze_dim: int = 1):  # type: ignore[no-untyped-def]
    if unsqueeze_dim != 1:
        raise ValueError("fused rotary embedding takes [batch, heads, tokens, head_dim]")
    return rotary(q, cos, sin), rotary(k, cos, sin)
