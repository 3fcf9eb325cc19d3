"""A job's identity: what it computes from, so a rerun can tell "done" from "different".

    identity = {"config":  the resolved config, presentation keys removed, values normalized,
                "inputs":  {workload key: sha256 of the file it names, and
                            backend.profile: sha256 of the sim's step-time profile},
                "kvbench": the package version}
    job_hash = sha256 of that record as canonical JSON (sorted keys)

Invariants: two runs with equal job hashes compute the same thing (kvbench is deterministic
per seed), so one may stand for the other. Cosmetic differences - `progress`, the sweep
folder name, the order or spelling of overrides (`seed=01` vs `seed=1`, `kv_budget_gib=12` vs
`12.0`, a default named explicitly) - do not change the hash; an edited input file does.
Named traces are identified by their registered sha256, which the loader enforces.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from workloads.errors import KvbenchError, integer, number
from workloads.registry import TRACES, sha256_of

PRESENTATION_KEYS = ("progress", "sweep_name")
TIMED_BACKENDS = ("model", "attention")  # backends that time the card they run on
INPUT_KEYS = ("path", "source", "lengths_from")


def kvbench_version() -> str:
    try:
        return version("kvbench")
    except PackageNotFoundError:
        return "unknown"


def normalized(cfg: DictConfig) -> DictConfig:
    """The resolved config with the top-level numbers as numbers (`seed=01` -> 1, a budget of
    12 -> 12.0); what the job runs with and writes to config.yaml."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation that does not resolve, a missing value
        raise KvbenchError(f"config: {str(e).splitlines()[0]}") from None
    assert isinstance(plain, dict)
    plain["seed"] = integer("seed", plain.get("seed"))
    plain["max_seq_len"] = integer("max_seq_len", plain.get("max_seq_len"))
    if plain.get("kv_budget_gib") is not None:
        plain["kv_budget_gib"] = number("kv_budget_gib", plain["kv_budget_gib"])
    return OmegaConf.create(plain)


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The normalized config as plain data, without presentation keys."""
    plain = OmegaConf.to_container(normalized(cfg))
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items() if k not in PRESENTATION_KEYS}


def inputs(workload: dict[str, Any]) -> dict[str, str | None]:
    """sha256 of every file the workload config names (None: no such file; the loader will
    say so). A registered trace name stands for its registered sha256."""
    out: dict[str, str | None] = {}
    for key in INPUT_KEYS:
        value = workload.get(key)
        if not isinstance(value, str):
            continue
        if key == "source" and workload.get("path") is not None:
            continue  # path replaces the named trace's file
        if value in TRACES:
            out[key] = TRACES[value].sha256
        else:
            path = Path(value)
            out[key] = sha256_of(path) if path.is_file() else None
    return out


def identify(cfg: DictConfig) -> dict[str, Any]:
    """The identity record of a job and its hash under "job_hash"."""
    config = resolved(cfg)
    workload = config.get("workload")
    files = inputs(workload) if isinstance(workload, dict) else {}
    profile = (config.get("backend") or {}).get("profile")
    if isinstance(profile, str):  # the sim's step-time profile: a new one is a new job
        files["backend.profile"] = sha256_of(Path(profile)) if Path(profile).is_file() else None
    record = {"config": config, "inputs": files, "kvbench": kvbench_version()}
    return {**record, "job_hash": digest(record)}


def digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two nested records."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out
