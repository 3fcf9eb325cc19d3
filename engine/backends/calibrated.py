"""Step time from a measured profile (engine/backends/profile.py): the sim's calibrated cost.

The profile's fit (engine/backends/step_fit.py: for each kind of step, the linear model or
the grid interpolator, whichever predicts that kind's held-out shapes better) prices each
step from its features. The rules:

- padding: where the measured backend replays CUDA graphs, the fit and the prices use the
  shapes its graphs ran (a step padded to its bucket, engine/backends/buckets.py); the
  limits below check the shapes the engine scheduled.
- model and dtype: the profile's must be the run's (`model=`, `backend.dtype`), else an error.
- card: the profile's card (the CUDA device name it was measured on) must contain the sim's
  GPU profile's `device_name` (h100_sxm: "H100 80GB HBM3", h200: "H200"), else an error
  naming both: results are labelled with the card whose times they use.
- missing shapes: a run whose steps need a feature the profile never measured (prefill
  tokens, cached prefix reads, copies, swaps) stops with an error at its first such step.
- extrapolation: up to EXTRAPOLATE x the largest measured value of each checked quantity the
  fit extrapolates, with one warning per quantity on stderr; beyond that the run stops with
  an error naming the quantity, the value and the measured range.
- units: a run counts copied and swapped units of its allocator (a paged block, a static
  slot, a vattention page); they are priced as the profile's blocks by tokens moved
  (`unit_tokens` / the profile's block_size each).
"""

from __future__ import annotations

import sys

import numpy as np

from engine.backends.profile import StepProfile, load_profile
from engine.backends.step_fit import fit_best
from engine.metrics import FEATURES
from workloads.errors import KvbenchError

EXTRAPOLATE = 2.0
CHECKED = ("num_prefill_tokens", "num_decode_tokens", "decode_context", "prefill_cached",
           "num_copied_blocks", "num_swapped_blocks", "context_per_seq")  # fmt: skip
MOVED = ("num_copied_blocks", "num_swapped_blocks")
FIRST_CHUNK = 32  # decode stretches are priced in chunks that double


class ProfiledCost:
    """Seconds per step from a profile; `step(features)` and `decode_run` for stretches."""

    def __init__(
        self, path: str, model: str, dtype: str, device_name: str, gpu: str,
        unit_tokens: int | None = None,
    ) -> None:  # fmt: skip
        self.path = path
        self.profile = profile = load_profile(path)
        _match(profile, "model", model, "model=")
        _match(profile, "dtype", dtype, "backend.dtype=")
        card = str(profile.meta["card"])
        if not device_name or device_name.lower() not in card.lower():
            raise KvbenchError(
                f"{path}: measured on {card!r}, but the sim's GPU profile is {gpu} "
                f"(device name {device_name!r}); choose backend/gpu= for that card"
            )
        self.card = card
        self.fit, self.summary = fit_best(profile.features, profile.table["duration_s"],
                                          profile.table["point"])  # fmt: skip
        self.limits = _limits(profile)
        self._warned: set[str] = set()
        self._one = self.fit.one
        self.padding = profile.padding
        block = profile.meta.get("block_size")
        self.unit_scale = unit_tokens / block if unit_tokens and block else 1.0

    def step(self, features: tuple) -> float:
        if self.unit_scale != 1.0 and (features[6] or features[7]):  # copied, swapped
            s = self.unit_scale
            features = (*features[:6], features[6] * s, features[7] * s)
        self.check(features)
        return self._one(self.padding.one(features) if self.padding is not None else features)

    def check(self, features: tuple) -> None:
        """Stop at a shape the profile never measured or lies far beyond; warn once per
        quantity for a milder extrapolation."""
        values = dict(zip(FEATURES, features))
        nd = values["num_decode_tokens"]
        values["context_per_seq"] = values["decode_context"] / nd if nd else 0
        for name, most in self.limits.items():
            v = values[name]
            if v <= most:
                continue
            if most == 0:
                raise KvbenchError(
                    f"{self.path}: this run has steps with {name} > 0 ({v:,.0f}) and the "
                    f"profile measured none; calibrate them (kvbench-calibrate --help)"
                )
            if v > EXTRAPOLATE * most:
                scaled = name in MOVED and self.unit_scale != 1
                shown = f"{v:,.1f} (in the profile's blocks)" if scaled else f"{v:,.0f}"
                raise KvbenchError(
                    f"{self.path}: a step has {name} = {shown}, beyond {EXTRAPOLATE:g}x "
                    f"the largest measured ({most:,.0f}); measure a larger grid"
                )
            if name not in self._warned:
                self._warned.add(name)
                print(
                    f"warning: {self.path}: {name} = {v:,.0f} beyond the measured "
                    f"{most:,.0f}; extrapolated (up to {EXTRAPOLATE:g}x)",
                    file=sys.stderr,
                )

    def decode_run(
        self, num_seqs: int, logical_tokens: int, max_steps: int, start_s: float, until_s: float
    ) -> list[float]:
        """Durations of decode-only steps (each sequence one token longer per step) that start
        before `until_s`, at most `max_steps`; the sim's stretch."""
        out: list[float] = []
        end, chunk = start_s, FIRST_CHUNK
        rows = self.padding.one((0, num_seqs))[1] if self.padding is not None else num_seqs
        while len(out) < max_steps and end < until_s:
            k = min(chunk, max_steps - len(out))
            first = logical_tokens + num_seqs * (len(out) + 1)
            context = first + num_seqs * np.arange(k, dtype=np.float64)
            self.check((0, num_seqs, context[-1], 0.0, 0, 0, 0, 0))
            cols = {n: np.zeros(k) for n in FEATURES}
            cols["num_decode_tokens"][:] = rows
            cols["decode_context"] = context
            dts = self.fit.predict(cols)
            starts = end + np.concatenate(([0.0], np.cumsum(dts)[:-1]))
            n = int(np.searchsorted(starts, until_s, side="left"))
            out += dts[:n].tolist()
            end = float(starts[n - 1] + dts[n - 1]) if n else end
            if n < k:
                break
            chunk *= 2
        return out


def _match(profile: StepProfile, field: str, want: str, option: str) -> None:
    have = profile.meta[field]
    if have != want:
        raise KvbenchError(
            f"{profile.path}: measured for {field} {have!r}, but this run has {option}{want}"
        )


def _limits(profile: StepProfile) -> dict[str, float]:
    """The largest measured value of each CHECKED quantity, over the scheduled (unpadded)
    shapes: the run's steps are checked before they are padded."""
    t = profile.table
    nd = t["num_decode_tokens"]
    per_seq = np.divide(t["decode_context"], nd, out=np.zeros(len(nd)), where=nd > 0)
    cols = {**t, "context_per_seq": per_seq}
    return {name: float(cols[name].max()) for name in CHECKED}
