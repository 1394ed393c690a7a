"""Objective ``pareto``: the front selection (dominance, spread, both ends, only complete trials),
the multi-objective Optuna searcher (three maximised directions, values told, no intermediate
values, resumed after pickling), the schedule re-running each front member over the seeds, and
the space's checks (fast: SQLite in tmp, no training)."""

from __future__ import annotations

import pickle

import optuna
import pytest

from sweeps._optuna import TpeSearcher
from sweeps.schedule import FINISHED, SweepSchedule, VariantSearch, dominates, select_front
from sweeps.spaces import Choice, LogUniform, SpaceError, get_space
from sweeps.trial import search_objective
from sweeps.trialspec import OBJECTIVE, PARETO_KEYS, TrialSpec

SEARCH = {"loss.theta_mse": LogUniform(1.0, 100.0), "known_attacks": Choice(("PGDu+PGDt", "DDNu+DDNt"))}
RECON, OBLIVIOUS, PROBE = PARETO_KEYS


def _searcher(tmp_path, name="p"):
    return TpeSearcher(url=f"sqlite:///{tmp_path / 'optuna.db'}", study_name=name, search=SEARCH, seed=0,
                       startup_trials=2, first_point={"loss.theta_mse": 10.0, "known_attacks": "PGDu+PGDt"},
                       objectives=3)


def _result(epoch, recon, oblivious, probe):
    return {"epoch": epoch, RECON: recon, OBLIVIOUS: oblivious, PROBE: probe, OBJECTIVE: min(recon, oblivious, probe)}


# ----------------------------------------------------------------------------- front selection
def test_dominance_needs_no_worse_everywhere_and_better_somewhere():
    assert dominates((0.9, 0.5, 0.1), (0.8, 0.5, 0.1))
    assert not dominates((0.9, 0.5, 0.1), (0.9, 0.5, 0.1))  # equal: neither dominates
    assert not dominates((0.9, 0.4, 0.1), (0.8, 0.5, 0.1))  # a trade-off


def test_the_front_drops_dominated_trials_and_keeps_ties():
    trials = [((0.9, 0.5, 0.1), "a"), ((0.8, 0.4, 0.05), "dominated"), ((0.7, 0.6, 0.2), "b"), ((0.9, 0.5, 0.1), "tie")]
    assert sorted(select_front(trials, 10)) == ["a", "b", "tie"]


def test_a_front_larger_than_front_size_is_spread_with_both_ends_kept():
    # five trade-offs along reconstruction (first value up, the others down): all on the front
    trials = [((0.5 + 0.1 * i, 0.9 - 0.1 * i, 0.6 - 0.1 * abs(i - 2)), f"m{i}") for i in (3, 0, 4, 1, 2)]
    trials.append(((0.1, 0.1, 0.1), "dominated"))
    assert select_front(trials, 3) == ["m0", "m2", "m4"]  # sorted by reconstruction: both ends and the middle
    assert select_front(trials, 2) == ["m0", "m4"]
    assert select_front(trials, 1) == ["m2"]  # one member: the highest worst value (min 0.6)


def test_the_spread_front_keeps_the_scalar_best_member():
    # seven members along reconstruction; the highest min (the variant's best) is m1, between the picks 0, 3, 6
    trials = [((0.3 + 0.1 * i, 0.95 - 0.1 * i, 0.9 if i == 1 else 0.1), f"m{i}") for i in range(7)]
    assert select_front(trials, 3) == ["m0", "m1", "m6"]  # both ends and the best, which replaced m3
    assert select_front(trials, 4) == ["m0", "m1", "m4", "m6"]  # picks 0, 2, 4, 6: m1 replaces m2


def test_failed_and_stopped_trials_never_enter_the_front(tmp_path):
    v = VariantSearch("full", _searcher(tmp_path), {"train.epochs": 3}, budget=3, seeds=1, value_keys=PARETO_KEYS,
                      front_size=3)
    schedule = SweepSchedule([v], metric=OBJECTIVE)
    for trial in "abc":
        schedule.suggest(trial)
    schedule.on_trial_complete("a", _result(3, 0.5, 0.5, 0.1))
    schedule.on_trial_complete("b", _result(2, 0.99, 0.99, 0.99))  # stopped after 2 of 3 epochs: dominates a
    schedule.on_trial_complete("c", {**_result(3, 0.99, 0.99, float("nan"))})  # no probe value: failed
    assert (v.stopped_early, v.failed) == (1, 1)
    final = schedule.suggest("f0")
    assert final["phase"] == "final" and final["front_member"] == 0
    assert TrialSpec.parse(final).flat == {**schedule.trials["a"].flat, "train.seed": 0}
    assert schedule.suggest("f1") == FINISHED  # one member x one seed


