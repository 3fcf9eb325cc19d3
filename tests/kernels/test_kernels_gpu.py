"""Kernels at real sizes on a GPU (pytest -m gpu): random block tables, ragged lengths, GQA,
every block size, poisoned outputs and pools whose offsets overflow int32."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.cache_ops import copy_blocks, write_kv
from kernels.contiguous import contiguous_decode, contiguous_prefill
from kernels.paged_decode import paged_decode
from kernels.paged_prefill import paged_prefill
from tests.kernels.cases import make_pool, make_slots, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3}


def ragged(n: int, hi: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, hi, (n,), generator=g).tolist()


def check_decode(lens, block_size, kv_heads, group, head_dim, dtype, **pool):
    k, v, table, seq_lens = make_pool(lens, block_size, kv_heads, head_dim, dtype, "cuda", **pool)
    q = torch.randn(len(lens), kv_heads * group, head_dim, device="cuda", dtype=dtype)
    out = torch.full_like(q, float("nan"))
    paged_decode(q, k, v, table, seq_lens, head_dim**-0.5, out=out)
    ref = reference.paged_decode(q, k, v, table, seq_lens, head_dim**-0.5)  # float32 inside
    assert not out.isnan().any(), "an output element was not written"
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("block_size", [1, 8, 16, 32, 64, 128, 256])
def test_decode_every_block_size(block_size):
    check_decode(ragged(16, 3000, block_size), block_size, 8, 4, 128, torch.bfloat16)


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_decode_gqa_and_head_dims(group, head_dim):
    check_decode(
        ragged(8, 5000, group + head_dim), 16, 32 // group, group, head_dim, torch.bfloat16
    )


def test_decode_fp16_long_context_uses_splits():
    check_decode([16384, 9000, 1], 16, 8, 4, 128, torch.float16)


def test_decode_pool_beyond_int32_offsets():
    # block stride 16 * 8 * 128 = 16384 elements: ids above 131072 overflow int32 offsets
    check_decode(
        ragged(4, 2000, 7), 16, 8, 4, 128, torch.bfloat16, num_blocks=140_000, first_block=135_000
    )


@pytest.mark.parametrize(("block_size", "head_dim"), [(16, 128), (128, 128), (16, 256), (32, 64)])
def test_prefill_plain_and_chunked(block_size, head_dim):
    ctx, q_lens = [2048, 1500, 700, 64], [2048, 300, 700, 1]
    k, v, table, seq_lens = make_pool(ctx, block_size, 8, head_dim, torch.bfloat16, "cuda")
    q = torch.randn(sum(q_lens), 32, head_dim, device="cuda", dtype=torch.bfloat16)
    starts = torch.tensor(
        [0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda"
    )
    out = torch.full_like(q, float("nan"))
    paged_prefill(q, k, v, table, seq_lens, starts, head_dim**-0.5, out=out)
    ref = reference.paged_prefill(q, k, v, table, seq_lens, starts, head_dim**-0.5)
    assert not out.isnan().any() and rel_err(out, ref) < 1e-2


def test_write_kv_and_copy_blocks_at_scale():
    k, v, _, _ = make_pool([64], 16, 8, 128, torch.bfloat16, "cuda", num_blocks=4096)
    k2, v2 = k.clone(), v.clone()
    n = 5000
    key = torch.randn(n, 8, 128, device="cuda", dtype=torch.bfloat16)
    value = torch.randn_like(key)
    slots = torch.randperm(4096 * 16, device="cuda")[:n]
    slots[::7] = -1
    write_kv(key, value, k, v, slots)
    reference.write_kv(key, value, k2, v2, slots)
    pairs = torch.stack([torch.arange(0, 100), torch.arange(1000, 1100)], 1).cuda()
    copy_blocks(k[None], v[None], pairs)
    reference.copy_blocks(k2, v2, pairs)
    assert torch.equal(k, k2) and torch.equal(v, v2)


@pytest.mark.parametrize(("group", "head_dim"), [(4, 128), (1, 64), (8, 256)])
def test_contiguous_decode_ragged(group, head_dim):
    lens = [*ragged(20, 6000, group), 16384, 1]
    k, v, starts, seq_lens = make_slots(lens, 32 // group, head_dim, torch.bfloat16, "cuda")
    q = torch.randn(len(lens), 32, head_dim, device="cuda", dtype=torch.bfloat16)
    out = torch.full_like(q, float("nan"))
    contiguous_decode(q, k, v, starts, seq_lens, head_dim**-0.5, out=out, num_tokens=sum(lens))
    ref = reference.contiguous_decode(q, k, v, starts, seq_lens, head_dim**-0.5)
    assert not out.isnan().any() and rel_err(out, ref) < 1e-2


def test_contiguous_prefill_plain_and_chunked():
    ctx, q_lens = [2048, 1500, 700, 64], [2048, 300, 700, 1]
    k, v, starts, seq_lens = make_slots(ctx, 8, 128, torch.bfloat16, "cuda", seed=3)
    q = torch.randn(sum(q_lens), 32, 128, device="cuda", dtype=torch.bfloat16)
    qs = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32).cuda()
    out = torch.full_like(q, float("nan"))
    contiguous_prefill(q, k, v, starts, seq_lens, qs, 128**-0.5, out=out)
    ref = reference.contiguous_prefill(q, k, v, starts, seq_lens, qs, 128**-0.5)
    assert not out.isnan().any() and rel_err(out, ref) < 1e-2


def test_decode_graph_replays_with_new_lengths():
    """Captured at a long maximum, replayed with other lengths and tables: still exact."""
    lens = [8192] * 16
    k, v, table, seq_lens = make_pool(lens, 16, 8, 128, torch.bfloat16, "cuda")
    q = torch.randn(16, 32, 128, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    paged_decode(q, k, v, table, seq_lens, 128**-0.5, out=out, max_seq_len=8192)  # compile
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_decode(q, k, v, table, seq_lens, 128**-0.5, out=out, max_seq_len=8192)
    for new_lens in ([4096] * 16, ragged(16, 8192, 5)):
        seq_lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        table.copy_(table[torch.randperm(16, device="cuda")])
        q.normal_()
        out.fill_(float("nan"))
        graph.replay()
        ref = reference.paged_decode(q, k, v, table, seq_lens, 128**-0.5)
        assert not out.isnan().any() and rel_err(out, ref) < 1e-2
