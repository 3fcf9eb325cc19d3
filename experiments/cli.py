"""`kvbench`: the Hydra entry point. `kvbench --help` lists the config groups and keys.

kvbench                                   the embedded default workload, paged allocator
kvbench allocator=static allocator.reservation=pow2 workload=azure_conv
kvbench sweep=block_size                  a multirun; add hydra/launcher=joblib|slurm

Every failure a user can cause - a bad override or value, a bad input file, an output
directory that cannot be written, Ctrl-C - ends in one line on stderr and exit status 2
(130 for Ctrl-C), never a traceback. Tracebacks are for kvbench's own bugs; set
HYDRA_FULL_ERROR=1 to see them for everything.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments import job, sweeps
from experiments.help import help_text
from workloads.errors import KvbenchError

CTRL_C: list[int] = []  # the SIGINTs received: Hydra may turn one into another exception
USER_ERRORS = (KvbenchError, OSError, MemoryError, HydraException, OmegaConfBaseException)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _task(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    sweeps.track(hc)
    try:
        overrides = OmegaConf.to_container(hc.overrides.task)  # as typed, not interpolated
        summary = job.run(cfg, Path(hc.runtime.output_dir), list(overrides))  # type: ignore[arg-type]
    except KeyboardInterrupt:
        _exit(sweeps.interrupted(), 130)
    except USER_ERRORS as e:  # NOTE: Hydra would catch these and print a traceback
        if CTRL_C:
            _exit(sweeps.interrupted(), 130)
        sweeps.remove_if_empty()
        _exit(f"error: {one_line(e)}", 2)
    except Exception as e:  # a bug: say so now - a multirun goes on and raises it at the end
        print(f"error: {hc.runtime.output_dir} failed: {type(e).__name__}: {one_line(e)}",
              file=sys.stderr)  # fmt: skip
        raise
    print(job.format_summary(summary))
    print(f"  results         {hc.runtime.output_dir}")


def main() -> None:
    """The console script: help, then Hydra, with every user error in one line."""
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(help_text())
        return
    guarded(_task)


def guarded(task: Callable[[], Any]) -> None:
    """Run a Hydra main function; what Hydra itself raises (a bad override, an output
    directory it cannot create) becomes one line, exit 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        task()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing a traceback
    signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        task()
    except KeyboardInterrupt:
        _exit(sweeps.interrupted(), 130)
    except USER_ERRORS as e:
        if CTRL_C:  # Ctrl-C while Hydra composed the next job: it wraps the interrupt
            _exit(sweeps.interrupted(), 130)
        sweeps.remove_if_empty()
        _exit(f"error: {one_line(e)}", 2)


def _on_ctrl_c(signum: int, frame: object) -> None:
    CTRL_C.append(signum)
    raise KeyboardInterrupt


def one_line(e: BaseException) -> str:
    """An exception's message in one line: its first line, and its cause's for Hydra's
    wrappers ("Could not override 'x'." + "Key 'x' is not in struct")."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, MemoryError):
        return "out of host memory; try a smaller kv_budget_gib or workload"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    if "Available options in" in str(e):  # Hydra's unknown option: name the known ones
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options"))
        names = [
            ln for ln in lines[start + 1 :] if not ln.startswith(("Config search", "provider"))
        ]
        first = f"{first}; options: {', '.join(names)}"
    if isinstance(e, OverrideParseException):
        first = f"cannot parse the override {e.override!r}: {first}"
    cause = e.__cause__
    if isinstance(e, HydraException) and cause is not None and str(cause).strip():
        first = f"{first.rstrip('.')}: {one_line(cause)}"
    return first


def _exit(message: str, status: int) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
