"""Which trial a sweep runs next, so that one Tuner runs the whole sweep with no idle slots:

1. search trials of every ablation variant, round robin, each variant up to the same budget,
   configs from that variant's own searcher (Optuna TPE, its own study);
2. as soon as all of a variant's search trials have finished, its best config is re-run once
   per seed (phase ``final``), while other variants may still be searching.

Plain Python (the searchers are duck-typed like :class:`sweeps._optuna.TpeSearcher`);
``sweeps._ray`` wraps it in a Ray Tune ``Searcher``. The whole object is pickled as the
searcher's state, so a resumed sweep continues where it stopped. A search trial that ends before
its last epoch (ASHA stopped it) is told to its searcher as pruned, with its per-epoch values as
intermediate values; only complete trials can become a variant's best.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeps.trialspec import EPOCH, OBJECTIVE, SEARCH, TrialSpec, ended_early, is_finite, pair_name

if TYPE_CHECKING:
    from sweeps.plan import Plan

log = logging.getLogger(__name__)

FINISHED = "FINISHED"


@dataclass
class VariantSearch:
    """One ablation variant's search: its searcher, fixed config values, budget and seeds."""

    variant: str
    searcher: Any  # suggest(trial_id) -> dict | None; on_trial_result(id, value, step); on_trial_complete(id, value, state)
    constants: dict[str, Any]  # flat config values this variant does not search (ablation applied)
    budget: int  # search trials
    seeds: int  # re-runs of the best config
    suggested: int = 0
    finished: int = 0
    finals: int = 0
    best_score: float = -math.inf
    best_spec: TrialSpec | None = None
    stopped_early: int = 0
    failed: int = 0

    @property
    def search_done(self) -> bool:
        return self.finished >= self.budget


@dataclass
class SweepSchedule:
    """See the module docstring. ``metric`` is maximised."""

    variants: list[VariantSearch]
    metric: str
    trials: dict[str, TrialSpec] = field(default_factory=dict)  # trial_id -> spec of every trial handed out

    @property
    def total_trials(self) -> int:
        return sum(v.budget + v.seeds for v in self.variants)

    def _variant(self, name: str) -> VariantSearch:
        return next(v for v in self.variants if v.variant == name)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next trial's config (as Ray carries it), None (nothing to start yet), or FINISHED."""
        spec = self._next(trial_id)
        if isinstance(spec, TrialSpec):
            self.trials[trial_id] = spec
            return spec.to_config()
        return spec

    def _next(self, trial_id: str) -> TrialSpec | str | None:
        searching = [v for v in self.variants if v.suggested < v.budget]
        if searching:
            v = min(searching, key=lambda v: v.suggested)  # round robin; ties keep the variants' order
            params = v.searcher.suggest(trial_id)
            if params is not None:
                v.suggested += 1
                return TrialSpec.search(v.variant, {**v.constants, **params})
        for v in self.variants:
            if v.search_done and v.finals < v.seeds:
                if v.best_spec is None:
                    log.error("variant %s: no search trial completed with a finite %s; no seed re-runs", v.variant, self.metric)
                    v.finals = v.seeds
                    continue
                v.finals += 1
                return v.best_spec.rerun(seed=v.finals - 1)
        if all(v.suggested >= v.budget and v.finals >= v.seeds for v in self.variants):
            return FINISHED
        return None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        spec = self.trials.get(trial_id)
        score = result.get(self.metric)
        if spec is not None and spec.phase == SEARCH and is_finite(score):
            searcher = self._variant(spec.variant).searcher
            _record_figures(searcher, trial_id, result)
            searcher.on_trial_result(trial_id, float(score), int(result.get(EPOCH, 0)))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        spec = self.trials.get(trial_id)
        if spec is None or spec.phase != SEARCH:
            return
        v = self._variant(spec.variant)
        result = result or {}
        score = result.get(self.metric)
        if error or not is_finite(score):
            state = "failed"
            v.failed += 1
        elif ended_early(spec, result):
            state = "pruned"
            v.stopped_early += 1
        else:
            state = "complete"
        _record_figures(v.searcher, trial_id, result)
        v.searcher.on_trial_complete(trial_id, float(score) if is_finite(score) else None, state,
                                     step=int(result[EPOCH]) if EPOCH in result else None)
        v.finished += 1
        if state == "complete" and score > v.best_score:
            v.best_score, v.best_spec = float(score), spec
        if v.search_done:
            log.info("variant %s: search done (best %s %.4f; %d stopped early, %d failed); re-running its best "
                     "config over %d seed(s)", spec.variant, self.metric, v.best_score, v.stopped_early, v.failed, v.seeds)


def _record_figures(searcher: Any, trial_id: str, result: dict[str, Any]) -> None:
    """Hand a searcher that keeps per-trial figures (``record_figures``, e.g. the adaptive probe as
    Optuna user attributes) the trial's result; other searchers need only the objective."""
    record = getattr(searcher, "record_figures", None)
    if record is not None:
        record(trial_id, result)


def build_schedule(plan: "Plan", make_searcher) -> SweepSchedule:
    """One VariantSearch per ablation variant of the plan's space: the same budget each, its own
    searcher from ``make_searcher(variant, search, first_point)``, the paper's point tried first."""
    from addd.config import ablation, to_flat_dict

    s = plan.space
    base = s.base_config().replace(**{"train.device": plan.device})
    variants = []
    for variant in s.variants:
        search = s.variant_search(variant)
        base_flat = to_flat_dict(base)
        paper_point = {k: v for k, v in base_flat.items() if k in search and not isinstance(v, list)}
        if "known_attacks" in search:
            paper_point["known_attacks"] = pair_name(base.known_attacks)
        constants = {k: v for k, v in to_flat_dict(ablation(base, variant)).items() if k not in search}
        searcher = make_searcher(variant, search, paper_point)
        variants.append(VariantSearch(variant, searcher, constants, budget=plan.num_samples, seeds=plan.seeds))
    return SweepSchedule(variants, metric=OBJECTIVE)
