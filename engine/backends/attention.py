"""The `attention` backend: real KV pools on the GPU and real attention kernels, every layer.

Each step, in the order the allocator's outputs require:

    swap out -> swap in -> copies before the step -> for every layer: write the new tokens'
    K/V (`write_kv`), decode attention, prefill attention -> copies after the step

Paged layouts (paged, prefix, radix) run the paged Triton kernels through the block table; a
static allocator's contiguous ranges run the contiguous varlen kernels (no block table), so
static allocation is never timed with a paged kernel; so do vattention's virtual rows, with
physical pages mapped into them as the allocator hands them out (vmm_pool.py). Queries and
new K/V are random (the kernels' cost does not depend on the values); with `verify`, K/V
come from the sequences' token ids (a fixed random embedding per layer) and every layer's
output is checked against the float32 reference computed from the tokens - shared, copied
and swapped blocks included.

Timing: the step's duration is its wall time, host work included, up to the GPU finishing
(the engine's clock advances by it). `last_kernel_s` is the GPU time from the first to the
last kernel (CUDA events); `last_host_s` the rest: bookkeeping and launches not hidden behind
GPU work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from allocators.base import KVAllocator, cdiv
from engine.backends.base import StepBatch
from engine.backends.decode_graphs import DecodeGraphs
from engine.backends.layouts import build_layout
from engine.backends.verify import Verifier
from engine.models import ModelSpec
from kernels.cache_ops import write_kv
from kernels.contiguous import contiguous_decode, contiguous_prefill
from kernels.paged_decode import paged_decode
from kernels.paged_prefill import paged_prefill
from workloads.errors import KvbenchError
from workloads.tokens import ranges

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(slots=True)
class _Batch:
    """One step's tensors on the device: tables and lengths of decode rows, then prefills."""

    table: torch.Tensor  # [num_rows, max_blocks] int32 (contiguous: [num_rows, 1] first slots)
    lens: torch.Tensor  # [num_rows] int32: KV tokens after this step
    slots: torch.Tensor  # [num_new_tokens] int64: where each new token's K/V goes
    query_start: torch.Tensor  # [num_prefills + 1] int32, offsets of prefill queries
    num_decode: int
    max_decode_len: int  # an upper bound of the decode rows' lengths
    decode_tokens: int | None  # their sum, when known (ragged batches split better)
    max_query_len: int
    num_splits: int | None = None  # decode split-K count (None: the kernel's heuristic)
    max_prefill_len: int = 0  # the prefill rows' longest length (KV tokens after the step)
    split_tokens: torch.Tensor | None = None  # graphs: the fewest tokens per split, on the GPU


