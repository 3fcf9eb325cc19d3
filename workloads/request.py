"""A request of a workload: what arrives at the engine."""

from __future__ import annotations

from dataclasses import dataclass

from workloads.tokens import GENERATED, UNIQUE, Source, Tokens


@dataclass(frozen=True, slots=True)
class Request:
    req_id: int
    arrival_s: float
    prompt_len: int
    output_len: int
    chunks: tuple[tuple[Source, int], ...] = ()
    """The prompt as (source, length) pieces; empty means tokens of this request alone.
    Shared pieces (Mooncake hash ids, system prompts) are the prefix-group information."""
    n: int = 1
    """Parallel samples: each returns `output_len` tokens from the same prompt."""
    beam_width: int = 1

    def __post_init__(self) -> None:
        if self.prompt_len < 1 or self.output_len < 1:
            raise ValueError(f"request {self.req_id}: prompt and output need >= 1 token")
        if self.chunks and sum(n for _, n in self.chunks) != self.prompt_len:
            raise ValueError(f"request {self.req_id}: prompt pieces do not sum to prompt_len")
        if self.n < 1 or self.beam_width < 1 or (self.n > 1 and self.beam_width > 1):
            raise ValueError(f"request {self.req_id}: use n or beam_width, each >= 1")

    @property
    def num_seqs(self) -> int:
        return max(self.n, self.beam_width)

    def tokens(self, seq_id: int) -> Tokens:
        """The prompt tokens, then seq_id's own generated tokens."""
        chunks = self.chunks or (((UNIQUE, self.req_id), self.prompt_len),)
        return Tokens.from_chunks(chunks, tail=(GENERATED, seq_id))


@dataclass
class Workload:
    """Requests in arrival order, and what was changed to make them fit."""

    name: str
    requests: list[Request]
    num_clipped: int = 0
    """Requests whose prompt or output was shortened to fit max_seq_len."""

    @property
    def num_output_tokens(self) -> int:
        return sum(r.output_len * r.num_seqs for r in self.requests)


def clip_lengths(prompt_len: int, output_len: int, max_seq_len: int) -> tuple[int, int]:
    """Shorten a request to max_seq_len tokens: the prompt keeps its head and at least one
    output token remains."""
    prompt_len = min(prompt_len, max_seq_len - 1)
    return prompt_len, min(output_len, max_seq_len - prompt_len)
