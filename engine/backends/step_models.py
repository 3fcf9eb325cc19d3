"""Two step-time models fitted to measured steps, both vectorized (`predict(cols) ->
seconds`) with a one-step path in plain floats (`one(features)`, for the sim).
A step is its FEATURES (engine/metrics.py) as columns of equal length.

- `LinearFit`: non-negative least squares on roofline-shaped terms, relative error weighted:

      t = c0 + c1 tokens + sum_k h_k max(0, tokens - knot_k) + c2 decode seqs
            + c3 decode context + c4 prefill pairs + c5 cached prefix read
            + c6 prefilled seqs + c7 copied blocks + c8 swapped blocks
            + c9 [step has a prefill] + c10 [step has a prefill and decode rows]

  tokens = prefill + decode tokens; non-negative hinge slopes make the token cost convex and
  piecewise linear: flat while the weights' read dominates, steeper once compute does (the
  roofline's max(memory, compute) without assuming where the knee lies). The two indicators
  are fixed costs of a kind of step: a step with a prefill runs the prefill kernels (and, on a
  backend without graphs for it, launches eagerly, kernel by kernel), and a mixed step runs
  both attention paths in every layer.
- `GridFit`: interpolation over the grid's shapes (steps of served runs a profile may hold
  are left to the linear fit: they are scattered, not a grid). Decode-only steps: the
  (batch, mean context per sequence) plane - linear in context within each measured batch
  size, then linear in batch size between the two nearest. Prefill-only steps: the (cached
  prefix read, prefill tokens) plane the same way. A mixed step costs decode + prefill - the
  cheapest decode step (the weights pass both include, counted once) + the median excess of
  the measured mixed steps over that; copies and swaps add a median per-block cost. Below
  the smallest measured value a curve stays flat (fixed costs rule there); above the
  largest its last segment extends linearly.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from engine.metrics import FEATURES

Columns = dict[str, np.ndarray]
KNOTS = 2.0 ** np.arange(3, 17)  # hinge knots in tokens: 8 .. 65,536


class StepModel(Protocol):
    name: str

    def predict(self, cols: Columns) -> np.ndarray: ...

    def one(self, f: Sequence[float]) -> float:
        """`predict` of one step given as its FEATURES tuple, in plain floats: the sim
        prices every step it does not stretch this way."""
        ...


def _tokens(cols: Columns) -> np.ndarray:
    return np.asarray(cols["num_prefill_tokens"] + cols["num_decode_tokens"], np.float64)


def nnls(a: np.ndarray, b: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """argmin ||a x - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    n = a.shape[1]
    x, passive = np.zeros(n), np.zeros(n, bool)
    for _ in range(3 * n):
        w = a.T @ (b - a @ x)
        if passive.all() or np.where(passive, -np.inf, w).max() <= tol:
            break
        passive[np.argmax(np.where(passive, -np.inf, w))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > tol).all():
                x = z
                break
            neg = passive & (z <= tol)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > tol
    return x


