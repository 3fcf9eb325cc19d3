"""A synthetic step-time profile: the shapes kvbench-calibrate measures, timed by a known
function (the roofline of llama3_8b on an H100, plus per-block copy and swap costs) with 1%
noise, so a fit's held-out error can be checked against the truth."""

from __future__ import annotations

import numpy as np

from engine.backends.base import StepBatch
from engine.backends.calibrated import ProfiledCost
from engine.backends.profile import StepProfile, save_profile
from engine.backends.sim import GpuProfile, RooflineCost
from engine.metrics import FEATURES
from engine.models import ModelSpec

H100 = GpuProfile("h100_sxm", 3.35e12, 989e12)
LLAMA3_8B = ModelSpec("llama3_8b", 32, 32, 8, 128, 4096, 8_030_261_248)
COPY_S, SWAP_S = 3e-6, 4e-5  # per block


def truth(cols: dict[str, np.ndarray]) -> np.ndarray:
    cost = RooflineCost(LLAMA3_8B, H100)
    args = ("num_prefill_tokens", "num_decode_tokens", "decode_context", "prefill_pairs",
            "prefill_cached")  # fmt: skip
    base = np.array(
        [cost.step_time(*(cols[a][i] for a in args)) for i in range(len(cols[args[0]]))]
    )
    return base + COPY_S * cols["num_copied_blocks"] + SWAP_S * cols["num_swapped_blocks"]


def shape(
    decode: tuple[int, int] = (0, 0),
    prefill: tuple[int, int, int] = (0, 0, 0),
    copied: int = 0,
    swapped: int = 0,
) -> tuple:
    """Features of a step: decode (batch, context per sequence), prefill (tokens, cached
    tokens per sequence, sequences)."""
    b = StepBatch()
    b.num_decode, b.decode_context = decode[0], decode[0] * decode[1]
    tokens, cached, seqs = prefill
    for _ in range(seqs):
        b.add_prefill(None, cached, tokens // seqs)  # type: ignore[arg-type]
    if copied:
        b.copies_before.append((1, 2, copied))
    if swapped:
        b.swap_out.append((1, 2, swapped))
    return b.features()


def grid() -> list[tuple]:
    out = [shape((b, ctx)) for b in (1, 4, 16, 64, 128, 256) for ctx in (128, 512, 2048, 4096)]
    out += [shape(prefill=(p, c, s)) for p in (64, 256, 1024, 4096, 8192) for c in (0, 2048)
            for s in (1, 4)]  # fmt: skip
    out += [shape((b, 1024), (p, 0, 1)) for b in (16, 64) for p in (256, 2048)]
    out += [shape((8, 512), copied=n) for n in (16, 256)]
    out += [shape((8, 512), swapped=n) for n in (16, 256)]
    return out


def synthetic_table(repeats: int = 3, noise: float = 0.01, seed: int = 0) -> dict[str, np.ndarray]:
    """Every grid shape `repeats` times (decode contexts growing a token per repeat), its
    `point` (the shape's index) and `duration_s` from `truth` with relative noise."""
    rows, points = [], []
    for i, feats in enumerate(grid()):
        for r in range(repeats):
            f = list(feats)
            f[2] += r * f[1]  # each decode sequence one token longer
            rows.append(f)
            points.append(i)
    table = np.array(rows, dtype=np.float64)
    cols = {name: table[:, j] for j, name in enumerate(FEATURES)}
    rng = np.random.default_rng(seed)
    cols["duration_s"] = truth(cols) * (1 + noise * rng.standard_normal(len(rows)))
    cols["point"] = np.array(points)
    return cols


META = {
    "card": "NVIDIA H100 80GB HBM3",
    "model": "llama3_8b",
    "dtype": "bfloat16",
    "layout": "paged",
    "block_size": 16,
    "backend": "synthetic (tests/engine/profile_cases.py)",
    "versions": {},
    "kvbench": "test",
    "date": "2026-01-01T00:00:00+00:00",
    "command": "synthetic_table()",
}


def write_synthetic(path, table: dict | None = None, **meta) -> StepProfile:
    profile = StepProfile(table or synthetic_table(), {**META, **meta}, path)
    save_profile(profile, path)
    return profile


def profiled_cost(path, **kw) -> ProfiledCost:
    """The sim's calibrated cost of the profile at `path`, for llama3_8b on an H100."""
    args = dict(model="llama3_8b", dtype="bfloat16", device_name="H100 80GB HBM3", gpu="h100")
    return ProfiledCost(str(path), **{**args, **kw})
