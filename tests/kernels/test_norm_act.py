"""The fused elementwise kernels against transformers' and torch's eager modules, through
Triton's interpreter: equal in float32, and in bf16 within two roundings of the output (the
eager ops and the kernels compute exp and the products with other instructions)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from kernels.norm_act import rms_norm, silu_mul


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


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 8), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="differ"):
        silu_mul(torch.randn(2, 8), torch.randn(2, 9))
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm(torch.randn(8, 2).t(), torch.ones(8), 1e-6)