class LinearFit:
    name = "linear"
    TERMS = ("num_decode_tokens", "decode_context", "prefill_pairs", "prefill_cached",
             "num_prefill_seqs", "num_copied_blocks", "num_swapped_blocks")  # fmt: skip

    def __init__(self, cols: Columns, seconds: np.ndarray) -> None:
        tokens = _tokens(cols)
        self.knots = KNOTS[(tokens.min() < KNOTS) & (tokens.max() > KNOTS)]
        a = self._design(cols)
        scale = np.abs(a).max(axis=0)
        scale[scale == 0] = 1.0
        w = 1.0 / seconds  # relative error: a 5 ms step counts as much as a 500 ms one
        self.coef = nnls(a / scale * w[:, None], seconds * w) / scale
        self._one: tuple | None = None

    def _design(self, cols: Columns) -> np.ndarray:
        tokens = _tokens(cols)
        hinges = [np.maximum(tokens - k, 0.0) for k in self.knots]
        terms = [np.asarray(cols[t], np.float64) for t in self.TERMS]
        eager = np.asarray(cols["num_prefill_tokens"]) > 0
        mixed = eager & (np.asarray(cols["num_decode_tokens"]) > 0)
        return np.column_stack([np.ones_like(tokens), tokens, *hinges, *terms, eager, mixed])

    def predict(self, cols: Columns) -> np.ndarray:
        return self._design(cols) @ self.coef

    def one(self, f: Sequence[float]) -> float:
        if self._one is None:
            coef = [float(c) for c in self.coef]
            hinges = list(zip(map(float, self.knots), coef[2 : 2 + len(self.knots)]))
            rest = list(zip(coef[2 + len(self.knots) :], [FEATURES.index(t) for t in self.TERMS]))
            self._one = (coef[0], coef[1], hinges, rest, coef[-2], coef[-1])
        c0, c1, hinges, rest, eager, mixed = self._one
        tokens = f[0] + f[1]
        t = c0 + c1 * tokens + sum(h * (tokens - k) for k, h in hinges if tokens > k)
        if f[0]:
            t += eager + (mixed if f[1] else 0.0)
        return t + sum(c * f[i] for c, i in rest)

    def terms(self) -> dict[str, float]:
        """The coefficients by name (seconds per unit)."""
        names = ["constant", "tokens", *(f"tokens_over_{int(k)}" for k in self.knots)]
        return dict(zip([*names, *self.TERMS, "eager", "mixed"], map(float, self.coef)))


