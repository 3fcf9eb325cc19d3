"""`kvbench`: the Hydra entry point. `kvbench --help` lists the config groups.

kvbench                                   the embedded default workload, paged allocator
kvbench allocator=static allocator.reservation=pow2 workload=azure_conv
kvbench sweep=block_size                  a multirun; add hydra/launcher=joblib|slurm
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments import job
from workloads.errors import KvbenchError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        summary = job.run(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))
    except KvbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(job.format_summary(summary))
    print(f"  results         {hc.runtime.output_dir}")


if __name__ == "__main__":
    main()
