"""The finished runs under a results folder, with what the report needs to keep them apart.

    Run.record     summary.json's fields + leaves of config.yaml ("workload.arrival.rate")
    Run.setup      hash of the config without presentation keys and without the leaves its
                   sweep varies: equal for every job of one sweep, different for a sweep run
                   with another budget, model, workload size... Runs of backends that time
                   their card count the card they ran on, not a sim profile (`backend/gpu=`)
    Run.incomplete "incomplete: N of M jobs missing" when the sweeps of its setup launched
                   more jobs than finished under root, else None

Varied leaves of a sweep: those under the keys it sweeps (multirun.yaml), and those whose
values differ between its finished jobs (a group option such as `sampling=n2,n4` changes
leaves of another node). Runs with the same job hash are one job: the first path is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments import sweeps, systems
from experiments.identity import PRESENTATION_KEYS, TIMED_BACKENDS, digest
from experiments.reference import reference_for, system_of
from workloads.errors import KvbenchError

LABEL_CHARS = 100  # a setup's label in report headings and figure titles


@dataclass
class Run:
    name: str  # path of its directory under root
    path: Path
    record: dict[str, Any]
    config: dict[str, Any]  # flat leaves of config.yaml (timed backends: see _read)
    sweep: sweeps.Sweep | None
    setup: str = ""
    setup_config: dict[str, Any] | None = None  # config leaves the setup hash covers
    setup_label: str = ""
    incomplete: str | None = None

    @property
    def reference(self) -> tuple[dict[str, float], str | None]:
        return reference_for({**self.config, **self.record}, self.record["system"])


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def _read(path: Path, root: Path, manifests: dict[Path, sweeps.Sweep | None]) -> Run:
    try:
        s = json.loads(path.read_text())
        assert isinstance(s, dict)
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise KvbenchError(f"{path}: not a kvbench summary; remove it or the run") from None
    cfg_path = path.parent / "config.yaml"
    config = flatten(OmegaConf.to_container(OmegaConf.load(cfg_path))) if cfg_path.exists() else {}
    if s.get("backend") in TIMED_BACKENDS:  # a sim profile in its config is unused: the card
        config = {k: v for k, v in config.items() if not k.startswith("backend.gpu.")}
        config["backend.card"] = s.get("gpu")
    sweep_dir = path.parent.parent
    if sweep_dir not in manifests:
        manifests[sweep_dir] = sweeps.read_sweep(sweep_dir)
    name = str(path.parent.relative_to(root))
    sim = s.get("sim_time_s")
    record = {
        **{k: v for k, v in s.items() if not isinstance(v, (dict, list))},
        "system": (system := system_of(s)),
        "label": systems.label_rank(system, s)[0],
        "rank": systems.label_rank(system, s)[1],
        "job_hash": s.get("job_hash") or f"path:{name}",
        "max_num_seqs": config.get("engine.max_num_seqs"),
        "length_scale": config.get("workload.length_scale", 1.0),
        "request_throughput_per_s": s["requests_finished"] / sim if sim else None,
    }
    return Run(name, path.parent, record, config, manifests[sweep_dir])


def find_runs(root: Path) -> list[Run]:
    """Every finished run under root, one per job hash, with setup and completeness."""
    manifests: dict[Path, sweeps.Sweep | None] = {}
    runs: dict[str, Run] = {}
    for path in sorted(root.rglob("summary.json")):
        run = _read(path, root, manifests)  # one job run on two cards is two runs
        runs.setdefault(f"{run.record['job_hash']} {run.config.get('backend.card', '')}", run)
    found = list(runs.values())
    _set_setups(found)
    _set_completeness(found)
    _set_labels(found)
    return found


def _varied(members: list[Run]) -> set[str]:
    keys = {k for r in members for k in r.config}
    varied = {k for k in keys if len({repr(r.config.get(k)) for r in members}) > 1}
    varied.discard("backend.card")  # a sweep resumed on another card is two setups
    sweep = members[0].sweep
    swept = sweep.swept if sweep else []
    return varied | {k for k in keys for s in swept if k == s or k.startswith(s + ".")}


def _set_setups(runs: list[Run]) -> None:
    by_sweep: dict[Path | None, list[Run]] = {}
    for r in runs:
        by_sweep.setdefault(r.sweep.root if r.sweep else None, []).append(r)
    for root, members in by_sweep.items():
        varied = _varied(members) if root is not None else set()
        for r in members:
            kept = {k: v for k, v in r.config.items() if k not in varied}
            kept = {k: v for k, v in kept.items() if k.split(".")[0] not in PRESENTATION_KEYS}
            r.setup, r.setup_config = digest(kept)[:16], kept
            r.record["setup"] = r.setup


def _set_completeness(runs: list[Run]) -> None:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.setup, []).append(r)
    for members in groups.values():
        launched = max((len(r.sweep.jobs) for r in members if r.sweep), default=0)
        missing = launched - len(members)
        if missing > 0:
            for r in members:
                r.incomplete = f"incomplete: {missing} of {launched} jobs missing"


def _set_labels(runs: list[Run]) -> None:
    """For experiments run with several setups: the config leaves that set each apart."""
    by_exp: dict[Any, dict[str, Run]] = {}
    for r in runs:
        by_exp.setdefault(r.record.get("experiment"), {}).setdefault(r.setup, r)
    for firsts in by_exp.values():
        if len(firsts) < 2:
            continue
        reps = [r.setup_config or {} for r in firsts.values()]
        keys = sorted({k for rep in reps for k in rep})
        differ = [k for k in keys if len({repr(rep.get(k)) for rep in reps}) > 1]
        for r in runs:
            if r.setup in firsts:
                rep = firsts[r.setup].setup_config or {}
                r.setup_label = r.record["setup_label"] = label(rep, differ)


def label(config: dict[str, Any], keys: list[str]) -> str:
    """`key=value, ...` over the keys that set a setup apart, at most LABEL_CHARS (cut with
    "..."). A path shows its file name: the folders of profiles and traces made labels so long
    that the keys after them were cut."""
    text = ", ".join(f"{k}={_shown(config.get(k))}" for k in keys)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 3] + "..."


def setup_label(table: Any, setup: str) -> str:
    rows = table[table.setup == setup]
    return str(rows.setup_label.iloc[0]) if "setup_label" in rows and len(rows) else setup


def _shown(value: Any) -> Any:
    return Path(value).name if isinstance(value, str) and "/" in value else value
