"""Checking the attention backend against the tokens: K/V derived from token ids, and every
layer's output compared with a float32 reference computed from each sequence's whole context.

K/V of a token depend only on its id and the layer (a fixed random embedding), so a block a
sequence shares, copies, swaps or hits in the prefix cache must hold exactly what the
sequence's own tokens would give: a wrong block id, a missed copy or a stale table shows up
as an attention error. Only for tests and `backend.verify=true` runs: it is slow.
"""

from __future__ import annotations

import numpy as np
import torch

from allocators.base import KVAllocator
from engine.backends.base import StepBatch
from engine.models import ModelSpec
from kernels.reference import attend

VOCAB = 4096
TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 1e-4}


class Verifier:
    def __init__(
        self, model: ModelSpec, num_layers: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        g = torch.Generator(device="cpu").manual_seed(1234)
        shape = (num_layers, VOCAB, model.num_kv_heads, model.head_dim)
        self.emb_k = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        self.emb_v = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        self.model, self.dtype, self.device = model, dtype, device
        self.max_err = 0.0
        self.num_checked = 0
        self._ids = torch.empty(0)
        self._rows: list[tuple[object, int, int, int]] = []  # (seq, context, q row, q count)

    def inputs(self, batch: StepBatch, alloc: KVAllocator, gen: torch.Generator) -> tuple:
        """Random queries of this step, and the new tokens' ids (for `new_kv`)."""
        ids, rows, q_row = [], [], 0
        for seq in batch.decode_seqs:
            n = alloc.num_tokens(seq.seq_id)
            ids.append(seq.tokens.ids(n - 1, n, VOCAB))
            rows.append((seq, n, q_row, 1))
            q_row += 1
        for seq, start, count in batch.prefills:
            ids.append(seq.tokens.ids(start, start + count, VOCAB))
            rows.append((seq, start + count, q_row, count))
            q_row += count
        self._ids = torch.from_numpy(np.concatenate(ids)).to(self.device)
        self._rows = rows
        m = self.model
        q = torch.randn(q_row, m.num_heads, m.head_dim, generator=gen, device=self.device)
        return q.to(self.dtype), None, None

    def new_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.emb_k[layer][self._ids], self.emb_v[layer][self._ids]

    def check(self, layer: int, q: torch.Tensor, out: torch.Tensor, scale: float) -> None:
        """Every query's output against attention over its sequence's own tokens."""
        num = den = 0.0
        for seq, context, q_row, count in self._rows:
            ids = torch.from_numpy(seq.tokens.ids(0, context, VOCAB)).to(self.device)  # type: ignore[attr-defined]
            k, v = self.emb_k[layer][ids], self.emb_v[layer][ids]
            rows = slice(q_row, q_row + count)
            ref = attend(q[rows], k, v, scale, context - count if count > 1 else None)
            num += float((out[rows].float() - ref).norm() ** 2)
            den += float(ref.norm() ** 2)
        err = (num / den) ** 0.5 if den else 0.0
        self.max_err = max(self.max_err, err)
        self.num_checked += 1
        if not err < TOL[self.dtype]:
            raise AssertionError(
                f"layer {layer}: attention differs from the token reference (rel. err {err:.3g})"
            )
