"""Hypothesis state machines: random admit / grow / fork / free / swap out / swap in with
invariants after each step.

Each machine runs up to 300 examples x 50 steps: over 10,000 random operations per allocator
(measured: 12,100-13,400 per allocator; hypothesis ends some examples early).
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from allocators.radix import RadixAllocator
from allocators.vattention import VAttentionAllocator
from tests.allocators.seqs import child, seq

RUNS = settings(max_examples=300, stateful_step_count=50, deadline=None)
MAX_SEQ_LEN = 48


class AllocatorMachine(RuleBasedStateMachine):
    """Subclasses set `make`; sequences draw prompts with or without a shared prefix."""

    def make(self, data):
        raise NotImplementedError

    @initialize(data=st.data())
    def setup(self, data):
        self.a = self.make(data)
        self.live = {}  # seq_id -> Seq
        self.swapped = []  # (Swapped, its sequences)
        self.refused = []  # sequences an admission refused
        self.next_id = 0

    def _snapshot(self):
        """Allocation state; a failed admission may only move free slots to external frag."""
        u = self.a.usage()
        held = (u.token_states, u.reservation, u.internal_frag, u.external_frag + u.free)
        return held, {i: list(self.a.block_table(i)) for i in self.live}

    def _new_id(self):
        self.next_id += 1
        return self.next_id

    @rule(
        prompt=st.integers(1, MAX_SEQ_LEN // 2),
        output=st.integers(1, MAX_SEQ_LEN // 2),
        prefix=st.sampled_from([0, 0, 8, 16]),
    )
    def admit(self, prompt, output, prefix):
        s = seq(self._new_id(), prompt, output, shared_prefix=prefix)
        before = self._snapshot()
        out = self.a.allocate(s, prompt)
        if out is None:
            assert self._snapshot() == before, "a failed admission changed state"
            self.refused.append(s)
            return
        self.live[s.seq_id] = s
        assert self.a.num_tokens(s.seq_id) == prompt
        assert 0 <= out.num_cached_tokens < prompt

    @rule(
        prompt=st.integers(1, MAX_SEQ_LEN // 2),
        prefix=st.sampled_from([0, 8, 16]),
        num_children=st.integers(0, 2),
    )
    def admit_and_abort(self, prompt, prefix, num_children):
        """A group admission rolled back: no change, and nothing new stays hittable."""
        s = seq(self._new_id(), prompt, MAX_SEQ_LEN // 2, shared_prefix=prefix)
        before = self._snapshot()
        found = self._hittable(s)
        if self.a.allocate(s, prompt) is None:
            return
        group = [s]
        for _ in range(num_children):
            c = child(s, self._new_id(), prompt, MAX_SEQ_LEN // 2)
            if self.a.fork(s.seq_id, c) is not None:
                group.append(c)
        self.a.abort([g.seq_id for g in group])
        assert self._snapshot() == before, "an aborted admission changed state"
        assert self._hittable(s) <= found, "an aborted admission left KV hittable"

    def _hittable(self, s) -> int:
        """Leading blocks of s's prompt a lookup finds (a radix match only splits edges)."""
        if isinstance(self.a, RadixAllocator):
            return self.a.tree.match(s.tokens.runs(0, s.prompt_len))[1] // self.a.block_size
        if isinstance(self.a, PrefixAllocator):
            return len(self.a._cache.lookup(s, s.prompt_len // self.a.block_size))
        return 0

    @precondition(lambda self: self.refused)
    @rule(data=st.data())
    def retry(self, data):
        """A refused sequence tries again (the engine keeps it): what the allocator learnt
        about it then (a prefix cache's hits) must not go stale."""
        s = self.refused.pop(data.draw(st.integers(0, len(self.refused) - 1)))
        before = self._snapshot()
        out = self.a.allocate(s, s.prompt_len)
        if out is None:
            assert self._snapshot() == before, "a failed admission changed state"
            self.refused.append(s)
        else:
            self.live[s.seq_id] = s

    @precondition(lambda self: self.live)
    @rule(data=st.data(), k=st.integers(1, 3))
    def grow(self, data, k):
        s = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        k = min(k, s.final_len - 1 - self.a.num_tokens(s.seq_id))
        if k <= 0:
            return
        n = self.a.num_tokens(s.seq_id)
        before = self._snapshot()
        if self.a.allocate(s, k) is None:
            assert self._snapshot() == before, "a failed growth changed state"
        else:
            assert self.a.num_tokens(s.seq_id) == n + k

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def decode(self, data):
        """The engine's step: one token each, stopping at the first that does not fit."""
        ids = data.draw(st.permutations(sorted(self.live)))
        seqs = [self.live[i] for i in ids if self.a.num_tokens(i) < self.live[i].final_len - 1]
        start = data.draw(st.integers(0, len(seqs)))
        before = {s.seq_id: self.a.num_tokens(s.seq_id) for s in seqs}
        copies = []
        done = self.a.decode(seqs, start, copies)
        assert start <= done <= len(seqs)
        assert all(n == 1 for _, _, n in copies) and len(copies) <= done - start
        for j, s in enumerate(seqs):
            grew = start <= j < done
            assert self.a.num_tokens(s.seq_id) == before[s.seq_id] + grew

    @precondition(lambda self: self.live)
    @rule(data=st.data(), output=st.integers(1, MAX_SEQ_LEN // 2))
    def fork(self, data, output):
        p = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        at = self.a.num_tokens(p.seq_id)
        c = child(p, self._new_id(), at, output_len=min(output, MAX_SEQ_LEN - at))
        if c.final_len <= at:
            return
        before = self._snapshot()
        if self.a.fork(p.seq_id, c) is None:
            assert self._snapshot() == before, "a failed fork changed state"
        else:
            self.live[c.seq_id] = c
            assert self.a.num_tokens(c.seq_id) == at

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        seq_id = data.draw(st.sampled_from(sorted(self.live)))
        self.a.free(seq_id)
        del self.live[seq_id]

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def swap_out(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.live)), min_size=1, unique=True))
        held = {i: self.a.num_tokens(i) for i in ids}
        swapped = self.a.swap_out(ids)
        assert {i: n for i, (_, n) in swapped.tables.items()} == held
        assert sum(n for _, _, n in swapped.runs) == swapped.num_host_blocks
        self.swapped.append((swapped, [self.live.pop(i) for i in ids]))

    @precondition(lambda self: self.swapped)
    @rule(data=st.data(), grow=st.integers(0, 2))
    def swap_in(self, data, grow):
        i = data.draw(st.integers(0, len(self.swapped) - 1))
        swapped, seqs = self.swapped[i]
        top = min(s.final_len for s in seqs) - 1
        most = max(n for _, n in swapped.tables.values())
        num_tokens = min(most + grow, top) if grow else 0
        before = self._snapshot()
        out = self.a.swap_in(swapped, seqs, num_tokens)
        if out is None:
            assert self._snapshot() == before, "a failed swap_in changed state"
            return
        del self.swapped[i]
        for s in seqs:
            self.live[s.seq_id] = s
            assert self.a.num_tokens(s.seq_id) == max(swapped.tables[s.seq_id][1], num_tokens)
        copied = sorted(h + k for h, _, n in out.swapped_in for k in range(n))
        if isinstance(self.a, RadixAllocator):  # blocks its tree still caches stay put
            assert len(copied) == len(set(copied)) and set(copied) <= set(
                range(swapped.num_host_blocks)
            )
        else:
            assert copied == list(range(swapped.num_host_blocks))

    @rule()
    def free_all(self):
        for seq_id in list(self.live):
            self.a.free(seq_id)
        self.live.clear()
        u = self.a.usage()
        # a static allocator whose last admission failed counts its free slots as external
        assert u.free + u.external_frag == self.a.capacity, "freeing everything left blocks in use"
        assert u.token_states == u.reservation == u.internal_frag == 0

    @invariant()
    def consistent(self):
        if hasattr(self, "a"):
            self.a.check_invariants()


class StaticMachine(AllocatorMachine):
    def make(self, data):
        reservation = data.draw(st.sampled_from(["max", "pow2", "oracle"]))
        placement = data.draw(st.sampled_from(["first_fit", "best_fit", "buddy"]))
        slots = data.draw(st.integers(MAX_SEQ_LEN, 4 * MAX_SEQ_LEN))
        return StaticAllocator(slots, MAX_SEQ_LEN, reservation, placement)


class PagedMachine(AllocatorMachine):
    def make(self, data):
        bs = data.draw(st.sampled_from([1, 2, 4, 8, 16]))
        return PagedAllocator(data.draw(st.integers(1, 128 // bs)), bs)


class PrefixMachine(AllocatorMachine):
    def make(self, data):
        bs = data.draw(st.sampled_from([1, 2, 4, 8, 16]))
        return PrefixAllocator(data.draw(st.integers(1, 128 // bs)), bs)


class RadixMachine(AllocatorMachine):
    def make(self, data):
        bs = data.draw(st.sampled_from([1, 2, 4, 8, 16]))
        return RadixAllocator(data.draw(st.integers(1, 128 // bs)), bs)


class VAttentionMachine(AllocatorMachine):
    def make(self, data):
        bs = data.draw(st.sampled_from([1, 2, 4, 8, 16]))
        return VAttentionAllocator(data.draw(st.integers(1, 128 // bs)), bs, MAX_SEQ_LEN)


TestStatic = StaticMachine.TestCase
TestPaged = PagedMachine.TestCase
TestPrefix = PrefixMachine.TestCase
TestRadix = RadixMachine.TestCase
TestVAttention = VAttentionMachine.TestCase
for case in (TestStatic, TestPaged, TestPrefix, TestRadix, TestVAttention):
    case.settings = RUNS
del case


class Lockstep(RuleBasedStateMachine):
    """Paged, prefix and radix allocators on the same operations, with room for everything."""

    def __init__(self):
        super().__init__()
        self.paged = PagedAllocator(4096, 4)
        self.prefix = PrefixAllocator(4096, 4)
        self.radix = RadixAllocator(4096, 4)
        self.live = {}
        self.next_id = 0

    @rule(prompt=st.integers(1, 24), output=st.integers(1, 24), prefix=st.sampled_from([0, 8, 16]))
    def admit(self, prompt, output, prefix):
        self.next_id += 1
        s = seq(self.next_id, prompt, output, shared_prefix=prefix)
        assert self.paged.allocate(s, prompt) and self.prefix.allocate(s, prompt)
        assert self.radix.allocate(s, prompt)
        self.live[s.seq_id] = s

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def grow(self, data):
        s = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        if self.paged.num_tokens(s.seq_id) < s.final_len - 1:
            assert self.paged.allocate(s, 1) and self.prefix.allocate(s, 1)
            assert self.radix.allocate(s, 1)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        seq_id = data.draw(st.sampled_from(sorted(self.live)))
        self.paged.free(seq_id)
        self.prefix.free(seq_id)
        self.radix.free(seq_id)
        del self.live[seq_id]

    @invariant()
    def sharing_never_holds_more(self):
        assert self.prefix.num_free_blocks >= self.paged.num_free_blocks
        assert self.prefix.usage().token_states <= self.paged.usage().token_states
        assert self.radix.num_free_blocks >= self.paged.num_free_blocks
        assert self.radix.usage().token_states <= self.prefix.usage().token_states


TestLockstep = Lockstep.TestCase
TestLockstep.settings = settings(max_examples=50, stateful_step_count=50, deadline=None)
