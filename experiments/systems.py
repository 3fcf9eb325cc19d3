"""How reports and figures show each allocator: the `system` block of its config
(experiments/conf/allocator/*.yaml), read here and nowhere else.

    system: {name: paged, label: vLLM (paged), rank: 40}

`name` keys tables and the paper's numbers, `label` names it in figures, `rank` orders it.
A run's summary carries its allocator's block (system, system_label, system_rank);
summaries written before it existed are looked up by name in the configs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).parent / "conf" / "allocator"
UNRANKED = 99


def split(node: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """The allocator config without its `system` block (what the builder gets), and the block
    as summary fields."""
    rest = OmegaConf.to_container(node, resolve=True)  # interpolations need node's parents
    assert isinstance(rest, dict)
    block = rest.pop("system", None) or {}
    name = block.get("name")
    return OmegaConf.create(rest), {
        "system": name,
        "system_label": block.get("label", name),
        "system_rank": block.get("rank", UNRANKED),
    }


@lru_cache(maxsize=1)
def known() -> dict[str, tuple[str, int]]:
    """name -> (label, rank) of every allocator config."""
    out = {}
    for path in sorted(CONF.glob("*.yaml")):
        block = OmegaConf.load(path).get("system")
        if block is not None:
            out[str(block.name)] = (str(block.label), int(block.rank))
    return out


def label_rank(name: str, summary: dict[str, Any]) -> tuple[str, int]:
    """How to show a run of system `name`: from its summary, else from the configs."""
    if summary.get("system") == name and summary.get("system_label"):
        return str(summary["system_label"]), int(summary["system_rank"])
    return known().get(name, (name, UNRANKED))
