"""Adds the summary keys added after these runs (decode_tokens_per_s_queued,
mean_running_seqs_queued) to each run's summary.json, computed by engine.metrics.summarize
from the run's own steps.parquet and requests.parquet; every other key must come out equal."""
import json
import math
import sys
from pathlib import Path

import pandas as pd

from engine.metrics import summarize

NEW = ("decode_tokens_per_s_queued", "mean_running_seqs_queued")
for path in sorted(Path(sys.argv[1]).glob("*/summary.json")):
    s = json.loads(path.read_text())
    steps = {c: v.to_numpy() for c, v in pd.read_parquet(path.parent / "steps.parquet").items()}
    reqs = {c: v.to_numpy() for c, v in pd.read_parquet(path.parent / "requests.parquet").items()}
    fresh = summarize(steps, reqs)
    for k, v in fresh.items():
        if k in s and k not in NEW and isinstance(v, float) and s[k] is not None:
            assert math.isclose(v, s[k], rel_tol=1e-9), (path, k, v, s[k])
    s.update({k: fresh[k] for k in NEW})
    path.write_text(json.dumps(s, indent=2) + "\n")
    print(path.parent.name, {k: round(fresh[k], 1) for k in NEW})
