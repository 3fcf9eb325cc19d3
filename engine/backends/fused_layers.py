"""Kernel-backed forwards for a transformers decoder's elementwise modules (the `model`
backend's `fused_ops`), as vLLM's custom ops and transformers' own kernel hub replace them:

    LlamaRMSNorm   one rms_norm kernel (kernels/norm_act.py) instead of eager ops
    LlamaMLP       down(silu_mul(gate(x), up(x))): the activation and product as one kernel

Each swapped module gets an instance attribute `forward` (its class is untouched, so other
models in the process are not); `unfuse` removes them again (references, baselines). The
weights and the arithmetic are the module's; the kernels round where the eager ops round.
Other module classes are left as they are.
"""

from __future__ import annotations

import types

import torch

from kernels.norm_act import rms_norm, silu_mul

FUSED = ("LlamaRMSNorm", "LlamaMLP")


def _norm_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def fuse(model: torch.nn.Module) -> int:
    """Swap the forwards of the model's fusable modules; returns how many were swapped."""
    count = 0
    for m in model.modules():
        name = type(m).__name__
        if name == "LlamaRMSNorm":
            m.forward = types.MethodType(_norm_forward, m)
        elif name == "LlamaMLP" and m.config.hidden_act == "silu":
            m.forward = types.MethodType(_mlp_forward, m)
        else:
            continue
        count += 1
    return count


def unfuse(model: torch.nn.Module) -> None:
    """The modules' own forwards again."""
    for m in model.modules():
        if type(m).__name__ in FUSED:
            m.__dict__.pop("forward", None)