class _Plane:
    """t(outer, inner): linear in `inner` within each measured `outer` level, then linear in
    `outer` between the two nearest levels; flat below the first, linear beyond the last."""

    def __init__(self, outer: np.ndarray, inner: np.ndarray, seconds: np.ndarray) -> None:
        self.levels = np.unique(outer)
        self.curves = []
        for level in self.levels:
            at = outer == level
            self.curves.append(_merge(inner[at], seconds[at]))
        curves = [(list(map(float, x)), list(map(float, y))) for x, y in self.curves]
        self._lists = ([float(v) for v in self.levels], curves)

    def one(self, outer: float, inner: float) -> float:
        """__call__ for one point, in plain floats."""
        levels, curves = self._lists
        if len(levels) == 1:
            return _line_one(*curves[0], inner)
        outer = max(outer, levels[0])
        j = min(max(bisect_left(levels, outer) - 1, 0), len(levels) - 2)
        y0, y1 = _line_one(*curves[j], inner), _line_one(*curves[j + 1], inner)
        return y0 + (y1 - y0) * (outer - levels[j]) / (levels[j + 1] - levels[j])

    def __call__(self, outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
        if len(self.levels) == 1:
            return _line(*self.curves[0], inner)
        outer = np.maximum(outer, self.levels[0])
        i = np.clip(np.searchsorted(self.levels, outer) - 1, 0, len(self.levels) - 2)
        out = np.empty(len(outer))
        for j in np.unique(i):
            at = i == j
            lo, hi = self.levels[j], self.levels[j + 1]
            y0, y1 = _line(*self.curves[j], inner[at]), _line(*self.curves[j + 1], inner[at])
            out[at] = y0 + (y1 - y0) * (outer[at] - lo) / (hi - lo)
        return out


def _merge(x: np.ndarray, y: np.ndarray, tol: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Points whose x lie within `tol` (relative) of a cluster's first become one, averaged:
    the repeats of a measured shape (contexts a token apart) must not set a slope."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    cluster = np.zeros(len(x), np.int64)
    start = x[0] if len(x) else 0.0
    for i in range(1, len(x)):
        new = x[i] > start * (1 + tol) + 0.5
        cluster[i] = cluster[i - 1] + new
        start = x[i] if new else start
    count = np.bincount(cluster)
    return np.bincount(cluster, x) / count, np.bincount(cluster, y) / count


def _line_one(xs: list[float], ys: list[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0]
    x = max(x, xs[0])
    i = min(max(bisect_left(xs, x) - 1, 0), len(xs) - 2)
    return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])


def _line(xs: np.ndarray, ys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Piecewise-linear through (xs, ys): flat below xs[0], extended linearly beyond the end."""
    if len(xs) == 1:
        return np.full(len(x), ys[0])
    x = np.maximum(x, xs[0])
    i = np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2)
    return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])


class GridFit:
    name = "grid"

    def __init__(self, cols: Columns, seconds: np.ndarray) -> None:
        c = {k: np.asarray(v, np.float64) for k, v in cols.items()}
        if "run" in c:  # NOTE: a served run's steps are scattered shapes, not a grid
            grid = c["run"] == 0
            c, seconds = {k: v[grid] for k, v in c.items()}, np.asarray(seconds)[grid]
        nd, npf = c["num_decode_tokens"], c["num_prefill_tokens"]
        quiet = (c["num_copied_blocks"] == 0) & (c["num_swapped_blocks"] == 0)
        dec, pre = quiet & (npf == 0) & (nd > 0), quiet & (nd == 0) & (npf > 0)
        self.decode = _Plane(nd[dec], c["decode_context"][dec] / nd[dec], seconds[dec]) if (
            dec.any()) else None  # fmt: skip
        self.prefill = _Plane(c["prefill_cached"][pre], npf[pre], seconds[pre]) if (
            pre.any()) else None  # fmt: skip
        self.fixed = float(seconds[dec].min()) if dec.any() else 0.0
        self.mixed_extra = 0.0
        mix = quiet & (nd > 0) & (npf > 0)
        if mix.any():
            excess = seconds[mix] - self._base({k: v[mix] for k, v in c.items()})
            excess = excess[np.isfinite(excess)]
            self.mixed_extra = float(np.median(excess)) if len(excess) else 0.0
        self.per_copy = self._per_block(c, seconds, "num_copied_blocks")
        self.per_swap = self._per_block(c, seconds, "num_swapped_blocks")

    def _per_block(self, c: Columns, seconds: np.ndarray, key: str) -> float:
        other = "num_swapped_blocks" if key == "num_copied_blocks" else "num_copied_blocks"
        at = (c[key] > 0) & (c[other] == 0)
        if not at.any():
            return 0.0
        extra = (seconds[at] - self._base({k: v[at] for k, v in c.items()})) / c[key][at]
        extra = extra[np.isfinite(extra)]
        return max(float(np.median(extra)), 0.0) if len(extra) else 0.0

    def _base(self, c: Columns) -> np.ndarray:
        nd, npf = np.asarray(c["num_decode_tokens"], float), np.asarray(c["num_prefill_tokens"])
        out = np.zeros(len(nd))
        d, p = nd > 0, npf > 0
        if d.any():
            out[d] = self.decode(nd[d], c["decode_context"][d] / nd[d]) if self.decode else np.nan
        if p.any():
            pf = self.prefill(c["prefill_cached"][p], npf[p]) if self.prefill else np.nan
            out[p] += pf - np.where(d[p], self.fixed - self.mixed_extra, 0.0)
        return out

    def predict(self, cols: Columns) -> np.ndarray:
        c = {k: np.asarray(v, np.float64) for k, v in cols.items()}
        moved = self.per_copy * c["num_copied_blocks"] + self.per_swap * c["num_swapped_blocks"]
        return self._base(c) + moved

    def one(self, f: Sequence[float]) -> float:
        npf, nd, ctx, _, cached, _, copied, swapped = f
        t = self.per_copy * copied + self.per_swap * swapped
        if nd:
            t += self.decode.one(nd, ctx / nd) if self.decode else float("nan")
        if npf:
            t += self.prefill.one(cached, npf) if self.prefill else float("nan")
            t -= self.fixed - self.mixed_extra if nd else 0.0
        return t
