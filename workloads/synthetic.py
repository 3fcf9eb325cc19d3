"""Synthetic workloads: an arrival process x a length distribution, plus shared prefixes.

A workload is a pure function of (config, seed): the same arguments give the same requests.
Arrival processes: `poisson`, `gamma` (given the coefficient of variation of inter-arrival
times), `fixed` (evenly spaced), `burst` (everyone at t = 0). Lengths: `fixed`, `uniform`,
`lognormal` given mean and std (moment matching), or pairs resampled from a named trace.
The embedded default (`azure_default`) is fitted to the Azure 2023 conversation trace
(workloads/data/azure_conv_fit.json, written by `kvbench-trace-stats azure_conv --fit`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Literal

import numpy as np

from workloads.errors import KvbenchError, integer, number
from workloads.request import Request, Workload, clip_lengths
from workloads.tokens import SYSTEM, UNIQUE

ArrivalName = Literal["poisson", "gamma", "fixed", "burst"]
DistName = Literal["fixed", "uniform", "lognormal"]


@dataclass(frozen=True)
class Dist:
    """A length distribution over integers >= 1."""

    kind: DistName = "fixed"
    value: int = 128
    low: int = 1
    high: int = 256
    mean: float = 128.0
    std: float = 64.0
    min: int = 1
    max: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise KvbenchError(f"unknown length distribution {self.kind!r}")
        if self.kind == "fixed" and self.value < 1:
            raise KvbenchError(f"fixed length must be >= 1, got {self.value}")
        if self.kind == "uniform" and not 1 <= self.low <= self.high:
            raise KvbenchError(
                f"uniform lengths need 1 <= low <= high, got {self.low}, {self.high}"
            )
        if self.kind == "lognormal" and not (self.mean > 0 and self.std > 0):
            raise KvbenchError("lognormal lengths need mean > 0 and std > 0")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, self.value)
        elif self.kind == "uniform":
            x = rng.integers(self.low, self.high + 1, n)
        else:
            sigma2 = np.log1p((self.std / self.mean) ** 2)
            x = np.rint(rng.lognormal(np.log(self.mean) - sigma2 / 2, np.sqrt(sigma2), n))
        return np.clip(x, max(self.min, 1), self.max).astype(np.int64)


def arrival_times(
    process: ArrivalName, n: int, rate: float, cv: float, rng: np.random.Generator
) -> np.ndarray:
    """n arrival times in seconds, the first at 0."""
    if process == "burst":
        return np.zeros(n)
    if rate <= 0:
        raise KvbenchError(f"arrival rate must be > 0 req/s, got {rate}")
    if process == "fixed":
        gaps = np.full(n, 1.0 / rate)
    elif process == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif process == "gamma":
        if cv <= 0:
            raise KvbenchError(f"gamma arrivals need cv > 0, got {cv}")
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    else:
        raise KvbenchError(f"unknown arrival process {process!r}; poisson, gamma, fixed or burst")
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


@dataclass(frozen=True)
class Arrival:
    process: ArrivalName = "poisson"
    rate: float = 1.0
    cv: float = 1.0


def synthetic(
    max_requests: int = 1000,
    seed: int = 0,
    arrival: Arrival | dict[str, Any] | None = None,
    prompt: Dist | dict[str, Any] | None = None,
    output: Dist | dict[str, Any] | None = None,
    lengths_from: str | None = None,
    num_prefixes: int = 0,
    prefix_len: int = 0,
    n: int = 1,
    beam_width: int = 1,
    max_seq_len: int | None = None,
    clip: bool = True,
    name: str = "synthetic",
    length_scale: float = 1.0,
) -> Workload:
    """Requests with the given arrivals and lengths.

    Args:
        max_requests: how many requests to draw (the name every workload uses for its
            request limit).
        lengths_from: a trace name; (prompt, output) pairs are resampled from it jointly,
            replacing `prompt` and `output`.
        num_prefixes, prefix_len: each prompt starts with one of `num_prefixes` shared
            prefixes (system prompts) of `prefix_len` tokens, drawn uniformly; the drawn
            prompt length comes after it.
        length_scale: every drawn length and the prefix length are multiplied by this
            (rounded, at least 1) before clipping: the seq_len sweep.
    """
    max_requests, num_prefixes, prefix_len, n, beam_width = (
        integer(f"workload.{key}", value)
        for key, value in (("max_requests", max_requests), ("num_prefixes", num_prefixes),
                           ("prefix_len", prefix_len), ("n", n), ("beam_width", beam_width))
    )  # fmt: skip
    if max_requests < 1:
        raise KvbenchError(f"workload.max_requests must be >= 1, got {max_requests}")
    check_length_scale(length_scale)
    if num_prefixes < 0 or prefix_len < 0 or (num_prefixes > 0 and prefix_len < 1):
        raise KvbenchError(
            f"workload.num_prefixes must be >= 0 and workload.prefix_len >= 1 when there are "
            f"prefixes, got num_prefixes={num_prefixes}, prefix_len={prefix_len}"
        )
    rng = np.random.default_rng(seed)
    arr = _as(Arrival, arrival)
    for key in ("rate", "cv"):
        number(f"workload.arrival.{key}", getattr(arr, key))
    times = arrival_times(arr.process, max_requests, arr.rate, arr.cv, rng)
    prompts, outputs = _lengths(rng, max_requests, prompt, output, lengths_from)
    prompts, outputs = scale_lengths(prompts, length_scale), scale_lengths(outputs, length_scale)
    if num_prefixes > 0:
        prefix_len = int(scale_lengths(np.array([prefix_len]), length_scale)[0])
    groups = rng.integers(0, num_prefixes, max_requests) if num_prefixes > 0 else None
    requests, num_clipped = [], 0
    for i in range(max_requests):
        p, o = int(prompts[i]) + (prefix_len if groups is not None else 0), int(outputs[i])
        if max_seq_len is not None and p + o > max_seq_len:
            if not clip:
                raise KvbenchError(
                    f"synthetic request {i}: {p} + {o} tokens exceed max_seq_len {max_seq_len} "
                    "(set clip=true to clip)"
                )
            p, o = clip_lengths(p, o, max_seq_len)
            num_clipped += 1
        chunks: tuple = ()
        if groups is not None:
            shared = min(prefix_len, p)
            chunks = (((SYSTEM, int(groups[i])), shared), ((UNIQUE, i), p - shared))
        requests.append(Request(i, float(times[i]), p, o, chunks, n=n, beam_width=beam_width))
    return Workload(name, requests, num_clipped)


def _lengths(
    rng: np.random.Generator,
    n: int,
    prompt: Dist | dict[str, Any] | None,
    output: Dist | dict[str, Any] | None,
    lengths_from: str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt, output) length pairs: drawn from the distributions, or resampled jointly
    from a trace."""
    if lengths_from:
        from workloads.traces import load_trace

        pool = load_trace(lengths_from).requests
        pick = rng.integers(0, len(pool), n)
        return (
            np.array([pool[i].prompt_len for i in pick]),
            np.array([pool[i].output_len for i in pick]),
        )
    return _as(Dist, prompt).sample(rng, n), _as(Dist, output).sample(rng, n)


