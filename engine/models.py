"""Model shapes for KV capacity and the cost model, derived from transformers config classes.

Each preset is a transformers config class and its arguments, built in code (no downloads).
`model_spec` derives the numbers kvbench needs (layers, KV heads, head dim, parameter count
from a meta-device model). Importing transformers takes seconds, so a derived spec is cached
in the user cache directory, keyed by the preset's arguments and the transformers version;
`model_spec(name, use_cache=False)` always derives afresh.

    KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes
    capacity (slots)   = KV budget bytes / KV bytes per token, to the nearest slot
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from workloads.errors import KvbenchError

GIB = 1 << 30

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "opt_13b": (
        "OPTConfig",
        dict(
            hidden_size=5120,
            num_hidden_layers=40,
            num_attention_heads=40,
            ffn_dim=20480,
            vocab_size=50272,
            max_position_embeddings=2048,
            word_embed_proj_dim=5120,
        ),
    ),
    "llama2_7b": (
        "LlamaConfig",
        dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
            max_position_embeddings=4096,
        ),
    ),
    "llama_13b": (  # LLaMA (1) 13B: the PagedAttention paper's Fig. 16 model
        "LlamaConfig",
        dict(
            hidden_size=5120,
            intermediate_size=13824,
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=40,
            vocab_size=32000,
            max_position_embeddings=2048,
        ),
    ),
    "llama3_8b": (
        "LlamaConfig",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=8192,
            rope_theta=500000.0,
        ),
    ),
    "llama3_70b": (
        "LlamaConfig",
        dict(
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=8192,
            rope_theta=500000.0,
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    num_params: int
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    def kv_capacity_slots(self, kv_budget_gib: float) -> int:
        """Token slots that fit a KV budget (OPT-13B, 12 GiB: 15,729)."""
        return round(kv_budget_gib * GIB / self.kv_bytes_per_token)


def hf_config(name: str) -> Any:
    """The transformers config object of a preset."""
    import transformers

    cls_name, kwargs = _preset(name)
    return getattr(transformers, cls_name)(**kwargs)


def _preset(name: str) -> tuple[str, dict[str, Any]]:
    if name not in PRESETS:
        raise KvbenchError(f"unknown model {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def derive_spec(name: str) -> ModelSpec:
    """Build the transformers config and a meta-device model, and read the shapes off them."""
    import torch
    import transformers

    cfg = hf_config(name)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    num_heads = cfg.num_attention_heads
    return ModelSpec(
        name=name,
        num_layers=cfg.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or num_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads,
        hidden_size=cfg.hidden_size,
        num_params=sum(p.numel() for p in model.parameters()),
    )


def _cache_path(name: str) -> Path:
    key = json.dumps([_preset(name), version("transformers")], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvbench" / "models"
    return root / f"{name}-{digest}.json"


def model_spec(name: str, use_cache: bool = True) -> ModelSpec:
    path = _cache_path(name)
    if use_cache and path.exists():
        return ModelSpec(**json.loads(path.read_text()))
    spec = derive_spec(name)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(spec)))
        tmp.replace(path)
    return spec
