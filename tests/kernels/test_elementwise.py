"""The fused elementwise kernels against transformers' and torch's eager modules, through
Triton's interpreter: equal in float32, and in bf16 within two roundings of the output (the
eager ops and the kernels compute exp and the products with other instructions)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from kernels.elementwise import add_rms_norm, rms_norm, rotary, silu_mul


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 48), (1, 2, 100), (0, 16)])
def test_rms_norm_is_transformers_rms_norm(dtype, shape):
    torch.manual_seed(0)
    module = LlamaRMSNorm(shape[-1], eps=1e-5).to(dtype)
    module.weight.data = torch.randn(shape[-1]).to(dtype)
    x = (3 * torch.randn(shape)).to(dtype)
    want, got = module(x), rms_norm(x, module.weight, module.variance_epsilon)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-6 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_is_the_eager_add_then_norm(dtype):
    """A decoder layer's `residual + h`, then the next RMSNorm: the sum (rounded as the eager
    add) is written into residual, the norm of it returned."""
    torch.manual_seed(0)
    module = LlamaRMSNorm(96, eps=1e-6).to(dtype)
    module.weight.data = torch.randn(96).to(dtype)
    x, residual = (3 * torch.randn(2, 5, 96)).to(dtype), (3 * torch.randn(2, 5, 96)).to(dtype)
    want_sum = residual + x
    want = module(want_sum)
    got = add_rms_norm(x, residual, module.weight, module.variance_epsilon)
    tol = 1e-6 if dtype == torch.float32 else 2**-6
    # NOTE: Triton's interpreter casts float32 to bf16 by truncation (the GPU rounds to
    # nearest even): one bf16 step apart at most here
    ulp = 0.0 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(residual, want_sum, rtol=ulp, atol=0.0)
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_is_the_eager_product(dtype):
    torch.manual_seed(0)
    both = (4 * torch.randn(5, 2 * 300)).to(dtype)
    gate, up = both[:, :300], both[:, 300:]  # strided rows, as a fused gate-up output
    got = silu_mul(gate, up, block=128)
    tol = 1e-6 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(got.float(), (torch.nn.functional.silu(gate) * up).float(),
                               rtol=tol, atol=tol)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_is_transformers_rotary(dtype):
    """Queries and keys of a packed q/k/v projection row in one launch, as transformers
    rotates the two views of separate projections."""
    torch.manual_seed(0)
    tokens, heads, kv_heads, dim = 5, 4, 2, 32
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim).to(dtype)
    q = qkv[:, : heads * dim].view(1, tokens, heads, dim).transpose(1, 2)  # transformers' view
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(1, tokens, kv_heads, dim)
    angle = torch.rand(tokens, dim // 2).repeat(1, 2) * 6
    cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
    want_q, want_k = apply_rotary_pos_emb(q, k.transpose(1, 2), cos[None], sin[None])
    got = rotary(qkv, cos, sin, heads + kv_heads)
    assert got.shape == (tokens, heads + kv_heads, dim) and got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2**-6
    for got_x, want in ((got[:, :heads], want_q), (got[:, heads:], want_k)):
        torch.testing.assert_close(
            got_x.float(), want[0].transpose(0, 1).float(), rtol=tol, atol=tol
        )


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 8), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="differ"):
        silu_mul(torch.randn(2, 8), torch.randn(2, 9))
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm(torch.randn(8, 2).t(), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        rotary(torch.randn(3, 16), torch.randn(2, 8), torch.randn(2, 8), 2)
    with pytest.raises(ValueError, match="hold no 3 heads"):
        rotary(torch.randn(3, 16), torch.randn(3, 8), torch.randn(3, 8), 3)
    with pytest.raises(ValueError, match="in place"):
        add_rms_norm(torch.randn(2, 8), torch.randn(8, 2).t(), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="does not match x"):
        add_rms_norm(torch.randn(2, 8), torch.randn(3, 8), torch.ones(8), 1e-6)
