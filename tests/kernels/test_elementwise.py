"""The fused elementwise kernels against transformers' and torch's eager modules, through
Triton's interpreter: equal in float32, and in bf16 within two roundings of the output (the
eager ops and the kernels compute exp and the products with other instructions)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from kernels.elementwise import rms_norm, rotary, silu_mul


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
    torch.manual_seed(0)
    batch, tokens, heads, kv_heads, dim = 2, 5, 4, 2, 32
    q = torch.randn(batch, tokens, heads, dim).to(dtype).transpose(1, 2)  # the projections' view
    k = torch.randn(batch, tokens, kv_heads, dim).to(dtype).transpose(1, 2)
    angle = torch.rand(batch, tokens, dim // 2).repeat(1, 1, 2) * 6
    cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    got_q, got_k = rotary(q, cos, sin), rotary(k, cos, sin)
    tol = 1e-6 if dtype == torch.float32 else 2**-6
    for got, want in ((got_q, want_q), (got_k, want_k)):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 8), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="differ"):
        silu_mul(torch.randn(2, 8), torch.randn(2, 9))
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm(torch.randn(8, 2).t(), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        rotary(torch.randn(1, 2, 3, 8), torch.randn(1, 3, 6), torch.randn(1, 3, 6))
