"""Decode tile configs chosen by wave quantization, from the compiled kernel's occupancy.

A decode program streams one (sequence, KV head, split)'s K/V; the kernel is bandwidth bound
only while every SM holds enough programs. With P programs and S = SMs x programs per SM
resident at once, the last of ceil(P / S) waves runs part empty. Measured on an H200
(results/reference/attention_h200/NOTES.md, equal lengths, one split): the contiguous kernel's
default tile (5 programs per SM, S = 660) ran B=96 (P = 768, 1.16 waves) at 0.83x cuDNN, and
a tile with 6 per SM (S = 792, one wave) at 1.01x; B=128 (1.55 waves) at 0.95x, and a tile
with 4 per SM (1.94 waves) at 0.98x.

    efficiency(P, S) = 1                       if P <= S (one wave)
                       P / (ceil(P / S) * S)   otherwise

`choose_tile` takes the first candidate within TIE of the best efficiency, so the default
(the first) stays unless another wave shape is clearly fuller. Programs per SM come from the
compiled binary (registers, shared memory, warps) and the device's limits, so they follow the
card and the Triton version instead of a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import triton

Tile = tuple[int, int, int]  # block_n, num_warps, num_stages
TIE = 0.02
REGS_PER_SM = 65536  # every NVIDIA SM since sm_50
REG_UNIT = 256  # registers are allocated to a warp in units of 256
SMEM_RESERVED = 1024  # shared memory CUDA reserves per resident block (sm_80+)
MAX_BLOCKS_PER_SM = 32

_per_sm: dict[tuple, int] = {}  # (device, key, tile) -> programs per SM
_chosen: dict[tuple, Tile] = {}  # (device, programs, key) -> tile: one lookup per launch


def programs_per_sm(kernel: object, device: torch.device) -> int:
    """Programs of a compiled Triton kernel one SM holds at once."""
    kernel._init_handles()  # type: ignore[attr-defined]  # loads the binary: n_regs known
    meta = kernel.metadata  # type: ignore[attr-defined]
    props = torch.cuda.get_device_properties(device)
    warp_regs = triton.cdiv(kernel.n_regs * 32, REG_UNIT) * REG_UNIT  # type: ignore[attr-defined]
    by_regs = REGS_PER_SM // warp_regs // meta.num_warps
    by_smem = props.shared_memory_per_multiprocessor // (meta.shared + SMEM_RESERVED)
    by_threads = props.max_threads_per_multi_processor // (meta.num_warps * 32)
    return max(1, min(by_regs, by_smem, by_threads, MAX_BLOCKS_PER_SM))


def wave_efficiency(programs: int, slots: int) -> float:
    waves = triton.cdiv(programs, slots)
    return 1.0 if waves == 1 else programs / (waves * slots)


def choose_tile(
    tiles: Sequence[Tile],
    programs: int,
    device: torch.device,
    compile_tile: Callable[[Tile], object],
    key: tuple,
) -> Tile:
    """The tile whose waves are fullest (ties: the earlier); `compile_tile` compiles without
    launching. Occupancies are cached per (key, tile), choices per (programs, key): after the
    first call for a shape this is one dict lookup (decode launches are host-bound at small
    batches)."""
    if len(tiles) == 1 or device.type != "cuda":
        return tiles[0]
    chosen = _chosen.get((device.index, programs, *key))
    if chosen is not None:
        return chosen
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    eff = []
    for tile in tiles:
        k = (device.index, *key, *tile)
        if k not in _per_sm:
            _per_sm[k] = programs_per_sm(compile_tile(tile), device)
        eff.append(wave_efficiency(programs, sms * _per_sm[k]))
    best = max(eff)
    chosen = next(t for t, e in zip(tiles, eff, strict=True) if e >= best - TIE)
    _chosen[(device.index, programs, *key)] = chosen
    return chosen
