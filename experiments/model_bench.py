"""`kvbench-model-bench`: the `model` backend end to end on one GPU, against transformers' own
continuous batching and against the weights+KV roofline, all measured in this process.

    python -m experiments.model_bench --out results/reference/model_<card> [--quick]
        [--no-baseline] [--model llama3_8b] [--max-batched-tokens 16384]
        [--fused-ops auto|true|false]

Workload (issue 10): 256 requests of 512 random prompt tokens and 256 output tokens, all at
t=0, a Llama-3-8B-shaped model with random weights, bf16, paged KV (block 16) with room for
every request at once. kvbench runs it through the engine and the model backend (decode
graphs captured before the run, as vLLM does at start-up; prefill batched under
max_num_batched_tokens); transformers runs the same prompts through `generate_batch`
(continuous batching, defaults, SDPA attention, EOS disabled) on the same weights.

Rooflines (experiments/model_workload.py), from the copy bandwidth (bytes read + written per
second, BENCHMARKS.md) and the bf16 GEMM rate measured here: the issue's, every step's weight
and KV reads over the bandwidth; and one with FLOPs, each step the longer of its reads and
its matmuls. Also timed: decode steps at batch 64 with 1k-token contexts against their
weights+KV floor, with transformers' forward and (Llama models) kvbench's fused one. Writes
model_bench.csv (metric, value, unit), model_bench.md and env.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from allocators import PagedAllocator
from allocators.base import cdiv
from engine.models import ModelSpec, hf_config, model_spec
from experiments.model_workload import FULL, QUICK, Shape, requests, roofline_s
from workloads.errors import exits_cleanly
from workloads.request import Request


def gemm_flops(m: int = 8192, k: int = 4096, n: int = 14336) -> float:
    """bf16 matmul FLOP/s of an MLP-shaped GEMM (a prefill's)."""
    from experiments.kernel_bench import bench

    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    return 2 * m * k * n / (bench(lambda: a @ b) * 1e-3)


def run_kvbench(
    hf, spec: ModelSpec, reqs: list[Request], max_batched: int, fused_ops: bool | str = "auto"
) -> dict:
    """The workload through the engine and the model backend (paged, block 16)."""
    from engine.backends.model import ModelBackend
    from engine.scheduler import Engine, EngineLimits

    blocks = sum(cdiv(r.prompt_len + r.output_len, 16) for r in reqs)
    alloc = PagedAllocator(blocks, 16)
    longest = max(r.prompt_len + r.output_len for r in reqs)
    backend = ModelBackend(
        spec, alloc, max_seq_len=longest, max_num_seqs=len(reqs), hf_model=hf,
        config=hf.config, fused_ops=fused_ops,
    )  # fmt: skip
    capture_s = backend.capture_graphs()
    limits = EngineLimits(max_num_seqs=len(reqs), max_num_batched_tokens=max_batched)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = Engine(alloc, backend, limits).run(reqs)
    wall = time.perf_counter() - t0
    steps = result.steps.columns()
    tokens = sum(r.output_len for r in reqs)
    prefill = steps["num_prefill_tokens"] > 0
    out = dict(
        tokens=tokens, wall_s=wall, engine_s=float(steps["duration_s"].sum()),
        capture_s=capture_s, steps=len(prefill), prefill_steps=int(prefill.sum()),
        prefill_s=float(steps["duration_s"][prefill].sum()),
        host_share=float(steps["host_s"].sum() / steps["duration_s"].sum()),
    )  # fmt: skip
    del backend  # the pools and graphs (they reference each other: collected below)
    _free()
    return out


def _free() -> None:
    import gc

    gc.collect()
    torch.cuda.empty_cache()


def run_generate_batch(hf, reqs: list[Request], vocab: int) -> dict:
    """The same prompts through transformers' continuous batching (SDPA, EOS disabled)."""
    from transformers import GenerationConfig

    from engine.backends.hf_model import ATTENTION

    prompts = [r.tokens(r.req_id).ids(0, r.prompt_len, vocab).tolist() for r in reqs]
    cfg = GenerationConfig(
        max_new_tokens=reqs[0].output_len, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    hf.set_attn_implementation("sdpa")
    try:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outputs = hf.generate_batch(inputs=prompts, generation_config=cfg)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    finally:
        hf.set_attn_implementation(ATTENTION)
        torch.cuda.empty_cache()
    tokens = sum(len(o.generated_tokens) for o in outputs.values())
    return dict(tokens=tokens, wall_s=wall, requests=len(outputs))


def decode_batch(
    hf, spec: ModelSpec, batch: int, context: int, steps: int, fused_ops: bool | str = "auto"
) -> tuple[Any, Callable[[], float]]:
    """A paged model backend, graphs captured, holding `batch` sequences of `context` tokens
    (random KV) with room for `steps` decode steps, and a function that runs the next one
    (returning its seconds)."""
    from engine.backends.base import StepBatch
    from engine.backends.model import ModelBackend
    from engine.sequence import Seq
    from workloads.tokens import GENERATED, UNIQUE, Tokens

    final = context + steps
    alloc = PagedAllocator(batch * cdiv(final, 16), 16)
    seqs = [
        Seq(i + 1, context - 1, final, Tokens.from_chunks([((UNIQUE, i), context)], (GENERATED, i)))
        for i in range(batch)
    ]
    for s in seqs:
        alloc.allocate(s, s.prompt_len)
    backend = ModelBackend(
        spec, alloc, max_seq_len=final, max_num_seqs=batch, hf_model=hf, config=hf.config,
        fused_ops=fused_ops,
    )  # fmt: skip
    backend.pool.k.normal_()
    backend.pool.v.normal_()
    backend.capture_graphs()

    def step() -> float:  # the first attends `context` tokens
        alloc.decode(seqs)
        return backend.step(StepBatch(decode_seqs=seqs, num_decode=batch))

    return backend, step


def decode_step(
    hf,
    spec: ModelSpec,
    batch: int,
    context: int,
    steps: int = 20,
    fused_ops: bool | str = "auto",
) -> dict:
    """Median decode step (graph replay) of `batch` sequences holding `context` tokens; with
    `fused_ops`, kvbench's fused Llama forward."""
    backend, step = decode_batch(hf, spec, batch, context, steps + 3, fused_ops)
    wall, kernel = [], []
    for t in range(steps + 3):
        dt = step()
        if t >= 3:
            wall.append(dt)
            kernel.append(backend.last_kernel_s)
    del backend, step  # the pools and graphs (they reference each other: collected below)
    _free()
    return dict(step_s=float(np.median(wall)), kernel_s=float(np.median(kernel)))


class Rows(list):
    """(metric, value, unit) rows, printed as they come."""

    def put(self, metric: str, value: float, unit: str) -> None:
        self.append((metric, value, unit))
        print(f"{metric:<34} {value:14.4g} {unit}", flush=True)


def measure(args: argparse.Namespace) -> Rows:
    """Every number of the benchmark, on one model build."""
    from engine.backends.hf_model import build_model
    from experiments.kernel_bench import copy_ceiling

    rows = Rows()
    shape = QUICK if args.quick else FULL
    spec, cfg = model_spec(args.model), hf_config(args.model)
    t0 = time.perf_counter()
    hf = build_model(cfg, torch.bfloat16, torch.device("cuda"), seed=args.seed)
    torch.cuda.synchronize()
    rows.put("model_build_s", time.perf_counter() - t0, "s")
    bw, flops = copy_ceiling(), gemm_flops()  # the card is warm from the build
    rows.put("copy_bandwidth", bw / 1e12, "TB/s (read+write)")
    rows.put("gemm_bf16", flops / 1e12, "TFLOP/s")
    reqs = requests(shape, args.seed)
    kv = run_kvbench(hf, spec, reqs, args.max_batched_tokens, args.fused_ops)
    speed = kvbench_rows(rows, kv, spec, cfg, shape, bw, flops)
    if not args.no_baseline:
        gb = run_generate_batch(hf, reqs, cfg.vocab_size)
        rows.put("generate_batch_wall_s", gb["wall_s"], "s")
        rows.put("generate_batch_tokens", gb["tokens"], "tokens")
        rows.put("generate_batch_tokens_per_s", gb["tokens"] / gb["wall_s"], "tokens/s")
        rows.put("kvbench_vs_generate_batch", speed / (gb["tokens"] / gb["wall_s"]), "x")
    decode_rows(rows, hf, spec, bw, (16, 512) if args.quick else (64, 1024))
    return rows


def kvbench_rows(
    rows: Rows, kv: dict, spec: ModelSpec, cfg: Any, shape: Shape, bw: float, flops: float
) -> float:
    """kvbench's run and the rooflines (cfg: the model's transformers config); returns its
    tokens/s."""
    for key, unit in (("wall_s", "s"), ("engine_s", "s"), ("capture_s", "s"),
                      ("prefill_s", "s"), ("prefill_steps", "steps"), ("steps", "steps"),
                      ("host_share", "of step time")):  # fmt: skip
        rows.put(f"kvbench_{key}", kv[key], unit)
    speed = kv["tokens"] / kv["wall_s"]
    rows.put("kvbench_tokens_per_s", speed, "tokens/s")
    tokens = shape.num_requests * shape.output_len
    roof = tokens / roofline_s(spec, shape, bw, kv["prefill_steps"])
    rows.put("roofline_tokens_per_s", roof, "tokens/s (weights+KV / copy bw)")
    vocab, tied = cfg.vocab_size, bool(getattr(cfg, "tie_word_embeddings", False))
    roof_fl = tokens / roofline_s(spec, shape, bw, kv["prefill_steps"], flops, vocab, tied)
    rows.put("roofline_with_flops", roof_fl, "tokens/s (each step: max(reads, FLOPs))")
    rows.put("kvbench_vs_roofline", speed / roof, "x")
    rows.put("kvbench_vs_roofline_with_flops", speed / roof_fl, "x")
    return speed


def decode_rows(rows: Rows, hf, spec: ModelSpec, bw: float, shape: tuple[int, int]) -> None:
    """The decode step against its floor, with transformers' forward and (Llama models) the
    fused one."""
    from engine.backends.fused_llama import unfusable

    batch, context = shape
    floor = (spec.weight_bytes + batch * context * spec.kv_bytes_per_token) / bw
    rows.put(f"decode_b{batch}_l{context}_floor_ms", 1e3 * floor, "ms (weights+KV / copy bw)")
    for fused in (False, True) if unfusable(hf.config) is None else (False,):  # fused_ops
        d = decode_step(hf, spec, batch, context, fused_ops=fused)
        name = f"decode_b{batch}_l{context}" + ("_fused_ops" if fused else "")
        rows.put(f"{name}_step_ms", 1e3 * d["step_s"], "ms")
        rows.put(f"{name}_kernel_ms", 1e3 * d["kernel_s"], "ms")
        rows.put(f"{name}_vs_floor", d["step_s"] / floor, "x")


def markdown(rows: list[tuple[str, float, str]], header: str) -> str:
    lines = [header, "", "| metric | value | unit |", "|---|---:|---|"]
    lines += [f"| {m} | {v:.4g} | {u} |" for m, v, u in rows]
    return "\n".join(lines) + "\n"


@exits_cleanly
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/model_bench"))
    ap.add_argument("--model", default="llama3_8b")
    ap.add_argument("--quick", action="store_true", help="64 requests x 32 tokens, batch 16")
    ap.add_argument("--no-baseline", action="store_true", help="skip generate_batch")
    ap.add_argument("--max-batched-tokens", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fused-ops", choices=("auto", "true", "false"), default="auto",
        help="kvbench's run with backend.fused_ops so set (auto: on for Llama models); the "
        "decode rows measure both forwards where the model takes the fused one",
    )  # fmt: skip
    args = ap.parse_args()
    cfg = hf_config(args.model)  # bad input is refused before the GPU check
    from engine.backends.fused_llama import resolve_fused_ops

    chosen = {"true": True, "false": False}.get(args.fused_ops, "auto")
    args.fused_ops = resolve_fused_ops(chosen, cfg, args.model)
    if not torch.cuda.is_available():
        print("error: kvbench-model-bench needs a CUDA GPU; torch sees none", file=sys.stderr)
        sys.exit(2)
    from experiments import results

    card = torch.cuda.get_device_name()
    rows = measure(args)
    shape = QUICK if args.quick else FULL
    header = (
        f"card: {card}; {args.model} shapes, random weights, bf16; {shape.num_requests} "
        f"requests x {shape.prompt_len} prompt + {shape.output_len} output tokens, all at t=0"
        + ("; kvbench's run with fused_ops" if args.fused_ops else "; transformers' forward")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=["metric", "value", "unit"]).assign(card=card)
    table.to_csv(args.out / "model_bench.csv", index=False)
    (args.out / "model_bench.md").write_text(markdown(rows, header))
    results.write_json(args.out / "env.json", results.env_record(args.seed, card))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
