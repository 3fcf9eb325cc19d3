"""CUDA graphs of the model's decode-only steps, one per batch-size bucket, as vLLM does: a
whole forward (embedding, every layer's projections, KV write, decode attention and MLP, the
final norm, lm_head and argmax) captured once per bucket and replayed. Without them an 8B
model's small decode steps are bound by kernel launches, not by the GPU.

    static inputs   ids [max_batch] int64          pos [max_batch] int64
                    table [max_batch, width] int32  lens [max_batch] int32  slots [max_batch] int64
    static outputs  logits [max_batch, vocab]       next_ids [max_batch] int64
    a step of n sequences replays the graph of the smallest bucket >= n; rows n.. are padding:
    token 0 at position 0, table row of zeros (the null block), length 1, slot -1 (write_kv
    skips it); their logits are computed and ignored

Buckets and the graph split-K count are the attention backend's (engine/backends/decode_graphs.py):
the kernels size each sequence's splits from its length on the GPU, so one capture at the
longest length serves every replay. Capture rules kept: inputs and outputs live outside the
graphs' memory pool at fixed addresses, nothing syncs with the host inside the forward, and
warm-up forwards run on the capture's side stream before capturing. Without CUDA (`capture=
False`, CPU tests) a "graph" runs the same padded forward eagerly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from engine.backends.attention import _Batch
from engine.backends.decode_graphs import BUCKETS, bucket, copy_rows, graph_splits

if TYPE_CHECKING:
    from engine.backends.model import ModelBackend


class _Eager:
    """The CPU stand-in of a captured graph: replay runs the padded forward."""

    def __init__(self, run: Callable[[], None]) -> None:
        self.replay = run


class ModelGraphs:
    def __init__(
        self,
        backend: ModelBackend,
        width: int,
        max_len: int,
        max_num_seqs: int,
        num_sms: int,
        splits: int | None = None,
        capture: bool = True,
    ) -> None:
        dev = backend.device
        n = self.max_batch = bucket(min(max_num_seqs, BUCKETS[-1])) or BUCKETS[-1]
        self.backend, self.max_len = backend, max_len
        self.num_sms, self.splits, self.capture_graphs = num_sms, splits, capture
        self.table = torch.zeros((n, width), dtype=torch.int32, device=dev)
        self.lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.slots = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self.ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.pos = torch.zeros(n, dtype=torch.int64, device=dev)
        self.logits = torch.empty((n, backend.vocab_size), dtype=backend.dtype, device=dev)
        self.next_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph | _Eager] = {}
        self.mempool = torch.cuda.graph_pool_handle() if capture else None
        self.stream = torch.cuda.Stream(dev) if capture else None

    def fits(self, b: _Batch) -> bool:
        return (
            b.max_query_len == 0
            and b.num_decode <= self.max_batch
            and b.max_decode_len <= self.max_len
        )

    def prepare(
        self, b: _Batch, ids: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.cuda.CUDAGraph | _Eager, float]:
        """Fill the static inputs from b and the new tokens; returns the bucket's graph
        (captured first if new) and the seconds the capture took."""
        n = b.num_decode
        size = bucket(n)
        assert size is not None and size <= self.max_batch
        copy_rows(self.table, b.table)
        self.lens[:n] = b.lens
        self.slots[:n] = b.slots
        self.ids[:n] = ids
        self.pos[:n] = pos
        self._pad(n, size)
        graph = self.graphs.get(size)
        if graph is not None:
            return graph, 0.0
        t0 = time.perf_counter()
        graph = self.capture(size)
        return graph, time.perf_counter() - t0

    def capture_all(self) -> float:
        """Capture every bucket up to max_batch, largest first (as vLLM at start-up), on
        padding only (nothing is written); returns the seconds it took."""
        t0 = time.perf_counter()
        for size in sorted((s for s in BUCKETS if s <= self.max_batch), reverse=True):
            if size not in self.graphs:
                self._pad(0, size)
                self.capture(size)
        return time.perf_counter() - t0

    def capture(self, size: int) -> torch.cuda.CUDAGraph | _Eager:
        """The graph of one bucket, from the static inputs as they are (warm-ups rewrite this
        step's K/V with the same values)."""
        if not self.capture_graphs:
            graph: torch.cuda.CUDAGraph | _Eager = _Eager(lambda: self._forward(size))
        else:
            assert self.stream is not None
            self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
            with torch.cuda.stream(self.stream):
                for _ in range(2):
                    self._forward(size)
            torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.mempool, stream=self.stream):
                self._forward(size)
            torch.cuda.synchronize(self.stream.device)
        self.graphs[size] = graph
        return graph

    def _pad(self, n: int, size: int) -> None:
        self.table[n:size] = 0
        self.lens[n:size] = 1
        self.slots[n:size] = -1
        self.ids[n:size] = 0
        self.pos[n:size] = 0

    def _forward(self, size: int) -> None:
        kv_heads = self.backend.model.num_kv_heads
        splits = self.splits or graph_splits(size * kv_heads, self.max_len, self.num_sms)
        b = _Batch(
            self.table[:size], self.lens[:size], self.slots[:size], self.lens[:1], size,
            self.max_len, None, 0, splits,
        )  # fmt: skip
        self.backend.forward(
            self.ids[:size], self.pos[:size], b, None, self.logits[:size], self.next_ids[:size]
        )
