"""The workload of `kvbench-model-bench` (issue 10) and its rooflines: `requests` of a
`Shape`, all at t=0, and `roofline_s`, the seconds they take at the bounds of a card's
measured copy bandwidth and matmul rate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.models import ModelSpec
from workloads.request import Request


@dataclass(frozen=True)
class Shape:
    num_requests: int = 256
    prompt_len: int = 512
    output_len: int = 256


FULL, QUICK = Shape(), Shape(64, 512, 32)


def requests(shape: Shape, seed: int = 0) -> list[Request]:
    from workloads.synthetic import synthetic

    return synthetic(
        max_requests=shape.num_requests, seed=seed, arrival={"process": "burst"},
        prompt={"kind": "fixed", "value": shape.prompt_len},
        output={"kind": "fixed", "value": shape.output_len},
    ).requests  # fmt: skip


def roofline_s(
    spec: ModelSpec, shape: Shape, bandwidth: float, prefill_steps: int = 1,
    flops: float | None = None, vocab: int = 0, tied: bool = False,
) -> float:  # fmt: skip
    """Seconds of the workload at its roofline: all requests decode together, each of the
    output_len - 1 decode steps reads the weights and every sequence's KV, the prefill steps
    read the weights (the issue's bound: reads over `bandwidth`). With `flops` (a measured
    matmul rate) each decode step, and the prefill steps together, take the longer of their
    reads and their FLOPs: every weight matrix but the embedding table (`vocab` rows,
    `tied` to lm_head or not) for each new token - lm_head only for each prompt's last -
    and attention's 4 FLOPs per query-key pair and head dimension."""
    n, prompt = shape.num_requests, shape.prompt_len
    context = prompt + np.arange(1, shape.output_len)
    step_bytes = spec.weight_bytes + n * context * spec.kv_bytes_per_token
    prefill_bytes = prefill_steps * spec.weight_bytes
    if flops is None:
        return float(step_bytes.sum() + prefill_bytes) / bandwidth
    head = vocab * spec.hidden_size
    matmul = spec.num_params - (0 if tied else head)  # per token, as multiply-adds
    pair = 4 * spec.num_layers * spec.num_heads * spec.head_dim
    step_flops = n * (2 * matmul + pair * context)
    prefill_flops = n * (2 * (matmul - head) * prompt + 2 * head + pair * prompt * (prompt + 1) / 2)
    decode_s = np.maximum(step_bytes / bandwidth, step_flops / flops).sum()
    return float(decode_s + max(prefill_bytes / bandwidth, prefill_flops / flops))
