"""Running sweeps on SLURM: the `hydra/launcher=slurm` launcher and a local test cluster."""
