"""Contiguous decode attention for the static allocator, through torch SDPA.

A static allocation keeps each sequence's KV in one contiguous slot range; with a head-major
pool ([num_kv_heads, slots, head_dim]) a batch of equal-length ranges is a strided
[B, num_kv_heads, L, head_dim] view that SDPA reads directly, grouped-query attention included.
The backend is chosen once per device: the first of BACKENDS that runs (cuDNN was fastest for
decode on the H100 in BENCHMARKS.md, then flash, then memory-efficient); the caller is told
which one ran.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = (
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)


def sdpa_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: SDPBackend
) -> torch.Tensor:
    """q [B, H, D], k/v [B, Hkv, L, D] -> [B, H, D] with one SDPA backend."""
    with sdpa_kernel([backend]):
        o = F.scaled_dot_product_attention(
            q.unsqueeze(2), k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
    return o.squeeze(2)


def pick_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> SDPBackend:
    """The first backend of BACKENDS that runs on these inputs."""
    for backend in BACKENDS:
        try:
            sdpa_decode(q[:1], k[:1, :, :16], v[:1, :, :16], 1.0, backend)
        except RuntimeError:
            continue
        return backend
    raise RuntimeError("no SDPA backend runs on these inputs")


def contiguous_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    backend: SDPBackend | None = None,
) -> tuple[torch.Tensor, SDPBackend]:
    """Decode over contiguous KV; returns the output and the backend that computed it."""
    if k.shape != v.shape or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[3]:
        raise ValueError("q [B, H, D] and k, v [B, Hkv, L, D] do not match")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]}")
    backend = backend or pick_backend(q, k, v)
    return sdpa_decode(q, k, v, scale, backend), backend
