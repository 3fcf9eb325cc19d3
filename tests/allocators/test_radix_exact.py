"""The radix allocator on tiny pools: exact block ids, free-queue order, deduplication,
eviction only when an allocation needs room, and locks (SGLang RadixAttention semantics)."""

from __future__ import annotations

from allocators.radix import RadixAllocator
from tests.allocators.seqs import child, seq


def free_queue(a: RadixAllocator) -> list[int]:
    return list(a._pool.free)


def test_hit_shares_the_prefix_and_free_keeps_it_cached():
    a = RadixAllocator(num_blocks=10, block_size=4)
    s1 = seq(1, prompt_len=10, output_len=5, shared_prefix=8)
    out = a.allocate(s1, 10)
    assert out.new_block_ids == (1, 2, 3) and out.num_cached_tokens == 0
    s2 = seq(2, prompt_len=10, output_len=5, shared_prefix=8)
    out = a.allocate(s2, 10)
    assert out.new_block_ids == (1, 2, 4) and out.num_cached_tokens == 8
    assert a.usage().token_states == 8 + 2 + 2
    assert a.tree.protected_size == 8
    a.free(1)  # its partial block goes back; the shared prefix stays locked by s2
    assert free_queue(a) == [5, 6, 7, 8, 9, 10, 3]
    assert a.tree.protected_size == 8
    a.free(2)
    assert free_queue(a) == [5, 6, 7, 8, 9, 10, 3, 4]
    u = a.usage()
    assert (u.token_states, u.free) == (0, 40) and a.tree.evictable_size == 8
    a.check_invariants()


def test_fully_cached_prompt_recomputes_its_last_block_then_deduplicates():
    a = RadixAllocator(num_blocks=6, block_size=4)
    a.allocate(seq(1, prompt_len=8, output_len=3, shared_prefix=8), 8)  # [1, 2] into the tree
    out = a.allocate(seq(2, prompt_len=8, output_len=3, shared_prefix=8), 8)
    assert out.num_cached_tokens == 4  # a hit covers at most prompt_len - 1 tokens
    assert a.block_table(2) == [1, 2]  # its copy of block 2 (block 3) went back at once
    assert free_queue(a) == [4, 5, 6, 3] and a.usage().token_states == 8
    a.check_invariants()


def test_page_one_hits_all_but_the_last_token():
    a = RadixAllocator(num_blocks=32, block_size=1)
    a.allocate(seq(1, prompt_len=7, output_len=2, shared_prefix=7), 7)
    out = a.allocate(seq(2, prompt_len=9, output_len=2, shared_prefix=7), 9)
    assert out.num_cached_tokens == 7 and a.block_table(2) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    out = a.allocate(seq(3, prompt_len=7, output_len=2, shared_prefix=7), 7)
    assert out.num_cached_tokens == 6 and a.block_table(3) == list(range(1, 8))
    a.check_invariants()


def test_eviction_only_when_needed_whole_leaves_lru():
    a = RadixAllocator(num_blocks=4, block_size=2)
    a.allocate(seq(1, prompt_len=5, output_len=1, shared_prefix=4), 5)  # tree [1, 2], own [3]
    a.free(1)
    assert free_queue(a) == [4, 3] and a.tree.evictable_size == 4
    out = a.allocate(seq(2, prompt_len=6, output_len=1), 6)  # 3 blocks, 2 free: evict a leaf
    assert out.new_block_ids == (4, 3, 1) and free_queue(a) == [2]
    assert a.tree.evictable_size == 0 and a.tree.protected_size == 6
    s3 = seq(3, prompt_len=5, output_len=1, shared_prefix=4)
    before = (free_queue(a), a.usage(), a.block_table(2))
    assert a.allocate(s3, 5) is None  # 3 blocks needed, 1 free, nothing evictable
    assert (free_queue(a), a.usage(), a.block_table(2)) == before
    a.check_invariants()


def test_locked_prefix_survives_eviction():
    a = RadixAllocator(num_blocks=5, block_size=2)
    a.allocate(seq(1, prompt_len=4, output_len=2, shared_prefix=4), 4)  # tree [1, 2]
    a.allocate(seq(2, prompt_len=5, output_len=2, shared_prefix=4), 5)  # hits [1, 2], own [3]
    a.free(1)
    assert a.tree.protected_size == 4  # still locked by sequence 2
    assert a.allocate(seq(3, prompt_len=6, output_len=1), 6) is None  # 2 free, 0 evictable
    a.free(2)  # its partial block goes back; [1, 2] becomes evictable
    out = a.allocate(seq(4, prompt_len=6, output_len=1), 6)
    assert out.new_block_ids == (4, 5, 3) and a.tree.evictable_size == 4
    a.check_invariants()


def test_fork_publishes_the_parent_and_copies_a_partial_block():
    a = RadixAllocator(num_blocks=8, block_size=2)
    p = seq(1, prompt_len=3, output_len=6)
    a.allocate(p, 3)  # tree [1], own [2]
    a.allocate(p, 2)  # 5 tokens: own [2, 3]
    kid = child(p, 2, at=5, output_len=6)
    out = a.fork(1, kid)  # the parent's 4 full tokens go into the tree, its tail is copied
    assert out.copies == ((3, 4, 1),) and a.block_table(2) == [1, 2, 4]
    assert a.block_table(1) == [1, 2, 3] and a.tree.protected_size == 4
    assert a.allocate(p, 1) is not None and a.allocate(kid, 1) is not None
    assert a.usage().token_states == 4 + 2 + 2
    a.check_invariants()


def test_decoded_tokens_enter_the_tree_at_free():
    a = RadixAllocator(num_blocks=8, block_size=2)
    p = seq(1, prompt_len=2, output_len=6)
    a.allocate(p, 2)
    for _ in range(4):
        a.allocate(p, 1)
    assert a.tree.total_size == 2  # decoded tokens are private while it runs
    a.free(1)
    assert a.tree.total_size == 6
    again = child(p, 2, at=6, output_len=3)  # the same first 6 tokens
    out = a.allocate(again, 7)
    assert out.num_cached_tokens == 6 and a.block_table(2)[:3] == [1, 2, 3]
    a.check_invariants()
