"""The calibrated sim (committed OPT-13B H200 profile) against the Fig. 14 GPU runs: run
totals, and every GPU step priced by the profile's fit (decode-only vs steps with prefills).
Run from the project root: python results/reference/model_h200/paper_gpu/fig14_sim/compare.py"""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from engine.backends.calibrated import ProfiledCost
from engine.metrics import FEATURES

HERE = Path(__file__).parent
GPU = HERE.parent / "fig14"
PROFILE = "results/reference/profiles/opt_13b_h200_bfloat16.parquet"
KEYS = ("throughput_tokens_per_s", "decode_tokens_per_s_queued", "mean_normalized_latency_s")


def key(s):
    name = f"n{s['n']}" if s["n"] > 1 else f"beam{s['beam_width']}"
    return ("single" if name == "beam1" else name), s["allocator"]


gpu = {key(s): (p.parent, s) for p in GPU.glob("*/summary.json") if (s := json.loads(p.read_text()))}
lines = ["| run | " + " | ".join(f"{k}: GPU / sim (sim err)" for k in KEYS)
         + " | GPU steps priced by the fit: decode-only / with prefills |", "|---|---|---|---|---|"]
for p in sorted(HERE.rglob("summary.json")):
    s = json.loads(p.read_text())
    d, g = gpu[key(s)]
    cells = [f"{g[k]:.4g} / {s[k]:.4g} ({100 * (s[k] / g[k] - 1):+.1f}%)" for k in KEYS]
    st = pd.read_parquet(d / "steps.parquet")  # copies in the run's units (a static slot: 1/16)
    cost = ProfiledCost(PROFILE, "opt_13b", "bfloat16", "H200", "h200", s["block_size"])
    moved = {f: st[f].to_numpy(dtype=float) * cost.unit_scale for f in FEATURES[6:]}
    pred = cost.fit.predict({**{f: st[f].to_numpy(dtype=float) for f in FEATURES}, **moved})
    mixed = st.num_prefill_tokens.to_numpy() > 0
    errs = [100 * (pred[m].sum() / st.duration_s[m].sum() - 1) for m in (~mixed, mixed)]
    cells.append(f"{errs[0]:+.1f}% / {errs[1]:+.1f}%")
    lines.append(f"| {' '.join(key(s))} | " + " | ".join(cells) + " |")
(HERE / "compare.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
