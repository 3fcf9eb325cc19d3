"""Minimal sequences for allocator tests."""

from __future__ import annotations

from dataclasses import dataclass

from workloads.tokens import GENERATED, SYSTEM, UNIQUE, Tokens


@dataclass(frozen=True)
class Seq:
    seq_id: int
    prompt_len: int
    final_len: int
    tokens: Tokens


def seq(seq_id: int, prompt_len: int, output_len: int, shared_prefix: int = 0) -> Seq:
    """A sequence whose first `shared_prefix` tokens are one common system prompt."""
    chunks = [
        ((SYSTEM, 0), min(shared_prefix, prompt_len)),
        ((UNIQUE, seq_id), prompt_len - min(shared_prefix, prompt_len)),
    ]
    tokens = Tokens.from_chunks(chunks, tail=(GENERATED, seq_id))
    return Seq(seq_id, prompt_len, prompt_len + output_len, tokens)


def child(parent: Seq, seq_id: int, at: int, output_len: int) -> Seq:
    """A fork of `parent` after its first `at` tokens."""
    return Seq(
        seq_id, parent.prompt_len, at + output_len, parent.tokens.fork(at, (GENERATED, seq_id))
    )
