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
                   "test/acc.defended.CWu": 0.5, "test/worst.unknown": 0.5}
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


# ----------------------------------------------------------------------------- hypervolume, references, pairing
def test_hypervolume_is_the_union_of_the_boxes_above_the_reference():
    from sweeps._optuna import hypervolume

    assert hypervolume([[0.5, 0.5, 0.5]], [0, 0, 0]) == pytest.approx(0.125)
    # two boxes 1 x .5 x .5 overlapping in .5 x .5 x .5
    assert hypervolume([[1, 0.5, 0.5], [0.5, 1, 0.5]], [0, 0, 0]) == pytest.approx(0.375)
    assert hypervolume([[1, 0.5, 0.5], [0.5, 0.4, 0.4]], [0, 0, 0]) == pytest.approx(0.25)  # a dominated point adds 0
    assert hypervolume([[0.5, 0.0, 0.5]], [0, 0, 0]) == 0.0  # on the reference plane: no volume


def test_the_summary_gives_the_front_its_hypervolume_on_validation_and_test():
    hv = _pareto_summary()["variants"]["full"]["front_hypervolume"]
    # validation: b (0.80, 0.5, 0.1) alone counts (a's probe is 0); test: b (0.9, 0.5, mean pgd 0.3) dominates a
    assert hv["val"] == pytest.approx(0.8 * 0.5 * 0.1)
    assert hv["test"] == pytest.approx(0.9 * 0.5 * 0.3)
    assert hv["test_axes"] == ["acc.reconstruction", "worst.unknown", "adaptive.pgd_worst"]
    assert (hv["members"], hv["members_with_test_values"]) == (2, 2)


def test_a_pareto_space_carries_the_papers_setting_and_its_study_runs_it_without_fixed_ablations():
    from sweeps.study import PAPER_SETTING, study_jobs
    from sweeps.summary import summary_header

    class Data:
        train = val = test = range(3)

        def fingerprint(self):
            return "f"

    class Target:
        arch, weights_sha256, path, clean_test_accuracy = "small_cnn", "s", "p", 0.9

    space = get_space("digits_robust")
    header = summary_header(space, False, Data(), Target(), "cache")
    paper = header[PAPER_SETTING]
    assert paper["known_attacks"] == ["PGDu", "PGDt"]  # the first choice without an online attack
    assert paper["loss.theta_mse"] == space.base_config().loss.theta_mse and header["study_fixed_ablations"] is False
    best = TrialSpec.final("full", {**paper, "known_attacks": ["PGDa", "PGDu"], "online.fraction": 0.5}, 0).to_config()
    summary = {**header, "variants": {"full": {"best_config": best, "seeds": [{"seed": 0}, {"seed": 1}]}}}
    jobs = study_jobs(summary, "cpu")
    assert sorted({j.name for j in jobs}) == ["adv_training", "ape_gan", "no_defense", PAPER_SETTING]
    paper_jobs = [j for j in jobs if j.name == PAPER_SETTING]
    assert [j.seed for j in paper_jobs] == [0, 1] and paper_jobs[0].known == ("PGDu", "PGDt")
    assert next(j for j in jobs if j.name == "ape_gan").known == ("PGDu",)  # APE-GAN: full's cached attack only
    ablation_space = get_space("digits_ablation")
    assert PAPER_SETTING not in summary_header(ablation_space, False, Data(), Target(), "cache")
    assert len(study_jobs({**summary, "study_fixed_ablations": True}, "cpu")) == len(jobs) + 4 * 2


def _per_example(folder, name, seed, aa):
    from addd.storage import save_tensors
    import torch

    path = folder.final(name, seed)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / "per_example.safetensors", {"y": torch.arange(16), "adaptive.aa_linf.correct": torch.tensor(aa * 4)},
                 {})  # 16 test images: the pattern of four, four times


def test_each_front_member_is_paired_with_adv_training_from_its_own_finals_folder(tmp_path):
    from addd.runfolder import RunFolder
    from sweeps.study import front_comparisons, member_folder, study_metrics

    summary = _pareto_summary()
    full = summary["variants"]["full"]
    assert [member_folder("full", full, m) for m in full["front"]] == ["full", "full-front1"]
    folder = RunFolder(tmp_path)
    for seed in (0, 1):
        _per_example(folder, "adv_training", seed, [True, True, False, False])
        _per_example(folder, "full", seed, [True, True, True, False])  # member 0: +0.25
        _per_example(folder, "full-front1", seed, [False, False, False, False])  # member 1: -0.5
    summary["baselines"] = {"adv_training": {"known_attacks": ["PGDu", "PGDt"]}}
    front_comparisons(summary, folder, n_boot=200)
    first, second = (m["vs_adv_training"]["figures"]["adaptive.aa_linf"] for m in full["front"])
    assert first["difference"] == pytest.approx(0.25) and second["difference"] == pytest.approx(-0.5)
    assert first["ci95"][0] <= 0.25 <= first["ci95"][1] and second["ci95"][1] <= 0 < first["ci95"][1]
    assert second["verdict"].startswith("0.500 lower than adv_training")
    assert "adaptive.pgd_worst" in full["front"][0]["vs_adv_training"]["skipped"]  # no such per-example file here
    assert study_metrics(summary)["full-front1/vs_adv_training/adaptive.aa_linf"] == pytest.approx(-0.5)


