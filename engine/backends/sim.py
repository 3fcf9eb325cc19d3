"""The `sim` backend: step time from a roofline cost model, no tensors.

    flops = 2 x params x (prefill + decode tokens) + 4 x layers x heads x head_dim x attended
    bytes = weights + KV read (decode contexts, cached prefixes) + KV written (new tokens)
    step  = max(flops / (peak x flops_eff), bytes / (bandwidth x mem_eff)) + overhead

`attended` counts query-key pairs: each decode token attends its whole context, each prefill
token its cached prefix plus half of the new tokens (causal). The efficiencies and the
overhead are assumptions of the GPU profile (experiments/conf/backend/gpu/). With
`profile=FILE` - steps measured on a GPU by kvbench-calibrate - a fit to those steps prices
every step instead, copies and swaps included (engine/backends/calibrated.py states the rules
for a profile of another model, dtype or card, missing shapes and extrapolation). Without one,
swaps (preemption=swap) move blocks over PCIe before the step, one direction at a time:

    swap = (blocks swapped out or in) x block_size x KV bytes per token / pcie_bytes_per_s
"""

from __future__ import annotations

from dataclasses import dataclass

from allocators.base import KVAllocator
from engine.backends.base import StepBatch
from engine.backends.calibrated import ProfiledCost
from engine.models import ModelSpec
from workloads.errors import KvbenchError

DTYPES = ("bfloat16", "float16")  # the roofline prices 2-byte weights and KV


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
    pcie_bytes_per_s: float = 32e9
    """Datasheet host link bandwidth, one direction (swaps go one way at a time)."""
    device_name: str = ""
    """What the card's CUDA device name contains ("H100 80GB HBM3"): a measured profile
    (`SimBackend(profile=...)`) must come from such a card."""

    def __post_init__(self) -> None:
        if self.hbm_bytes_per_s <= 0 or self.peak_flops <= 0 or self.pcie_bytes_per_s <= 0:
            raise ValueError(f"gpu {self.name}: bandwidths and peak flops must be > 0")
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


class SimBackend:
    """The roofline (or a measured profile) as a Backend: prices a StepBatch from its
    counts, never reads tables."""

    name = "sim"
    multi_step = True
    last_host_s = 0.0
    last_kernel_s = 0.0

    def __init__(
        self,
        gpu: GpuProfile,
        model: ModelSpec,
        allocator: KVAllocator,
        profile: str | None = None,
        dtype: str = "bfloat16",
    ) -> None:
        """
        Args:
            profile: a step-time profile (Parquet, from kvbench-calibrate) to price steps
                with instead of the roofline.
            dtype: of weights and KV; a profile must have been measured with it.
        """
        if dtype not in DTYPES:
            raise KvbenchError(f"backend.dtype must be one of {DTYPES} for the sim, got {dtype!r}")
        self.profile = gpu
        self.gpu, self.kernel = gpu.name, "roofline"
        self.step_time = RooflineCost(model, gpu).step_time
        block_bytes = allocator.block_size * float(model.kv_bytes_per_token)
        self._swap_s_per_block = block_bytes / gpu.pcie_bytes_per_s
        self.measured: ProfiledCost | None = None
        if profile is not None:
            self.measured = ProfiledCost(
                profile, model.name, dtype, gpu.device_name, gpu.name, allocator.block_size
            )
            self.gpu, self.kernel = self.measured.card, "profile"

    def step(self, batch: StepBatch) -> float:
        if self.measured is not None:
            return self.measured.step(batch.features())
        dt = self.step_time(
            batch.num_prefill,
            batch.num_decode,
            batch.decode_context,
            batch.prefill_pairs,
            batch.prefill_cached,
        )
        if batch.swap_out or batch.swap_in:
            blocks = sum(n for _, _, n in batch.swap_out) + sum(n for _, _, n in batch.swap_in)
            dt += blocks * self._swap_s_per_block
        return dt

    def stretch(
        self, num_seqs: int, logical_tokens: int, max_steps: int, start_s: float, until_s: float
    ) -> list[float]:
        if self.measured is not None:
            return self.measured.decode_run(num_seqs, logical_tokens, max_steps, start_s, until_s)
        step_time, durations, end = self.step_time, [], start_s
        while len(durations) < max_steps and end < until_s:
            logical_tokens += num_seqs
            durations.append(step_time(0, num_seqs, logical_tokens, 0.0, 0))
            end += durations[-1]
        return durations