# ----------------------------------------------------------------------------- the searcher and the schedule
def test_a_pareto_schedule_tells_three_values_and_reruns_each_front_member_over_the_seeds(tmp_path):
    v = VariantSearch("full", _searcher(tmp_path), {"train.epochs": 2}, budget=3, seeds=2, value_keys=PARETO_KEYS,
                      front_size=3)
    schedule = SweepSchedule([v], metric=OBJECTIVE)
    assert schedule.total_trials == 3 + 2 * 3
    for trial in "abc":
        schedule.suggest(trial)
    schedule.on_trial_result("a", _result(1, 0.9, 0.3, 0.0))  # no intermediate value in a 3-objective study
    schedule.on_trial_complete("a", _result(2, 0.95, 0.4, 0.0))
    schedule.on_trial_complete("b", _result(2, 0.80, 0.5, 0.1))
    schedule.on_trial_complete("c", _result(2, 0.70, 0.3, 0.0))  # dominated by b
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.directions) == 3 and all(d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions)
    assert [t.values for t in study.trials] == [[0.95, 0.4, 0.0], [0.80, 0.5, 0.1], [0.70, 0.3, 0.0]]
    assert all(t.intermediate_values == {} for t in study.trials)
    assert sorted(t.number for t in study.best_trials) == [0, 1]  # Optuna's own front agrees
    finals = [TrialSpec.parse(schedule.suggest(f"f{i}")) for i in range(4)]
    assert schedule.suggest("f4") == FINISHED  # two members x two seeds, not front_size x seeds
    assert [(f.front_member, f.seed) for f in finals] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert finals[0].flat["loss.theta_mse"] == schedule.trials["b"].flat["loss.theta_mse"]  # sorted by reconstruction
    assert finals[2].flat["loss.theta_mse"] == schedule.trials["a"].flat["loss.theta_mse"]
    assert v.best_spec == schedule.trials["b"]  # the highest scalar min (0.1) stays the variant's best


