"""A decoder layer's elementwise work, each as one kernel where transformers' eager modules
launch several (LlamaRMSNorm: casts, square, mean, add, rsqrt, two products; the residual
add before it; the MLP's activation: SiLU, then the product with the up projection; rotary
embedding: products, rotate-half, sums for queries and keys).

    rms_norm      grid (rows,): y = w * (x * rsqrt(mean(x^2) + eps)).to(x.dtype), summed in
                  float32; the normalized row is rounded to x's dtype before the weight
                  multiplies it, as transformers' LlamaRMSNorm rounds it
    add_rms_norm  the same over s = (x + residual).to(x.dtype) (the eager add's rounding),
                  with s written back into residual: a decoder layer's residual add and the
                  next norm in one pass
    silu_mul      grid (rows, chunks): y = silu(g).to(g.dtype) * u, in float32, rounded once
                  more at the end, as torch's two eager ops round
    rotary        grid (tokens, heads): y = x * cos + rotate_half(x) * sin for the first
                  `heads` heads of each token's row (a fused q/k/v projection's queries then
                  keys) and cos, sin [tokens, head_dim]; each product and the sum rounded to
                  x's dtype, as the eager ops round; y [tokens, heads, head_dim]

Rows are the last dimension (contiguous); any leading dimensions are flattened. Outputs have
the input's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, y_ptr, stride_x, stride_res, stride_y, width, eps,
    ADD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < width
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if ADD:  # the residual sum, rounded as the eager add rounds, is the new residual
        res = res_ptr + row * stride_res + offs
        x = (x + tl.load(res, mask=mask, other=0.0).to(tl.float32)).to(y_ptr.dtype.element_ty)
        tl.store(res, x, mask=mask)
        x = x.to(tl.float32)
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
    x_ptr, cos_ptr, sin_ptr, y_ptr, stride_x, stride_c, stride_s, heads,
    HALF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, head = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < HALF
    x = x_ptr + t * stride_x + head * (2 * HALF) + offs
    x1 = tl.load(x, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x + HALF, mask=mask, other=0.0).to(tl.float32)
    c = cos_ptr + t * stride_c + offs
    s = sin_ptr + t * stride_s + offs
    c1, c2 = tl.load(c, mask=mask).to(tl.float32), tl.load(c + HALF, mask=mask).to(tl.float32)
    s1, s2 = tl.load(s, mask=mask).to(tl.float32), tl.load(s + HALF, mask=mask).to(tl.float32)
    dt = y_ptr.dtype.element_ty
    o1 = (x1 * c1).to(dt).to(tl.float32) - (x2 * s1).to(dt).to(tl.float32)
    o2 = (x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)
    y = y_ptr + (t * heads + head) * (2 * HALF) + offs
    tl.store(y, o1.to(dt), mask=mask)
    tl.store(y + HALF, o2.to(dt), mask=mask)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotary embedding of the first `heads` heads of each row of x [tokens, width >= heads *
    head_dim] at cos, sin [tokens, head_dim] (transformers' apply_rotary_pos_emb, per head);
    returns [tokens, heads, head_dim]."""
    tokens, dim = cos.shape
    if sin.shape != cos.shape or dim % 2 or x.dim() != 2 or x.shape[0] != tokens:
        raise ValueError(f"cos/sin {tuple(cos.shape)} do not fit x {tuple(x.shape)}")
    if x.shape[1] < heads * dim:
        raise ValueError(f"x rows of {x.shape[1]} hold no {heads} heads of {dim}")
    if x.stride(1) != 1 or cos.stride(1) != 1 or sin.stride(1) != 1:
        raise ValueError("x, cos and sin rows must be contiguous")
    y = torch.empty(tokens, heads, dim, dtype=x.dtype, device=x.device)
    if y.numel():
        _rotary_kernel[(tokens, heads)](
            x, cos, sin, y, x.stride(0), cos.stride(0), sin.stride(0), heads,
            HALF=dim // 2, BLOCK=triton.next_power_of_2(dim // 2),
        )  # fmt: skip
    return y


def _rows(x: torch.Tensor) -> torch.Tensor:
    if x.stride(-1) != 1:
        raise ValueError("rows must be contiguous in their last dimension")
    return x.reshape(-1, x.shape[-1])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x [..., width] with weight [width]."""
    return _norm(x, None, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """RMSNorm of residual + x (both [..., width]); the sum is written into residual."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
    if not residual.is_contiguous():
        raise ValueError("residual must be contiguous (it is written in place)")
    return _norm(x, residual, weight, eps)


def _norm(x: torch.Tensor, residual: torch.Tensor | None, weight, eps: float) -> torch.Tensor:
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match rows of {x.shape[-1]}")
    rows = _rows(x)
    res = rows if residual is None else _rows(residual)
    y = torch.empty_like(rows)
    if rows.shape[0]:
        width = rows.shape[1]
        _rms_norm_kernel[(rows.shape[0],)](
            rows, res, weight, y, rows.stride(0), res.stride(0), y.stride(0), width, eps,
            ADD=residual is not None, BLOCK=triton.next_power_of_2(width),
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
