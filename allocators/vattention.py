"""vAttention (Prabhu et al., ASPLOS'25): virtually contiguous KV, physical pages on demand.

Each sequence owns one contiguous virtual range of max_seq_len tokens from admission to free
(a row of the virtual KV buffers: virtual address space is plentiful, so it never runs out);
physical pages are mapped into the range as the sequence grows and unmapped at free.
Attention runs unmodified contiguous kernels over the range.

    virtual rows   row 0: [ p7 | p3 | p9 | .   .   .   .   .   . ]   (max_seq_len tokens)
                   row 1: [ p1 | .   .   .   .   .   .   .   .   . ]
                            ^ mapped physical pages, tokens_per_page tokens each

Pages. vAttention keeps K and V of every layer in separate buffers, so one page of
`page_bytes` holds page_bytes / (kv_heads x head_dim x dtype bytes) tokens of one buffer
(Llama-3-8B: 2 KiB per token, 1024 tokens per 2 MiB page, 32 per 64 KiB page), and a token
position is backed by 2 x layers pages at once. The allocator counts those groups of pages:
`block_size` = tokens_per_page, `block_table` = the physical page (group) ids mapped into the
range in order, `virtual_range` = the range's slots.

Mapping order, refcounts and forks are those of the paged allocator it extends: a fork maps
the parent's pages into the child's range as well (CUDA VMM maps one physical allocation at
several addresses) and the first write into a shared partial page copies it.

Accounting: the paged allocator's. A mapped page's empty slots that the sequence will fill
are reservation, the rest (past its final length) internal fragmentation; with large pages
that tail is the scheme's waste. No external fragmentation.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from allocators.base import Allocation, SeqLike, Swapped
from allocators.paged import PagedAllocator


class VAttentionAllocator(PagedAllocator):
    layout = "virtual"  # the attention backend maps pages into rows (engine/backends/vmm_pool.py)

    def __init__(
        self, num_pages: int, tokens_per_page: int, max_seq_len: int, page_bytes: int = 0
    ) -> None:
        """
        Args:
            num_pages: physical page groups the KV budget holds.
            tokens_per_page: tokens one page of one K or V buffer holds.
            max_seq_len: tokens of each sequence's virtual range.
            page_bytes: the physical page size (for reports; the accounting is in tokens).
        """
        super().__init__(num_pages, tokens_per_page)
        if max_seq_len < 1:
            raise ValueError("max_seq_len must be positive")
        self.max_seq_len = max_seq_len
        self.page_bytes = page_bytes
        self._rows: dict[int, int] = {}  # seq_id -> its row of the virtual buffers
        self._free_rows: list[int] = []  # released rows, lowest first (a heap)

    def virtual_range(self, seq_id: int) -> range:
        """The virtual slots of seq_id's range: row * max_seq_len onwards."""
        start = self._rows[seq_id] * self.max_seq_len
        return range(start, start + self.max_seq_len)

    def live_rows(self) -> Mapping[int, int]:
        """seq_id -> its row, for every live sequence (a read-only view)."""
        return MappingProxyType(self._rows)

    @property
    def num_rows(self) -> int:
        """Virtual rows in use: the virtual space reserved is num_rows x max_seq_len tokens."""
        return len(self._rows)

    def _claim_row(self, seq_id: int) -> None:
        rows = self._free_rows
        self._rows[seq_id] = heapq.heappop(rows) if rows else len(self._rows)

    def allocate(self, seq: SeqLike, num_new_tokens: int) -> Allocation | None:
        admitted = seq.seq_id in self._seqs
        if not admitted and seq.final_len > self.max_seq_len:
            raise ValueError(
                f"sequence {seq.seq_id} needs {seq.final_len} tokens; its virtual range holds "
                f"max_seq_len {self.max_seq_len}"
            )
        out = super().allocate(seq, num_new_tokens)
        if out is not None and not admitted:
            self._claim_row(seq.seq_id)
        return out

    def fork(self, parent_id: int, child: SeqLike) -> Allocation | None:
        if child.final_len > self.max_seq_len:
            raise ValueError(f"sequence {child.seq_id} would outgrow its virtual range")
        out = super().fork(parent_id, child)
        if out is not None:
            self._claim_row(child.seq_id)
        return out

    def swap_in(
        self, swapped: Swapped, seqs: Sequence[SeqLike], num_tokens: int = 0
    ) -> Allocation | None:
        out = super().swap_in(swapped, seqs, num_tokens)
        if out is not None:
            for seq in seqs:
                self._claim_row(seq.seq_id)
        return out

    def free(self, seq_id: int) -> None:
        super().free(seq_id)
        heapq.heappush(self._free_rows, self._rows.pop(seq_id))

    def check_invariants(self) -> None:
        super().check_invariants()
        rows = sorted(self._rows.values())
        assert rows == sorted(set(rows)), "two sequences share a virtual row"
        assert set(rows).isdisjoint(self._free_rows), "a row in use is also free"
        assert sorted(rows + self._free_rows) == list(range(len(rows) + len(self._free_rows)))
        assert self._rows.keys() == self._seqs.keys(), "a sequence without a row"
        for seq_id, st in self._seqs.items():
            assert st.num_tokens <= self.max_seq_len, f"{seq_id} outgrew its virtual range"
