"""Turn trial outcomes into ``summary.json``: best config per variant, test figures over seeds.

Pure data in, JSON-friendly dict out; no Ray, Optuna or MLflow here.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

from sweeps._ray import TrialOutcome
from sweeps.trial import OBJECTIVE, split_config

SUMMARY_FILE = "summary.json"
FORMAT = "addd-sweep-summary/1"


def best_trial(outcomes: Sequence[TrialOutcome]) -> TrialOutcome:
    """The trial with the highest last-reported objective (ASHA-stopped trials included)."""
    scored = [o for o in outcomes if _finite(o.metrics.get(OBJECTIVE))]
    if not scored:
        raise RuntimeError("no trial reported a finite objective; see the trials' errors in the Ray logs")
    return max(scored, key=lambda o: o.metrics[OBJECTIVE])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _stats(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if _finite(v)]
    return {
        "mean": statistics.fmean(finite) if finite else float("nan"),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "values": values,
    }


def test_figures(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The ``test/...`` metrics of a final trial, without the prefix."""
    return {k.removeprefix("test/"): v for k, v in metrics.items() if k.startswith("test/")}


def build_summary(
    *,
    header: Mapping[str, Any],
    search: Mapping[str, Sequence[TrialOutcome]],
    final: Sequence[TrialOutcome],
    best_artifact: str,
) -> dict[str, Any]:
    """``header`` (space, hashes, plan) + per variant: the search's best trial and config, and
    the test figures of its seed re-runs (mean, std, values). ``best`` is the final run with the
    highest validation objective; its checkpoint is stored as ``best_artifact``."""
    variants: dict[str, Any] = {}
    for variant, outcomes in search.items():
        best = best_trial(outcomes)
        runs = sorted(
            (o for o in final if split_config(o.config)[1] == variant),
            key=lambda o: split_config(o.config)[2].train.seed,
        )
        per_seed = [
            {
                "seed": split_config(o.config)[2].train.seed,
                "trial_id": o.trial_id,
                "val_objective": o.metrics.get(OBJECTIVE),
                "test": test_figures(o.metrics),
            }
            for o in runs
        ]
        names = sorted({k for run in per_seed for k in run["test"]})
        variants[variant] = {
            "search": {
                "trials": len(outcomes),
                "best_trial_id": best.trial_id,
                "best_val_objective": best.metrics[OBJECTIVE],
                "best_epochs": best.metrics.get("epoch"),
            },
            "best_config": {k: v for k, v in best.config.items() if k != "phase"},
            "seeds": per_seed,
            "test": {name: _stats([run["test"].get(name, float("nan")) for run in per_seed]) for name in names},
        }
    finalists = [o for o in final if _finite(o.metrics.get(OBJECTIVE))]
    best_run = max(finalists, key=lambda o: o.metrics[OBJECTIVE]) if finalists else None
    best = None
    if best_run is not None:
        _, variant, cfg = split_config(best_run.config)
        best = {
            "variant": variant,
            "seed": cfg.train.seed,
            "trial_id": best_run.trial_id,
            "val_objective": best_run.metrics[OBJECTIVE],
            "test": test_figures(best_run.metrics),
            "artifact": best_artifact,
        }
    return {"format": FORMAT, **header, "objective": "val worst-case unknown-attack accuracy", "variants": variants, "best": best}
