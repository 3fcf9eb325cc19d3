"""Shared fixtures: traces from KVBENCH_TRACE_DIR (CI points it at ../shared/traces)."""

from __future__ import annotations

import os
from pathlib import Path

# Kernels run through Triton's interpreter where no GPU is present; this must be set before
# anything imports triton.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from workloads.registry import cache_dir, trace_info


def trace_path(name: str) -> Path:
    """A trace file for a test: fail loudly if KVBENCH_TRACE_DIR is set but lacks it."""
    info = trace_info(name)
    trace_dir = os.environ.get("KVBENCH_TRACE_DIR")
    if trace_dir:
        path = Path(trace_dir) / info.file
        if not path.exists():
            pytest.fail(f"KVBENCH_TRACE_DIR={trace_dir} is set but has no {info.file}")
        return path
    cached = cache_dir() / info.file
    if not cached.exists():
        pytest.skip(f"set KVBENCH_TRACE_DIR to a folder holding {info.file}")
    return cached


@pytest.fixture
def need_trace():
    return trace_path
