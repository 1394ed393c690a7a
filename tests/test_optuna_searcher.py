"""sweeps._optuna.TpeSearcher: ASHA-stopped trials are PRUNED in the stored study, with their
per-epoch values as intermediate values; complete trials are COMPLETE; a resumed searcher (after
pickling, as Ray saves it) continues the same study without re-asking (fast, SQLite in tmp)."""

from __future__ import annotations

import pickle

import optuna
import pytest

from sweeps._optuna import TpeSearcher
from sweeps.spaces import Choice, LogUniform
from sweeps.schedule import SweepSchedule, VariantSearch

SEARCH = {"loss.theta_mse": LogUniform(1.0, 100.0), "known_attacks": Choice(("PGDu+PGDt", "DDNu+DDNt"))}


def _searcher(tmp_path, name="s"):
    return TpeSearcher(url=f"sqlite:///{tmp_path / 'optuna.db'}", study_name=name, search=SEARCH, seed=0,
                       startup_trials=2, first_point={"loss.theta_mse": 10.0, "known_attacks": "PGDu+PGDt"})


def test_an_asha_stopped_trial_is_pruned_with_its_intermediate_values(tmp_path):
    schedule = SweepSchedule([VariantSearch("full", _searcher(tmp_path), {"train.epochs": 3}, budget=2, seeds=0)],
                             metric="objective")
    first, second = schedule.suggest("a"), schedule.suggest("b")
    assert first["loss.theta_mse"] == 10.0 and first["known_attacks"] == "PGDu+PGDt"  # the paper's point first
    assert 1.0 <= second["loss.theta_mse"] <= 100.0 and second["phase"] == "search"
    for epoch, value in ((1, 0.2), (2, 0.3)):
        schedule.on_trial_result("a", {"objective": value, "epoch": epoch})
    schedule.on_trial_complete("a", {"objective": 0.3, "epoch": 2})  # stopped by ASHA after 2 of 3 epochs
    for epoch, value in ((1, 0.1), (2, 0.2), (3, 0.25)):
        schedule.on_trial_result("b", {"objective": value, "epoch": epoch})
    schedule.on_trial_complete("b", {"objective": 0.25, "epoch": 3})

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = {t.number: t.state for t in study.trials}
    assert states == {0: optuna.trial.TrialState.PRUNED, 1: optuna.trial.TrialState.COMPLETE}
    assert study.trials[0].intermediate_values == {1: 0.2, 2: 0.3}
    # Optuna records a pruned trial's last intermediate value; TPE and the plots treat it as pruned
    assert study.trials[0].value == pytest.approx(0.3)
    assert study.trials[1].value == pytest.approx(0.25) and study.best_trial.number == 1
    assert schedule.variants[0].best_score == pytest.approx(0.25)  # the pruned 0.3 never wins


def test_a_restored_searcher_continues_the_same_study(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_complete("a", 0.5, "complete")
    searcher.suggest("b")
    restored = pickle.loads(pickle.dumps(searcher))  # as Ray saves and restores the searcher state
    restored.on_trial_result("b", 0.4, 1)
    restored.on_trial_complete("b", None, "failed")
    restored.suggest("c")
    again = _searcher(tmp_path)  # a resumed sweep opens the study again: no second paper point
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "RUNNING"]
    assert study.trials[1].intermediate_values == {1: 0.4}
    assert again is not None and len(study.trials) == 3


def test_a_complete_trial_records_its_last_epoch_as_an_intermediate_value(tmp_path):
    """Ray hands a trial's last result to on_trial_complete only: the study must still hold every epoch."""
    schedule = SweepSchedule([VariantSearch("full", _searcher(tmp_path), {"train.epochs": 2}, budget=2, seeds=0)],
                             metric="objective")
    schedule.suggest("a"), schedule.suggest("b")
    schedule.on_trial_result("a", {"objective": 0.2, "epoch": 1})
    schedule.on_trial_complete("a", {"objective": 0.35, "epoch": 2})  # complete: its epoch-2 result came only here
    schedule.on_trial_result("b", {"objective": 0.1, "epoch": 1})
    schedule.on_trial_result("b", {"objective": 0.15, "epoch": 2})  # told twice: recorded once, no warning
    schedule.on_trial_complete("b", {"objective": 0.15, "epoch": 2})
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.trials[0].intermediate_values == {1: 0.2, 2: 0.35}
    assert study.trials[0].value == pytest.approx(0.35)
    assert study.trials[1].intermediate_values == {1: 0.1, 2: 0.15}


def test_each_trial_keeps_its_probe_and_oblivious_objective_as_user_attributes(tmp_path):
    """Whatever the objective, the study holds each trial's last val/worst.unknown, adaptive probe
    and their worst (pruned trials too), spelled by addd.figures."""
    from addd import figures

    keys = {name: figures.FIGURES[name].trial_key("val") for name in
            (figures.WORST_UNKNOWN, figures.PROBE, figures.WORST_WITH_PROBE)}
    schedule = SweepSchedule([VariantSearch("full", _searcher(tmp_path), {"train.epochs": 2}, budget=2, seeds=0)],
                             metric="objective")
    schedule.suggest("a"), schedule.suggest("b")

    def result(epoch, oblivious, probe):
        return {"objective": min(oblivious, probe), "epoch": epoch, keys[figures.WORST_UNKNOWN]: oblivious,
                keys[figures.PROBE]: probe, keys[figures.WORST_WITH_PROBE]: min(oblivious, probe), "loss/x": 1.0}

    schedule.on_trial_result("a", result(1, 0.5, 0.1))
    schedule.on_trial_complete("a", result(2, 0.6, 0.05))  # its last epoch came only here
    schedule.on_trial_complete("b", result(1, 0.4, 0.2))  # stopped early: pruned, figures kept
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.trials[0].user_attrs == {"val/worst.unknown": 0.6, "val/probe.pgd_worst": 0.05,
                                          "val/worst.unknown_with_probe": 0.05}
    assert study.trials[0].value == pytest.approx(0.05)
    assert study.trials[1].state.name == "PRUNED" and study.trials[1].user_attrs["val/probe.pgd_worst"] == 0.2
