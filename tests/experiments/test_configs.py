"""Every option of every config group composes and builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from allocators import PagedAllocator
from engine.backends.sim import GpuProfile
from engine.models import model_spec
from experiments import systems
from experiments.job import build_backend, build_workload

CONF = Path(__file__).parents[2] / "experiments" / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def cfg_with(*overrides: str):
    with initialize_config_module("experiments.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("name", options("allocator"))
def test_allocators_build(name):
    cfg = cfg_with(f"allocator={name}")
    node, system = systems.split(cfg.allocator)
    alloc = instantiate(node, num_slots=40_000, max_seq_len=cfg.max_seq_len)
    assert alloc.capacity <= 40_000 and alloc.usage().free == alloc.capacity
    assert systems.known()[system["system"]] == (system["system_label"], system["system_rank"])


@pytest.mark.parametrize("name", options("workload"))
def test_workloads_build(name, need_trace):
    cfg = cfg_with(f"workload={name}")
    if "source" in cfg.workload:
        need_trace(cfg.workload.source)  # azure_code: its parser is also tested via azure_conv
    w = build_workload(cfg)
    assert w.requests and all(r.prompt_len + r.output_len <= cfg.max_seq_len for r in w.requests)


@pytest.mark.parametrize("name", options("model"))
def test_models_build(name):
    assert model_spec(cfg_with(f"model={name}").model.name).kv_bytes_per_token > 0


@pytest.mark.parametrize("name", options("backend/gpu"))
def test_gpus_build(name):
    cfg = cfg_with(f"backend/gpu={name}")
    backend = build_backend(cfg, model_spec("llama3_8b"), PagedAllocator(8, 16))
    assert isinstance(backend.profile, GpuProfile) and backend.gpu == name
    assert backend.multi_step and backend.kernel == "roofline"


@pytest.mark.parametrize("name", options("backend"))
def test_backends_compose_with_every_experiment(name):
    for experiment in options("experiment"):
        cfg = cfg_with(f"backend={name}", f"experiment={experiment}")
        assert cfg.backend._target_.endswith(f"{name}.{name.capitalize()}Backend")


def test_attention_backend_builds_where_its_module_exists():
    cfg = cfg_with("backend=attention")
    assert cfg.backend._target_ == "engine.backends.attention.AttentionBackend"
    assert (cfg.backend.dtype, cfg.backend.kernel, cfg.backend.device) == (
        "bfloat16",
        "triton",
        "cuda",
    )
    pytest.importorskip(
        "engine.backends.attention", reason="the attention backend is not built yet"
    )


@pytest.mark.parametrize("name", options("sweep"))
def test_sweeps_are_multiruns(name):
    cfg = cfg_with(f"sweep={name}")
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(name):
    cfg = cfg_with(f"experiment={name}")
    assert cfg.allocator and cfg.workload


def test_slurm_launcher_composes():
    cfg = cfg_with("hydra/launcher=slurm")
    assert cfg.hydra.launcher.gres is None  # the sim backend asks for no GPU
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
