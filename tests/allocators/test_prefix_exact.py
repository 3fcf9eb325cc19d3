"""Tiny pools, exact block ids and eviction order (after vLLM test_prefix_caching.py)."""

from __future__ import annotations

from allocators import PrefixAllocator
from tests.allocators.seqs import child, seq


def free_queue(a: PrefixAllocator) -> list[int]:
    return list(a._pool.free)


def block_hash(a: PrefixAllocator, b: int) -> int | None:
    return a._cache.block_hash[b]


def cached(a: PrefixAllocator) -> dict[int, list[int]]:
    """hash -> its cached blocks, oldest first."""
    return {h: [b, *a._cache.later.get(h, [])] for h, b in a._cache.first.items()}


def test_hit_reuse_and_free_order():
    a = PrefixAllocator(num_blocks=10, block_size=4)
    s1 = seq(1, prompt_len=10, output_len=5, shared_prefix=8)
    out = a.allocate(s1, 10)
    assert out.new_block_ids == (1, 2, 3) and out.num_cached_tokens == 0
    s2 = seq(2, prompt_len=10, output_len=5, shared_prefix=8)
    out = a.allocate(s2, 10)
    assert a.block_table(2) == [1, 2, 4] and out.num_cached_tokens == 8
    assert a.usage().token_states == 8 + 2 + 2  # the shared blocks count once
    a.free(1)  # block 3 has no hash: reused first; 1 and 2 are still held by s2
    assert free_queue(a) == [3, 5, 6, 7, 8, 9, 10]
    a.free(2)  # tail first: 4 to the front, then 2, 1 to the back (LRU)
    assert free_queue(a) == [4, 3, 5, 6, 7, 8, 9, 10, 2, 1]
    a.check_invariants()
    s3 = seq(3, prompt_len=3, output_len=2)
    assert a.allocate(s3, 3).new_block_ids == (4,)
    s4 = seq(4, prompt_len=9, output_len=2, shared_prefix=8)  # revives cached 1, 2
    out = a.allocate(s4, 9)
    assert a.block_table(4) == [1, 2, 3] and out.num_cached_tokens == 8
    assert free_queue(a) == [5, 6, 7, 8, 9, 10]
    a.check_invariants()


def test_fully_cached_prompt_recomputes_its_last_block():
    a = PrefixAllocator(num_blocks=6, block_size=4)
    s1 = seq(1, prompt_len=8, output_len=3, shared_prefix=8)
    a.allocate(s1, 8)
    s2 = seq(2, prompt_len=8, output_len=3, shared_prefix=8)
    out = a.allocate(s2, 8)  # a hit covers at most prompt_len - 1 tokens
    assert out.num_cached_tokens == 4 and a.block_table(2) == [1, 3]
    h2 = block_hash(a, 2)
    assert block_hash(a, 3) == h2 and cached(a)[h2] == [2, 3]  # registered again, not deduplicated
    a.free(1)
    a.free(2)
    assert free_queue(a) == [4, 5, 6, 2, 3, 1]
    s3 = seq(3, prompt_len=9, output_len=3, shared_prefix=8)
    out = a.allocate(s3, 9)
    assert out.num_cached_tokens == 8 and a.block_table(3) == [1, 2, 4]  # the oldest copy
    a.check_invariants()


def test_lru_eviction_and_atomic_failure():
    a = PrefixAllocator(num_blocks=4, block_size=2)
    s1 = seq(1, prompt_len=5, output_len=1, shared_prefix=4)
    a.allocate(s1, 5)  # [1, 2, 3]; 1 and 2 cached
    a.free(1)
    assert free_queue(a) == [3, 4, 2, 1]
    evicted = block_hash(a, 2)
    s2 = seq(2, prompt_len=6, output_len=1)
    a.allocate(s2, 6)  # pops 3, 4 and evicts 2, the least recently freed cached block
    assert a.block_table(2) == [3, 4, 2] and evicted not in cached(a)
    s3 = seq(3, prompt_len=5, output_len=1, shared_prefix=4)
    before = (free_queue(a), a.usage(), cached(a))
    assert a.allocate(s3, 5) is None  # would hit block 1, but needs 2 more of 0 left
    assert (free_queue(a), a.usage(), cached(a)) == before
    a.free(2)
    out = a.allocate(s3, 5)
    assert out.num_cached_tokens == 2 and a.block_table(3) == [1, 2, 4]
    a.check_invariants()


