"""A transformers decoder with random weights whose attention is kvbench's, over kvbench's pools.

    build_model(config)    meta-device model -> to_empty(device) -> quick random init
    ATTENTION = "kvbench"  registered in transformers' AttentionInterface: the model's
                           attention layers call `kvbench_attention` with their q/k/v

The model runs one packed row of all new tokens of a step ([1, num_new] input ids and
position ids, decode tokens first, then each prefill chunk's tokens), with no transformers
cache (`use_cache=False`): the step's metadata comes in as the `kvbench` keyword, which
transformers forwards untouched from the model's call to every attention call, and each layer
writes its new K/V into kvbench's pool and attends through the allocator's block tables
(`AttentionBackend.layer`, module.layer_idx). Without a registered mask function transformers
builds no attention mask for this implementation (checked: a mask raises).

Weights: normal(0, init_std) for matrices and embeddings, ones for norm weights, zeros for
biases, drawn on the target device (seconds for 13B); buffers computed at construction (the
rotary frequencies) are rebuilt on the CPU and copied, since the meta device holds no values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from engine.backends.attention import AttentionBackend, _Batch

ATTENTION = "kvbench"


@dataclass(frozen=True, slots=True)
class StepContext:
    """What every attention call of one forward needs: the pools and the step's metadata."""

    backend: AttentionBackend
    batch: _Batch


def kvbench_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, num_heads, num_new, head_dim]
    key: torch.Tensor,  # [1, num_kv_heads, num_new, head_dim]
    value: torch.Tensor,  # [1, num_kv_heads, num_new, head_dim]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    kvbench: StepContext | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """One layer's attention of a packed step: write K/V, attend; out [1, num_new, heads, d]."""
    if kvbench is None:
        raise RuntimeError("kvbench attention runs only inside a ModelBackend step")
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError("kvbench attention takes one packed row and no attention mask")
    backend = kvbench.backend
    q = query[0].transpose(0, 1)
    if scaling is not None and scaling != backend.scale:
        q = q * (scaling / backend.scale)  # NOTE: OPT scales q itself and passes scaling=1
    out = torch.empty_like(q)
    k, v = key[0].transpose(0, 1), value[0].transpose(0, 1)
    backend.layer(module.layer_idx, q, k, v, kvbench.batch, out)
    return out.unsqueeze(0), None


def register() -> None:
    """Make ATTENTION a valid attn_implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, kvbench_attention)


def build_model(
    config: Any, dtype: torch.dtype, device: torch.device, init_std: float = 0.02, seed: int = 0
) -> torch.nn.Module:
    """A causal LM of this transformers config with random weights on `device`, in eval mode,
    without gradients, its attention set to kvbench's."""
    import transformers

    register()
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation=ATTENTION, dtype=dtype
        )
    model.to_empty(device=device)
    model.tie_weights()  # to_empty gives tied parameters (OPT's lm_head) separate storage
    _rebuild_buffers(model)
    _init_weights(model, init_std, seed)
    return model.eval().requires_grad_(False)


def _rebuild_buffers(model: torch.nn.Module) -> None:
    """Values of the buffers the meta device dropped: rotary frequencies, rebuilt on the CPU
    from the module's config (the only buffers of the supported decoders)."""
    for name, module in model.named_modules():
        own = dict(module.named_buffers(recurse=False))
        if not own:
            continue
        if "RotaryEmbedding" not in type(module).__name__:
            raise NotImplementedError(f"{name}: cannot rebuild the buffers of {type(module)}")
        fresh = type(module)(module.config)
        with torch.no_grad():
            for key, buf in fresh.named_buffers(recurse=False):
                own[key].copy_(buf)


def _init_weights(model: torch.nn.Module, std: float, seed: int) -> None:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters come once
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=gen)