def test_a_restored_multi_objective_searcher_continues_the_same_study(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_complete("a", (0.9, 0.5, 0.1), "complete", step=2)
    searcher.suggest("b")
    restored = pickle.loads(pickle.dumps(searcher))  # as Ray saves and restores the searcher state
    restored.on_trial_result("b", 0.2, 1)  # ignored: no report in a multi-objective study
    restored.on_trial_complete("b", (0.8, 0.6, 0.2), "complete", step=2)
    restored.suggest("c")
    restored.on_trial_complete("c", None, "failed")
    _searcher(tmp_path)  # reopened: no second paper point
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert study.trials[1].values == [0.8, 0.6, 0.2] and len(study.directions) == 3


# ----------------------------------------------------------------------------- the trial's scalar and the space
def test_the_pareto_scalar_is_the_min_of_the_three_values():
    out = search_objective({RECON: 0.9, OBLIVIOUS: 0.5, PROBE: 0.2}, "pareto")
    assert out[OBJECTIVE] == pytest.approx(0.2)
    assert search_objective({RECON: 0.1, OBLIVIOUS: 0.5, PROBE: 0.2}, "pareto")[OBJECTIVE] == pytest.approx(0.1)


def test_the_space_describes_pareto_and_checks_the_front_size():
    from dataclasses import replace

    space = replace(get_space("digits_ablation", smoke=True), objective="pareto").validate()
    described = space.describe_objective()
    assert described["name"] == "pareto" and described["front_size"] == 3 and "front" in described["description"]
    with pytest.raises(SpaceError, match="front_size must be a whole number >= 1"):
        replace(space, front_size=0).validate()
    with pytest.raises(SpaceError, match="objective pareto needs the adaptive probe"):
        replace(space, probe_n=0).validate()


# ----------------------------------------------------------------------------- summary.json's front
def _pareto_summary():
    """A pareto sweep's summary from hand-made outcomes: members b (seeds f0, f1) and a (f2, f3), one failed trial."""
    from sweeps.summary import build_summary

    search, finals = _pareto_outcomes()
    return build_summary(header={"space": "toy", "smoke": False}, search={"full": search}, final=finals,
                         best_artifact="x")


def _pareto_outcomes():
    from sweeps.trialspec import TrialOutcome

    def search_trial(trial_id, lambda_cls, values):
        spec = TrialSpec.search("full", {"loss.lambda_cls": lambda_cls, "train.epochs": 2, "train.seed": 0})
        return TrialOutcome(trial_id, spec.to_config(), _result(2, *values), checkpoint=None, error=None)

    def final_trial(trial_id, source, member, seed, pgd):
        spec = source.spec.rerun(seed=seed, front_member=member)
        metrics = {OBJECTIVE: source.metrics[OBJECTIVE], "epoch": 2, "test/acc.reconstruction": 0.9 - 0.1 * member,
                   "adaptive/pgd_worst": pgd, "adaptive/aa_linf": pgd / 2 + 0.1 * member,
                   "test/acc.defended.CWu": 0.5}
        return TrialOutcome(trial_id, spec.to_config(), metrics, checkpoint=None, error=None)

    a, b = search_trial("a", 1e-2, (0.95, 0.4, 0.0)), search_trial("b", 1e-4, (0.80, 0.5, 0.1))
    failed = TrialOutcome("c", TrialSpec.search("full", {"train.epochs": 2}).to_config(), {}, None, "boom")
    finals = [final_trial("f0", b, 0, 0, 0.2), final_trial("f1", b, 0, 1, 0.4),
              final_trial("f2", a, 1, 0, 0.0), final_trial("f3", a, 1, 1, 0.1)]
    return [a, b, failed], finals


def test_the_summary_gives_each_front_member_its_config_search_values_and_seed_figures():
    summary = _pareto_summary()
    full = summary["variants"]["full"]
    front = full["front"]
    assert [m["front_member"] for m in front] == [0, 1]
    assert [m["ran_config"]["loss.lambda_cls"] for m in front] == [1e-4, 1e-2]
    assert [m["search_trial_id"] for m in front] == ["b", "a"]
    assert front[0]["search_values"] == {RECON: 0.80, OBLIVIOUS: 0.5, PROBE: 0.1, "objective": 0.1}
    assert [s["trial_id"] for s in front[1]["seeds"]] == ["f2", "f3"]
    assert front[0]["adaptive"]["pgd_worst"]["mean"] == pytest.approx(0.3)
    assert front[1]["test"]["acc.reconstruction"]["mean"] == pytest.approx(0.8)
    # the variant's own entry stays: its best (the highest scalar, b) and that member's seeds only
    assert full["search"]["best_trial_id"] == "b" and full["ran_config"]["loss.lambda_cls"] == 1e-4
    assert [s["trial_id"] for s in full["seeds"]] == ["f0", "f1"]
    assert summary["best"]["front_member"] == 0


def test_the_report_tables_the_front_and_compares_its_best_aa_linf_with_adv_training(tmp_path):
    from ablations.report import _pareto_words, build_report, pareto_table

    summary = _pareto_summary()
    table = pareto_table(summary)
    assert list(table["member"]) == [0, 1] and "lambda_cls=0.0001" in table["config"][0]
    assert table["AutoAttack Linf (adaptive)"][1].startswith("0.125 ± 0.035")  # member 1: aa_linf 0.1 and 0.15
    assert "no adv_training baseline in this run" in _pareto_words(summary)
    def stats(mean):
        return {"mean": mean, "std": 0.01, "n": 3, "ci95": [mean - 0.02, mean + 0.02], "values": [mean] * 3}

    summary["baselines"] = {"adv_training": {"adaptive": {"aa_linf": stats(0.3)},
                                             "test": {"acc.reconstruction": stats(0.95)}}}
    words = _pareto_words(summary)
    assert "(full member 0)" in words and "0.150 ± 0.071" in words and "not higher by -0.150" in words
    build_report(summary, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Pareto front" in report and "not higher by -0.150" in report
    assert (tmp_path / "pareto.csv").exists()


def test_each_front_member_keeps_its_own_final_files(tmp_path):
    """Two members share a seed: the variant's folder holds its best member's files, the other its own."""
    from addd.runfolder import CURVE_FILE, RunFolder
    from sweeps.driver import _collect_final_files
    from sweeps.summary import build_summary
    from sweeps.trialspec import LocalCheckpoint

    search, finals = _pareto_outcomes()
    for o in finals:
        (tmp_path / o.trial_id).mkdir()
        (tmp_path / o.trial_id / CURVE_FILE).write_text(o.trial_id)
        o.checkpoint = LocalCheckpoint(tmp_path / o.trial_id)
    summary = build_summary(header={}, search={"full": search}, final=finals, best_artifact="x")
    folder = RunFolder(tmp_path / "run")
    _collect_final_files(finals, folder, summary)
    assert (folder.final("full", 0) / CURVE_FILE).read_text() == "f0"  # member 0 (b) is the variant's best
    assert (folder.final("full", 1) / CURVE_FILE).read_text() == "f1"
    assert (folder.final("full-front1", 0) / CURVE_FILE).read_text() == "f2"
    assert (folder.final("full-front1", 1) / CURVE_FILE).read_text() == "f3"


def test_a_pareto_job_stops_no_trial_early(tmp_path):
    """objective pareto: FIFO (every trial runs to its end); otherwise the per-variant ASHA."""
    from ray.tune.schedulers import FIFOScheduler

    from sweeps._ray import TuneJob, _GroupedASHA, _scheduler
    from sweeps.trialspec import search_group

    schedule = SweepSchedule([VariantSearch("full", None, {}, budget=1, seeds=1)], metric=OBJECTIVE)
    job = dict(name="sweep", storage_path=str(tmp_path), make_schedule=lambda: schedule, group_of=search_group,
               max_concurrent=1, cpus_per_trial=1, gpus_per_trial=0, asha={"max_t": 2, "grace_period": 1,
                                                                            "reduction_factor": 3})
    fifo = _scheduler(TuneJob(**job, early_stopping=False), schedule)
    assert type(fifo) is FIFOScheduler
    assert isinstance(_scheduler(TuneJob(**job), schedule), _GroupedASHA)
