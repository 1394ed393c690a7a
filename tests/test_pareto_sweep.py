"""The pareto question end to end (slow): ``digits_robust --smoke`` through the CLI, the study
included, read back from summary.json, the report, Optuna and MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("robust")
    run_dir = tmp / "run"
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "run.py"), "--space", "digits_robust", "--smoke",
                          "--num-samples", "2",  # both random (startup 2): the front, its finals and the study are what count
                          "--run-dir", str(run_dir), "--cache-dir", str(tmp / "cache")],
                         cwd=tmp, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return run_dir


def test_the_front_is_rerun_compared_with_adv_training_and_reported(robust_run):
    summary = json.loads((robust_run / "summary.json").read_text())
    full = summary["variants"]["full"]
    assert full["search"]["stopped_early"] == 0  # pareto: FIFO, no trial stopped
    front = full["front"]
    assert 1 <= len(front) <= 2  # the smoke's front_size
    for member in front:
        assert len(member["seeds"]) == 1 and member["adaptive"]["aa_linf"]["n"] == 1
        paired = member["vs_adv_training"]["figures"]["adaptive.aa_linf"]
        assert paired["n_examples"] == 32 and paired["ci95"][0] <= paired["difference"] <= paired["ci95"][1]
    hv = full["front_hypervolume"]
    assert hv["members_with_test_values"] == len(front) and 0 <= hv["test"] <= 1
    # the study: baselines and the paper's setting, no fixed ablations
    assert sorted(summary["baselines"]) == ["adv_training", "ape_gan", "no_defense", "paper_setting"]
    assert summary["fixed"] == {}
    assert summary["baselines"]["paper_setting"]["known_attacks"] == ["PGDu", "PGDt"]
    report = (robust_run / "report" / "report.md").read_text()
    assert "## Pareto front" in report and "Hypervolume of the front" in report
    assert "dominates adversarial training" in report or "dominate(s) adversarial training" in report
    assert (robust_run / "report" / "pareto.png").stat().st_size > 5000


def test_the_optuna_study_has_three_directions_and_the_parent_run_the_front(robust_run):
    import optuna
    from mlflow.tracking import MlflowClient

    study = optuna.load_study(study_name="digits_robust-smoke-full", storage=f"sqlite:///{robust_run / 'optuna.db'}")
    assert len(study.directions) == 3 and len(study.best_trials) >= 1
    summary = json.loads((robust_run / "summary.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{robust_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("addd-digits_robust")
    parents = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    metrics = parents[0].data.metrics
    assert metrics["full/front/size"] == len(summary["variants"]["full"]["front"])
    assert metrics["full-front0/adaptive/aa_linf"] == pytest.approx(summary["variants"]["full"]["front"][0]["adaptive"]["aa_linf"]["mean"])
    assert "full-front0/vs_adv_training/adaptive.aa_linf" in metrics