class AttentionBackend:
    name = "attention"
    multi_step = False

    def __init__(
        self,
        model: ModelSpec,
        allocator: KVAllocator,
        dtype: str = "bfloat16",
        verify: bool = False,
        device: str = "cuda",
        num_layers: int | None = None,
        seed: int = 0,
        kernel: str = "triton",
        gpu: object = None,
        graphs: bool = True,
        max_seq_len: int | None = None,
        graph_splits: int | None = None,
        max_num_seqs: int = 256,
    ) -> None:
        """
        Args:
            num_layers: layers to run (default: the model's); fewer for quick checks.
            graphs: replay decode-only steps from CUDA graphs (one per batch bucket).
            max_seq_len: the longest sequence, to size the graphs' tables (default: 16384).
            graph_splits: split-K count of graph-captured decode, every sequence cut into that
                many pieces (default: at most a count by batch bucket, each replay splitting
                as its lengths call for: engine/backends/decode_graphs.py).
            kernel: "triton" (kvbench's paged or contiguous kernels, by the allocator's layout).
            gpu: a sim profile an experiment overlay may set; unused (the card is timed).
            max_num_seqs: live sequences at most (vattention reserves a virtual row each).
        """
        if kernel != "triton":
            raise KvbenchError(f"backend.kernel must be triton, got {kernel!r}")
        if dtype not in DTYPES:
            raise KvbenchError(f"backend.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise KvbenchError(f"backend={self.name} needs a CUDA GPU; none is visible here")
        self.alloc, self.model = allocator, model
        self.device = torch.device(device)
        self.layout = getattr(allocator, "layout", "paged")
        self.contiguous = self.layout != "paged"  # static ranges, or vattention's virtual rows
        self.kernel = "triton_contiguous" if self.contiguous else "triton_paged"
        self.num_layers = num_layers or model.num_layers
        self.dtype = DTYPES[dtype]
        self.pool, self.rows, self._emulated = build_layout(
            allocator, model, self.num_layers, self.dtype, self.device, max_num_seqs, verify
        )
        self.scale = model.head_dim**-0.5
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self._rand = torch.empty(0, device=self.device, dtype=self.dtype)
        self._staging = torch.empty(0, dtype=torch.int64)
        self.verifier = (
            Verifier(model, self.num_layers, self.dtype, self.device) if verify else None
        )
        self.gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.last_host_s = self.last_kernel_s = 0.0
        self.graphs: DecodeGraphs | None = None
        if graphs and self.device.type == "cuda":
            max_len = max_seq_len or getattr(allocator, "max_seq_len", None) or 16384
            width = 1 if self.contiguous else cdiv(max_len, allocator.block_size)
            self.graphs = DecodeGraphs(self, width, max_len, graph_splits)
        if self.device.type == "cuda":
            self._warm_up()

    # --- the protocol ----------------------------------------------------------------------
    def step(self, batch: StepBatch) -> float:
        t0 = time.perf_counter()
        pool = self.pool
        self.rows.release(batch.freed)
        pool.swap_out(batch.swap_out)
        pool.swap_in(batch.swap_in)
        pool.copy(batch.copies_before)
        events = self._events()
        # capturing a new bucket's graph: once per run, not the step's cost
        untimed = self._replay_decode(batch, events)
        if untimed is None:
            untimed = 0.0
            b = self._metadata(batch)
            if b is not None and self.graphs is not None and self.graphs.fits(b):
                untimed = self._graph_step(batch, b, self.graphs, events)
            else:
                if events:
                    events[0].record()
                if b is not None:
                    self._layers(batch, b)
        pool.copy(batch.copies_after)
        self.rows.settle()  # vattention: unmaps no kernel of this step waits for
        if events:
            events[1].record()
            events[1].synchronize()
        dt = time.perf_counter() - t0 - untimed
        self.last_kernel_s = events[0].elapsed_time(events[1]) * 1e-3 if events else 0.0
        self.last_host_s = max(dt - self.last_kernel_s, 0.0)
        return dt

    def summary(self) -> dict[str, float]:
        """Run totals for the job summary: vattention's mapping work (vmm_maps, vmm_map_s...)."""
        mapper = getattr(self.pool, "mapper", None)
        return {} if mapper is None else mapper.stats.summary()

    def close(self) -> None:
        """Give vattention's GPU pages back now (the backend is unusable after)."""
        self.graphs = None
        mapper = getattr(self.pool, "mapper", None)
        if mapper is not None:
            mapper.close()

    def stretch(self, *args: object) -> list[float]:
        raise NotImplementedError("the attention backend runs every step (multi_step is False)")

    # --- one step ----------------------------------------------------------------------------
    def _replay_decode(self, batch: StepBatch, events: list) -> float | None:
        """A decode-only step replayed from its graph without `_metadata` (the model backend's
        fast path), returning the seconds a capture took; None: the step runs below."""
        return None

    def _metadata(self, batch: StepBatch) -> _Batch | None:
        """Bring the tables of this step's sequences up to date; build the token layout."""
        alloc = self.alloc
        decode = batch.decode_seqs
        prefills = batch.prefills
        seqs = [s.seq_id for s in decode] + [s.seq_id for s, _, _ in prefills]
        rows, lens, updates = self.rows.sync(seqs, alloc)  # type: ignore[arg-type]
        if not seqs:
            return None
        nd = len(decode)
        starts = np.fromiter((st for _, st, _ in prefills), np.int64, len(prefills))
        counts = np.fromiter((n for _, _, n in prefills), np.int64, len(prefills))
        if len(prefills):
            lens[nd:] = starts + counts  # a chunk attends up to its last query
        qs = np.zeros(len(prefills) + 1, np.int64)
        np.cumsum(counts, out=qs[1:])
        # new tokens: each decode row's last position, then every prefill chunk's positions
        tok_row = np.concatenate([np.arange(nd), np.repeat(np.arange(nd, len(seqs)), counts)])
        tok_pos = np.concatenate([lens[:nd] - 1, ranges(starts, counts)])
        dev = self._to_device(np.concatenate([updates.ravel(), rows, lens, qs, tok_row, tok_pos]))
        self.rows.apply(dev[: updates.size].view(3, -1))
        dev = dev[updates.size :]
        n, p = len(seqs), len(prefills)
        d_rows, d_lens, d_qs = dev[:n], dev[n : 2 * n], dev[2 * n : 2 * n + p + 1]
        d_row, d_pos = dev[2 * n + p + 1 :].view(2, -1)
        table = self.rows.table[d_rows]
        if self.contiguous:
            slots = table[d_row, 0].long() + d_pos
        else:
            bs = self.alloc.block_size
            slots = table[d_row, d_pos // bs].long() * bs + d_pos % bs
        return _Batch(
            table, d_lens.int(), slots, d_qs.int(), nd,
            int(lens[:nd].max()) if nd else 0, int(lens[:nd].sum()),
            int(counts.max()) if p else 0, None, int(lens[nd:].max()) if p else 0,
        )  # fmt: skip

    def _layers(self, batch: StepBatch, b: _Batch) -> None:
        """Every layer, eagerly: mixed prefill/decode steps, and all steps when verifying
        without graphs."""
        q, k_new, v_new = self._inputs(batch, b.slots.shape[0])
        for layer in range(self.num_layers):
            if self.verifier is not None:
                k_new, v_new = self.verifier.new_kv(layer)
            out = torch.empty_like(q)
            self.layer(layer, q, k_new, v_new, b, out)
            if self.verifier is not None:
                self.verifier.check(layer, q, out, self.scale)

    def _graph_step(self, batch: StepBatch, b: _Batch, graphs: DecodeGraphs, events: list) -> float:
        """A decode-only step replayed from its bucket's CUDA graph (checked when verifying);
        returns the seconds spent capturing a new graph."""
        n, ver = b.num_decode, self.verifier
        if ver is not None:
            graphs.q[:n] = ver.inputs(batch, self.alloc, self.gen)[0]
            for layer in range(self.num_layers):
                k_new, v_new = ver.new_kv(layer)
                graphs.k[layer, :n], graphs.v[layer, :n] = k_new, v_new
        graph, capture_s = graphs.prepare(b)
        if events:
            events[0].record()
        graph.replay()
        if ver is not None:
            for layer in range(self.num_layers):
                ver.check(layer, graphs.q[:n], graphs.out[layer, :n], self.scale)
        return capture_s

    def layer(
        self, layer: int, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, b: _Batch,
        out: torch.Tensor,
    ) -> None:  # fmt: skip
        """One layer of one step: write the new tokens' K/V, then decode and prefill attention
        (CUDA-graph safe when b's bounds are fixed and decode_tokens is None)."""
        k, v = self.pool.layers[layer]
        cache_k, cache_v = (k.unsqueeze(1), v.unsqueeze(1)) if self.contiguous else (k, v)
        if self._emulated is None:
            write_kv(k_new, v_new, cache_k, cache_v, b.slots)
        else:  # vattention on the CPU: the rows are a copy of the pages (vmm_map.py)
            self._emulated.write(layer, k_new, v_new, b.slots)
        nd = b.num_decode
        if nd:
            self._decode(q[:nd], k, v, b, out[:nd])
        if b.max_query_len:
            self._prefill(q[nd:], k, v, b, out[nd:])

    def _decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: _Batch, out) -> None:
        nd = b.num_decode
        table, lens = b.table[:nd], b.lens[:nd]
        hint = dict(out=out, max_seq_len=b.max_decode_len, num_tokens=b.decode_tokens,
                    num_splits=b.num_splits, split_tokens=b.split_tokens)  # fmt: skip
        if self.contiguous:
            contiguous_decode(q, k, v, table[:, 0], lens, self.scale, **hint)
        else:
            paged_decode(q, k, v, table, lens, self.scale, **hint)

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: _Batch, out) -> None:
        nd = b.num_decode
        table, lens = b.table[nd:], b.lens[nd:]
        hint = dict(out=out, max_query_len=b.max_query_len)
        if self.contiguous:
            contiguous_prefill(q, k, v, table[:, 0], lens, b.query_start, self.scale, **hint)
        else:
            paged_prefill(q, k, v, table, lens, b.query_start, self.scale, **hint)

    def _inputs(self, batch: StepBatch, num_new: int) -> tuple[torch.Tensor, ...]:
        """Queries [num_new, heads, dim] and new K/V [num_new, kv_heads, dim] of this step."""
        if self.verifier is not None:
            return self.verifier.inputs(batch, self.alloc, self.gen)
        return self._random(num_new)

    def _random(self, num_new: int) -> tuple[torch.Tensor, ...]:
        m = self.model
        per_token = (m.num_heads + 2 * m.num_kv_heads) * m.head_dim
        if self._rand.numel() < num_new * per_token:  # random once, sliced every step
            n = max(num_new, 2 * self._rand.numel() // per_token)
            self._rand = torch.randn(n * per_token, generator=self.gen, device=self.device)
            self._rand = self._rand.to(self.dtype)
        x = self._rand[: num_new * per_token].view(num_new, -1, m.head_dim)
        return (
            x[:, : m.num_heads],
            x[:, m.num_heads : m.num_heads + m.num_kv_heads],
            x[:, m.num_heads + m.num_kv_heads :],
        )

    def _warm_up(self) -> None:
        """Compile every kernel a step launches (decode with and without split-K, the merge,
        prefill, the KV write) before the first step: Triton compiles on first use, and the
        engine's clock must not count it."""
        as_i32 = dict(dtype=torch.int32, device=self.device)
        # NOTE: what varies between steps (split counts, the table's stride, the metadata
        # pointers of prefill rows) is not specialized (kernels/paged_decode.py); what is
        # (pool and query alignment, fixed strides) is the live run's: the table has the live
        # table's width
        table = torch.zeros(self.rows.table.shape, **as_i32)[:2]
        lens = torch.ones(2, **as_i32)
        slots = torch.full((2,), -1, dtype=torch.int64, device=self.device)  # writes nothing
        q, k_new, v_new = self._random(2)
        # decode unsplit and split with a prefill after its row, then prefill alone;
        # the decode rows' lengths are given and equal, so every tile that decode_tiles.py may
        # choose for such batches is compiled here too
        for nd, splits in ((1, 1), (1, 2), (0, None)):
            b = _Batch(table, lens, slots, torch.arange(3 - nd, **as_i32), nd, 1, nd, 1, splits)
            self.layer(0, q, k_new, v_new, b, torch.empty_like(q))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _to_device(self, host: np.ndarray) -> torch.Tensor:
        """One copy of this step's host metadata to the device, through a pinned buffer
        (free to reuse: every step ends with a synchronize)."""
        if self.device.type != "cuda":
            return torch.from_numpy(host)
        if self._staging.numel() < host.size:
            self._staging = torch.empty(2 * host.size, dtype=torch.int64, pin_memory=True)
        stage = self._staging[: host.size]
        stage.numpy()[:] = host
        return stage.to(self.device, non_blocking=True)

    def _events(self) -> list[torch.cuda.Event]:
        if self.device.type != "cuda":
            return []
        return [torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)]
