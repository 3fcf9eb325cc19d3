"""CPU speed of the prefix-sharing path: the `kvbench` command end to end, process start
included, minimum of --repeat runs (this machine's timings vary by up to 2x between runs).

    python -m experiments.bench_prefix [--repeat 3] [--only NAME ...]

Runs (BENCHMARKS.md section 2): the Azure conversation trace (19,366 requests, 2 GiB) with
paged, prefix and radix (block 16) allocators; the Mooncake conversation trace (12,031
requests, 144M prompt tokens, no clipping: llama3_70b, max_seq_len 196608) at 40 GiB with
prefix and radix at block 16. Prints wall and user CPU seconds, the peak memory of the run
(max RSS) and the ratios the targets name: Azure prefix / paged (<= 1.5), Mooncake prefix
(<= 30 s, <= 1 GiB), radix / prefix (<= 2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

AZURE = ["workload=azure_conv", "kv_budget_gib=2"]
MOONCAKE = [
    "workload=mooncake_conv",
    "model=llama3_70b",
    "max_seq_len=196608",
    "kv_budget_gib=40",
    "allocator.block_size=16",
]
RUNS = {
    "azure_paged": [*AZURE, "allocator=paged"],
    "azure_prefix": [*AZURE, "allocator=prefix"],
    "azure_radix16": [*AZURE, "allocator=radix", "allocator.block_size=16"],
    "mooncake_prefix": [*MOONCAKE, "allocator=prefix"],
    "mooncake_radix16": [*MOONCAKE, "allocator=radix"],
}


def run_once(overrides: list[str]) -> tuple[float, float, float]:
    """(wall s, user CPU s, max RSS MiB) of one `kvbench` process."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "experiments.cli", *overrides, "progress=false",
               f"hydra.run.dir={out}", "hydra.output_subdir=null"]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        err = proc.stderr.read().decode() if proc.stderr else ""
        if status:
            raise SystemExit(f"kvbench {' '.join(overrides)} failed: {err.strip()}")
    return wall, usage.ru_utime, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=sorted(RUNS), default=sorted(RUNS))
    args = ap.parse_args()
    best = {}
    for name in args.only:
        runs = [run_once(RUNS[name]) for _ in range(args.repeat)]
        wall, user, rss = min(r[0] for r in runs), min(r[1] for r in runs), max(r[2] for r in runs)
        best[name] = (wall, user)
        print(f"{name:<18} wall {wall:6.2f} s  user {user:6.2f} s  max RSS {rss:5.0f} MiB")
    for num, den, target in (
        ("azure_prefix", "azure_paged", 1.5),
        ("mooncake_radix16", "mooncake_prefix", 2.0),
        ("azure_radix16", "azure_prefix", 2.0),
    ):
        if num in best and den in best:
            w, u = best[num][0] / best[den][0], best[num][1] / best[den][1]
            print(f"{num} / {den}: wall {w:.2f}x, user {u:.2f}x (target <= {target}x)")


if __name__ == "__main__":
    main()
