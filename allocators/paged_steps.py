"""`decode_steps` for the paged allocators: many decode steps of all sequences at once.

The blocks a stretch needs are found first (a sequence crosses into a new block every
block_size steps), taken off the free queue in the order step-by-step decoding takes them
(per step, in sequence order), and the usage after each step is computed from running
totals. A stretch that might not fit, reaches a final length, or writes into a shared
partial block (a copy) is refused: the engine then steps one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from allocators.base import MemoryUsage, SeqLike

if TYPE_CHECKING:
    from allocators.paged import PagedAllocator

_new = tuple.__new__


def decode_steps(
    a: PagedAllocator, seqs: Sequence[SeqLike], num_steps: int
) -> list[MemoryUsage] | None:
    bs, k, ref = a.block_size, num_steps, a._ref
    states = [a._seqs[s.seq_id] for s in seqs]
    crossings = []  # (step, position in seqs): that step writes into a new block
    for j, st in enumerate(states):
        n = st.num_tokens
        if n + k > st.final_len or (n < st.room and ref[st.table[-1]] > 1):
            return None
        if st.room - n < k:
            crossings += [(t, j) for t in range(st.room - n + 1, k + 1, bs)]
    if len(crossings) > a.num_free_blocks:
        return None
    crossings.sort()  # per step, in sequence order: the order decode() takes blocks in
    new_blocks = [0] * (k + 1)  # blocks taken at each step
    new_room = [0] * (k + 1)  # slots those blocks add below the final lengths
    pop = a._pool.pop
    for t, j in crossings:
        st = states[j]
        new_room[t] += min(bs, st.final_len - st.room)
        st.table.append(pop())
        st.room += bs
        new_blocks[t] += 1
    usages = []
    cap, num_seqs = a.num_blocks * bs, len(states)
    used, reserved = (
        (a.num_blocks - a.num_free_blocks - len(crossings)) * bs,
        a._reserved,
    )
    tokens, logical, logical_blocks = a._tokens, a._logical, a._logical_blocks
    for t in range(1, k + 1):
        used += new_blocks[t] * bs
        tokens += num_seqs
        logical += num_seqs
        reserved += new_room[t] - num_seqs
        logical_blocks += new_blocks[t]
        usages.append(_new(MemoryUsage, (
            cap, tokens, reserved, used - tokens - reserved, 0, cap - used, logical,
            logical_blocks * bs)))  # fmt: skip
    a._tokens, a._logical, a._reserved = tokens, logical, reserved
    a._logical_blocks = logical_blocks
    for st in states:
        st.num_tokens += k
    if a._cache is not None:
        a._cache.register_grown(seqs, states)
    return usages
