"""`kvbench-calibrate`: time a grid of step shapes on a GPU backend and write a step profile.

    kvbench-calibrate backend=model model=llama3_8b kv_budget_gib=40 [--out FILE] [grid flags]

Config overrides are kvbench's (the backend, model, allocator and KV budget are built exactly
as `kvbench` builds them); the flags set the grid (experiments/calibrate_grid.py). The profile
(engine/backends/profile.py) goes to --out, by default results/profiles/<model>_<card>_<dtype>
.parquet, and the fit's held-out error is printed. Points the KV budget cannot hold, or whose
sequences grow beyond max_seq_len (what the backend's decode graphs hold), are skipped and
listed. Runs on the CPU too: backend.device=cpu (the attention backend through
Triton's interpreter, for tests). With --add-steps it appends the measured steps of served GPU
runs to a profile instead (experiments/calibrate_runs.py).
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from engine.backends.profile import StepProfile, load_profile, save_profile
from engine.backends.step_fit import fit_best
from engine.metrics import FEATURES
from engine.models import model_spec
from experiments import identity, job, results, systems
from experiments.calibrate_grid import Driver, Point, run_grid
from experiments.calibrate_runs import add_steps
from workloads.errors import KvbenchError, number

GRID = {  # flag: (default, help)
    "decode_batches": ("1,2,4,8,16,32,64,128,256", "decode batch sizes"),
    "decode_contexts": ("32,64,128,512,1024,2048,4096,8192,10000", "tokens a decode seq holds"),
    "prefill_tokens": ("32,128,512,1024,2048,8192", "new tokens of a prefill step"),
    "prefill_cached": ("0,2048,8192", "cached tokens before each prefill sequence's new ones"),
    "prefill_seqs": ("1,4", "sequences the prefill tokens are split over"),
    "mixed_batches": ("8,32,128", "decode batches beside a prefill"),
    "mixed_tokens": ("32,128,512,1024,2048", "prefill tokens beside those decode batches"),
    "mixed_context": ("1024", "tokens each decode sequence beside a prefill holds"),
    "fork_batches": ("8,64", "forked decode sequences (parents; each copies on growth)"),
    "swap_tokens": ("1024,16384", "tokens swapped out and in beside a decode batch of 8"),
    "moves_context": (
        "1000",
        "tokens each sequence of the fork and swap shapes holds (not a "
        "multiple of the block size: forks share a partial block and copy it)",
    ),
}
QUICK = dict(decode_batches="1,4", decode_contexts="32,96", prefill_tokens="16,48",
             prefill_cached="0,32", prefill_seqs="1,2", mixed_batches="2", mixed_tokens="16",
             mixed_context="40", fork_batches="2", swap_tokens="64",
             moves_context="37")  # fmt: skip


def points(g: dict[str, list[int]]) -> list[Point]:
    """The grid's shapes: decode plane, prefill plane, mixed steps, forks, swaps."""
    mixed_ctx, moves_ctx = g["mixed_context"][0], g["moves_context"][0]
    out = [Point(decode=(b, c)) for b in g["decode_batches"] for c in g["decode_contexts"]]
    out += [Point(prefill=(t, c, n)) for t in g["prefill_tokens"] for c in g["prefill_cached"]
            for n in g["prefill_seqs"] if t >= n]  # fmt: skip
    out += [Point(decode=(b, mixed_ctx), prefill=(t, 0, 1)) for b in g["mixed_batches"]
            for t in g["mixed_tokens"]]  # fmt: skip
    out += [Point(decode=(b, moves_ctx), fork=True) for b in g["fork_batches"]]
    out += [Point(decode=(8, moves_ctx), swap=t) for t in g["swap_tokens"]]
    return out


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"negative value in {text!r}")
    return values


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="kvbench-calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="kvbench config overrides (backend=model ...)")
    ap.add_argument("--out", type=Path, help="the profile file (.parquet)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per shape")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    ap.add_argument("--quick", action="store_true", help="a tiny grid (a smoke test)")
    ap.add_argument("--add-steps", type=Path, nargs="+", metavar="RUN_DIR",
                    help="instead of timing: append the steps of these GPU runs to --profile "
                         "(experiments/calibrate_runs.py); CPU only")  # fmt: skip
    ap.add_argument("--profile", type=Path, help="the profile --add-steps starts from")
    ap.add_argument("--equal-contexts", action="store_true",
                    help="decode sequences of one shape all equally long (default: ragged, "
                         "spread over half to 1.5x the context)")  # fmt: skip
    for name, (default, text) in GRID.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=_ints, default=None,
                        help=f"{text} (default {default})")  # fmt: skip
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    base = QUICK if args.quick else {k: d for k, (d, _) in GRID.items()}
    given = {k: getattr(args, k) for k in GRID}  # "" (empty): no shapes of that kind
    args.grid = {k: _ints(base[k]) if v is None else v for k, v in given.items()}
    if len(args.grid["mixed_context"]) != 1 or len(args.grid["moves_context"]) != 1:
        ap.error("--mixed-context and --moves-context take one value each")
    if args.add_steps and (args.profile is None or args.out is None or args.overrides):
        ap.error("--add-steps takes --profile and --out, and no config overrides")
    return args


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("experiments.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    if cfg.backend._target_.endswith("SimBackend"):
        raise KvbenchError("kvbench-calibrate times a GPU backend: add backend=model or "
                           "backend=attention")  # fmt: skip
    if cfg.kv_budget_gib is None:
        raise KvbenchError("kvbench-calibrate needs kv_budget_gib: the KV memory to measure in")
    return identity.normalized(cfg)


def calibrate(args: argparse.Namespace) -> tuple[StepProfile, Path, list[str]]:
    cfg = compose(args.overrides)
    spec = model_spec(cfg.model.name)
    alloc_cfg, _ = systems.split(cfg.allocator)
    budget = number("kv_budget_gib", cfg.kv_budget_gib)
    if not (np.isfinite(budget) and budget > 0):
        raise KvbenchError(f"kv_budget_gib must be > 0 and finite, got {budget}")
    num_slots = spec.kv_capacity_slots(budget)
    alloc = job.build(alloc_cfg, num_slots=num_slots, max_seq_len=cfg.max_seq_len)
    backend = job.build_backend(cfg, spec, alloc)
    steps = args.warmup + args.repeats
    grid, skipped = [], []
    for p in points(args.grid):  # NOTE: decode graphs hold sequences up to max_seq_len
        if p.longest(steps, not args.equal_contexts) > cfg.max_seq_len:
            skipped.append(f"{p.label()} (longer than max_seq_len)")
        else:
            grid.append(p)

    def progress(p: Point, rows: Any) -> None:
        bar.update()
        if rows is None:
            skipped.append(f"{p.label()} (beyond the KV budget)")

    with tqdm(total=len(grid), unit="shape", disable=not cfg.progress) as bar:
        driver = Driver(alloc, backend, ragged=not args.equal_contexts)
        rows, ids = run_grid(driver, grid, args.warmup, args.repeats, progress)
    if not rows:
        raise KvbenchError(f"no shape of the grid fits {num_slots:,} KV slots; raise kv_budget_gib")
    table = np.array(rows, dtype=np.float64)
    names = (*FEATURES, "duration_s", "host_s", "kernel_s")
    cols = {n: table[:, j] for j, n in enumerate(names)}
    cols["point"] = np.array(ids, dtype=np.int64)
    meta = _meta(cfg, backend, alloc, args)
    name = f"{spec.name}_{_slug(backend.gpu)}_{cfg.backend.dtype}.parquet"
    out = args.out or Path("results/profiles") / name
    return StepProfile(cols, meta, out), out, skipped


def _meta(cfg: DictConfig, backend: Any, alloc: Any, args: argparse.Namespace) -> dict[str, Any]:
    env = results.env_record(cfg.seed, backend.gpu)
    return {
        "card": backend.gpu,
        "model": cfg.model.name,
        "dtype": cfg.backend.dtype,
        "layout": getattr(alloc, "layout", "paged"),
        "block_size": alloc.block_size,
        "backend": backend.name,
        "kernel": backend.kernel,
        "versions": {k: env["versions"].get(k) for k in ("torch", "triton", "transformers")},
        "kvbench": identity.kvbench_version(),
        "git_sha": env["git_sha"],
        "git_dirty": env["git_dirty"],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["kvbench-calibrate", *sys.argv[1:]]),
        "kv_budget_gib": cfg.kv_budget_gib,
        "grid": {
            **args.grid,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "ragged": not args.equal_contexts,
        },
        "config": _config(cfg, backend),
    }


