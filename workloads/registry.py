"""Named traces: public source, sha256, format; and where a trace file is found.

Resolution order: `$KVBENCH_TRACE_DIR/<file>`, then the user cache
(`$XDG_CACHE_HOME/kvbench/traces`, default ~/.cache), then a download from the public URL.
Every file is checked against its sha256 before use. Fetched files live only in the cache,
never in this repository.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workloads.errors import KvbenchError

TraceFormat = Literal["azure", "mooncake", "sharegpt"]


@dataclass(frozen=True)
class TraceInfo:
    file: str
    url: str
    sha256: str
    format: TraceFormat
    licence: str


_AZURE = "https://raw.githubusercontent.com/Azure/AzurePublicDataset/b469a113cedca53ddc3bdea71a143dc4b7d8700c/data/"
_MOONCAKE = "https://raw.githubusercontent.com/kvcache-ai/Mooncake/3b5a594133958449a1feaf1c9e0fc1b553e34a28/FAST25-release/traces/"
_SARATHI = "https://raw.githubusercontent.com/microsoft/sarathi-serve/72339db5b120614033b317880ad3a05a5e4c9415/data/processed_traces/"

TRACES: dict[str, TraceInfo] = {
    "azure_conv": TraceInfo(
        "AzureLLMInferenceTrace_conv.csv",
        _AZURE + "AzureLLMInferenceTrace_conv.csv",
        "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
        "azure",
        "CC BY 4.0, cite Patel et al., Splitwise, ISCA 2024",
    ),
    "azure_code": TraceInfo(
        "AzureLLMInferenceTrace_code.csv",
        _AZURE + "AzureLLMInferenceTrace_code.csv",
        "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
        "azure",
        "CC BY 4.0, cite Patel et al., Splitwise, ISCA 2024",
    ),
    "mooncake_conv": TraceInfo(
        "mooncake_conversation_trace.jsonl",
        _MOONCAKE + "conversation_trace.jsonl",
        "b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df",
        "mooncake",
        "Apache-2.0 repository, cite Qin et al., Mooncake, FAST 2025",
    ),
    "mooncake_synth": TraceInfo(
        "mooncake_synthetic_trace.jsonl",
        _MOONCAKE + "synthetic_trace.jsonl",
        "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131",
        "mooncake",
        "Apache-2.0 repository, cite Qin et al., Mooncake, FAST 2025",
    ),
    "sharegpt": TraceInfo(
        "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
        _SARATHI + "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
        "6d6c296302a853e2669a674a96f269283e60c57e60363bd450588a1066919f9f",
        "sharegpt",
        "Apache-2.0 repository (lengths only, no text)",
    ),
}


def trace_info(name: str) -> TraceInfo:
    if name not in TRACES:
        raise KvbenchError(f"unknown trace {name!r}; choose one of {sorted(TRACES)} or give a path")
    return TRACES[name]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvbench" / "traces"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checked(path: Path, info: TraceInfo) -> Path:
    digest = sha256_of(path)
    if digest != info.sha256:
        raise KvbenchError(
            f"{path}: sha256 {digest} differs from the registered {info.sha256}; "
            "the file is not the published trace (remove it to fetch it again)"
        )
    return path


def locate(name: str) -> Path:
    """The checked local path of a named trace, downloading it into the cache if needed."""
    info = trace_info(name)
    trace_dir = os.environ.get("KVBENCH_TRACE_DIR")
    if trace_dir and (Path(trace_dir) / info.file).exists():
        return _checked(Path(trace_dir) / info.file, info)
    cached = cache_dir() / info.file
    if cached.exists():
        return _checked(cached, info)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(info.url, timeout=60) as resp:
                tmp.write(resp.read())
        except OSError as e:
            os.unlink(tmp.name)
            where = f"{trace_dir}/{info.file} does not exist; " if trace_dir else ""
            raise KvbenchError(
                f"trace {name!r}: {where}download from {info.url} failed ({e}). Without network, "
                f"put {info.file} in a folder and set KVBENCH_TRACE_DIR to that folder."
            ) from None
    try:
        _checked(Path(tmp.name), info)
    except KvbenchError:
        os.unlink(tmp.name)
        raise
    os.replace(tmp.name, cached)
    return cached
