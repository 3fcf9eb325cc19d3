"""What a multirun was asked to do, read back from the multirun.yaml Hydra writes into its
sweep directory, and what of it is done.

    <sweep dir>/multirun.yaml   the sweep's config (hydra.overrides.task: the command line;
                                hydra.sweeper.params: the sweep file's parameters)
               /<job num>/      one job directory each; summary.json marks a finished job

The job list is rebuilt with the basic sweeper's own expansion (BasicSweeper.split_arguments),
so its order and count are the ones Hydra launched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.types import RunMode
from omegaconf import OmegaConf

MANIFEST = "multirun.yaml"

# NOTE: the one piece of process state: the Hydra config of the sweep or run in flight, so
# that an error or Ctrl-C outside a job can still name its directory (Hydra has reset its
# own HydraConfig by then). Set by `track`, read by `tracked`.
_IN_FLIGHT: dict[str, Any] = {}


def track(hydra_cfg: Any) -> None:
    """Remember the mode and sweep directory of the run or sweep in flight."""
    _IN_FLIGHT.update(mode=hydra_cfg.mode, sweep_dir=Path(hydra_cfg.sweep.dir))


def tracked() -> dict[str, Any]:
    return dict(_IN_FLIGHT)


@dataclass(frozen=True)
class Sweep:
    """A multirun: its directory, its jobs' overrides, and the keys it varies."""

    root: Path
    jobs: list[list[str]]
    swept: list[str]

    def finished(self) -> list[int]:
        return [i for i in range(len(self.jobs)) if (self.root / str(i) / "summary.json").exists()]


def read_sweep(root: Path) -> Sweep | None:
    """The sweep whose multirun.yaml lies in root; None without one or with another sweeper."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.load(path)
        hydra = cfg.hydra
        if "BasicSweeper" not in str(hydra.sweeper.get("_target_", "")):
            return None
        params = [f"{k}={v}" for k, v in (hydra.sweeper.params or {}).items()]
        return expand(root, [*params, *hydra.overrides.task])
    except Exception:  # a hand-edited or foreign multirun.yaml: no sweep information
        return None


def expand(root: Path, overrides: list[str]) -> Sweep:
    """The jobs of a basic-sweeper multirun given its overrides (sweep file's params first)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    batches = BasicSweeper.split_arguments(parsed, None)
    return Sweep(root, [list(job) for batch in batches for job in batch], swept)


def interrupted() -> str:
    """One line after Ctrl-C: what finished and how to resume."""
    state = tracked()
    if state.get("mode") != RunMode.MULTIRUN:
        return "interrupted: the run stopped before writing its results; run it again"
    root = state["sweep_dir"]
    sweep = read_sweep(root)
    done = f"{len(sweep.finished())} of {len(sweep.jobs)}" if sweep else "some"
    return (
        f"interrupted: {done} jobs finished in {root}; run the same command with "
        f"hydra.sweep.dir={root} to run the rest (finished jobs are skipped)"
    )


def remove_if_empty() -> None:
    """Remove the sweep directory in flight if no job wrote anything in it: multirun.yaml,
    empty job directories, then the directory itself."""
    state = tracked()
    root = state.get("sweep_dir")
    if state.get("mode") != RunMode.MULTIRUN or root is None or not root.is_dir():
        return
    entries = list(root.iterdir())
    if any(e.name != MANIFEST and not (e.is_dir() and not any(e.iterdir())) for e in entries):
        return
    with contextlib.suppress(OSError):
        for e in entries:
            e.rmdir() if e.is_dir() else e.unlink()
        root.rmdir()