def test_the_report_answers_whether_a_member_dominates_adv_training_and_draws_the_front(tmp_path):
    from ablations.report import _pareto_words, build_report, pareto_points

    def stats(mean):
        return {"mean": mean, "std": 0.01, "n": 2, "ci95": [mean - 0.02, mean + 0.02], "values": [mean] * 2}

    summary = _pareto_summary()
    member = summary["variants"]["full"]["front"][0]  # aa_linf 0.15 at reconstruction 0.9; member 1: 0.125 at 0.8
    member["vs_adv_training"] = {"figures": {"adaptive.aa_linf": {"difference": 0.01, "ci95": [-0.01, 0.06],
                                                                   "n_seeds": 2, "n_examples": 4, "verdict": "within noise"}}}
    summary["baselines"] = {"adv_training": {"adaptive": {"aa_linf": stats(0.14)}, "test": {"acc.reconstruction": stats(0.95)}},
                            "paper_setting": {"adaptive": {"aa_linf": stats(0.0)}, "test": {"acc.reconstruction": stats(0.9)}}}
    words = _pareto_words(summary)
    # member 0 has the higher AA but a lower reconstruction than adv_training's 0.95: no member dominates
    assert words.startswith("**No**") and "(full member 0)" in words and "[-0.010, +0.060]" in words
    summary["baselines"]["adv_training"]["test"]["acc.reconstruction"] = stats(0.85)
    assert _pareto_words(summary).startswith("**Yes**: full member 0 dominate")  # member 1's 0.125 is lower
    points, references = pareto_points(summary)
    assert list(points["label"]) == ["full m0", "full m1"] and list(references["label"]) == ["adv_training", "paper_setting"]
    build_report(summary, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "pareto.png").stat().st_size > 5000
    assert "Hypervolume of the front" in report and "0.1350 on test" in report


def test_the_mlflow_parent_run_carries_every_front_member_and_the_hypervolume():
    from sweeps.driver import parent_metrics

    metrics = parent_metrics(_pareto_summary())
    assert metrics["full/front/size"] == 2
    assert metrics["full-front0/adaptive/pgd_worst"] == pytest.approx(0.3)  # member 0's mean over its seeds
    assert metrics["full-front1/adaptive/aa_linf"] == pytest.approx(0.125)
    assert metrics["full/front/hypervolume_test"] == pytest.approx(0.135)


def test_the_study_runs_only_the_baselines_a_command_line_names_and_its_adaptive_n(tmp_path):
    from sweeps.study import PAPER_SETTING, build_parser, config_space, study_baselines, study_jobs

    best = TrialSpec.final("full", {"known_attacks": ["PGDu", "PGDt"]}, 0).to_config()
    summary = {"dataset": "digits", "target_model": {"arch": "small_cnn"}, PAPER_SETTING: dict(best),
               "variants": {"full": {"best_config": best, "seeds": [{"seed": 0}, {"seed": 1}]}},
               "study_fixed_ablations": False}
    assert study_baselines(summary) == ("no_defense", "ape_gan", "adv_training", PAPER_SETTING)
    assert {j.name for j in study_jobs(summary, "cpu")} == {"no_defense", "ape_gan", "adv_training", PAPER_SETTING}
    narrowed = study_jobs({**summary, "study_baselines": ["adv_training"]}, "cpu")
    assert [(j.name, j.seed) for j in narrowed] == [("adv_training", 0), ("adv_training", 1)]
    parser = build_parser()
    args = parser.parse_args(["--space", "digits_robust", "--config", "c.json", "--adaptive-n", "200",
                              "--baselines", "adv_training", PAPER_SETTING])
    assert args.baselines == ["adv_training", PAPER_SETTING]
    assert config_space(args).adaptive_n == 200 and config_space(args).describe_finalists()["adaptive_test_examples"] == 200
    assert config_space(parser.parse_args(["--space", "digits_robust", "--config", "c.json"])).adaptive_n == 48
    with pytest.raises(SystemExit):
        parser.parse_args(["--space", "digits_robust", "--config", "c.json", "--baselines", "nope"])
    with pytest.raises(SpaceError, match="adaptive_n must be >= 1"):
        config_space(parser.parse_args(["--space", "digits_robust", "--config", "c.json", "--adaptive-n", "0"]))


@pytest.mark.parametrize("extra", [["--adaptive-n", "200"], ["--baselines", "adv_training"]])
def test_the_config_only_flags_are_refused_with_a_sweep(extra, tmp_path, capsys):
    from sweeps.study import main

    assert main(["--sweep", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "go with --space and --config" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_standalone_study_never_asks_the_cache_for_an_online_attack(monkeypatch, tmp_path):
    """A digits_robust final trains on PGDa (made per batch against the defense): rebuilding the
    study's sets must request only the cached attacks (it used to fail: "unknown attack 'PGDa'")."""
    import addd.target_models
    import sweeps.trial
    from sweeps.spaces import get_space as space_named
    from sweeps.study import load_sets
    from sweeps.summary import summary_header
    from sweeps.trial import sweep_dataset

    space = space_named("digits_robust", smoke=True)

    class Target:
        arch, weights_sha256, path, clean_test_accuracy = "small_cnn", "s", "p", 0.9

    summary = summary_header(space, True, sweep_dataset(space, tmp_path), Target(), str(tmp_path))
    summary["target_model"]["sha256"] = None
    seen = []

    def requests(space, dataset, target, *, device, train_attacks):
        seen.append(train_attacks)
        raise RuntimeError("stop here")

    monkeypatch.setattr(addd.target_models, "load_target_entry", lambda path, device: Target())
    monkeypatch.setattr(sweeps.trial, "sweep_requests", requests)
    with pytest.raises(RuntimeError, match="stop here"):
        load_sets(summary, data_root=tmp_path, train_attacks=("PGDa", "DDNu", "PGDu"))
    assert seen == [("DDNu", "PGDu")]
