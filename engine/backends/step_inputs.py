"""The model graphs' per-step inputs in one device buffer with a host mirror
(engine/backends/model_graphs.py): a decode-only step writes the mirror and copies it over in
one transfer, launching no kernel of its own.

    int64   ids, pos, slots [tokens]    row_index [rows]: each decode row's row of the
                                        backend's table (0: the null row, padding)
    int32   lens [rows]                 split_tokens [1], num_real [1] (decode rows that are
                                        not padding)

The device views are the graphs' static inputs (fixed addresses); mixed steps write them on
the device directly. The mirror is pinned and rewritten only after the step that copied it
has finished (every step ends with a synchronize).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class StepInputs:
    def __init__(self, tokens: int, rows: int, device: torch.device) -> None:
        """Room for `tokens` new tokens and `rows` table rows (decode and prefill)."""
        self.tokens, self.rows = tokens, rows
        size = 3 * tokens + rows + (rows + 3) // 2
        self.host = torch.zeros(size, dtype=torch.int64, pin_memory=device.type == "cuda")
        self.dev = torch.zeros(size, dtype=torch.int64, device=device)
        self.mirror = self._carve(self.host.numpy())
        dev = self._carve(self.dev)
        self.ids, self.pos, self.slots = dev["ids"], dev["pos"], dev["slots"]
        self.row_index, self.lens = dev["row_index"], dev["lens"]
        self.split_tokens, self.num_real = dev["split_tokens"], dev["num_real"]
        self.mirror["lens"][:] = 1
        self.mirror["slots"][:] = -1
        self.dev.copy_(self.host)

    def _carve(self, buf: Any) -> dict[str, Any]:
        t, r = self.tokens, self.rows
        i32 = buf[3 * t + r :].view(np.int32 if isinstance(buf, np.ndarray) else torch.int32)
        return dict(
            ids=buf[:t], pos=buf[t : 2 * t], slots=buf[2 * t : 3 * t],
            row_index=buf[3 * t : 3 * t + r], lens=i32[:r], split_tokens=i32[r : r + 1],
            num_real=i32[r + 1 : r + 2],
        )  # fmt: skip

    def decode(self, size: int, ids, pos, lens, rows, split_tokens: int) -> None:
        """A decode step of len(ids) rows padded to `size` (host arrays), on its way over."""
        m, n = self.mirror, len(ids)
        for name, real, pad in (("ids", ids, 0), ("pos", pos, 0), ("lens", lens, 1),
                                ("row_index", rows, 0)):  # fmt: skip
            m[name][:n] = real
            m[name][n:size] = pad
        m["split_tokens"][0], m["num_real"][0] = split_tokens, n
        self.dev.copy_(self.host, non_blocking=True)
