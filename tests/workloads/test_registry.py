"""Where traces come from: KVBENCH_TRACE_DIR, then the cache, then a checked download."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from workloads import registry
from workloads.errors import KvbenchError


def test_trace_dir_comes_first_and_is_checked(tmp_path, monkeypatch, need_trace):
    src = need_trace("sharegpt")
    monkeypatch.setenv("KVBENCH_TRACE_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shutil.copy(src, tmp_path / src.name)
    assert registry.locate("sharegpt") == tmp_path / src.name
    (tmp_path / src.name).write_text("num_prefill_tokens,num_decode_tokens\n1,2\n")
    with pytest.raises(KvbenchError, match="sha256"):
        registry.locate("sharegpt")


def test_cache_is_used_when_the_trace_dir_lacks_the_file(tmp_path, monkeypatch, need_trace):
    src = need_trace("mooncake_synth")
    monkeypatch.setenv("KVBENCH_TRACE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "kvbench" / "traces").mkdir(parents=True)
    shutil.copy(src, tmp_path / "kvbench" / "traces" / src.name)
    assert registry.locate("mooncake_synth") == tmp_path / "kvbench" / "traces" / src.name


def test_offline_download_failure_says_how_to_point_at_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KVBENCH_TRACE_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(KvbenchError, match="set KVBENCH_TRACE_DIR") as e:
        registry.locate("azure_code")
    assert "AzureLLMInferenceTrace_code.csv" in str(e.value)
    assert not list((tmp_path / "cache" / "kvbench" / "traces").iterdir())


def test_download_is_checked_before_it_enters_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("KVBENCH_TRACE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    class Fake:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return b"not the trace"

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Fake())
    with pytest.raises(KvbenchError, match="sha256"):
        registry.locate("azure_code")
    assert not list((tmp_path / "kvbench" / "traces").iterdir())


def test_download_follows_a_trace_dir_without_the_file(tmp_path, monkeypatch, need_trace):
    data = need_trace("sharegpt").read_bytes()
    monkeypatch.setenv("KVBENCH_TRACE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    class Fake:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return data

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Fake())
    got = registry.locate("sharegpt")
    assert got == tmp_path / "kvbench" / "traces" / got.name and got.read_bytes() == data


def test_missing_traces_are_counted_at_the_end_of_the_test_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KVBENCH_TRACE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    r = subprocess.run(
        [*cmd, "tests/workloads/test_traces.py"],
        cwd=Path(__file__).parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout
    assert "trace tests skipped: no local copy of azure_conv, mooncake_conv" in r.stdout
