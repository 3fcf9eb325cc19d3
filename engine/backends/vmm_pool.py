"""The `virtual` KV layout of the attention backend (allocator=vattention): every sequence's
KV in one virtually contiguous row per K/V buffer of every layer, physical pages mapped into
it as the allocator hands them out, read by the contiguous kernels.

    virtual row r + 1   the allocator's row r (vAttention's per-request range); row 0 is the
                        null row, its slot 0 backed by the null page for good (graph padding
                        and warm-up read token 0 there)
    row_tokens          pages_per_row x tokens_per_page >= max_seq_len
    first slot          row x row_tokens: a fixed table [num_rows, 1] on the GPU, never updated
    slot i of the row   backed by page block_table(seq)[i] (mapper.mapped[(row, i)])

Each step `VirtualRows.sync` brings the mapping in line with the allocator before the
step's kernels: every live sequence gets the pages its table gained mapped at its row (a
copy-on-write tail that changed page is remapped). The rows of freed sequences are unmapped
in `settle`, after the step's kernels are launched, so the GPU computes meanwhile (unless a
new sequence maps into the same slots this step: those unmaps come first). Both are part of
the step's time, as they are real cost. A fork maps the parent's pages in the child's row
as well: one physical page at two addresses. Copies and swaps move pages through the
mapper's physical view (their units are page ids), so they need no mapping at all.

Invariant after every step (`check_mapping`, in `settle`): mapped == {(row(s) + 1, i):
block_table(s)[i]} over the live sequences s, plus (0, 0): 0; the distinct mapped pages are
the allocator's used pages. With `check`, every step also proves that each token the kernels
will read lies in a mapped slot of its row (`check_access`), from the mapper's own record of
what it mapped.

NOTE: pages are unmapped at free. vAttention's deferred reclamation leaves a finished
request's pages mapped for the next request of the same row; here the allocator (its free
queue), not the row, picks the next pages, so they would rarely match, and a later map at the
same slot would have to unmap first anyway. Physical pages are created once, up front (the
"free list of handles" vAttention keeps): no cuMemCreate/cuMemRelease in a step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from allocators.base import cdiv
from allocators.vattention import VAttentionAllocator
from engine.backends.kv_pool import KVPool
from engine.backends.vmm_map import CudaMapper, EmulatedMapper, Geometry
from engine.models import ModelSpec
from workloads.errors import KvbenchError

_NO_UPDATES = np.zeros((3, 0), dtype=np.int64)


class VirtualPool(KVPool):
    """Units (copies, swaps) are pages of the physical view; the kernels get the rows."""

    def __init__(self, mapper: CudaMapper | EmulatedMapper) -> None:
        n = mapper.g.num_layers
        phys, rows = mapper.phys, mapper.rows
        self._adopt(phys[0], phys[1], [(rows[i], rows[n + i]) for i in range(n)])
        self.mapper = mapper


class VirtualRows:
    """SeqRows' interface for the virtual layout: rows, lengths, and the mapping kept in step."""

    def __init__(self, mapper: CudaMapper | EmulatedMapper, check: bool) -> None:
        g = mapper.g
        self.mapper, self.check, self.tokens_per_page = mapper, check, g.tokens_per_page
        first = torch.arange(g.num_rows, dtype=torch.int32) * g.row_tokens
        self.table = first.view(-1, 1).to(mapper.phys.device)
        self._pages: dict[int, list[int]] = {}  # seq_id -> pages mapped at its row, in order
        self._row: dict[int, int] = {}  # seq_id -> its virtual row
        self._owner: dict[int, int] = {}  # virtual row -> seq_id
        self._unmaps: list[tuple[int, int]] = []
        self._maps: list[tuple[int, int, int]] = []
        self._alloc: VAttentionAllocator | None = None  # to check against, after the step
        mapper.apply([], [(0, 0, 0)])  # the null row's null page, before anything reads it

    def release(self, seq_ids: Sequence[int]) -> None:
        """These sequences are gone: their rows get unmapped at the next `sync`."""
        for sid in seq_ids:
            self._drop(sid)

    def sync(
        self, seq_ids: Sequence[int], alloc: VAttentionAllocator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map what changed since the last step; the virtual rows of these sequences, their
        tokens, and (no) table updates."""
        self._follow(alloc)
        maps, unmaps = self._maps, self._unmaps
        if maps and unmaps:  # slots mapped anew this step are unmapped first
            now = {(row, slot) for row, slot, _ in maps}
            self._unmaps = [u for u in unmaps if u not in now]
            unmaps = [u for u in unmaps if u in now]
        else:
            unmaps = []
        self.mapper.apply(unmaps, maps)
        self._maps = []
        row_of, num_tokens = self._row, alloc.num_tokens
        rows = np.fromiter((row_of[s] for s in seq_ids), np.int64, len(seq_ids))
        lens = np.fromiter((num_tokens(s) for s in seq_ids), np.int64, len(seq_ids))
        if self.check:
            self.check_access(rows, lens)
            self._alloc = alloc
        return rows, lens, _NO_UPDATES

    def settle(self) -> None:
        """The unmaps `sync` left, now that the step's kernels are launched (the rows they
        free are read by none of them)."""
        if self._unmaps:
            self.mapper.apply(self._unmaps, [])
            self._unmaps = []
        if self._alloc is not None:
            self.check_mapping(self._alloc)

    def apply(self, updates: torch.Tensor) -> None:
        """The table of first slots never changes."""

    def _follow(self, alloc: VAttentionAllocator) -> None:
        """Queue the maps (and remaps) that make every live sequence's row hold its table."""
        pages, row_of, num_rows = self._pages, self._row, self.table.shape[0]
        block_table = alloc.block_table
        for sid, r in alloc.live_rows().items():
            table, old = block_table(sid), pages.get(sid)
            # tables are append-only but for a copy-on-write tail: length and tail suffice
            same = old is not None and row_of[sid] == r + 1 and len(old) == len(table)
            if same and (not old or old[-1] == table[-1]):
                continue
            if r + 1 >= num_rows:
                raise KvbenchError(
                    f"vattention: sequence {sid} needs virtual row {r + 1}, but only "
                    f"{num_rows - 1} are reserved (backend.max_num_seqs)"
                )
            self._remap(sid, r + 1, table)

    def _remap(self, sid: int, row: int, table: Sequence[int]) -> None:
        if self._row.get(sid, row) != row:
            self._drop(sid)
        owner = self._owner.get(row)
        if owner is not None and owner != sid:  # its free was not reported: unmap it anyway
            self._drop(owner)
        old = self._pages.get(sid, [])
        for i, page in enumerate(table):
            if i < len(old):
                if old[i] == page:
                    continue
                self._unmaps.append((row, i))
            self._maps.append((row, i, page))
        self._unmaps += [(row, i) for i in range(len(table), len(old))]
        self._pages[sid], self._row[sid], self._owner[row] = list(table), row, sid

    def _drop(self, sid: int) -> None:
        row = self._row.pop(sid, None)
        if row is None:
            return
        del self._owner[row]
        self._unmaps += [(row, i) for i in range(len(self._pages.pop(sid)))]

    # --- checks ---------------------------------------------------------------------------
    def check_access(self, rows: np.ndarray, lens: np.ndarray) -> None:
        """Every token the kernels read, [0, len) of each row, lies in a mapped slot."""
        mapped, tpp = self.mapper.mapped, self.tokens_per_page
        for row, n in zip(rows.tolist(), lens.tolist()):
            for slot in range(cdiv(n, tpp)):
                if (row, slot) not in mapped:
                    raise AssertionError(
                        f"virtual row {row}: token {slot * tpp} (of {n}) lies in an unmapped page"
                    )

    def check_mapping(self, alloc: VAttentionAllocator) -> None:
        """Mapped pages are exactly the live sequences' tables (the module's invariant)."""
        want = {(0, 0): 0}
        for sid, r in alloc.live_rows().items():
            want.update(((r + 1, i), p) for i, p in enumerate(alloc.block_table(sid)))
        assert self.mapper.mapped == want, "the mapping differs from the allocator's tables"
        used = alloc.num_blocks - alloc.num_free_blocks
        assert len(set(want.values()) - {0}) == used, "mapped pages != the allocator's used pages"


def virtual_layout(
    alloc: VAttentionAllocator, model: ModelSpec, num_layers: int, dtype: torch.dtype,
    device: torch.device, max_num_seqs: int, check: bool,
) -> tuple[VirtualPool, VirtualRows]:  # fmt: skip
    """The pool and rows of a vattention allocator: real VMM mapping on a GPU, the emulated
    mapper elsewhere (which always checks every access)."""
    g = Geometry(
        num_layers, model.num_kv_heads, model.head_dim, dtype, alloc.num_blocks,
        alloc.block_size, cdiv(alloc.max_seq_len, alloc.block_size), max_num_seqs + 1,
    )  # fmt: skip
    if g.num_rows * g.row_tokens >= 1 << 31:
        raise KvbenchError(
            f"vattention: {max_num_seqs} rows of {g.row_tokens} tokens overflow int32 slots"
        )
    emulated = device.type != "cuda"
    mapper = EmulatedMapper(g, device) if emulated else CudaMapper(g, device)
    return VirtualPool(mapper), VirtualRows(mapper, check or emulated)