def check_length_scale(length_scale: float) -> None:
    if not (isinstance(length_scale, (int, float)) and 0 < length_scale < float("inf")):
        raise KvbenchError(f"workload.length_scale must be > 0, got {length_scale}")


def scale_lengths(x: np.ndarray, length_scale: float) -> np.ndarray:
    """Lengths times length_scale, rounded, at least 1 (unchanged at 1.0)."""
    if length_scale == 1.0:
        return x
    return np.maximum(1, np.rint(x * length_scale)).astype(np.int64)


def _as(cls: type, value: Any) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    try:
        return cls(**dict(value))
    except TypeError as e:
        raise KvbenchError(f"bad {cls.__name__.lower()} settings {dict(value)}: {e}") from None


def azure_fit() -> dict[str, Any]:
    """The embedded statistics of the Azure 2023 conversation trace."""
    text = files("workloads").joinpath("data/azure_conv_fit.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def azure_default(
    max_requests: int = 2000, seed: int = 0, rate_scale: float = 1.0, **kwargs: Any
) -> Workload:
    """Gamma arrivals and lognormal lengths fitted to the Azure conversation trace."""
    check_rate_scale(rate_scale)
    fit = azure_fit()
    lengths = {k: Dist("lognormal", **fit[k]) for k in ("prompt", "output")}
    arrival = Arrival("gamma", fit["rate"] * rate_scale, fit["cv"])
    return synthetic(max_requests, seed, arrival, name="azure_default", **lengths, **kwargs)


def check_rate_scale(rate_scale: float) -> None:
    if not (isinstance(rate_scale, (int, float)) and 0 < rate_scale < float("inf")):
        raise KvbenchError(f"workload.rate_scale must be > 0, got {rate_scale}")
