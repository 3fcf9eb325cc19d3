"""Hydra config tree, the kvbench CLI, job running and result analysis.

Importing the package registers the config resolver `kvbench.scale_int` (`${kvbench.scale_int:
2048,${seq_len_scale}}` is round(2048 x seq_len_scale)), used by sweep/seq_len.yaml; every
process that resolves a kvbench config imports this package first."""

from __future__ import annotations

from omegaconf import OmegaConf


def _scale_int(base: int, scale: float) -> int:
    return max(1, round(base * scale))


if not OmegaConf.has_resolver("kvbench.scale_int"):
    OmegaConf.register_new_resolver("kvbench.scale_int", _scale_int)
