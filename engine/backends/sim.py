"""The `sim` backend: step time from a roofline cost model, no tensors.

    flops = 2 x params x (prefill + decode tokens) + 4 x layers x heads x head_dim x attended
    bytes = weights + KV read (decode contexts, cached prefixes) + KV written (new tokens)
    step  = max(flops / (peak x flops_eff), bytes / (bandwidth x mem_eff)) + overhead

`attended` counts query-key pairs: each decode token attends its whole context, each prefill
token its cached prefix plus half of the new tokens (causal). The efficiencies and the
overhead are assumptions of the GPU profile (experiments/conf/gpu/); a profile table measured
by a GPU backend can replace this model through the same `step_time` signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models import ModelSpec


@dataclass(frozen=True)
class GpuProfile:
    name: str
    hbm_bytes_per_s: float
    """Datasheet HBM bandwidth."""
    peak_flops: float
    """Datasheet dense bf16 tensor-core rate."""
    mem_efficiency: float = 0.8
    flops_efficiency: float = 0.6
    step_overhead_s: float = 0.002
    """Scheduling, sampling and launch time per step."""

    def __post_init__(self) -> None:
        if self.hbm_bytes_per_s <= 0 or self.peak_flops <= 0:
            raise ValueError(f"gpu {self.name}: bandwidth and peak flops must be > 0")
        if not (0 < self.mem_efficiency <= 1 and 0 < self.flops_efficiency <= 1):
            raise ValueError(f"gpu {self.name}: efficiencies must lie in (0, 1]")


class RooflineCost:
    """Step time of one engine step on one GPU."""

    def __init__(self, model: ModelSpec, gpu: GpuProfile) -> None:
        self.model, self.gpu = model, gpu
        self._flops_per_token = 2.0 * model.num_params
        self._flops_per_pair = 4.0 * model.num_layers * model.num_heads * model.head_dim
        self._kv = float(model.kv_bytes_per_token)
        self._weights = float(model.weight_bytes)
        self._flops_rate = gpu.peak_flops * gpu.flops_efficiency
        self._byte_rate = gpu.hbm_bytes_per_s * gpu.mem_efficiency
        self._overhead = gpu.step_overhead_s

    def step_time(
        self,
        num_prefill: int,
        num_decode: int,
        decode_context: int,
        prefill_pairs: float,
        prefill_cached: int,
    ) -> float:
        """Seconds for a step that prefills `num_prefill` tokens and decodes `num_decode`.

        Args:
            decode_context: KV tokens the decode tokens read, summed over sequences.
            prefill_pairs: query-key pairs of the prefill tokens.
            prefill_cached: cached prefix tokens the prefills read.
        """
        tokens = num_prefill + num_decode
        compute = (
            self._flops_per_token * tokens + self._flops_per_pair * (decode_context + prefill_pairs)
        ) / self._flops_rate
        memory = (self._weights + self._kv * (decode_context + prefill_cached + tokens)) / (
            self._byte_rate
        )
        return (compute if compute > memory else memory) + self._overhead
