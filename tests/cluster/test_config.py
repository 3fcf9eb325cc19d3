"""The shipped SLURM launcher config and the local cluster's config files, without a cluster."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

LOCAL_SLURM = Path(__file__).parents[2] / "experiments" / "cluster" / "local_slurm.sh"


def launcher(*overrides: str, searchpath: Path | None = None):
    extra = [f"hydra.searchpath=[file://{searchpath}]"] if searchpath else []
    with initialize_config_module("experiments.conf", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", *extra, *overrides],
            return_hydra_config=True,
        )
    cfg.hydra.runtime.cwd = "/work/repo"  # set by a real run, not by compose
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_gpu_cluster_defaults():
    la = launcher()
    assert la["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (la["timeout_min"], la["cpus_per_task"], la["mem_gb"]) == (120, 8, 64)
    assert la["array_parallelism"] == 64 and la["partition"] is None
    assert la["gres"] is None  # the sim backend needs no GPU


def test_gpu_backends_ask_for_a_gpu(tmp_path):
    assert launcher("backend=attention")["gres"] == "gpu:1"
    (tmp_path / "backend").mkdir()  # any backend but sim, including ones added later
    (tmp_path / "backend" / "new_gpu_backend.yaml").write_text("name: new\n")
    assert launcher("backend=new_gpu_backend", searchpath=tmp_path)["gres"] == "gpu:1"


def test_every_field_overridable():
    la = launcher(
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gres=gpu:a100:2",
        "hydra.launcher.timeout_min=30",
        "hydra.launcher.mem_gb=16",
        "hydra.launcher.array_parallelism=4",
        "hydra.launcher.setup=[module load cuda]",
    )
    assert (la["partition"], la["gres"], la["timeout_min"]) == ("gpu", "gpu:a100:2", 30)
    assert (la["mem_gb"], la["array_parallelism"], la["setup"]) == (16, 4, ["module load cuda"])


def test_setup_activates_the_venv(monkeypatch):
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    setup = launcher()["setup"]
    assert setup[0] == "KVBENCH_VENV=/work/repo/.venv"
    monkeypatch.setenv("VIRTUAL_ENV", "/opt/env")
    assert launcher()["setup"][0] == "KVBENCH_VENV=/opt/env"
    script = "\n".join([*setup, 'echo "$PATH"'])
    env = {**os.environ, "VIRTUAL_ENV": ""}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and not out.stderr  # no venv there: nothing sourced, no error


def test_local_cluster_config(tmp_path):
    r = subprocess.run(
        [str(LOCAL_SLURM), "conf"],
        env={**os.environ, "KVBENCH_CLUSTER_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    conf = dict(
        line.split("=", 1)
        for line in (tmp_path / "etc" / "slurm.conf").read_text().splitlines()
        if "=" in line and not line.startswith(("#", "NodeName", "PartitionName"))
    )
    socket = f"{tmp_path}/munge/munge.socket.2"
    assert conf["ProctrackType"] == "proctrack/linuxproc" and conf["TaskPlugin"] == "task/none"
    assert conf["AuthInfo"] == f"socket={socket}" and conf["AccountingStoragePass"] == socket
    node = (tmp_path / "etc" / "slurm.conf").read_text().split("NodeName=")[1]
    assert f"CPUs={len(os.sched_getaffinity(0))} " in node
    dbd = tmp_path / "etc" / "slurmdbd.conf"
    assert stat.S_IMODE(dbd.stat().st_mode) == 0o600
    assert f"AuthInfo=socket={socket}" in dbd.read_text()
    ports = (tmp_path / "etc" / "ports").read_text().split()
    assert len(set(ports)) == 4 and conf["SlurmctldPort"] == ports[0]
