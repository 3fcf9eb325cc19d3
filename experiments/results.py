"""What a run writes into its directory, atomically, and how a rerun finds it done.

<run dir>/summary.json      headline numbers and the job hash (written last: its presence
                            = job done)
          steps.parquet     one row per engine step (engine/metrics.py STEP_COLUMNS)
          requests.parquet  one row per request
          config.yaml       the resolved config
          env.json          git sha and dirty flag, versions, host, GPU, seed
          .lock             held (flock) by the one process writing the directory

Files get the permissions of the umask (0644 by default), as `open` would give them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from workloads.errors import KvbenchError

SUMMARY = "summary.json"
LOCK = ".lock"
RESULT_FILES = (SUMMARY, "steps.parquet", "requests.parquet", "config.yaml", "env.json")
PACKAGES = ("torch", "triton", "numpy", "pandas", "pyarrow", "hydra-core", "transformers")


def _file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:  # a full disk: name the file being written
        os.unlink(tmp)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        os.unlink(tmp)
        raise


def write_parquet(path: Path, columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink, compression="lz4")  # 3x faster than zstd here
    write_atomic(path, sink.getvalue().to_pybytes())


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, default=_plain) + "\n").encode())


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of the finished job in run_dir, or None when there is none."""
    path = run_dir / SUMMARY
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KvbenchError(
            f"{path}: not a kvbench summary ({e}); remove it to rerun the job"
        ) from None
    if not isinstance(summary, dict):
        raise KvbenchError(f"{path}: not a kvbench summary; remove it to rerun the job")
    return summary


@contextlib.contextmanager
def job_lock(run_dir: Path) -> Iterator[None]:
    """Hold run_dir's lock for the block: one writer per job directory. The lock is an
    flock on run_dir/.lock (released when the process dies, however it dies); the file
    stays, so that every writer locks the same inode. A block that fails before writing
    results leaves no directory behind (see remove_if_unused)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise KvbenchError(
                f"{run_dir} is being written by {holder}; wait for it to finish or choose "
                "another hydra.run.dir / hydra.sweep.dir"
            ) from None
        f.truncate(0)
        f.write(f"kvbench pid {os.getpid()} on {platform.node()}\n")
        f.flush()
        try:
            yield
        except BaseException:
            remove_if_unused(run_dir)
            raise


def remove_if_unused(run_dir: Path) -> None:
    """Remove what a job that failed before writing results left in run_dir (its lock file,
    Hydra's log), and run_dir itself when that leaves it empty."""
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in RESULT_FILES):
        return
    for p in [run_dir / LOCK, *run_dir.glob("*.log")]:
        if p.is_file() and (p.name == LOCK or p.stat().st_size == 0):
            p.unlink()
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def env_record(seed: int, gpu: str) -> dict[str, Any]:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    status = _git("status", "--porcelain")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "host": platform.node(),
        "machine": platform.machine(),
        "gpu": gpu,
        "seed": seed,
        "versions": versions,
    }
