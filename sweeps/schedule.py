"""Which trial a sweep runs next, so that one Tuner runs the whole sweep with no idle slots:

1. search trials of every ablation variant, round robin, each variant up to the same budget,
   configs from that variant's own searcher (Optuna TPE, its own study);
2. as soon as all of a variant's search trials have finished, its best config is re-run once
   per seed (phase ``final``), while other variants may still be searching. A multi-objective
   (``pareto``) variant re-runs its front instead: the non-dominated complete trials, at most
   ``front_size`` spread along it (:func:`select_front`), each over every seed, each final
   carrying its ``front_member`` index.

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
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

from sweeps.trialspec import EPOCH, OBJECTIVE, PARETO_KEYS, SEARCH, TrialSpec, ended_early, is_finite, pair_name

from sweeps.spaces import PARETO

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
    # multi-objective (pareto): the result keys told to the searcher as values (empty: one objective)
    value_keys: tuple[str, ...] = ()
    front_size: int = 1  # pareto: at most this many front members are re-run
    complete: list = field(default_factory=list)  # pareto: (values, spec) of every complete search trial
    final_total: int | None = None  # finals to run, fixed when the search is done

    @property
    def search_done(self) -> bool:
        return self.finished >= self.budget

    @property
    def planned_finals(self) -> int:
        """The most finals this variant can run: seeds x (front_size for pareto, else 1)."""
        return self.seeds * (self.front_size if self.value_keys else 1)

    def finalists(self) -> list[TrialSpec]:
        """The configs re-run over the seeds: the best complete trial, or for pareto the front."""
        if self.value_keys:
            return select_front(self.complete, self.front_size)
        return [] if self.best_spec is None else [self.best_spec]


@dataclass
class SweepSchedule:
    """See the module docstring. ``metric`` is maximised."""

    variants: list[VariantSearch]
    metric: str
    trials: dict[str, TrialSpec] = field(default_factory=dict)  # trial_id -> spec of every trial handed out

    @property
    def total_trials(self) -> int:
        return sum(v.budget + v.planned_finals for v in self.variants)

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
            if v.search_done and v.final_total is None:
                v.final_total = len(v.finalists()) * v.seeds
                if not v.final_total:
                    log.error("variant %s: no search trial completed with a finite %s; no seed re-runs", v.variant, self.metric)
            if v.search_done and v.finals < v.final_total:
                member, seed = divmod(v.finals, v.seeds)
                v.finals += 1
                return v.finalists()[member].rerun(seed=seed, front_member=member if v.value_keys else None)
        if all(v.suggested >= v.budget and v.final_total is not None and v.finals >= v.final_total
               for v in self.variants):
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
        values = tuple(result.get(key) for key in v.value_keys)
        if error or not is_finite(score) or not all(is_finite(value) for value in values):
            state = "failed"
            v.failed += 1
        elif ended_early(spec, result):
            state = "pruned"
            v.stopped_early += 1
        else:
            state = "complete"
        _record_figures(v.searcher, trial_id, result)
        told = float(score) if is_finite(score) else None
        if v.value_keys:
            told = tuple(float(value) for value in values) if state != "failed" else None
        v.searcher.on_trial_complete(trial_id, told, state, step=int(result[EPOCH]) if EPOCH in result else None)
        v.finished += 1
        if state == "complete" and v.value_keys:
            v.complete.append((told, spec))
        if state == "complete" and score > v.best_score:
            v.best_score, v.best_spec = float(score), spec
        if v.search_done:
            log.info("variant %s: search done (best %s %.4f; %d stopped early, %d failed); re-running its best "
                     "config over %d seed(s)", spec.variant, self.metric, v.best_score, v.stopped_early, v.failed, v.seeds)


Member = TypeVar("Member")


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether values ``a`` Pareto-dominate ``b`` (all maximised): no worse in every one, better in one."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def select_front(trials: Sequence[tuple[Sequence[float], Member]], size: int) -> list[Member]:
    """The non-dominated ``(values, member)`` pairs of ``trials`` (complete trials only: the caller
    never passes a failed or stopped one), at most ``size`` of them spread along the front: sorted
    by their values (the first, reconstruction accuracy, leading), evenly spaced members with both
    ends always kept; the member whose worst value is highest (the variant's best by the scalar
    objective) is kept too when ``size`` >= 3 (in place of the nearest inner pick) or is 1."""
    front = sorted((t for t in trials if not any(dominates(o[0], t[0]) for o in trials)), key=lambda t: tuple(t[0]))
    if len(front) <= size:
        return [member for _, member in front]
    best = max(range(len(front)), key=lambda i: min(front[i][0]))
    if size == 1:
        return [front[best][1]]
    picks = [round(i * (len(front) - 1) / (size - 1)) for i in range(size)]
    if size >= 3 and best not in picks:
        inner = min(range(1, size - 1), key=lambda k: abs(picks[k] - best))
        picks[inner] = best
        picks.sort()
    return [front[i][1] for i in picks]


def _record_figures(searcher: Any, trial_id: str, result: dict[str, Any]) -> None:
    """Hand a searcher that keeps per-trial figures (``record_figures``, e.g. the adaptive probe as
    Optuna user attributes) the trial's result; other searchers need only the objective."""
    record = getattr(searcher, "record_figures", None)
    if record is not None:
        record(trial_id, result)


def build_schedule(plan: "Plan", make_searcher) -> SweepSchedule:
    """One VariantSearch per ablation variant of the plan's space: the same budget each, its own
    searcher from ``make_searcher(variant, search, first_point)``, the paper's point tried first;
    objective pareto: each told the :data:`PARETO_KEYS` values, its front re-run."""
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
        variants.append(VariantSearch(variant, searcher, constants, budget=plan.num_samples, seeds=plan.seeds,
                                      value_keys=PARETO_KEYS if s.objective == PARETO else (),
                                      front_size=s.front_size))
    return SweepSchedule(variants, metric=OBJECTIVE)
