"""`decode_steps` for the radix allocator: many decode steps of all its sequences at once.

Growth goes into the sequences' own blocks (never shared, never copied); the blocks the
stretch needs come off the free queue in the order step-by-step decoding takes them, and a
shortfall evicts cached leaves up front: the same leaves, in the same order, as stepping
would, and evicted blocks count as free either way (the usage rows are equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from allocators.base import MemoryUsage, SeqLike

if TYPE_CHECKING:
    from allocators.radix import RadixAllocator, _Seq

_new = tuple.__new__


def decode_steps(
    a: RadixAllocator, seqs: Sequence[SeqLike], num_steps: int
) -> list[MemoryUsage] | None:
    bs, k = a.block_size, num_steps
    states = [a._seqs[s.seq_id] for s in seqs]
    crossings = []  # (step, position in seqs): that step writes into a new block
    for j, st in enumerate(states):
        n, room = st.num_tokens, st.cached + len(st.own) * bs
        if n + k > st.final_len:
            return None
        if room - n < k:
            crossings += [(t, j) for t in range(room - n + 1, k + 1, bs)]
    if len(crossings) > a.num_free_blocks:
        return None
    crossings.sort()  # per step, in sequence order: the order decode() takes blocks in
    # NOTE: evicting the whole shortfall now frees the same leaves, in the same order, as
    # step-by-step decoding would, and evicted blocks count as free either way.
    new = a._take(len(crossings))
    assert new is not None
    new_blocks, new_room = [0] * (k + 1), [0] * (k + 1)
    for (t, j), b in zip(crossings, new):
        st = states[j]
        new_room[t] += min(bs, st.final_len - st.cached - len(st.own) * bs)
        st.own.append(b)
        new_blocks[t] += 1
    return _steps_usage(a, states, k, new_blocks, new_room)


def _steps_usage(
    a: RadixAllocator, states: list[_Seq], k: int, new_blocks: list[int], new_room: list[int]
) -> list[MemoryUsage]:
    """Advance every sequence k tokens; the usage after each step."""
    bs, num = a.block_size, len(states)
    cap, protected = a.num_blocks * bs, a.tree.protected_size
    own_blocks = a._own_blocks
    tokens, reserved, logical = a._own_tokens, a._reserved, a._logical
    usages = []
    for t in range(1, k + 1):
        own_blocks += new_blocks[t]
        tokens += num
        logical += num
        reserved += new_room[t] - num
        internal = own_blocks * bs - tokens - reserved
        usages.append(_new(MemoryUsage, (
            cap, protected + tokens, reserved, internal, 0,
            cap - protected - tokens - reserved - internal, logical,
            a._cached + own_blocks * bs)))  # fmt: skip
    a._own_blocks, a._own_tokens = own_blocks, tokens
    a._reserved, a._logical = reserved, logical
    for st in states:
        st.num_tokens += k
    return usages
