"""Engine-side state of a request (a group of sequences) and of each sequence.

A request with n parallel samples or beam width k runs as a group of n (k) sequences that
share its prompt: the first sequence is prefilled and the others fork from it. Sequences of
a group advance in lockstep, so the group keeps one output count for all of them:

    after step t, each sequence has produced  t - base + 1  tokens   (base: its prefill step)
    a sequence that produced D tokens stores KV for prompt_len + D - 1 tokens

A preempted group keeps its sequences (and their ids): recompute frees their KV and
re-admits them later; swap keeps their KV in host memory (`swapped`) until it comes back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from allocators.base import Swapped
from workloads.request import Request
from workloads.tokens import Tokens


@dataclass(slots=True, eq=False)
class Seq:
    seq_id: int
    prompt_len: int
    final_len: int
    tokens: Tokens


@dataclass(slots=True, eq=False)
class Group:
    req: Request
    seqs: list[Seq] = field(default_factory=list)
    num_out: int = 0
    """Tokens each sequence had produced when the group was last (re)admitted."""
    base: int = -1
    """Step of the last (re)admission: tokens produced after step t = num_out + t - base + 1."""
    finish_step: int = -1
    first_token_s: float = -1.0
    finish_s: float = -1.0
    num_preemptions: int = 0
    num_cached_tokens: int = 0
    num_computed_tokens: int = 0
    """Prompt (and recomputed) tokens the prefills of this request computed."""
    swapped: tuple[Swapped, int] | None = None
    """While swapped out: the allocator's record and where the engine put it in host memory."""

    @property
    def num_seqs(self) -> int:
        return self.req.num_seqs

    def resume_tokens(self) -> int:
        """Tokens of KV each sequence needs at (re)admission: prompt plus produced tokens."""
        return self.req.prompt_len + self.num_out
