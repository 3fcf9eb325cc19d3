"""Shared fixtures: traces from KVBENCH_TRACE_DIR (CI points it at ../shared/traces), then the
user cache, as workloads/registry.py finds them (tests never download). Tests whose trace is
missing are skipped, and the end of the run says how many and why."""

from __future__ import annotations

import os
from pathlib import Path

# Kernels run through Triton's interpreter where no GPU is present; this must be set before
# anything imports triton.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from workloads.registry import cache_dir, trace_info

NO_TRACE = "no local copy of trace "


def trace_path(name: str) -> Path:
    """A trace file for a test, from KVBENCH_TRACE_DIR, then the cache; else skip."""
    info = trace_info(name)
    for folder in (os.environ.get("KVBENCH_TRACE_DIR"), cache_dir()):
        if folder and (Path(folder) / info.file).exists():
            return Path(folder) / info.file
    pytest.skip(f"{NO_TRACE}{name}")


@pytest.fixture
def need_trace():
    return trace_path


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many tests were skipped for want of a trace, which traces, and how to get them."""
    missing: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        message = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        if NO_TRACE in message:
            name = message.split(NO_TRACE, 1)[1].strip()
            missing[name] = missing.get(name, 0) + 1
    if missing:
        where = os.environ.get("KVBENCH_TRACE_DIR") or "unset"
        terminalreporter.write_line(
            f"{sum(missing.values())} trace tests skipped: no local copy of "
            f"{', '.join(sorted(missing))} (KVBENCH_TRACE_DIR={where}, cache {cache_dir()}); "
            "put the files in a folder and set KVBENCH_TRACE_DIR, or fetch one with "
            "`kvbench-trace-stats NAME`"
        )