def test_decode_blocks_are_cached_and_forks_share_them():
    a = PrefixAllocator(num_blocks=8, block_size=2)
    p = seq(1, prompt_len=3, output_len=6)
    a.allocate(p, 3)  # [1, 2]: block 1 full, block 2 holds one token
    kid = child(p, 2, at=3, output_len=6)
    a.fork(1, kid)
    out = a.allocate(p, 1)  # parent fills the shared tail: copy-on-write to block 3
    assert out.copies == ((2, 3, 1),) and a.block_table(1) == [1, 3]
    assert block_hash(a, 3) == a._cache.chains[1].hashes[1]  # the full decode block: registered
    out = a.allocate(kid, 1)  # the child keeps block 2 and fills it in place
    assert out.copies == () and a.block_table(2) == [1, 2]
    assert block_hash(a, 2) != block_hash(a, 3)  # different generated tokens, different hashes
    a.check_invariants()


def test_a_refused_request_retried_sees_evictions_since():
    """The lookup of a refused request is remembered; a hit evicted meanwhile must drop out."""
    a = PrefixAllocator(num_blocks=6, block_size=2)
    a.allocate(seq(1, prompt_len=5, output_len=1, shared_prefix=4), 5)  # [1, 2, 3]
    a.free(1)
    assert free_queue(a) == [3, 4, 5, 6, 2, 1]
    a.allocate(seq(9, prompt_len=4, output_len=1), 4)  # [3, 4]
    s2 = seq(2, prompt_len=9, output_len=1, shared_prefix=4)
    assert a.allocate(s2, 9) is None  # hits 1, 2; needs 3 more of the 2 left
    a.allocate(seq(8, prompt_len=6, output_len=1), 6)  # [5, 6, 2]: evicts cached block 2
    a.free(8)
    a.free(9)
    assert free_queue(a) == [1, 2, 6, 5, 4, 3]
    out = a.allocate(s2, 9)  # the same sequence again: only block 1 still holds its prefix
    assert out.num_cached_tokens == 2 and a.block_table(2) == [1, 2, 6, 5, 4]
    a.check_invariants()


def test_a_refilled_hit_block_behind_another_copy_is_not_trusted():
    """A remembered hit whose block was evicted, then refilled with the same tokens and
    registered behind another copy of its hash: the retry must take the oldest copy."""
    a = PrefixAllocator(num_blocks=19, block_size=1)
    s1 = seq(1, prompt_len=18, output_len=1, shared_prefix=8)
    a.allocate(s1, 18)
    a.swap_in(a.swap_out([1]), [s1])
    s2 = seq(2, prompt_len=10, output_len=1, shared_prefix=8)
    assert a.allocate(s2, 10) is None  # hits the 8 shared blocks, 1 block free of 2 needed
    a.swap_in(a.swap_out([1]), [s1])  # evicts the remembered hits and refills blocks
    a.check_invariants()  # the cache's check walks every remembered lookup again
    assert a.allocate(s2, 10) is None
    a.check_invariants()


def test_a_refused_request_sees_a_block_filled_in_place_since():
    """Nothing returned to the pool, but a held block became full and cached: the retry
    finds it (a remembered refusal is only trusted while its hits cannot grow)."""
    a = PrefixAllocator(num_blocks=6, block_size=2)
    s1 = seq(1, prompt_len=4, output_len=4, shared_prefix=4)
    a.allocate(s1, 3)  # [1, 2]: block 2 holds one token, not cached yet
    a.allocate(seq(9, prompt_len=5, output_len=1), 5)  # [3, 4, 5]: one block left
    s2 = seq(2, prompt_len=5, output_len=1, shared_prefix=4)
    assert a.allocate(s2, 5) is None  # hits block 1 only: needs 2 more of the 1 left
    assert a.allocate(s2, 5) is None  # retried: nothing changed
    a.allocate(s1, 1)  # fills block 2 in place: cached now
    out = a.allocate(s2, 5)
    assert out.num_cached_tokens == 4 and a.block_table(2) == [1, 2, 6]
    a.check_invariants()


def test_a_preempted_sequence_comes_back_and_its_id_is_not_trusted_alone():
    """A sequence freed before its end keeps its chain for its return (recompute); another
    sequence under the same id but with other tokens finds nothing of it."""
    a = PrefixAllocator(num_blocks=8, block_size=2)
    s1 = seq(1, prompt_len=6, output_len=4)
    a.allocate(s1, 6)  # [1, 2, 3], all full
    a.free(1)
    other = seq(1, prompt_len=6, output_len=4, shared_prefix=6)
    assert a.allocate(other, 6).num_cached_tokens == 0 and a.block_table(1) == [4, 5, 6]
    a.free(1)
    out = a.allocate(s1, 6)
    assert out.num_cached_tokens == 4 and a.block_table(1) == [1, 2, 7]
    a.check_invariants()
