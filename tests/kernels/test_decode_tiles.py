"""Tile choice by wave quantization, with the occupancies measured on an H200 (no GPU needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kernels import decode_tiles
from kernels.decode_tiles import choose_tile, programs_per_sm, wave_efficiency

H200 = SimpleNamespace(
    multi_processor_count=132,
    shared_memory_per_multiprocessor=233472,
    max_threads_per_multi_processor=2048,
)
# (n_regs, shared bytes, warps) that Triton 3.6 compiled for the decode tiles on an H200
COMPILED = {(64, 4, 2): (87, 38912, 4), (32, 4, 3): (64, 37888, 4), (32, 4, 4): (64, 54272, 4)}
TILES = tuple(COMPILED)  # the contiguous kernel's (CONTIGUOUS_TILES)
PAGED = {(64, 4, 3): (115, 39168, 4), (32, 4, 2): (80, 21504, 4)}


class FakeKernel:
    def __init__(self, n_regs: int, shared: int, warps: int) -> None:
        self.n_regs = n_regs
        self.metadata = SimpleNamespace(shared=shared, num_warps=warps)
        self.loaded = False

    def _init_handles(self) -> None:
        self.loaded = True


@pytest.fixture
def h200(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H200)
    monkeypatch.setattr(decode_tiles, "_per_sm", {})
    monkeypatch.setattr(decode_tiles, "_chosen", {})
    compiled: list = []

    def compile_tile(tile):
        compiled.append(tile)
        return FakeKernel(*(COMPILED | PAGED)[tile])

    return compile_tile, compiled


def test_programs_per_sm_follows_the_scarcest_resource(h200):
    cuda = torch.device("cuda", 0)
    assert programs_per_sm(FakeKernel(87, 38912, 4), cuda) == 5  # shared memory: 5 x 39.9 KB
    assert programs_per_sm(FakeKernel(64, 37888, 4), cuda) == 6  # 6 x 38.9 KB fits 228 KB
    assert programs_per_sm(FakeKernel(115, 39168, 4), cuda) == 4  # registers: 17 warps
    assert programs_per_sm(FakeKernel(128, 139264, 4), cuda) == 1
    assert programs_per_sm(FakeKernel(32, 1024, 8), cuda) == 8  # threads: 2048 / 256


def test_wave_efficiency():
    assert wave_efficiency(512, 660) == 1.0
    assert wave_efficiency(660, 660) == 1.0
    assert wave_efficiency(768, 660) == pytest.approx(768 / 1320)
    assert wave_efficiency(1320, 660) == 1.0


@pytest.mark.parametrize(
    ("batch", "tile"),
    [
        (64, (64, 4, 2)),  # 512 programs: one wave for every tile, the default stays
        (96, (32, 4, 3)),  # 768: 1.16 waves at 5/SM, one wave at 6/SM
        (128, (32, 4, 4)),  # 1024: 1.55 waves at 5/SM, 1.29 at 6/SM, 1.94 at 4/SM
        (192, (32, 4, 3)),  # 1536: 1.94 waves at 6/SM (first of the fullest)
    ],
)
def test_choose_tile_fills_the_last_wave(h200, batch, tile):
    compile_tile, compiled = h200
    cuda = torch.device("cuda", 0)
    assert choose_tile(TILES, batch * 8, cuda, compile_tile, ("k",)) == tile
    choose_tile(TILES, batch * 8, cuda, compile_tile, ("k",))
    assert compiled == list(TILES)  # occupancy is measured once per tile and key


def test_choose_tile_on_cpu_keeps_the_default(h200):
    compile_tile, compiled = h200
    assert choose_tile(TILES, 768, torch.device("cpu"), compile_tile, ("k",)) == TILES[0]
    assert compiled == []


@pytest.mark.parametrize(
    ("batch", "tile"),
    [
        (64, (64, 4, 3)),  # 512 programs: one wave at 4/SM (528 slots)
        (96, (32, 4, 2)),  # 768: 1.45 waves at 4/SM, one at 6/SM; measured 0.86x -> 0.98x
        (128, (64, 4, 3)),  # 1024: 1.94 waves at 4/SM, 1.29 at 6/SM
        (256, (64, 4, 3)),  # 2048: 3.88 waves at 4/SM, 2.59 at 6/SM
    ],
)
def test_choose_paged_tile(h200, batch, tile):
    compile_tile, _ = h200
    assert choose_tile(tuple(PAGED), batch * 8, torch.device("cuda", 0), compile_tile, ()) == tile


def test_the_tables_are_the_kernels():
    from kernels.paged_decode import CONTIGUOUS_TILES, PAGED_TILES

    assert CONTIGUOUS_TILES == TILES and tuple(PAGED) == PAGED_TILES
    for tiles in (CONTIGUOUS_TILES, PAGED_TILES):
        assert all(tiles[0][0] % block_n == 0 for block_n, _, _ in tiles)  # split sizes
