"""A decoder layer's elementwise work, each as one kernel where transformers' eager modules
launch several (LlamaRMSNorm: casts, square, mean, add, rsqrt, two products; the MLP's
activation: SiLU, then the product with the up projection; rotary embedding: products,
rotate-half, sums for queries and keys).

    rms_norm   grid (rows,): y = w * (x * rsqrt(mean(x^2) + eps)).to(x.dtype), summed in
               float32; the normalized row is rounded to x's dtype before the weight
               multiplies it, as transformers' LlamaRMSNorm rounds it
    silu_mul   grid (rows, chunks): y = silu(g).to(g.dtype) * u, in float32, rounded once
               more at the end, as torch's two eager ops round
    rotary     grid (batch * tokens, heads): y = x * cos + rotate_half(x) * sin for x
               [batch, heads, tokens, head_dim] (any strides, head_dim contiguous) and cos,
               sin [batch, tokens, head_dim]; each product and the sum rounded to x's dtype,
               as the eager ops round; y is laid out [batch, tokens, heads, head_dim] (the
               projections' layout) and returned as the [batch, heads, tokens, ...] view

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


@triton.jit
def _rotary_kernel(
    x_ptr, cos_ptr, sin_ptr, y_ptr, sx_b, sx_h, sx_t, sc_b, sc_t, tokens, heads,
    HALF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid, head = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    b, t = pid // tokens, pid % tokens
    offs = tl.arange(0, BLOCK)
    mask = offs < HALF
    x = x_ptr + b * sx_b + head * sx_h + t * sx_t + offs
    x1 = tl.load(x, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x + HALF, mask=mask, other=0.0).to(tl.float32)
    c = cos_ptr + b * sc_b + t * sc_t + offs
    s = sin_ptr + b * sc_b + t * sc_t + offs
    c1, c2 = tl.load(c, mask=mask).to(tl.float32), tl.load(c + HALF, mask=mask).to(tl.float32)
    s1, s2 = tl.load(s, mask=mask).to(tl.float32), tl.load(s + HALF, mask=mask).to(tl.float32)
    dt = y_ptr.dtype.element_ty
    o1 = (x1 * c1).to(dt).to(tl.float32) - (x2 * s1).to(dt).to(tl.float32)
    o2 = (x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)
    y = y_ptr + (pid * heads + head) * (2 * HALF) + offs
    tl.store(y, o1.to(dt), mask=mask)
    tl.store(y + HALF, o2.to(dt), mask=mask)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [batch, heads, tokens, head_dim] at cos, sin [batch, tokens,
    head_dim] (transformers' apply_rotary_pos_emb for one tensor, unsqueeze_dim 1)."""
    batch, heads, tokens, dim = x.shape
    if cos.shape != (batch, tokens, dim) or sin.shape != cos.shape or dim % 2:
        raise ValueError(f"cos/sin {tuple(cos.shape)} do not fit x {tuple(x.shape)}")
    if x.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride() != cos.stride():
        raise ValueError("head_dim must be contiguous, and cos and sin alike")
    y = torch.empty(batch, tokens, heads, dim, dtype=x.dtype, device=x.device)
    if y.numel():
        _rotary_kernel[(batch * tokens, heads)](
            x, cos, sin, y, x.stride(0), x.stride(1), x.stride(2), cos.stride(0), cos.stride(1),
            tokens, heads, HALF=dim // 2, BLOCK=triton.next_power_of_2(dim // 2),
        )  # fmt: skip
    return y.transpose(1, 2)


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
