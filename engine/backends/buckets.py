"""The shapes the GPU backends' CUDA graphs run steps at, as vLLM pads its batches: a step
replays the graph of the smallest bucket that holds it, so it costs its bucket's time.

    decode-only steps    n sequences run as bucket(n) rows (BUCKETS), up to the graphs'
                         largest batch: the attention and model backends with graphs
    steps with prefills  (model backend, mixed graphs) d decode rows and t prefill tokens
                         run as the next sizes of MIXED_DECODE and MIXED_TOKENS, with at most
                         MAX_PREFILLS prefills; larger steps run eagerly, unpadded

engine/backends/decode_graphs.py and model_graphs.py capture these buckets. A step profile
records the unpadded shapes the engine scheduled; `Padding` gives the shapes the graphs ran,
which the sim's calibrated cost fits and prices (engine/backends/calibrated.py): a step is
evaluated at its bucket's shape, where the GPU ran it, not at its own.

Padding reads only a step's FEATURES, so it assumes what they cannot show: every sequence
fits the graphs' tables (the backend's max_seq_len; a longer one runs its step eagerly), and
the graphs' largest batch is the measured backend's (its max_num_seqs), not the sim run's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BUCKETS = (1, 2, 4, 8, 16, 24, 32, *range(48, 257, 16), *range(288, 1025, 32))
# decode rows of a mixed graph (up to the largest decode batch)
MIXED_DECODE = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
MIXED_TOKENS = (*range(64, 513, 64), *range(640, 2049, 128))  # prefill tokens of a mixed graph
MAX_PREFILLS = 8  # prefill rows of a mixed graph


def bucket(n: int) -> int | None:
    """The smallest bucket holding n sequences, or None past the largest."""
    return next((b for b in BUCKETS if b >= n), None)


def max_batch(max_num_seqs: int) -> int:
    """The largest decode batch the graphs hold, for the engine's cap `max_num_seqs`."""
    return bucket(min(max_num_seqs, BUCKETS[-1])) or BUCKETS[-1]


def mixed_decode_sizes(largest: int) -> tuple[int, ...]:
    """Decode rows of the mixed graphs when the largest decode batch is `largest`."""
    return (*(d for d in MIXED_DECODE if d < largest), largest)


def mixed_bucket(decode_rows: int, tokens: int, largest: int) -> tuple[int, int]:
    """The (decode rows, prefill tokens) of the graph a mixed step replays, for a step within
    the mixed graphs' limits (largest: the largest decode batch a graph holds)."""
    d = next(s for s in mixed_decode_sizes(largest) if s >= decode_rows)
    return d, next(s for s in MIXED_TOKENS if s >= tokens)


@dataclass(frozen=True, slots=True)
class Padding:
    """How a backend pads steps (FEATURES tuples, engine/metrics.py) to its graphs' buckets:
    decode-only steps always (a backend without graphs has no Padding)."""

    mixed: bool  # steps with prefills replay graphs too
    largest: int  # the largest decode batch a graph holds

    @classmethod
    def of(cls, backend: str, config: Mapping[str, Any]) -> Padding | None:
        """The padding of a backend (`attention` or `model`) built from `config` (its
        backend= options, as a profile records them); None where no graph pads a step."""
        on_gpu = str(config.get("device", "cuda")).startswith("cuda")
        if backend not in ("attention", "model") or not config.get("graphs") or not on_gpu:
            return None
        if backend == "attention":  # its decode graphs hold any batch up to the last bucket
            return cls(False, BUCKETS[-1])
        return cls(bool(config["mixed_graphs"]), max_batch(int(config["max_num_seqs"])))

    def one(self, f: Sequence[float]) -> tuple:
        """One step's FEATURES as its graph runs them."""
        t, n = f[0], f[1]
        if not t:
            return (f[0], bucket(int(n)), *f[2:]) if 0 < n <= self.largest else tuple(f)
        if not self.mixed or f[5] > MAX_PREFILLS or t > MIXED_TOKENS[-1] or n > self.largest:
            return tuple(f)
        d, tb = mixed_bucket(int(n), int(t), self.largest)
        return (tb, d, *f[2:])

    def columns(self, cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`one` over columns of steps (num_prefill_tokens, num_decode_tokens, ...)."""
        out = dict(cols)
        t = np.asarray(cols["num_prefill_tokens"], np.float64)
        n = np.asarray(cols["num_decode_tokens"], np.float64)
        seqs = np.asarray(cols["num_prefill_seqs"])
        decode = (t == 0) & (n > 0) & (n <= self.largest)
        mixed = (t > 0) & (n <= self.largest) & (seqs <= MAX_PREFILLS) & (t <= MIXED_TOKENS[-1])
        mixed &= self.mixed
        new_n, new_t = n.copy(), t.copy()
        new_n[decode] = _up(n[decode], BUCKETS)
        new_n[mixed] = _up(n[mixed], mixed_decode_sizes(self.largest))
        new_t[mixed] = _up(t[mixed], MIXED_TOKENS)
        out["num_decode_tokens"], out["num_prefill_tokens"] = new_n, new_t
        return out


def _up(x: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Each value rounded up to the next of `sizes` (every value <= the last)."""
    s = np.asarray(sizes, np.float64)
    return s[np.searchsorted(s, x, side="left")]
