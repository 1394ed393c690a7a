"""timings.json's breakdown: compute per phase from the events log, seconds per attack over finals."""

from __future__ import annotations

import json

import pytest

from addd.runfolder import METRICS_FILE, RunFolder
from sweeps.timings import phase_compute, trial_breakdown
from sweeps.trialspec import TrialOutcome


def test_phase_compute_sums_each_trials_epochs_under_its_phase():
    events = [{"trial_id": "a", "event": "start", "phase": "search"},
              {"trial_id": "b", "event": "start", "phase": "final"},
              {"trial_id": "a", "event": "epoch", "compute_seconds": 1.5},
              {"trial_id": "b", "event": "epoch", "compute_seconds": 4.0},
              {"trial_id": "a", "event": "start", "phase": "search"},  # a restored trial starts again: one trial
              {"trial_id": "a", "event": "epoch", "compute_seconds": 2.0},
              {"trial_id": "a", "event": "end"}]
    assert phase_compute(events) == {"search": {"trials": 1, "compute_seconds": 3.5},
                                     "final": {"trials": 1, "compute_seconds": 4.0}}


def test_trial_breakdown_sums_attack_seconds_over_sweep_and_study_finals(tmp_path):
    folder = RunFolder(tmp_path)
    folder.events.write_text("\n".join(json.dumps(e) for e in (
        {"trial_id": "f", "event": "start", "phase": "final"}, {"trial_id": "f", "event": "epoch", "compute_seconds": 7.0})))
    finals = [TrialOutcome("f", {}, {"eval_seconds": 5.0, "seconds/adaptive.pgd": 2.0, "seconds/curve": 1.0,
                                     "adaptive/pgd_worst": 0.5}, None, None),
              TrialOutcome("g", {}, {"eval_seconds": 3.0, "seconds/adaptive.pgd": 1.25}, None, None)]
    for name, pgd in (("fixed-no_dp-seed0", 4.0), ("no_defense-seed0", 0.5)):
        (folder.finals / name).mkdir(parents=True)
        (folder.finals / name / METRICS_FILE).write_text(json.dumps(
            {"seconds": {"train": 10.0, "evaluate": 6.0}, "metrics": {"seconds/adaptive.pgd": pgd, "seconds/adaptive.aa_l2": 1.0}}))
    out = trial_breakdown(folder, finals)
    assert out["final"] == {"trials": 1, "compute_seconds": 7.0}
    assert out["finals"] == {"count": 2, "evaluate_seconds": 8.0, "attack_seconds": {"adaptive.pgd": 3.25, "curve": 1.0}}
    assert out["study"]["count"] == 2
    assert out["study"]["train_seconds"] == pytest.approx(20.0) and out["study"]["evaluate_seconds"] == pytest.approx(12.0)
    assert out["study"]["attack_seconds"] == {"adaptive.pgd": 4.5, "adaptive.aa_l2": 2.0}
