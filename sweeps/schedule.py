"""Which trial a sweep runs next, so that one Tuner runs the whole sweep with no idle slots:

1. search trials of every ablation variant, round robin, each variant up to the same budget,
   configs from that variant's own searcher (Optuna TPE, its own study);
2. as soon as all of a variant's search trials have finished, its best config is re-run once
   per seed (phase ``final``), while other variants may still be searching.

Plain Python (the searchers are duck-typed: ``suggest``, ``on_trial_result``,
``on_trial_complete``); ``sweeps._ray`` wraps it in a Ray Tune ``Searcher``. The whole object
is pickled as the searcher's state, so a resumed sweep continues where it stopped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

FINISHED = "FINISHED"


@dataclass
class VariantSearch:
    """One ablation variant's search: its searcher, fixed config values, budget and seeds."""

    variant: str
    searcher: Any  # suggest(trial_id) -> dict | None; on_trial_result; on_trial_complete
    constants: dict[str, Any]  # flat config values this variant does not search (ablation applied)
    budget: int  # search trials
    seeds: int  # re-runs of the best config
    suggested: int = 0
    finished: int = 0
    finals: int = 0
    best_score: float = -math.inf
    best_config: dict[str, Any] | None = None

    @property
    def search_done(self) -> bool:
        return self.finished >= self.budget


@dataclass
class SweepSchedule:
    """See the module docstring. ``metric`` is maximised."""

    variants: list[VariantSearch]
    metric: str
    trials: dict[str, tuple[str, str]] = field(default_factory=dict)  # trial_id -> (phase, variant)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial_id -> config of a search trial

    @property
    def total_trials(self) -> int:
        return sum(v.budget + v.seeds for v in self.variants)

    def _variant(self, name: str) -> VariantSearch:
        return next(v for v in self.variants if v.variant == name)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next trial's full config, None (nothing to start yet), or FINISHED."""
        searching = [v for v in self.variants if v.suggested < v.budget]
        if searching:
            v = min(searching, key=lambda v: v.suggested)  # round robin; ties keep the variants' order
            params = v.searcher.suggest(trial_id)
            if params is not None:
                v.suggested += 1
                self.trials[trial_id] = ("search", v.variant)
                self.configs[trial_id] = {"phase": "search", "variant": v.variant, **v.constants, **params}
                return self.configs[trial_id]
        for v in self.variants:
            if v.search_done and v.finals < v.seeds:
                if v.best_config is None:
                    log.error("variant %s: no search trial reported a finite %s; no seed re-runs", v.variant, self.metric)
                    v.finals = v.seeds
                    continue
                seed = v.finals
                v.finals += 1
                self.trials[trial_id] = ("final", v.variant)
                return {**v.best_config, "phase": "final", "variant": v.variant, "train.seed": seed}
        if all(v.suggested >= v.budget and v.finals >= v.seeds for v in self.variants):
            return FINISHED
        return None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        phase, variant = self.trials.get(trial_id, ("", ""))
        if phase == "search":
            self._variant(variant).searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        phase, variant = self.trials.get(trial_id, ("", ""))
        if phase != "search":
            return
        v = self._variant(variant)
        v.searcher.on_trial_complete(trial_id, result=result, error=error)
        v.finished += 1
        score = (result or {}).get(self.metric)
        if not error and isinstance(score, (int, float)) and math.isfinite(score) and score > v.best_score:
            v.best_score = score
            v.best_config = {k: val for k, val in self.configs[trial_id].items() if k not in ("phase", "variant")}
        if v.search_done:
            log.info("variant %s: search done (best %s %.4f); re-running its best config over %d seed(s)",
                     variant, self.metric, v.best_score, v.seeds)
