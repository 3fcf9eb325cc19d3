"""CUDA graphs of decode-only steps: every layer's KV write and decode attention captured once
per batch-size bucket and replayed, as vLLM does. Without them a small decode step is bound
by kernel launches (3 per layer), not by the GPU.

    static inputs   table [max_batch, width] int32   lens [max_batch] int32
                    slots [max_batch] int64           q, k, v: fixed random inputs
    a step of n sequences replays the graph of the smallest bucket >= n; rows n.. are padding:
    table row 0 -> the null block, length 1, slot -1 (write_kv skips it)

The kernels size their split-K from the lengths on the GPU, so one capture at the longest
length the table can hold serves every replay: a graph is captured with `graph_splits` splits
(the most any replay uses), and each replay sets the device scalar `split_tokens`, the fewest
tokens per split (`step_split_tokens`): the longest sequence gets the piece count the eager
heuristic chooses for the step's lengths (capped at the graph's), the others pieces of that
size - equal lengths over 2 x SMs programs run in one piece and skip the merge, ragged
batches cut their long sequences. (A fixed `splits` cuts every sequence into that many
pieces instead.) With verification, k/v (and the outputs) have one slice per layer, filled
from the tokens before each replay.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from engine.backends.buckets import BUCKETS, bucket
from kernels.paged_decode import split_tokens_for

if TYPE_CHECKING:
    from engine.backends.attention import AttentionBackend, _Batch
    from engine.models import ModelSpec


def copy_rows(graph_table: torch.Tensor, rows: torch.Tensor) -> None:
    """The step's table rows into the graph's static table, from row 0.

    NOTE: the rows' table may be wider than the graph's (it grows by doubling); a length
    <= the graph's max_len needs no block past the graph's width."""
    w = min(rows.shape[1], graph_table.shape[1])
    graph_table[: rows.shape[0], :w] = rows[:, :w]


@contextmanager
def no_gc() -> Iterator[None]:
    """Python's cyclic GC paused: a collection inside a capture could free another graph
    (a finished job's, in a multirun), which CUDA refuses while a stream captures."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def graph_splits(programs: int, max_len: int, num_sms: int) -> int:
    """Split-K count a decode graph is captured with: the most pieces a replay cuts a sequence
    into (`step_split_tokens` sets how many it does). Chosen when every sequence was cut into
    exactly this many, on an H200 (results/reference/attention_h200/NOTES.md): 8 pieces beat
    2 and 4 up to 1024 (sequence, KV head) programs, where the batch alone leaves SMs waiting
    on latency, and 4 was as good as 8 past that; 16 cost the larger batches a merge pass."""
    return max(1, min(8, max(4, -(-64 * num_sms // programs)), -(-max_len // 128)))


def step_split_tokens(
    n: int, longest: int, total: int | None, size: int, model: ModelSpec, max_len: int,
    num_sms: int,
) -> int:  # fmt: skip
    """A replay's split_tokens for its n decode rows (the longest holding `longest` tokens,
    `total` in all when known), under the `graph_splits` of a graph of `size` decode rows."""
    kv, longest = model.num_kv_heads, max(longest, 1)
    splits = graph_splits(max(size, 1) * kv, max_len, num_sms)
    mean = total / n if total is not None and n else longest
    return split_tokens_for(max(n, 1) * kv, longest, mean, splits, model.head_dim, num_sms)


class DecodeGraphs:
    def __init__(
        self, backend: AttentionBackend, width: int, max_len: int, splits: int | None = None
    ) -> None:
        m, dev, dt = backend.model, backend.device, backend.dtype
        n = BUCKETS[-1]
        per_layer = backend.num_layers if backend.verifier is not None else 1
        self.backend, self.max_len, self.splits = backend, max_len, splits
        props = torch.cuda.get_device_properties(dev)
        self.num_sms = props.multi_processor_count
        self.table = torch.zeros((n, width), dtype=torch.int32, device=dev)
        self.lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.slots = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self.split_tokens = torch.ones(1, dtype=torch.int32, device=dev)
        g = backend.gen
        self.q = torch.randn((n, m.num_heads, m.head_dim), generator=g, device=dev).to(dt)
        kv = (per_layer, n, m.num_kv_heads, m.head_dim)
        self.k = torch.randn(kv, generator=g, device=dev).to(dt)
        self.v = torch.randn(kv, generator=g, device=dev).to(dt)
        self.out = torch.empty((per_layer, n, m.num_heads, m.head_dim), dtype=dt, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.mempool = torch.cuda.graph_pool_handle()

    def fits(self, b: _Batch) -> bool:
        return (
            b.max_query_len == 0
            and bucket(b.num_decode) is not None
            and b.max_decode_len <= self.max_len
        )

    def prepare(self, b: _Batch) -> tuple[torch.cuda.CUDAGraph, float]:
        """Fill the static inputs from b; returns its bucket's graph (captured first if new)
        and the seconds that capture took."""
        n = b.num_decode
        size = bucket(n)
        assert size is not None
        copy_rows(self.table, b.table)
        self.table[n:size] = 0
        self.lens[:n] = b.lens
        self.lens[n:size] = 1
        self.slots[:n] = b.slots
        self.slots[n:size] = -1
        if not self.splits:
            self.split_tokens.fill_(step_split_tokens(
                n, b.max_decode_len, b.decode_tokens, size, self.backend.model, self.max_len,
                self.num_sms,
            ))  # fmt: skip
        graph = self.graphs.get(size)
        if graph is not None:
            return graph, 0.0
        t0 = time.perf_counter()
        self._layers(size)  # warm-up launches; rewrite this step's K/V with the same values
        graph = self.graphs[size] = torch.cuda.CUDAGraph()
        with no_gc(), torch.cuda.graph(graph, pool=self.mempool):
            self._layers(size)
        torch.cuda.synchronize(self.table.device)
        return graph, time.perf_counter() - t0

    def _layers(self, size: int) -> None:
        from engine.backends.attention import _Batch

        m = self.backend.model
        splits = self.splits or graph_splits(size * m.num_kv_heads, self.max_len, self.num_sms)
        b = _Batch(
            self.table[:size], self.lens[:size], self.slots[:size], self.lens[:1], size,
            self.max_len, None, 0, splits, split_tokens=None if self.splits else self.split_tokens,
        )  # fmt: skip
        last = self.k.shape[0] - 1
        for layer in range(self.backend.num_layers):
            i = min(layer, last)
            self.backend.layer(layer, self.q[:size], self.k[i, :size], self.v[i, :size], b,
                               self.out[i, :size])  # fmt: skip
