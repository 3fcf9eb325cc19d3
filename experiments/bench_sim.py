"""CPU speed of the allocators and the simulator (BENCHMARKS.md section 2).

    python -m experiments.bench_sim [--repeat 5]

1. Decode growth: B sequences, one token each per step, through `decode` (the engine's path)
   and through `allocate(seq, 1)` per token; microseconds per token, amortized over block
   allocations. 2. Linearity: the same token count at batch 8 and batch 512 should cost the same
   per token. 3. End to end: the `kvbench` command on the whole Azure conversation trace (paged,
   block 16, sim backend, full per-step accounting), process start included. Prints the minimum
   and median of --repeat runs: this machine's timings vary by up to 2x from run to run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from allocators import PagedAllocator, PrefixAllocator, StaticAllocator
from workloads.request import Request


def _seqs(batch: int, length: int) -> list:
    from engine.sequence import Seq

    reqs = [Request(i, 0.0, 100, length) for i in range(batch)]
    return [Seq(i, 100, 100 + length, r.tokens(i)) for i, r in enumerate(reqs)]


def decode_us_per_token(kind: str, batch: int, tokens: int, per_call: bool) -> float:
    steps = tokens // batch
    seqs = _seqs(batch, steps + 2)
    slots = batch * (steps + 200)
    alloc = {
        "paged": lambda: PagedAllocator(slots // 16 + batch, 16),
        "prefix": lambda: PrefixAllocator(slots // 16 + batch, 16),
        "static": lambda: StaticAllocator(slots, steps + 200, "oracle", "first_fit"),
    }[kind]()
    for s in seqs:
        alloc.allocate(s, 100)
    t = time.perf_counter()
    if per_call:
        allocate = alloc.allocate
        for _ in range(steps):
            for s in seqs:
                allocate(s, 1)
    else:
        decode = alloc.decode
        for _ in range(steps):
            decode(seqs)
    return (time.perf_counter() - t) / (steps * batch) * 1e6


def end_to_end(repeat: int) -> list[float]:
    cmd = [
        sys.executable,
        "-m",
        "experiments.cli",
        "workload=azure_conv",
        "kv_budget_gib=16",
        "progress=false",
        "hydra.run.dir=results/bench_sim",
        "hydra.output_subdir=null",
    ]
    times = []
    for _ in range(repeat):
        subprocess.run(["rm", "-rf", "results/bench_sim"], check=True)
        t = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"kvbench failed: {run.stderr.strip()}")
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print("decode growth, us per token (min of repeats), 2M tokens")
    for kind in ("paged", "prefix", "static"):
        for per_call in (False, True):
            for batch in (8, 512):
                us = min(
                    decode_us_per_token(kind, batch, 2_000_000, per_call)
                    for _ in range(args.repeat)
                )
                how = "allocate(s, 1)" if per_call else "decode(seqs)  "
                print(f"  {kind:<7} {how} batch {batch:>3}: {us:.3f}")
    times = end_to_end(args.repeat)
    print(
        f"kvbench on azure_conv (19,366 requests), end to end: min {min(times):.2f} s, "
        f"median {statistics.median(times):.2f} s over {len(times)} runs"
    )


if __name__ == "__main__":
    main()
