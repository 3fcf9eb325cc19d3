"""One job: build workload, allocator and backend from the config, run the engine, write results."""

from __future__ import annotations

import gc
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from allocators import KVAllocator
from engine.backends.base import Backend
from engine.metrics import request_columns, summarize
from engine.models import GIB, ModelSpec, model_spec
from engine.scheduler import Engine, EngineLimits
from experiments import identity, results, systems
from workloads.errors import KvbenchError
from workloads.request import Workload


def build(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a user's config mistake shown as a KvbenchError."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, KvbenchError):
            raise cause from None
        if isinstance(cause, (TypeError, ValueError)):
            raise KvbenchError(f"{node.get('_target_')}: {cause}") from None
        raise


def build_workload(cfg: DictConfig) -> Workload:
    return build(cfg.workload, seed=cfg.seed, max_seq_len=cfg.max_seq_len)  # type: ignore[no-any-return]


def build_backend(cfg: DictConfig, spec: ModelSpec, alloc: KVAllocator) -> Backend:
    """The backend of the config, on this model and allocator (objects, not configs)."""
    return build(cfg.backend, model=spec, allocator=alloc, _convert_="object")  # type: ignore[no-any-return]


def capacity_slots(cfg: DictConfig, workload: Workload) -> int:
    """KV slots of the budget; without a budget, room for every sequence at once.

    A budget larger than the workload can ever use - every sequence holding max_seq_len
    slots (rounded up to a power of two, as buddy placement reserves) at once - is refused:
    it would change nothing but the free share, and its bookkeeping could exhaust memory."""
    if cfg.kv_budget_gib is None:
        return sum((r.prompt_len + r.output_len) * r.num_seqs for r in workload.requests)
    budget = cfg.kv_budget_gib
    if not (math.isfinite(budget) and budget > 0):
        raise KvbenchError(f"kv_budget_gib must be > 0 and finite, or null; got {budget}")
    spec = model_spec(cfg.model.name)
    slots = spec.kv_capacity_slots(budget)
    num_seqs = sum(r.num_seqs for r in workload.requests)
    per_seq = 1 << (cfg.max_seq_len - 1).bit_length()
    most = num_seqs * per_seq
    if slots > most:
        raise KvbenchError(
            f"kv_budget_gib={budget:g} is {slots:,} KV slots of {spec.name}, more than this "
            f"workload can ever use ({num_seqs:,} sequences x {per_seq:,} slots = {most:,}, "
            f"{most * spec.kv_bytes_per_token / GIB:.4g} GiB); use at most that, or "
            "kv_budget_gib=null"
        )
    return slots


def run(cfg: DictConfig, out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run one job into out_dir, holding its lock; skip it when out_dir holds the finished
    results of the same job (same job hash: experiments/identity.py)."""
    with results.job_lock(out_dir):
        cfg = identity.normalized(cfg)
        ident = identity.identify(cfg)
        done = results.finished_summary(out_dir)
        if done is not None and _same_job(done, ident, out_dir):
            print(f"skipped: {out_dir} already holds this job's results")
            return done
        summary = _execute(cfg, out_dir)
        summary["overrides"] = overrides
        summary["job_hash"] = ident["job_hash"]
        summary["inputs"] = ident["inputs"]
        summary["kvbench_version"] = ident["kvbench"]
        results.write_json(out_dir / results.SUMMARY, summary)
        return summary


def _same_job(done: dict[str, Any], ident: dict[str, Any], out_dir: Path) -> bool:
    """True when `done` is this job's result; False when it must be rerun (same config, but
    an input or kvbench changed); a KvbenchError when out_dir holds another job."""
    if done.get("job_hash") == ident["job_hash"]:
        return True
    old_cfg = out_dir / "config.yaml"
    old = identity.resolved(OmegaConf.load(old_cfg)) if old_cfg.exists() else {}
    changed = identity.differences(old, ident["config"])
    if changed:
        raise KvbenchError(
            f"{out_dir} holds the results of another job ({'; '.join(changed[:3])}); "
            "choose another hydra.sweep.dir or hydra.run.dir"
        )
    why = identity.differences(
        {"inputs": done.get("inputs"), "kvbench": done.get("kvbench_version")},
        {"inputs": ident["inputs"], "kvbench": ident["kvbench"]},
    )
    print(f"rerunning: {out_dir} holds results of the same config, but {'; '.join(why)}")
    return False


def _execute(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Build, run and write everything but the summary; return the summary's numbers."""
    t0 = time.perf_counter()
    workload = build_workload(cfg)
    _warn_if_clipped(workload, cfg.max_seq_len)
    spec = model_spec(cfg.model.name)
    num_slots = capacity_slots(cfg, workload)
    alloc_cfg, system = systems.split(cfg.allocator)
    alloc: KVAllocator = build(alloc_cfg, num_slots=num_slots, max_seq_len=cfg.max_seq_len)
    backend = build_backend(cfg, spec, alloc)
    limits = EngineLimits(**cfg.engine)
    try:
        with tqdm(
            total=len(workload.requests),
            unit="req",
            disable=not cfg.progress,
            mininterval=0.5,
            desc=f"{type(alloc).__name__}",
        ) as bar:
            engine = Engine(alloc, backend, limits, seed=cfg.seed, on_finish=bar.update)
            result = engine.run(workload.requests)
        totals = getattr(backend, "summary", dict)()  # vattention on the GPU: page mapping work
    finally:
        _release(backend)
    _check_drained(alloc)
    steps, reqs = result.steps.columns(), request_columns(result.finished)
    summary = {
        "experiment": cfg.experiment_name,
        "allocator": type(alloc).__name__.removesuffix("Allocator").lower(),
        **system,
        "block_size": alloc.block_size,
        "reservation": getattr(alloc, "reservation", None),
        "placement": getattr(alloc, "placement", None),
        "workload": workload.name,
        "model": spec.name,
        "gpu": backend.gpu,
        "backend": backend.name,
        "kernel": backend.kernel,
        "preemption": limits.preemption,
        "kv_budget_gib": cfg.kv_budget_gib,
        "max_seq_len": cfg.max_seq_len,
        "seed": cfg.seed,
        "n": workload.requests[0].n,
        "beam_width": workload.requests[0].beam_width,
        "num_requests": len(workload.requests),
        "requests_finished": len(result.finished),
        "prompt_tokens": int(reqs["prompt_tokens"].sum()),
        "generated_tokens": int(reqs["output_tokens"].sum()),
        "clipped_requests": workload.num_clipped,
        "capacity_slots": alloc.capacity,
        "budget_slots": num_slots,
        "num_preemptions": result.num_preemptions,
        "num_forks_refused": result.num_forks_refused,
        "request_rate": _offered_rate(workload),
        **summarize(steps, reqs),
        "prefix_block_hit_rate": _block_hit_rate(reqs, alloc.block_size),
        **totals,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    results.write_parquet(out_dir / "steps.parquet", steps)
    results.write_parquet(out_dir / "requests.parquet", reqs)
    results.write_atomic(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    results.write_json(
        out_dir / "env.json",
        results.env_record(
            cfg.seed, "none (sim backend)" if backend.name == "sim" else backend.gpu
        ),
    )
    summary["wall_time_s"] = time.perf_counter() - t0
    return summary


def _release(backend: Backend) -> None:
    """Give a GPU backend's memory back before the next job of a multirun (same process):
    its graphs, pages and pools, now rather than whenever the cyclic GC gets to them - it
    could run inside the next job's graph capture, where freeing a graph is not allowed."""
    close = getattr(backend, "close", None)
    if close is not None:
        close()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _warn_if_clipped(workload: Workload, max_seq_len: int) -> None:
    """Clipping changes the workload; say so before the results, on stderr."""
    n, total = workload.num_clipped, len(workload.requests)
    if n:
        print(
            f"warning: {n:,} of {total:,} requests ({100 * n / total:.1f}%) are longer than "
            f"max_seq_len={max_seq_len:,} and were clipped to it; the results describe the "
            "clipped workload",
            file=sys.stderr,
        )


def _offered_rate(workload: Workload) -> float | None:
    """Requests per second between the first and the last arrival."""
    span = workload.requests[-1].arrival_s - workload.requests[0].arrival_s
    return (len(workload.requests) - 1) / span if span > 0 else None


def _block_hit_rate(reqs: dict[str, np.ndarray], block_size: int) -> float:
    """Share of prompt block references served from the prefix cache (a partial last block
    counts as one reference, as a Mooncake hash id does). Exact when nothing was preempted:
    a re-admission's hits count again, capped at the prompt."""
    hits = np.minimum(reqs["cached_tokens"], reqs["prompt_tokens"]) // block_size
    refs = -(-reqs["prompt_tokens"] // block_size)
    return float(hits.sum() / refs.sum()) if refs.sum() else 0.0


def _check_drained(alloc: KVAllocator) -> None:
    u = alloc.usage()
    if u.token_states or u.reservation or u.internal_frag:
        raise AssertionError(f"blocks leaked after the run: {u}")
    alloc.check_invariants()


def format_summary(s: dict[str, Any]) -> str:
    """A short table of the headline numbers."""
    name = s["allocator"] + (
        f" ({s['reservation']}, {s['placement']})"
        if s["reservation"]
        else f" (block {s['block_size']})"
    )
    budget = (
        "unlimited: room for every sequence at once"
        if s["kv_budget_gib"] is None
        else f"{s['kv_budget_gib']:g} GiB"
    )
    lines = [
        f"kvbench  {name}  on {s['workload']}  |  {s['model']} on {s['gpu']} ({s['backend']})",
        f"  requests        {s['requests_finished']:,} / {s['num_requests']:,} finished, "
        f"{s['clipped_requests']:,} clipped, {s['num_preemptions']:,} preemptions",
        f"  KV capacity     {s['capacity_slots']:,} slots ({budget})",
        f"  batch size      mean {s['mean_batch_size']:.1f}, max {s['max_batch_size']}",
        f"  throughput      {s['throughput_tokens_per_s']:,.0f} generated tokens/s (simulated "
        f"{s['sim_time_s']:,.1f} s in {s['wall_time_s']:.1f} s)",
        *_memory_lines(s),
    ]
    if s["block_saving"]:
        lines.append(
            f"  sharing         {100 * s['block_saving']:.1f}% of blocks saved "
            f"(n={s['n']}, beam width {s['beam_width']})"
        )
    if s["prefix_hit_rate"]:
        lines.append(
            f"  prefix hits     {100 * s['prefix_hit_rate']:.1f}% of prompt tokens, "
            f"{100 * s['prefix_block_hit_rate']:.1f}% of prompt block references"
        )
    if s.get("vmm_maps"):  # vattention: CUDA VMM calls, one per page of a K or V buffer
        lines.append(
            f"  page mapping    {s['vmm_maps']:,} maps, {1e6 * s['vmm_map_s'] / s['vmm_maps']:.1f}"
            f" us each; {s['vmm_unmaps']:,} unmaps, {s['vmm_unmap_s']:.2f} s in all"
        )
    return "\n".join(lines)


def _memory_lines(s: dict[str, Any]) -> list[str]:
    def pct(key: str) -> str:
        v = s.get(key)
        return "-" if v is None else f"{100 * v:5.1f}%"

    lines = [f"  memory          {'':16}{'saturated':>10}{'all steps':>11}"]
    for k, label in (
        ("token_states", "token states"),
        ("reservation", "reservation"),
        ("internal_frag", "internal frag."),
        ("external_frag", "external frag."),
        ("free", "free"),
    ):
        lines.append(f"    {label:<28}{pct('share_' + k):>10}{pct(f'share_{k}_all_steps'):>11}")
    lines.append(
        f"  saturated steps {s['num_saturated_steps']:,} of {s['num_steps']:,} "
        "(memory refused the head-of-line request)"
    )
    if s.get("decode_tokens_per_s_saturated") is not None:
        lines.append(
            f"    in them     {s['decode_tokens_per_s_saturated']:,.0f} decode tokens/s, "
            f"mean batch {s['mean_batch_size_saturated']:.1f}"
        )
    if s.get("decode_tokens_per_s_queued") is not None:
        lines.append(
            f"  with requests waiting {s['decode_tokens_per_s_queued']:,.0f} decode tokens/s, "
            f"{s['mean_running_seqs_queued']:.1f} sequences"
        )
    return lines
