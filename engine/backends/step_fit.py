"""Which step-time model prices which step: k-fold cross-validation over measured shapes.

Steps fall into four kinds, which GPU backends run differently (decode-only steps replay
CUDA graphs, steps with a prefill run eagerly):

    decode   decode tokens only        prefill  prefill tokens only
    mixed    both                      moves    blocks copied or swapped

`cross_validate` holds out groups of steps (the repeats of one measured shape form a group,
so a shape is never predicted from its own repeats) and gives every step its held-out
relative error under each model (engine/backends/step_models.py). `fit_best` picks, for
each kind, the model with the lower mean held-out error on that kind's steps (a kind the
profile never measured takes the model better overall), refits the models on every step,
and prices each step with its kind's model. Its summary reports both models' errors and the
chosen combination's (the held-out errors of the chosen model in each kind).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.backends.step_models import Columns, GridFit, LinearFit, StepModel

MODELS: dict[str, Callable[[Columns, np.ndarray], StepModel]] = {
    "linear": LinearFit,
    "grid": GridFit,
}
KINDS = ("decode", "prefill", "mixed", "moves")


def kinds(cols: Columns) -> np.ndarray:
    """Each step's kind, as an index into KINDS."""
    pf = np.asarray(cols["num_prefill_tokens"]) > 0
    d = np.asarray(cols["num_decode_tokens"]) > 0
    moved = (np.asarray(cols["num_copied_blocks"]) + np.asarray(cols["num_swapped_blocks"])) > 0
    return np.select([moved, pf & d, pf], [3, 2, 1], 0)


def _kind_one(f: Sequence[float]) -> int:
    if f[6] or f[7]:
        return 3
    return 2 if f[0] and f[1] else 1 if f[0] else 0


class ByKind:
    """One fitted model per step kind."""

    def __init__(self, fitted: dict[str, StepModel], choice: dict[str, str]) -> None:
        self.choice = choice
        self.name = ", ".join(f"{k} {choice[k]}" for k in KINDS)
        self._by_kind = [fitted[choice[k]] for k in KINDS]

    def predict(self, cols: Columns) -> np.ndarray:
        kind = kinds(cols)
        out = np.empty(len(kind))
        for j in np.unique(kind):
            at = kind == j
            out[at] = self._by_kind[j].predict({n: np.asarray(v)[at] for n, v in cols.items()})
        return out

    def one(self, f: Sequence[float]) -> float:
        return self._by_kind[_kind_one(f)].one(f)


def relative_errors(model: StepModel, cols: Columns, seconds: np.ndarray) -> np.ndarray:
    err = np.abs(model.predict(cols) - seconds) / seconds
    return np.where(np.isfinite(err), err, np.inf)  # a shape the model cannot price


def cross_validate(
    cols: Columns, seconds: np.ndarray, groups: np.ndarray, k: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """Held-out relative error of every step, per model: the groups are split into k folds
    (at random, seeded); each fold is predicted by a model fitted to the others."""
    ids = np.unique(groups)
    fold_of = dict(zip(np.random.default_rng(seed).permutation(ids), np.arange(len(ids)) % k))
    fold = np.array([fold_of[g] for g in groups])
    errors = {name: np.full(len(seconds), np.inf) for name in MODELS}
    for f in range(min(k, len(ids))):
        test = fold == f
        train = {n: v[~test] for n, v in cols.items()}
        held = {n: v[test] for n, v in cols.items()}
        for name, make in MODELS.items():
            errors[name][test] = relative_errors(make(train, seconds[~test]), held, seconds[test])
    return errors


def _stats(err: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(err)), "p95": float(np.quantile(err, 0.95))}


def fit_best(
    cols: Columns, seconds: np.ndarray, groups: np.ndarray, k: int = 5
) -> tuple[ByKind, dict[str, Any]]:
    """The per-kind choice of models, refitted on every step, and a summary:
    {"model": "decode linear, prefill grid, ...", "kinds": {kind: model}, "<model>" and
    "chosen": {"mean": .., "p95": ..} held-out relative errors, "folds": k, "steps": n}."""
    errors = cross_validate(cols, seconds, groups, k)
    summary: dict[str, Any] = {"folds": k, "steps": len(seconds)}
    for name, err in errors.items():
        summary[name] = _stats(err)
    overall = min(errors, key=lambda n: (summary[n]["mean"], n))
    kind = kinds(cols)
    choice, chosen = {}, np.empty(len(seconds))
    for j, name in enumerate(KINDS):
        at = kind == j
        best = (
            min(errors, key=lambda n: (float(np.mean(errors[n][at])), n)) if at.any() else overall
        )
        choice[name] = best
        chosen[at] = errors[best][at]
    model = ByKind({n: make(cols, seconds) for n, make in MODELS.items()}, choice)
    summary.update(model=model.name, kinds=choice, chosen=_stats(chosen))
    return model, summary
