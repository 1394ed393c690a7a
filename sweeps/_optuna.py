"""The one place that talks to Optuna: the seeded TPE searcher (ask-and-tell), its RDB study,
and the study plots for the report. Open the study with
``optuna-dashboard sqlite:///<run folder>/optuna.db``."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from addd import figures
from sweeps.spaces import Choice, Domain, LogUniform, Uniform

# a trial's figures kept as the Optuna trial's user attributes (dashboard: "User Attributes"), whatever
# the objective: the oblivious worst unknown, the adaptive probe and the worst of the two, on val
USER_ATTRIBUTES: tuple[str, ...] = (figures.FIGURES[figures.WORST_UNKNOWN].trial_key("val"),
                                    figures.FIGURES[figures.PROBE].trial_key(),
                                    figures.FIGURES[figures.WORST_WITH_PROBE].trial_key())

log = logging.getLogger(__name__)


def _distribution(domain: Domain):
    import optuna.distributions as d

    if isinstance(domain, LogUniform):
        return d.FloatDistribution(domain.low, domain.high, log=True)
    if isinstance(domain, Uniform):
        return d.FloatDistribution(domain.low, domain.high)
    if isinstance(domain, Choice):
        return d.CategoricalDistribution(list(domain.options))
    raise TypeError(f"no Optuna distribution for {domain!r}")


def _inside(domain: Domain, value) -> bool:
    if isinstance(domain, Choice):
        return value in domain.options
    return isinstance(value, (int, float)) and domain.low <= value <= domain.high


def _centre(domain: Domain):
    if isinstance(domain, Choice):
        return domain.options[0]
    if isinstance(domain, LogUniform):
        return (domain.low * domain.high) ** 0.5
    return (domain.low + domain.high) / 2


class TpeSearcher:
    """One variant's search: Optuna's seeded TPE through the ask-and-tell API, the study in an RDB.

    Duck-typed for :class:`sweeps.schedule.SweepSchedule`: ``suggest(trial_id) -> params``,
    ``on_trial_result(trial_id, objective, step)`` (an intermediate value per epoch) and
    ``on_trial_complete(trial_id, objective, state, step)`` with state ``"complete"``, ``"pruned"``
    (stopped early by ASHA: its partial-training value is an intermediate value, not a result)
    or ``"failed"``. Pickled with the schedule (Ray's searcher state); the study is reopened from
    its storage URL after unpickling, so a resumed sweep continues the same study.

    ``objectives`` > 1: a multi-objective study (each value maximised; TPE samples the front).
    Its trials are then told a sequence of ``objectives`` values, and no intermediate values are
    reported (Optuna refuses ``Trial.report`` in a multi-objective study; nothing prunes them).
    """

    def __init__(self, *, url: str, study_name: str, search: Mapping[str, Domain], seed: int, startup_trials: int,
                 first_point: Mapping[str, Any] | None = None, objectives: int = 1):
        self.url, self.study_name, self.seed, self.startup_trials = url, study_name, seed, startup_trials
        self.objectives = objectives
        self.search = dict(search)
        self._trials: dict[str, int] = {}  # Ray trial id -> Optuna storage trial id
        self._last_step: dict[str, int] = {}  # Ray trial id -> the last epoch reported as an intermediate value
        study = self._open()
        if first_point is not None and not study.trials:  # a new study: try the paper's point first
            given = {k: v for k, v in first_point.items() if k in search and _inside(search[k], v)}
            study.enqueue_trial({k: given.get(k, _centre(dom)) for k, dom in search.items()})

    def _open(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if getattr(self, "_study", None) is None:
            sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.startup_trials)
            self._study = optuna.create_study(study_name=self.study_name, storage=self.url, sampler=sampler,
                                              directions=["maximize"] * self.objectives, load_if_exists=True)
            self._live: dict[str, Any] = {}
        return self._study

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_study", "_live")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_last_step", {})  # a searcher pickled before it kept steps
        self.__dict__.setdefault("objectives", 1)  # ... or before it could be multi-objective
        self._study = None

    def _trial(self, trial_id: str):
        import optuna

        study = self._open()
        if trial_id not in self._live:
            self._live[trial_id] = optuna.trial.Trial(study, self._trials[trial_id])
        return self._live[trial_id]

    def suggest(self, trial_id: str) -> dict[str, Any]:
        study = self._open()
        trial = study.ask({key: _distribution(dom) for key, dom in self.search.items()})
        self._trials[trial_id], self._live[trial_id] = trial._trial_id, trial  # noqa: SLF001 (storage id)
        return dict(trial.params)

    def on_trial_result(self, trial_id: str, objective: float, step: int) -> None:
        if trial_id in self._trials and self.objectives == 1 and math.isfinite(objective):
            if step > self._last_step.get(trial_id, 0):
                self._trial(trial_id).report(objective, step)
                self._last_step[trial_id] = step

    def record_figures(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Keep the :data:`USER_ATTRIBUTES` figures of a trial's latest result as its user attributes
        (the last epoch's values win); non-finite or missing ones are left out."""
        if trial_id not in self._trials:
            return
        trial = self._trial(trial_id)
        for key in USER_ATTRIBUTES:
            value = result.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                trial.set_user_attr(key, float(value))

    def on_trial_complete(self, trial_id: str, objective: float | Sequence[float] | None, state: str,
                          step: int | None = None) -> None:
        """``objective``: the value, or in a multi-objective study the ``objectives`` values.
        ``step``: the epoch of the last result. Ray hands a trial's last result to this call
        only (not to ``on_trial_result``), so it is recorded here as the last intermediate value:
        the dashboard's intermediate plot then ends at the trial's last epoch (single objective only)."""
        from optuna.trial import TrialState

        if trial_id not in self._trials:
            return
        study = self._open()
        trial = self._trial(trial_id)  # user attributes must be set before tell: a finished trial is read-only
        values = _values(objective, self.objectives)
        if step is not None and values is not None and self.objectives == 1 and state in ("complete", "pruned"):
            self.on_trial_result(trial_id, values[0], step)
        self._last_step.pop(trial_id, None)
        if state == "complete" and values is not None:
            study.tell(trial, values[0] if self.objectives == 1 else list(values), skip_if_finished=True)
        else:
            study.tell(trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL, skip_if_finished=True)
        self._live.pop(trial_id, None)


def _values(objective: float | Sequence[float] | None, count: int) -> tuple[float, ...] | None:
    """``objective`` as ``count`` finite floats, or None (missing, non-finite, or the wrong count)."""
    if objective is None:
        return None
    values = (objective,) if isinstance(objective, (int, float)) else tuple(objective)
    if len(values) != count or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    return tuple(float(v) for v in values)


def save_study_plots(url: str, study_name: str, out_dir: Path, variant: str) -> list[Path]:
    """Optimisation history and parameter importances (a multi-objective study: its Pareto front)
    as PNGs, titled by variant. All use the
    COMPLETE trials only: a trial ASHA stopped early is PRUNED and teaches the searcher nothing
    final (importances need >= 2 complete trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=url)
    states = [t.state.name for t in study.trials]
    counts = f"{states.count('COMPLETE')} complete; {states.count('PRUNED')} stopped early, not shown"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    plots = (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances))
    if len(study.directions) > 1:  # a pareto search: its front (complete trials); history needs one objective
        origin = [0.0] * len(study.directions)  # every objective is an accuracy in [0, 1], maximised
        plots = (("pareto_front", ovm.plot_pareto_front),
                 ("hypervolume", lambda st: ovm.plot_hypervolume_history(st, reference_point=origin)))
    for label, plot in plots:
        path = out_dir / f"optuna_{label}_{study_name}.png"
        try:
            with warnings.catch_warnings():  # "experimental" and few-trials notices: not the user's concern
                warnings.simplefilter("ignore")
                ax = plot(study)
            words = {"history": "optimisation history", "importances": "parameter importances",
                     "hypervolume": "hypervolume history (reference point 0)"}.get(label, "Pareto front")
            ax.set_title(f"{variant}: {words} ({counts})")
            ax.figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(path)
        except (ValueError, RuntimeError) as exc:  # e.g. too few finished trials for importances
            log.warning("no %s plot for study %s: %s", label, study_name, exc)
    return written


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The hypervolume dominated by ``points`` (each coordinate maximised) above ``reference``:
    the volume of the union of the boxes [reference, point]. Optuna's exact WFG computation, which
    minimises: both are negated. A point not above the reference in every coordinate adds nothing."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume  # no public name in Optuna 5; churn stays here

    ref = np.asarray(reference, float)
    kept = [p for p in np.asarray(points, float).reshape(-1, len(ref)) if np.all(p > ref)]
    if not kept:
        return 0.0
    return float(compute_hypervolume(-np.asarray(kept), -ref))
