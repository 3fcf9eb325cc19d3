"""The `model` backend: a real transformers decoder (random weights) over kvbench's KV pools.

Everything the `attention` backend does per step - swaps, copies, incremental block tables,
pools in the allocator's layout, paged kernels for paged layouts and contiguous kernels for
static ranges, CUDA-event timing - is inherited from it; what changes is what runs between
the copies: instead of random queries, one forward of the model over the step's new tokens

    input  ids, positions   [1, num_new]: each decode sequence's newest token (at position
                            num_tokens - 1), then every prefill chunk's tokens, from the
                            workload's token source (so prefix-cache hits are real)
    layers                  transformers' projections, norms, MLPs; attention through
                            kvbench_attention (engine/backends/hf_model.py), which writes the
                            new K/V into the pool and attends through the allocator's tables;
                            with `fused_ops`, kvbench's Llama forward over the same modules'
                            weights in fewer kernels (engine/backends/fused_llama.py)
    output  logits, next    lm_head and argmax at each sequence's last new token
                            [num_seqs, vocab], [num_seqs] (decode rows first, then prefills)

The argmax is computed and not used: the next input is the workload's token, so a run serves
exactly the requests of the workload. Steps replay CUDA graphs (engine/backends/model_graphs.py):
decode-only steps one per batch bucket, steps with prefills one per (decode rows, prefill
tokens) bucket up to 2,048 prefill tokens; larger steps run eagerly. Step time is the
step's wall time up to the GPU finishing, as in the attention backend; graph captures are
kept out of it (or done before the run: `capture_graphs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from allocators.base import KVAllocator, cdiv
from engine.backends.attention import AttentionBackend, _Batch
from engine.backends.base import StepBatch
from engine.backends.fused_llama import FusedLlama, resolve_fused_ops
from engine.backends.hf_model import StepContext, build_model
from engine.backends.model_graphs import ModelGraphs
from engine.models import ModelSpec, hf_config
from engine.sequence import Seq
from workloads.errors import KvbenchError


class ModelBackend(AttentionBackend):
    name = "model"

    def __init__(
        self,
        model: ModelSpec,
        allocator: KVAllocator,
        dtype: str = "bfloat16",
        device: str = "cuda",
        graphs: bool = True,
        mixed_graphs: bool = True,
        fused_ops: bool | str = "auto",
        max_seq_len: int | None = None,
        max_num_seqs: int = 256,
        graph_splits: int | None = None,
        init_std: float = 0.02,
        seed: int = 0,
        kernel: str = "triton",
        gpu: object = None,
        config: Any = None,
        hf_model: torch.nn.Module | None = None,
    ) -> None:
        """
        Args:
            max_num_seqs: the engine's cap: the largest batch replayed from a graph (and
                vattention's virtual rows).
            mixed_graphs: with `graphs`, steps with prefills replay graphs too (False: they
                run eagerly, kernel by kernel, as before graphs covered them).
            fused_ops: True: kvbench's forward over the modules' weights
                (engine/backends/fused_llama.py: packed projections, fused norms, residual
                adds, activation and rotary embedding), Llama models only; False:
                transformers' own forward; "auto": True where the model can take it.
            init_std: standard deviation of the random weights.
            config: a transformers config (default: the `model=` preset's); its shapes must
                be the ModelSpec's.
            hf_model: a model built by `hf_model.build_model` from that config, to share its
                weights (benchmarks compare it with transformers' own serving).
            graphs, max_seq_len, graph_splits, kernel, gpu: as in AttentionBackend.
        """
        super().__init__(
            model, allocator, dtype, device=device, seed=seed, kernel=kernel, gpu=gpu,
            graphs=False, max_seq_len=max_seq_len, max_num_seqs=max_num_seqs,
        )  # fmt: skip
        cfg = config if config is not None else hf_config(model.name)
        _check_shapes(cfg, model)
        fused_ops = resolve_fused_ops(fused_ops, cfg, model.name)
        self.hf = hf_model if hf_model is not None else build_model(
            cfg, self.dtype, self.device, init_std, seed
        )  # fmt: skip
        self.fused = FusedLlama(self.hf) if fused_ops else None
        self.body = self.hf.base_model  # the decoder without lm_head
        head = self.hf.get_output_embeddings()
        self.head_weight, self.head_bias = head.weight, head.bias  # [vocab, hidden]
        self.vocab_size = cfg.vocab_size
        self.pool.k[:, 0].zero_()  # the null block (page): padded graph rows attend to it
        self.pool.v[:, 0].zero_()
        self.tokens = TokenIds(self.vocab_size)
        self._tok_staging = torch.empty(0, dtype=torch.int64)
        self.last_logits: torch.Tensor | None = None
        self.last_next_ids: torch.Tensor | None = None
        self.graphs: ModelGraphs | None = None  # type: ignore[assignment]
        if graphs and self.device.type == "cuda":
            max_len = max_seq_len or getattr(allocator, "max_seq_len", None) or 16384
            # NOTE: the device table starts 64 blocks wide: a graph takes at least that
            width = 1 if self.contiguous else max(cdiv(max_len, allocator.block_size), 64)
            sms = torch.cuda.get_device_properties(self.device).multi_processor_count
            if not self.contiguous:
                self.rows.widen(width)
            self.graphs = ModelGraphs(
                self, width, max_len, max_num_seqs, sms, graph_splits, mixed=mixed_graphs
            )
        if self.device.type == "cuda":
            self._warm_up_model()

    def capture_graphs(self) -> float:
        """Capture every decode bucket now (vLLM does so at start-up); returns seconds."""
        return self.graphs.capture_all() if self.graphs is not None else 0.0

    # --- one forward -------------------------------------------------------------------------
    def forward(
        self, ids: torch.Tensor, pos: torch.Tensor, b: _Batch, rows: torch.Tensor | None = None,
        logits: torch.Tensor | None = None, next_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The model over one packed step: ids/pos [num_new]; returns logits [num_rows, vocab]
        and their argmax at `rows` (default: every token), into logits/next_ids if given."""
        ctx = StepContext(self, b)
        if self.fused is not None:
            h = self.fused(ids, pos, ctx)
        else:
            h = self.body(
                input_ids=ids[None], position_ids=pos[None], use_cache=False, kvbench=ctx
            ).last_hidden_state[0]
        if rows is not None:
            h = h[rows]
        logits = torch.mm(h, self.head_weight.t(), out=logits)
        if self.head_bias is not None:
            logits += self.head_bias
        return logits, torch.argmax(logits, dim=-1, out=next_ids)

    # --- the attention backend's step, with the model in place of random attention inputs ---
    def step(self, batch: StepBatch) -> float:
        self.tokens.release(batch.freed)
        return super().step(batch)

    def _layers(self, batch: StepBatch, b: _Batch) -> None:
        """An eager step: logits at every decode row and at each prefill chunk's last token."""
        ids, pos, rows = self._token_inputs(batch, with_rows=b.max_query_len > 0)
        self.last_logits, self.last_next_ids = self.forward(ids, pos, b, rows)

    def _replay_decode(self, batch: StepBatch, events: list) -> float | None:
        """A decode-only step from its bucket's graph: the table rows and lengths of `sync`,
        the new tokens' ids, one copy of them to the device (ModelGraphs.decode); the slots
        are found inside the graph. None: not a decode-only step the graphs take."""
        graphs, seqs = self.graphs, batch.decode_seqs
        if graphs is None or batch.prefills or not seqs or len(seqs) > graphs.max_batch:
            return None
        rows, lens, updates = self.rows.sync([s.seq_id for s in seqs], self.alloc)
        if updates.size:
            self.rows.apply(self._to_device(updates.ravel()).view(3, -1))
        if not graphs.takes_decode(len(seqs), int(lens.max())):
            if updates.size and self.device.type == "cuda":  # the general path reuses the
                torch.cuda.synchronize(self.device)  # staging buffer the updates are in
            return None
        ids_of = self.tokens.get
        ids = np.fromiter((ids_of(s)[p - 1] for s, p in zip(seqs, lens)), np.int64, len(seqs))
        graph, capture_s = graphs.decode(ids, lens, rows, self.rows.table)
        if events:
            events[0].record()
        graph.replay()
        n = len(seqs)
        self.last_logits, self.last_next_ids = graphs.logits[:n], graphs.next_ids[:n]
        return capture_s

    def _graph_step(self, batch: StepBatch, b: _Batch, graphs: Any, events: list) -> float:
        """A step with prefills replayed from its bucket's graph (decode-only steps:
        `_replay_decode`); returns the seconds spent capturing a new graph."""
        ids, pos, _ = self._token_inputs(batch, with_rows=False)
        graph, n, capture_s = graphs.prepare(b, ids, pos)
        if events:
            events[0].record()
        graph.replay()
        self.last_logits, self.last_next_ids = graphs.logits[:n], graphs.next_ids[:n]
        return capture_s

    def _token_inputs(
        self, batch: StepBatch, with_rows: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token ids and positions of the step's new tokens on the device, and (with_rows)
        the token index of each sequence's last new token - one host-to-device copy."""
        num_tokens, ids_of = self.alloc.num_tokens, self.tokens.get
        decode = batch.decode_seqs
        pos_d = np.fromiter((num_tokens(s.seq_id) - 1 for s in decode), np.int64, len(decode))
        ids = [np.fromiter((ids_of(s)[p] for s, p in zip(decode, pos_d)), np.int64, len(decode))]
        pos = [pos_d]
        for s, start, count in batch.prefills:
            ids.append(ids_of(s)[start : start + count])
            pos.append(np.arange(start, start + count, dtype=np.int64))
        parts = [np.concatenate(ids), np.concatenate(pos)]
        if with_rows:
            counts = [n for _, _, n in batch.prefills]
            ends = len(decode) + np.cumsum(counts, dtype=np.int64) - 1
            parts.append(np.concatenate([np.arange(len(decode), dtype=np.int64), ends]))
        dev = self._tokens_to_device(np.concatenate(parts))
        n = parts[0].size
        return dev[:n], dev[n : 2 * n], dev[2 * n :] if with_rows else None

    def _tokens_to_device(self, host: np.ndarray) -> torch.Tensor:
        """As `_to_device`, through a pinned buffer of its own (that one is in flight)."""
        if self.device.type != "cuda":
            return torch.from_numpy(host)
        if self._tok_staging.numel() < host.size:
            self._tok_staging = torch.empty(2 * host.size, dtype=torch.int64, pin_memory=True)
        stage = self._tok_staging[: host.size]
        stage.numpy()[:] = host
        return stage.to(self.device, non_blocking=True)

    def _warm_up_model(self) -> None:
        """One mixed forward (a decode row and a one-token prefill) writing nothing, so that
        library initialization (cuBLAS handles, workspaces) stays out of the first step."""
        as_i32 = dict(dtype=torch.int32, device=self.device)
        table = torch.zeros(self.rows.table.shape, **as_i32)[:2]
        slots = torch.full((2,), -1, dtype=torch.int64, device=self.device)
        b = _Batch(table, torch.ones(2, **as_i32), slots, torch.arange(2, **as_i32), 1, 1, None, 1)
        zeros = torch.zeros(2, dtype=torch.int64, device=self.device)
        self.forward(zeros, zeros, b)
        torch.cuda.synchronize(self.device)


class TokenIds:
    """seq_id -> the sequence's token ids over [0, final_len), drawn once from its token
    source: a decode step then costs one lookup per sequence, not a hash per token."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._ids: dict[int, tuple[object, np.ndarray]] = {}

    def get(self, seq: Seq) -> np.ndarray:
        hit = self._ids.get(seq.seq_id)
        if hit is not None and hit[0] is seq.tokens:  # NOTE: a re-forked sequence may
            return hit[1]  # come back under its id with a new Tokens object
        ids = seq.tokens.ids(0, seq.final_len, self.vocab_size)
        self._ids[seq.seq_id] = (seq.tokens, ids)
        return ids

    def release(self, seq_ids: Sequence[int]) -> None:
        for sid in seq_ids:
            self._ids.pop(sid, None)


def _check_shapes(cfg: Any, spec: ModelSpec) -> None:
    heads = cfg.num_attention_heads
    got = (
        cfg.num_hidden_layers,
        heads,
        getattr(cfg, "num_key_value_heads", None) or heads,
        getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
    )
    want = (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim)
    if got != want:
        raise KvbenchError(
            f"backend=model: the transformers config has (layers, heads, kv heads, head dim) "
            f"{got}, the model spec {spec.name} {want}"
        )
