"""sweeps.spaces, the schedule of a sweep, and the CLI paths that run nothing (fast)."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from addd.attack_names import ATTACK_KINDS, ATTACK_NAMES
from addd.config import ABLATIONS
from sweeps.run import main
from sweeps.schedule import FINISHED, SweepSchedule, VariantSearch
from sweeps.spaces import SPACES, Choice, LogUniform, SpaceError, get_space

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", list(SPACES))
@pytest.mark.parametrize("smoke", [False, True])
def test_every_space_validates_and_leaves_an_unknown_attack_per_choice(name, smoke):
    space = get_space(name, smoke=smoke)
    assert space.variants and all(v in ABLATIONS for v in space.variants)
    for pair in space.known_attack_choices():
        assert space.unknown_attacks(pair), pair
        assert not set(pair) & set(space.holdout_attacks)
    assert set(space.attacks) == set(ATTACK_NAMES)  # every space scores the whole suite
    kinds = {ATTACK_KINDS[a] for a in space.holdout_attacks}
    assert {"decision", "spatial"} <= kinds, space.holdout_attacks
    if smoke:
        full = SPACES[name]
        assert space.num_samples <= full.num_samples and space.base_config().train.epochs <= full.base_config().train.epochs


def test_the_issue_names_its_spaces_and_ablation_variants():
    assert {"digits_ablation", "svhn_ablation", "mnist", "fashion_mnist", "cifar10"} <= set(SPACES)
    for name in ("digits_ablation", "svhn_ablation"):
        assert SPACES[name].variants == ("full", "no_dp", "no_prior", "no_mmd", "no_di")
    svhn = SPACES["svhn_ablation"].base_config()
    assert svhn.network.width == 1.0 and svhn.network.channels == 3
    assert (svhn.loss.lambda_prior, svhn.loss.lambda_dp, svhn.loss.lambda_cls, svhn.loss.theta_mse) == (1e-4, 1.0, 1e-3, 1e3)
    cifar = SPACES["cifar10"].base_config().loss
    assert (cifar.lambda_prior, cifar.lambda_dp, cifar.theta_mse) == (1e-6, 0.1, 10.0)
    for key in ("loss.lambda_prior", "loss.lambda_dp", "loss.lambda_cls", "loss.theta_mse", "loss.sigma", "known_attacks"):
        assert key in SPACES["svhn_ablation"].search


def test_an_ablated_weight_is_not_searched():
    space = get_space("digits_ablation")
    assert "loss.lambda_dp" in space.variant_search("full")
    assert "loss.lambda_dp" not in space.variant_search("no_dp")
    assert "loss.lambda_prior" not in space.variant_search("no_prior")


def test_unknown_space_lists_the_valid_names():
    with pytest.raises(SpaceError) as info:
        get_space("svhn")
    for name in SPACES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"search": {"loss.lambda_prior": LogUniform(0.0, 1.0)}}, "0 < low < high"),
        ({"search": {"loss.theta_mse": LogUniform(10.0, 1.0)}}, "0 < low < high"),
        ({"search": {"loss.nope": LogUniform(1.0, 2.0)}}, "unknown search key"),
        ({"search": {"known_attacks": Choice(("PGDu+BAu",))}}, "overlap holdout"),
        ({"search": {"known_attacks": Choice(("PGDu+XYZ",))}}, "XYZ"),
        ({"variants": ("full", "no_such")}, "no_such"),
        ({"eval_attacks": ("PGDu", "CWu", "BAu", "STu"), "holdout_attacks": ("LSu",)}, "must be among eval_attacks"),
        ({"eval_attacks": ("PGDu", "PGDt"), "holdout_attacks": ()}, "leave no unknown attack"),
        ({"dataset": "imagenet"}, "imagenet"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_invalid_spaces_fail_before_anything_runs(change, words):
    with pytest.raises(SpaceError, match=words):
        replace(SPACES["digits_ablation"], **change).validate()


def test_cli_list_spaces_and_dry_run_print_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--list-spaces"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in SPACES)
    assert main(["--space", "svhn_ablation", "--dry-run", "--num-samples", "7", "--gpus-per-trial", "0.25"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["trials_per_variant"] == 7 and plan["resources"]["gpus_per_trial"] == 0.25
    assert plan["variants"] == ["full", "no_dp", "no_prior", "no_mmd", "no_di"]
    assert plan["total_trials"] == 5 * (7 + SPACES["svhn_ablation"].seeds)
    assert plan["attacks"]["whole_suite"] and plan["attacks"]["left_out"] == []
    assert "loss.lambda_dp" not in plan["search"]["no_dp"]
    assert plan["attacks"]["holdout"] == list(SPACES["svhn_ablation"].holdout_attacks)
    assert list(tmp_path.iterdir()) == []  # ran nothing, wrote nothing


def test_cli_bad_space_exits_nonzero_with_the_valid_names():
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "run.py"), "--space", "nope", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "digits_ablation" in out.stderr and "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- schedule
class _FakeSearcher:
    """Suggests {"loss.theta_mse": n} for its n-th trial; records what it was told."""

    def __init__(self):
        self.asked, self.told = 0, {}

    def suggest(self, trial_id):
        self.asked += 1
        return {"loss.theta_mse": float(self.asked)}

    def on_trial_result(self, trial_id, objective, step):
        self.told.setdefault(("results", trial_id), []).append((objective, step))

    def on_trial_complete(self, trial_id, objective, state, step=None):
        self.told[trial_id] = (objective, state)


def _schedule(budget=2, seeds=2):
    variants = [VariantSearch(v, _FakeSearcher(), {"train.lr": 0.001, "train.epochs": 3}, budget=budget, seeds=seeds)
                for v in ("full", "no_dp")]
    return SweepSchedule(variants, metric="objective")


def test_schedule_gives_variants_equal_budgets_then_reruns_each_best_over_seeds():
    schedule = _schedule()
    first = [schedule.suggest(f"t{i}") for i in range(4)]
    assert [c["variant"] for c in first] == ["full", "no_dp", "full", "no_dp"]
    assert all(c["phase"] == "search" for c in first)
    assert schedule.suggest("t4") is None  # budgets used up, no search finished yet: wait
    schedule.on_trial_result("t0", {"objective": 0.25, "epoch": 1})
    schedule.on_trial_complete("t0", {"objective": 0.3, "epoch": 3})
    schedule.on_trial_complete("t2", {"objective": 0.7, "epoch": 3})
    finals = [schedule.suggest("f0"), schedule.suggest("f1")]
    assert [(c["phase"], c["variant"], c["train.seed"], c["loss.theta_mse"]) for c in finals] == [("final", "full", 0, 2.0), ("final", "full", 1, 2.0)]
    assert schedule.suggest("f2") is None  # no_dp still searching
    schedule.on_trial_complete("t1", {"objective": float("nan"), "epoch": 3})
    schedule.on_trial_complete("t3", {"objective": 0.1, "epoch": 3})
    assert schedule.suggest("f2")["variant"] == "no_dp"
    assert schedule.suggest("f3")["loss.theta_mse"] == 2.0  # t3 (0.1) beat t1 (NaN)
    assert schedule.suggest("f4") == FINISHED
    assert schedule.total_trials == 2 * (2 + 2)
    told = schedule.variants[0].searcher.told
    assert told["t2"] == (0.7, "complete") and told[("results", "t0")] == [(0.25, 1)]
    assert schedule.variants[1].searcher.told["t1"] == (None, "failed")


def test_a_trial_stopped_before_its_last_epoch_is_pruned_and_never_the_best():
    schedule = _schedule(budget=2, seeds=1)
    schedule.suggest("t0"), schedule.suggest("t1"), schedule.suggest("t2"), schedule.suggest("t3")
    schedule.on_trial_complete("t0", {"objective": 0.9, "epoch": 1})  # ASHA stopped it at epoch 1 of 3
    schedule.on_trial_complete("t2", {"objective": 0.4, "epoch": 3})
    full = schedule.variants[0]
    assert full.searcher.told["t0"] == (0.9, "pruned") and full.stopped_early == 1
    assert full.best_score == 0.4 and schedule.suggest("f0")["loss.theta_mse"] == 2.0


def test_schedule_state_survives_pickling_mid_sweep():
    schedule = _schedule(budget=3, seeds=1)
    for i in range(3):
        schedule.suggest(f"t{i}")
    schedule.on_trial_complete("t0", {"objective": 0.5, "epoch": 3})
    restored = pickle.loads(pickle.dumps(schedule))
    assert [v.suggested for v in restored.variants] == [2, 1]
    assert restored.variants[0].best_score == 0.5 and math.isinf(restored.variants[1].best_score)
    assert restored.suggest("t3")["variant"] == "no_dp"  # continues the round robin, no re-ask


# ----------------------------------------------------------------------------- mnist5k_paper
def test_mnist5k_paper_is_at_the_papers_mnist_settings_and_says_what_differs():
    from addd.attacks import attack_params
    from addd.config import PAPER_LOSS_WEIGHTS

    space = get_space("mnist5k_paper")
    assert space.dataset == "mnist5k" and space.target_arch == "lenet" and space.attack_budget == 1.0
    for attack in ATTACK_NAMES:  # App. C.1's MNIST table for the whole suite, at full budget
        assert attack_params(attack, "mnist5k", space.attack_budget) == attack_params(attack, "mnist")
    assert attack_params("STu", "mnist5k")["max_iterations"] == 5000 and attack_params("PGDu", "mnist5k")["eps"] == 0.15
    loss = space.base_config().loss
    assert {k: getattr(loss, k) for k in PAPER_LOSS_WEIGHTS["mnist"]} == PAPER_LOSS_WEIGHTS["mnist"]  # App. D
    assert space.known_attack_choices() == (("PGDu", "PGDt"), ("DDNu", "DDNt"))  # Fig 3
    assert space.attacks == ATTACK_NAMES and {"STu", "STt", "AA_Linf"} <= set(space.attacks)
    assert len(space.differs_from_paper) >= 3 and any("60,000" in line for line in space.differs_from_paper)
    smoke = get_space("mnist5k_paper", smoke=True)
    assert smoke.n_test < space.n_test and smoke.attack_budget < 1 and smoke.variants == ("full",)


def test_mnist5k_paper_dry_run_needs_no_data_root(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    assert main(["--space", "mnist5k_paper", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dataset"] == "mnist5k" and plan["target_arch"] == "lenet"
    assert plan["splits"]["n_test"] == SPACES["mnist5k_paper"].n_test
    assert list(tmp_path.iterdir()) == []


def test_an_online_adaptive_known_attack_is_a_valid_choice_but_never_a_cached_training_set():
    from sweeps.spaces import Choice, get_space

    space = get_space("digits_ablation", smoke=True)
    search = {**space.search, "known_attacks": Choice(("PGDu+PGDt", "PGDu+PGDa"))}
    robust = replace(space, search=search).validate()
    assert ("PGDu", "PGDa") in robust.known_attack_choices()
    assert "PGDa" not in robust.train_attacks() and "PGDu" in robust.train_attacks()
    with pytest.raises(Exception, match=r"unknown attack name\(s\) \['PGDz'\]"):
        replace(space, search={**space.search, "known_attacks": Choice(("PGDu+PGDz",))}).validate()


def test_a_trial_trains_on_the_cached_sets_of_its_known_attacks_only():
    import torch

    from sweeps.trial import cached_known

    class _Set:
        def __init__(self, value):
            self.x_adv = torch.full((2, 1, 4, 4), value)

    class _Ctx:
        class train:  # noqa: N801 - a stand-in for SplitSets
            adv = {"PGDu": _Set(0.25), "CWu": _Set(0.5)}

    got = cached_known(_Ctx, ("PGDu", "PGDa"))
    assert list(got) == ["PGDu"] and torch.equal(got["PGDu"], _Ctx.train.adv["PGDu"].x_adv)


def test_set_fixes_the_gpu_path_options_like_any_config_key():
    """--set train.autocast=bf16 / train.resident=true (docs/gpu.md) reach every trial's config;
    a bad value is one SpaceError line naming the key."""
    from sweeps.run import parse_overrides

    space = get_space("digits_ablation", smoke=True)
    base = space.with_base(parse_overrides(["train.autocast=bf16", "train.resident=true"])).base_config()
    assert (base.train.autocast, base.train.resident) == ("bf16", True)
    assert (space.base_config().train.autocast, space.base_config().train.resident) == ("none", False)
    for item, words in [("train.autocast=fp16", "train.autocast must be one of none, bf16, got 'fp16'"),
                        ("train.resident=yes", "train.resident must be true or false")]:
        with pytest.raises(SpaceError, match=words) as info:
            space.with_base(parse_overrides([item]))
        assert "\n" not in str(info.value)
