"""The SLURM tests need the local cluster that `make test-cluster` starts and stops around them
(experiments/cluster/test_cluster.sh sets KVBENCH_CLUSTER_TESTS=1 and SLURM_CONF). Anywhere
else they are skipped, and the reason is printed at the end of the run."""

from __future__ import annotations

import os
import shutil

import pytest


def _skip_reason() -> str | None:
    if os.environ.get("KVBENCH_CLUSTER_TESTS") == "1" and os.environ.get("SLURM_CONF"):
        return None
    if os.geteuid() != 0:
        why = "not root"
    elif shutil.which("slurmctld") is None or shutil.which("slurmdbd") is None:
        why = "Debian's slurm packages are not installed"
    else:
        why = "no local cluster started"
    return f"SLURM cluster tests skipped ({why}): `make test-cluster` runs them as root"


SKIP_REASON = _skip_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if SKIP_REASON is None:
        return
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the local SLURM cluster")


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    skipped = terminalreporter.stats.get("skipped", [])
    if SKIP_REASON and any(SKIP_REASON in str(r.longrepr) for r in skipped):
        terminalreporter.write_line(SKIP_REASON)