def _config(cfg: DictConfig, backend: Any) -> dict[str, Any]:
    """The backend's options as measured: fused_ops resolved (auto: true for Llama models)."""
    config: dict[str, Any] = OmegaConf.to_container(cfg.backend)  # type: ignore[assignment]
    if hasattr(backend, "fused"):
        config["fused_ops"] = backend.fused is not None
    return config


def _slug(card: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", card.lower().removeprefix("nvidia ")).strip("_")


def main(argv: list[str] | None = None) -> None:
    from experiments.cli import guarded

    args = parse(argv)

    def task() -> None:
        if args.add_steps:
            profile, notes = add_steps(load_profile(args.profile), args.add_steps)
            out = args.out
        else:
            profile, out, skipped = calibrate(args)
            notes = [f"  skipped: {'; '.join(skipped)}"] if skipped else []
        _, summary = fit_best(profile.features, profile.table["duration_s"], profile.table["point"])
        profile.meta["fit"] = summary
        save_profile(profile, out)
        print("\n".join([describe(profile, summary), *notes, f"wrote {out}"]))

    guarded(task)


def describe(profile: StepProfile, fit: dict[str, Any]) -> str:
    m = profile.meta
    err = " | ".join(f"{n}: mean {100 * fit[n]['mean']:.1f}%, p95 {100 * fit[n]['p95']:.1f}%"
                     for n in ("linear", "grid"))  # fmt: skip
    lines = [
        f"profile  {m['model']} {m['dtype']} on {m['card']} ({m['backend']}, {m['layout']} "
        f"block {m['block_size']}): {len(profile)} steps of "
        f"{len(np.unique(profile.table['point']))} shapes",
        f"  held-out relative error ({fit['folds']}-fold over shapes): {err}",
        f"  the sim uses, by step kind: {fit['model']} (held-out mean "
        f"{100 * fit['chosen']['mean']:.1f}%, p95 {100 * fit['chosen']['p95']:.1f}%)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
