"""A decoder layer's elementwise work, each as one kernel where transformers' eager modules
launch several (LlamaRMSNorm: casts, square, mean, add, rsqrt, two products; the MLP's
activation: SiLU, then the product with the up projection).

    rms_norm   grid (rows,): y = w * (x * rsqrt(mean(x^2) + eps)).to(x.dtype), summed in
               float32; the normalized row is rounded to x's dtype before the weight
               multiplies it, as transformers' LlamaRMSNorm rounds it
    silu_mul   grid (rows, chunks): y = silu(g).to(g.dtype) * u, in float32, rounded once
               more at the end, as torch's two eager ops round

Rows are the last dimension (contiguous); any leading dimensions are flattened. Outputs have
the input's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, stride_x, stride_y, width, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < width
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, axis=0) / width + eps)
    normed = (x * r).to(y_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + offs, (w * normed).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, y_ptr, stride_g, stride_u, stride_y, width, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < width
    g = tl.load(g_ptr + row * stride_g + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * stride_u + offs, mask=mask, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(y_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + row * stride_y + offs, (act * u).to(y_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    if x.stride(-1) != 1:
        raise ValueError("rows must be contiguous in their last dimension")
    return x.reshape(-1, x.shape[-1])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x [..., width] with weight [width]."""
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match rows of {x.shape[-1]}")
    rows = _rows(x)
    y = torch.empty_like(rows)
    if rows.shape[0]:
        width = rows.shape[1]
        _rms_norm_kernel[(rows.shape[0],)](
            rows, weight, y, rows.stride(0), y.stride(0), width, eps,
            BLOCK=triton.next_power_of_2(width),
        )  # fmt: skip
    return y.view(x.shape)


def silu_mul(gate: torch.Tensor, up: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """silu(gate) * up, both [..., width]."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    g, u = _rows(gate), _rows(up)
    y = torch.empty_like(g)
    if g.shape[0]:
        width = g.shape[1]
        grid = (g.shape[0], triton.cdiv(width, block))
        _silu_mul_kernel[grid](
            g, u, y, g.stride(0), u.stride(0), y.stride(0), width, BLOCK=block
        )  # fmt: skip
    return y.view(gate.shape)
