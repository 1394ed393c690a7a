"""A sweep's cost before it runs (sweeps/estimate.py): the size arithmetic by hand on a tiny space,
the wall-time arithmetic by hand on a made-up calibration, the dataset table against addd.data,
and --dry-run's size of the quick start. A real calibration, and the estimate against a real smoke
sweep's time: tests/test_sweep_run.py::test_estimate_is_within_4x_of_the_smoke_sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sweeps import estimate as E
from sweeps.plan import Plan
from sweeps.spaces import SPACES, Choice, Space, known_pair

REPO = Path(__file__).resolve().parent.parent

# A tiny space whose size is computed by hand below.
TINY = Space(
    name="tiny", dataset="digits", description="hand-computed size", paper_weights="mnist",
    n_train=40, n_val=20, n_test=30,
    eval_attacks=("PGDu", "PGDt", "DDNu", "DDNt", "CWu", "LSu", "BAu", "STu"), holdout_attacks=("LSu", "BAu", "STu"),
    base={"network.width": 0.03125, "network.channels": 1, "train.epochs": 4, "train.batch_size": 10},
    search={"known_attacks": Choice((known_pair("PGDu", "PGDt"), known_pair("DDNu", "DDNt")))},
    variants=("full", "no_dp"), num_samples=3, startup_trials=1, seeds=2,
    adaptive_n=10, adaptive_steps=3, curve_points=3, curve_steps=2, probe_n=8, probe_steps=5,
)


def _plan(space: Space, *, seeds: int = 2, num_samples: int = 3, study: bool = True) -> Plan:
    return Plan(space=space, smoke=False, run_dir=Path("/nonexistent/run"), storage_path="/nonexistent/ray",
                tracking_uri="sqlite:////nonexistent/mlflow.db", data_root=Path("/nonexistent/data"),
                cache_dir=Path("/nonexistent/cache"), address=None, seeds=seeds, num_samples=num_samples,
                max_concurrent=None, cpus_per_trial=1.0, gpus_per_trial=0.0, study=study)


def test_size_of_a_tiny_space_by_hand():
    size = E.sweep_size(_plan(TINY.validate()))
    # 2 variants x 3 trials; 2 x 2 seeds; the study: 4 fixed ablations and 3 baselines, 2 seeds each
    assert size["trials"] == {"search": 6, "finals": 4, "study_fixed_ablations": 8, "study_baselines": 6, "total": 24}
    # 4 epochs each; the study trains 8 fixed ablations and 2 x 2 trained baselines (no_defense trains nothing)
    epochs = size["trial_epochs"]
    assert (epochs["search_at_most"], epochs["finals"], epochs["study"], epochs["total_at_most"]) == (24, 16, 48, 88)
    assert "ASHA may stop" in epochs["note"]
    assert size["splits"] == {"train": 40, "val": 20, "test": 30}
    sets = size["oblivious_images"]
    assert sets["PGDu"] == {"train": 40, "val": 20, "test": 30} and sets["DDNt"] == {"train": 40, "val": 20, "test": 30}
    assert sets["CWu"] == {"train": 0, "val": 20, "test": 30} and "CWt" not in sets
    assert sets["total"] == 4 * 40 + 8 * 20 + 8 * 30
    adaptive = size["adaptive_images"]
    # 18 finals attacked (4 + 8 + 6) on 10 images; curves on seed 0: 2 variants + 4 fixed + 3 baselines, 2 eps > 0
    assert adaptive["finals"] == 18 and adaptive["pgd_ce"] == adaptive["aa_l2"] == adaptive["bpda"] == 180
    assert adaptive["curve"] == {"finals": 9, "eps_points": 2, "steps": 2, "images": 10 * 9 * 2}
    assert size["probe"] == {"images_per_epoch": 8, "steps": 5, "search_images_at_most": 8 * 24, "final_images": 8 * 18}


def test_size_without_a_study_and_for_a_pareto_search():
    no_study = E.sweep_size(_plan(TINY, study=False))
    assert no_study["trials"]["total"] == 10 and no_study["trial_epochs"]["study"] == 0
    assert no_study["adaptive_images"]["finals"] == 4 and no_study["adaptive_images"]["curve"]["finals"] == 2
    no_full = E.sweep_size(_plan(replace(TINY, variants=("no_dp",))))  # the study ablates full's best config
    assert no_full["trials"]["study_baselines"] == no_full["trials"]["study_fixed_ablations"] == 0
    pareto = E.sweep_size(_plan(replace(TINY, objective="pareto", front_size=3).validate()))
    assert pareto["trials"]["finals"] == 2 * 3 * 2  # at most front_size members per variant, each over the seeds
    assert pareto["adaptive_images"]["curve"]["finals"] == 2 * 3 + 7 + 1  # + the paper's setting (a pareto study)
    assert pareto["trials"]["study_baselines"] == 4 * 2
    no_fixed = E.sweep_size(_plan(replace(TINY, study_fixed_ablations=False)))
    assert no_fixed["trials"]["study_fixed_ablations"] == 0 and no_fixed["trials"]["study_baselines"] == 3 * 2
    assert "no early stopping" in pareto["trial_epochs"]["note"]


def test_dataset_table_matches_addd_data():
    from addd import data
    from sweeps.study import BASELINE_KEYS

    assert set(E.DATASETS) == set(data.DATASET_NAMES)
    assert {name: row[2] for name, row in E.DATASETS.items()} == data._CHANNELS
    assert (E.VAL_FRACTION, E.VAL_CAP) == (data.VAL_FRACTION, data.VAL_CAP)
    assert E.BASELINES == BASELINE_KEYS


@pytest.mark.parametrize("space", [SPACES["digits_ablation"], SPACES["digits_ablation"].smoke(),
                                   SPACES["mnist5k_paper"], replace(SPACES["digits_ablation"], n_train=None, n_val=None),
                                   replace(SPACES["mnist5k_paper"], n_train=3000, n_val=None, n_test=None)],
                         ids=["digits", "digits-smoke", "mnist5k", "digits-defaults", "mnist5k-defaults"])
def test_split_sizes_are_the_loaded_ones(space):
    from sweeps.trial import sweep_dataset

    dataset = sweep_dataset(space, REPO / "data")
    assert E.split_sizes(space) == {split: len(getattr(dataset, split).y) for split in ("train", "val", "test")}


def test_sweep_size_needs_no_torch():
    code = ("import sys; from pathlib import Path; from sweeps.spaces import SPACES; from sweeps.plan import Plan; "
            "from sweeps.estimate import sweep_size; "
            "p = Plan(SPACES['digits_ablation'], False, Path('r'), 'r', 'sqlite:///m', Path('d'), Path('c'), None, 3, 4, "
            "None, 1.0, 0.0); size = sweep_size(p); "
            "print(size['trials']['total'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["56", "False"]


def test_estimate_seconds_by_hand():
    plan = _plan(TINY.validate())
    size = E.sweep_size(plan)
    calibration = {"widths": {"0.03125": {"train_step": 0.5, "forward_per_image": 0.01, "grad_step_per_image": 0.02}},
                   "baseline_step": {"ape_gan": 1.0, "adv_training": 2.0},
                   "target": {"epochs": 2, "batch_size": 20, "step_seconds": 0.25},
                   "attack_seconds_per_image": {a: 0.1 for a in size["oblivious_images"] if a != "total"},
                   "worker_start": 3.0}
    slots, iterations = {"trials": 2, "tasks": 2}, {"bpda": 4, "aa_linf": 10, "aa_l2": 10}
    phases = E.estimate_seconds(plan, size, calibration, slots, iterations)
    # per trial: 40 // 10 = 4 steps an epoch = 2.0 s; 9 image sets (clean + 8 attacks); probe 2 x 5 steps x 8 images
    train, probe = 4 * 0.5, 2 * 5 * 8 * 0.02
    search_eval = 20 * 9 * 0.01 + probe
    final_eval = (20 + 30) * 9 * 0.01 + probe + 10 * (2 * 3 + 24) * 0.02
    curve = 10 * 2 * 2 * 2 * 0.02  # 10 images, 2 eps > 0, CE and margin, 2 steps
    prepare = E.STARTUP_SECONDS + 2 * 2 * 0.25 + 3.0 + 560 * 0.1 / 2 + curve
    search = E.TUNER_START_SECONDS + 3.0 + 6 * (4 * (train + search_eval + E.EPOCH_OVERHEAD_SECONDS)
                                                + E.TRIAL_OVERHEAD_SECONDS) / 2
    finals = (4 * (4 * (train + E.EPOCH_OVERHEAD_SECONDS) + final_eval + E.TRIAL_OVERHEAD_SECONDS) + 2 * curve) / 2
    study_work = 8 * 4 * train + 2 * 4 * (4 * 1.0 + 4 * 2.0) + 14 * final_eval + 7 * curve
    study = E.REPORT_SECONDS + 3.0 + study_work / 2
    assert phases == pytest.approx({"prepare": prepare, "search": search, "finals": finals, "study": study})
    assert phases["search"] == pytest.approx(92.3) and phases["study"] == pytest.approx(174.3)  # the numbers by hand


def test_dry_run_prints_the_quick_starts_size_and_no_estimate(tmp_path, capsys, monkeypatch):
    """The README's quick start: 35 search and seed re-run trials, then the study's 21 finals."""
    from sweeps.run import main

    monkeypatch.chdir(tmp_path)
    assert main(["--space", "digits_ablation", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    trials = printed["size"]["trials"]
    assert trials["search"] + trials["finals"] == 35 and trials["study_fixed_ablations"] + trials["study_baselines"] == 21
    assert printed["size"]["oblivious_images"]["BAu"] == {"train": 0, "val": 200, "test": 359}
    assert printed["size"]["oblivious_images"]["PGDu"]["train"] == 1000
    assert "estimate" not in printed and list(tmp_path.iterdir()) == []
