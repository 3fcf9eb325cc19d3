"""Kernels against the float32 torch reference at tiny sizes, through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.cache_ops import copy_blocks, write_kv
from kernels.contiguous import contiguous_decode, contiguous_prefill, pick_backend, sdpa_decode
from kernels.paged_decode import paged_decode, split_tokens_for
from kernels.paged_prefill import paged_prefill
from tests.kernels.cases import make_pool, make_slots, rel_err

D = 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("block_size", "kv_heads", "group"), [(1, 2, 1), (4, 2, 4), (16, 1, 8)])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_paged_decode(dtype, block_size, kv_heads, group, num_splits):
    lens = [1, 17, 40]
    k, v, table, seq_lens = make_pool(lens, block_size, kv_heads, D, dtype, "cpu")
    q = torch.randn(len(lens), kv_heads * group, D).to(dtype)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    paged_decode(q, k, v, table, seq_lens, D**-0.5, out=out, num_splits=num_splits, block_n=16)
    ref = reference.paged_decode(q, k, v, table, seq_lens, D**-0.5)
    assert not out.isnan().any()
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize(("block_size", "group"), [(4, 1), (16, 4)])
def test_paged_prefill_plain_and_chunked(block_size, group):
    ctx, q_lens = [20, 33, 9], [20, 7, 1]  # a prefill, a chunk after 26 cached tokens, a decode
    k, v, table, seq_lens = make_pool(ctx, block_size, 2, D, torch.float32, "cpu")
    q = torch.randn(sum(q_lens), 2 * group, D)
    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    out = torch.full_like(q, float("nan"))
    paged_prefill(q, k, v, table, seq_lens, starts, D**-0.5, out=out, block_m=16, block_n=16)
    ref = reference.paged_prefill(q, k, v, table, seq_lens, starts, D**-0.5)
    assert not out.isnan().any() and rel_err(out, ref) < 1e-5


def test_write_kv_and_copy_blocks():
    k, v, _, _ = make_pool([8], 4, 2, D, torch.bfloat16, "cpu", num_blocks=6)
    k2, v2 = k.clone(), v.clone()
    key, value = torch.randn(5, 2, D).to(torch.bfloat16), torch.randn(5, 2, D).to(torch.bfloat16)
    slots = torch.tensor([7, 0, -1, 21, 12], dtype=torch.int64)  # -1: padding, skipped
    write_kv(key, value, k, v, slots)
    reference.write_kv(key, value, k2, v2, slots)
    assert torch.equal(k, k2) and torch.equal(v, v2)
    pairs = torch.tensor([[1, 4], [5, 2]], dtype=torch.int64)
    copy_blocks(k[None], v[None], pairs)
    reference.copy_blocks(k2, v2, pairs)
    assert torch.equal(k, k2) and torch.equal(v, v2)


def test_pool_copy_runs_every_layer():
    """KVPool.copy: runs of units (static slots here) in every layer, as a gather would."""
    from engine.backends.kv_pool import KVPool, run_pairs

    runs = [(3, 10, 4), (1, 20, 1), (30, 0, 0), (25, 31, 2)]
    assert run_pairs(runs).tolist() == [[3, 10], [4, 11], [5, 12], [6, 13], [1, 20], [25, 31],
                                        [26, 32]]  # fmt: skip
    pool = KVPool(3, 40, 1, 2, 8, True, torch.bfloat16, torch.device("cpu"))
    pool.k.normal_(), pool.v.normal_()
    k, v = pool.k.clone(), pool.v.clone()
    pool.copy(runs)
    src, dst = torch.from_numpy(run_pairs(runs)).T
    k[:, dst], v[:, dst] = k[:, src], v[:, src]
    assert torch.equal(pool.k, k) and torch.equal(pool.v, v)
    for bad in ([(3, 10, 4), (12, 20, 1)], [(3, 10, 2), (5, 11, 1)]):  # chained; written twice
        with pytest.raises(ValueError, match="written twice or read and written"):
            pool.copy(bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [None, 1, 3])
def test_contiguous_decode(dtype, num_splits):
    lens = [1, 17, 70, 40]
    k, v, starts, seq_lens = make_slots(lens, 2, D, dtype, "cpu")
    q = torch.randn(len(lens), 8, D).to(dtype)
    out = torch.full_like(q, float("nan"))
    contiguous_decode(q, k, v, starts, seq_lens, D**-0.5, out=out, num_splits=num_splits,
                      block_n=16)  # fmt: skip
    ref = reference.contiguous_decode(q, k, v, starts, seq_lens, D**-0.5)
    assert not out.isnan().any()
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_decode_splits_follow_gpu_lengths_not_the_host_bound():
    """A bound far above the real lengths (a CUDA graph captured at a longer maximum) must
    neither change the result nor leave splits reading past a sequence."""
    lens = [33, 64, 5]
    k, v, table, seq_lens = make_pool(lens, 4, 2, D, torch.float32, "cpu")
    q = torch.randn(len(lens), 4, D)
    ref = reference.paged_decode(q, k, v, table, seq_lens, D**-0.5)
    out = paged_decode(q, k, v, table, seq_lens, D**-0.5, max_seq_len=4096, block_n=16)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("least", [16, 32, 48, 1000])
def test_decode_split_tokens_read_on_the_gpu(least, monkeypatch):
    """split_tokens (a device scalar a graph replay sets) sizes every sequence's pieces: some
    rows in one piece (written by the decode kernel, skipped by the merge), some split. The
    partial-result buffers start as NaN: the merge must read only pieces that were written."""
    empty = torch.empty

    def poisoned(*size, **kw):
        t = empty(*size, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)
    lens = [1, 17, 40, 70]
    tokens = torch.tensor([least], dtype=torch.int32)
    k, v, table, seq_lens = make_pool(lens, 4, 2, D, torch.float32, "cpu")
    q = torch.randn(len(lens), 4, D)
    out = torch.full_like(q, float("nan"))
    paged_decode(q, k, v, table, seq_lens, D**-0.5, out=out, max_seq_len=4096, num_splits=4,
                 block_n=16, split_tokens=tokens)  # fmt: skip
    assert rel_err(out, reference.paged_decode(q, k, v, table, seq_lens, D**-0.5)) < 1e-5
    with pytest.raises(ValueError, match="split_tokens"):
        paged_decode(q, k, v, table, seq_lens, 1.0, split_tokens=tokens)
    k, v, starts, seq_lens = make_slots(lens, 2, D, torch.float32, "cpu")
    out = torch.full_like(q, float("nan"))
    contiguous_decode(q, k, v, starts, seq_lens, D**-0.5, out=out, max_seq_len=4096,
                      num_splits=4, block_n=16, split_tokens=tokens)  # fmt: skip
    assert rel_err(out, reference.contiguous_decode(q, k, v, starts, seq_lens, D**-0.5)) < 1e-5


def test_split_tokens_follow_the_eager_split_choice():
    """A graph's pieces per step (grid of 8 splits, H200's 132 SMs, head_dim 128): equal
    lengths over 2 x SMs programs in one piece; few programs cut into the grid's 8; a ragged
    batch cuts its long sequences only."""
    assert split_tokens_for(512, 1024, 1024.0, 8, 128, 132) >= 1024
    assert split_tokens_for(16, 1024, 1024.0, 8, 128, 132) == 128
    tokens = split_tokens_for(512, 4096, 1024.0, 8, 128, 132)
    assert 1 < -(-4096 // tokens) <= 8 and tokens >= 512 and tokens % 64 == 0


def test_contiguous_prefill_plain_and_chunked():
    ctx, q_lens = [20, 33, 9], [20, 7, 1]
    k, v, starts, seq_lens = make_slots(ctx, 2, D, torch.float32, "cpu", seed=1)
    q = torch.randn(sum(q_lens), 4, D)
    qs = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    out = torch.full_like(q, float("nan"))
    contiguous_prefill(q, k, v, starts, seq_lens, qs, D**-0.5, out=out)
    ref = reference.contiguous_prefill(q, k, v, starts, seq_lens, qs, D**-0.5)
    assert not out.isnan().any() and rel_err(out, ref) < 1e-5


def test_sdpa_baseline_names_its_backend():
    q, k, v = torch.randn(3, 8, D), torch.randn(3, 2, 24, D), torch.randn(3, 2, 24, D)
    backend = pick_backend(q, k, v)
    out = sdpa_decode(q, k, v, D**-0.5, backend)
    ref = reference.contiguous_decode(
        q, k.transpose(1, 2).reshape(-1, 2, D), v.transpose(1, 2).reshape(-1, 2, D),
        torch.arange(0, 72, 24, dtype=torch.int32), torch.full((3,), 24, dtype=torch.int32),
        D**-0.5,
    )  # fmt: skip
    assert rel_err(out, ref) < 1e-5
    assert backend.name in {"CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"}


def test_wrappers_reject_bad_inputs():
    k, v, table, lens = make_pool([5], 4, 2, D, torch.float32, "cpu")
    q = torch.randn(1, 4, D)
    with pytest.raises(ValueError, match="dtypes differ"):
        paged_decode(q.half(), k, v, table, lens, 1.0)
    with pytest.raises(ValueError, match="int32"):
        paged_decode(q, k, v, table.long(), lens, 1.0)
    with pytest.raises(ValueError, match="multiple"):
        paged_decode(torch.randn(1, 3, D), k, v, table, lens, 1.0)
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv(
            torch.randn(1, 2, D), torch.randn(1, 2, D), k, v, torch.zeros(1, dtype=torch.int32)
        )
