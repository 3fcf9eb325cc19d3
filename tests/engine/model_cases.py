"""Shared by the model backend's CPU and GPU tests: small configs, a recorder of every step's
logits, and the reference - the same weights run by transformers eagerly with its own cache
(DynamicCache, SDPA attention), one sequence at a time."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import numpy as np
import torch

from engine.backends.model import ModelBackend
from engine.models import ModelSpec


def llama_config(layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=512,
        max_position_embeddings=1024,
    )  # fmt: skip


def opt_config(layers: int = 2, hidden: int = 64, heads: int = 4) -> Any:
    from transformers import OPTConfig

    return OPTConfig(
        hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, vocab_size=512, word_embed_proj_dim=hidden,
        max_position_embeddings=1024,
    )  # fmt: skip


def spec_of(cfg: Any) -> ModelSpec:
    heads = cfg.num_attention_heads
    return ModelSpec(
        "test", num_layers=cfg.num_hidden_layers, num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=cfg.hidden_size // heads, hidden_size=cfg.hidden_size, num_params=0,
    )  # fmt: skip


class Recorder:
    """Wraps backend.step: after each step, every sequence's logits row with the token ids
    it saw (its context up to and including its last new token)."""

    def __init__(self, backend: ModelBackend) -> None:
        self.backend, self.alloc = backend, backend.alloc
        self.records: list[tuple[int, np.ndarray, torch.Tensor]] = []  # (seq id, ids, logits)
        self._step = backend.step
        backend.step = self.step  # type: ignore[method-assign]

    def step(self, batch: Any) -> float:
        vocab = self.backend.vocab_size
        rows = [(s, self.alloc.num_tokens(s.seq_id)) for s in batch.decode_seqs]
        rows += [(s, start + n) for s, start, n in batch.prefills]
        dt = self._step(batch)
        logits = self.backend.last_logits.float().cpu().clone()  # graphs reuse theirs
        assert logits.shape[0] == len(rows), "one logits row per sequence of the step"
        assert torch.equal(self.backend.last_next_ids.cpu(), logits.argmax(-1)), "argmax"
        for (s, context), row in zip(rows, logits):
            self.records.append((s.seq_id, s.tokens.ids(0, context, vocab), row))
        return dt


def reference(hf: torch.nn.Module, ids: np.ndarray, first: int) -> torch.Tensor:
    """Logits after each of ids[first - 1:], float32: the prompt ids[:first] in one forward,
    then one token at a time through transformers' own cache."""
    from transformers import DynamicCache

    device = next(hf.parameters()).device
    cache = DynamicCache(config=hf.config)
    name = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    x = torch.as_tensor(ids, device=device)[None]
    out = [hf(input_ids=x[:, :first], use_cache=True, **{name: cache}).logits[0, -1:]]
    for t in range(first, len(ids)):
        out.append(hf(input_ids=x[:, t : t + 1], use_cache=True, **{name: cache}).logits[0])
    return torch.cat(out).float().cpu()


def reference_model(backend: ModelBackend) -> torch.nn.Module:
    """The backend's weights in float32 with transformers' SDPA attention."""
    ref = copy.deepcopy(backend.hf).float()
    ref.set_attn_implementation("sdpa")
    return ref


def max_rel_error(backend: ModelBackend, records: list) -> float:
    """The largest relative error (L2, per logits row) of any recorded row against the
    reference of its sequence."""
    ref_model, worst = reference_model(backend), 0.0
    for rows in _by_seq(records).values():
        longest, first = _span(rows)
        ref = reference(ref_model, longest, first)
        worst = max(worst, *(_rel(row, ref[len(ids) - first]) for ids, row in rows))
    return worst


def bf16_floor(backend: ModelBackend, records: list) -> float:
    """The same measure for transformers' own run of the backend's model in its dtype (SDPA,
    its own cache) over the recorded sequences: the error the dtype alone makes. It grows with
    the hidden size."""
    own = copy.deepcopy(backend.hf)
    own.set_attn_implementation("sdpa")
    ref_model, worst = reference_model(backend), 0.0
    for rows in _by_seq(records).values():
        longest, first = _span(rows)
        want, got = reference(ref_model, longest, first), reference(own, longest, first)
        worst = max(worst, *(_rel(g, w) for g, w in zip(got, want)))
    return worst


def _by_seq(records: list) -> dict[int, list]:
    by_seq: dict[int, list] = {}
    for sid, ids, row in records:
        by_seq.setdefault(sid, []).append((ids, row))
    return by_seq


def _span(rows: list) -> tuple[np.ndarray, int]:
    """A sequence's longest recorded ids and its shortest recorded length."""
    longest = max((ids for ids, _ in rows), key=len)
    for ids, _ in rows:
        assert np.array_equal(ids, longest[: len(ids)]), "a sequence changed its tokens"
    return longest, min(len(ids) for ids, _ in rows)


def _rel(row: torch.Tensor, want: torch.Tensor) -> float:
    err = float((row - want).norm() / want.norm())
    return err if err == err else float("inf")  # NaN fails
