"""CUDA graphs of the model's steps, as vLLM does: a whole forward (embedding, every layer's
projections, KV write, attention and MLP, the final norm, lm_head and argmax) captured once
per bucket and replayed. Without them an 8B model's steps are bound by kernel launches (~900
per forward through transformers' eager modules), not by the GPU.

    decode-only steps   one graph per batch bucket: n sequences replay the smallest
                        bucket >= n (engine/backends/buckets.py)
    mixed steps         (prefills, with or without decode rows) one graph per (decode
                        bucket, prefill-token bucket) of MIXED_DECODE x MIXED_TOKENS, with
                        up to MAX_PREFILLS prefill rows; larger steps run eagerly (their
                        GEMMs, not launches, set their time)

Static buffers, shared by every graph (a step fills them, then replays):

    ids, pos, slots   [max_batch + max prefill tokens]   the packed new tokens: D decode
                      slots (n real, then padding), then the prefill tokens (T real, then
                      padding up to the token bucket)
    table, lens       [max_batch + MAX_PREFILLS rows]    D decode rows, then MAX_PREFILLS
                      prefill rows (p real, then zero-length rows: query_start repeats T)
    query_start       [MAX_PREFILLS + 1] int32           prefill queries, from token D on
    rows              [max_batch + MAX_PREFILLS] int64   where the logits are taken: decode
                      rows 0..n-1, then each prefill's last token, then token 0 (padding)
    logits, next_ids  [max_batch + MAX_PREFILLS, ...]    outputs; a step reads its n + p rows

ids, pos, slots and lens live in one buffer (StepInputs) with a host mirror. A decode-only
step (`decode`, the backend's fast path) writes the mirror - token ids, positions, lengths,
each row's row of the backend's table - and copies it over at once, gathers the table rows
in one launch, and its graph finds each row's slot from its table row and length: one copy
and one gather (and the table entries that changed) where the general path launches about
twenty small operations. Mixed steps (`prepare`) fill the buffers from the backend's
general step metadata.

Padding attends to the null block: token 0 at position 0, table row of zeros, length 1, slot
-1 (write_kv skips it); zero-length prefill rows do no work. The decode kernels size each
sequence's splits from its length on the GPU and the prefill grid covers the token bucket,
so one capture serves every replay of its bucket. Capture rules kept: inputs and outputs
live outside the graphs' memory pool at fixed addresses, nothing syncs with the host inside
the forward, and warm-up forwards run on the capture's side stream before capturing (they
rewrite the step's K/V with the same values). Without CUDA (`capture=False`, CPU tests) a
"graph" runs the same padded forward eagerly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.backends.attention import _Batch
from engine.backends.buckets import (
    BUCKETS,
    MAX_PREFILLS,
    MIXED_TOKENS,
    bucket,
    max_batch,
    mixed_bucket,
)
from engine.backends.decode_graphs import copy_rows, graph_splits, no_gc, step_split_tokens
from engine.backends.step_inputs import StepInputs

if TYPE_CHECKING:
    from engine.backends.model import ModelBackend


class _Eager:
    """The CPU stand-in of a captured graph: replay runs the padded forward."""

    def __init__(self, run: Callable[[], None]) -> None:
        self.replay = run


Graph = torch.cuda.CUDAGraph | _Eager


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
        mixed: bool = True,
    ) -> None:
        dev = backend.device
        n = self.max_batch = max_batch(max_num_seqs)
        self.max_tokens = MIXED_TOKENS[-1] if mixed else 0  # prefill tokens of a mixed graph
        tokens, rows = n + self.max_tokens, n + MAX_PREFILLS
        self.backend, self.max_len = backend, max_len
        self.num_sms, self.splits, self.capture_graphs = num_sms, splits, capture
        as_i32 = dict(dtype=torch.int32, device=dev)
        self.table = torch.zeros((rows, width), **as_i32)
        self.query_start = torch.zeros(MAX_PREFILLS + 1, **as_i32)
        self.rows = torch.zeros(rows, dtype=torch.int64, device=dev)
        self.inputs = StepInputs(tokens, rows, dev)
        self.ids, self.pos, self.slots = self.inputs.ids, self.inputs.pos, self.inputs.slots
        self.lens, self.split_tokens = self.inputs.lens, self.inputs.split_tokens
        self._arange = torch.arange(rows, dtype=torch.int64, device=dev)
        self.logits = torch.empty((rows, backend.vocab_size), dtype=backend.dtype, device=dev)
        self.next_ids = torch.zeros(rows, dtype=torch.int64, device=dev)
        self.graphs: dict[int, Graph] = {}  # decode-only, by batch bucket
        self.mixed: dict[tuple[int, int], Graph] = {}  # by (decode rows, prefill tokens)
        self.mempool = torch.cuda.graph_pool_handle() if capture else None
        self.stream = torch.cuda.Stream(dev) if capture else None

    def takes_decode(self, num_seqs: int, longest: int) -> bool:
        """A decode-only step of these many sequences, the longest holding `longest` tokens,
        replays a graph (`decode`)."""
        return num_seqs <= self.max_batch and longest <= self.max_len

    def fits(self, b: _Batch) -> bool:
        """A mixed step (prefills, with or without decode rows) replays a graph (`prepare`)."""
        if b.max_query_len == 0 or b.max_decode_len > self.max_len:
            return False
        num_prefills = b.query_start.shape[0] - 1
        return (
            b.num_decode <= self.max_batch
            and num_prefills <= MAX_PREFILLS
            and b.slots.shape[0] - b.num_decode <= self.max_tokens
            and b.max_prefill_len <= self.max_len
        )

    def decode(
        self, ids: np.ndarray, lens: np.ndarray, rows: np.ndarray, table: torch.Tensor
    ) -> tuple[Graph, float]:
        """Fill the static inputs of a decode-only step - each sequence's new token id, its
        length after the step, its row of the backend's `table` (host arrays) - and return
        its bucket's graph (captured first if new) with the seconds a capture took. One
        host-to-device copy and one gather of the table rows; the graph finds each row's slot
        from its table row and length."""
        n = len(ids)
        size = bucket(n)
        assert size is not None and size <= self.max_batch
        split = 1 if self.splits else step_split_tokens(
            n, int(lens.max()), int(lens.sum()), size, self.backend.model, self.max_len,
            self.num_sms,
        )  # fmt: skip
        self.inputs.decode(size, ids, lens - 1, lens, rows, split)
        self._gather(table, size)
        return self._graph(self.graphs, size)

    def prepare(self, b: _Batch, ids: torch.Tensor, pos: torch.Tensor) -> tuple[Graph, int, float]:
        """Fill the static inputs of a mixed step from b and the new tokens (ids, pos); returns
        the bucket's graph (captured first if new), the number of logits rows the step owns,
        and the seconds a capture took."""
        n = b.num_decode
        p, t = b.query_start.shape[0] - 1, b.slots.shape[0] - n
        d, tb = mixed_bucket(n, t, self.max_batch)
        copy_rows(self.table, b.table[:n])
        copy_rows(self.table[d:], b.table[n:])
        self.lens[:n] = b.lens[:n]
        self.lens[d : d + p] = b.lens[n:]
        self._fill_tokens(0, ids[:n], pos[:n], b.slots[:n])
        self._fill_tokens(d, ids[n:], pos[n:], b.slots[n:])
        self._pad(n, d, d + tb, first_token=d + t)
        self.table[d + p : d + MAX_PREFILLS] = 0
        self.lens[d + p : d + MAX_PREFILLS] = 1
        self.query_start[: p + 1] = b.query_start
        self.query_start[p + 1 :] = t
        self.rows[:n] = self._arange[:n]
        self.rows[n : n + p] = b.query_start[1:] + (d - 1)
        self.rows[n + p :] = 0
        if not self.splits and n:
            self.split_tokens.fill_(step_split_tokens(
                n, b.max_decode_len, b.decode_tokens, d, self.backend.model, self.max_len,
                self.num_sms,
            ))  # fmt: skip
        graph, capture_s = self._graph(self.mixed, (d, tb))
        return graph, n + p, capture_s

    def capture_all(self) -> float:
        """Capture every decode bucket up to max_batch, largest first (as vLLM at start-up),
        on padding only (nothing is written); returns the seconds it took. Mixed graphs are
        captured as their buckets first occur (their capture is not timed either)."""
        t0 = time.perf_counter()
        none = np.zeros(0, dtype=np.int64)
        for size in sorted((s for s in BUCKETS if s <= self.max_batch), reverse=True):
            if size not in self.graphs:
                self.inputs.decode(size, none, none, none, none, 1)
                self.table[:size] = 0
                self.graphs[size] = self._capture(lambda s=size: self._forward(s))
        return time.perf_counter() - t0

    def _gather(self, table: torch.Tensor, size: int) -> None:
        """The decode rows' table rows (padding: the null row 0) into the static table."""
        index = self.inputs.row_index[:size]
        if table.shape[1] == self.table.shape[1]:
            torch.index_select(table, 0, index, out=self.table[:size])
        else:
            copy_rows(self.table, table.index_select(0, index))

    def _graph(self, store: dict, key: int | tuple[int, int]) -> tuple[Graph, float]:
        """The graph of `key` in `store` (decode-only or mixed), captured first over the static
        inputs as they are if new, and the seconds a capture took."""
        graph = store.get(key)
        if graph is not None:
            return graph, 0.0
        t0 = time.perf_counter()
        graph = store[key] = self._capture(lambda: self._forward(key))
        return graph, time.perf_counter() - t0

    def _capture(self, forward: Callable[[], None]) -> Graph:
        """The graph of one forward over the static inputs as they are."""
        if not self.capture_graphs:
            return _Eager(forward)
        assert self.stream is not None
        current = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            for _ in range(2):
                forward()
        current.wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        with no_gc(), torch.cuda.graph(graph, pool=self.mempool, stream=self.stream):
            forward()
        torch.cuda.synchronize(self.stream.device)
        return graph

    def _fill_tokens(self, at: int, ids: torch.Tensor, pos: torch.Tensor, slots) -> None:
        end = at + ids.shape[0]
        self.ids[at:end], self.pos[at:end], self.slots[at:end] = ids, pos, slots

    def _pad(self, n: int, rows: int, tokens: int, first_token: int) -> None:
        """Decode rows n..rows-1 and their tokens, and the tokens from first_token to
        `tokens`, as padding."""
        self.table[n:rows] = 0
        self.lens[n:rows] = 1
        for lo, hi in ((n, rows), (first_token, tokens)):
            self.slots[lo:hi] = -1
            self.ids[lo:hi] = 0
            self.pos[lo:hi] = 0

    def _decode_slots(self, size: int) -> torch.Tensor:
        """Where each decode row's new token goes (inside the graph): the slot of its last
        position, through its table row; -1 (written nowhere) for padding."""
        table, last = self.table[:size], self.lens[:size].long() - 1
        if self.backend.contiguous:  # a static range's or a virtual row's first slot
            slot = table[:, 0].long() + last
        else:
            bs = self.backend.alloc.block_size
            slot = table.gather(1, (last // bs)[:, None])[:, 0].long() * bs + last % bs
        return torch.where(self._arange[:size] < self.inputs.num_real, slot, -1)

    def _grid_splits(self, size: int) -> int:
        """The decode split-K a graph of `size` decode rows is captured with."""
        kv_heads = self.backend.model.num_kv_heads
        return self.splits or graph_splits(max(size, 1) * kv_heads, self.max_len, self.num_sms)

    def _forward(self, key: int | tuple[int, int]) -> None:
        """The padded forward of one bucket: decode-only (an int) or mixed (a pair)."""
        size, tokens = (key, 0) if isinstance(key, int) else key
        if tokens:
            rows, qs, slots = size + MAX_PREFILLS, self.query_start, self.slots[: size + tokens]
        else:
            rows, qs, slots = size, self.lens[:1], self._decode_slots(size)  # no prefill rows
        b = _Batch(
            self.table[:rows], self.lens[:rows], slots, qs, size,
            self.max_len, None, tokens, self._grid_splits(size),
            split_tokens=None if self.splits else self.split_tokens,
        )  # fmt: skip
        out = slice(0, rows)
        self.backend.forward(
            self.ids[: size + tokens], self.pos[: size + tokens], b,
            self.rows[out] if tokens else None, self.logits[out], self.next_ids[out],
        )  # fmt: skip
