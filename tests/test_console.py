"""The sweep console without a sweep: plain lines when not on a terminal, one per finished trial,
log records kept until the run folder exists, and the closing lines saying where to look."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace

from sweeps.console import SweepConsole, mlflow_lines
from sweeps.trialspec import TrialSpec


def _plan(tmp_path: Path, tracking_uri: str):
    space = SimpleNamespace(name="digits_ablation", variants=("full", "no_dp"))
    return SimpleNamespace(space=space, smoke=True, num_samples=2, seeds=1, finals_per_variant=1, run_dir=tmp_path / "run",
                           tracking_uri=tracking_uri, optuna_url=f"sqlite:///{tmp_path}/run/optuna.db")


def test_plain_console_one_line_per_trial_and_where_results_are(tmp_path, monkeypatch):
    out = io.StringIO()
    # a sweep's Ray logger propagates to the root (sweeps._ray.init sets it); importing ray in an
    # earlier test leaves it not propagating, so set it as the sweep does
    monkeypatch.setattr(logging.getLogger("ray"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("ray.tune"), "propagate", True)
    console = SweepConsole(out, live=False).configure_logging()
    try:
        logging.getLogger("sweeps.test").info("detail before the run folder exists")
        logging.getLogger("ray.tune").warning("a Ray warning: log file only")
        plan = _plan(tmp_path, "sqlite:///x/mlflow.db")
        console.begin(plan)
        console.on_event("run_dir", None, {"path": str(plan.run_dir)})
        for attack in ("PGDu", "PGDt"):
            console.on_event("adv_set", None, {"attack": attack, "split": "val", "seconds": 0.0, "origin": "cached"})
        console.on_event("adv_set", None, {"attack": "CWu", "split": "test", "seconds": 2.5, "origin": "generated"})
        console.on_event("adv_set", None, {"attack": "CWt", "split": "test", "seconds": 1.5, "origin": "rebuilt"})
        console.on_event("adv_set", None, {"attack": "LSu", "split": "test", "seconds": 9.0, "origin": "waited"})
        console.on_event("mlflow", None, {"experiment_id": "7", "parent_run_id": "abc"})
        console.on_event("search", None, {"slots": 2})
        search = TrialSpec("search", "full", {"train.epochs": 3})
        console.on_event("started", search, {})
        console.on_event("result", search, {"epoch": 1, "objective": 0.2})
        console.on_event("completed", search, {"epoch": 1, "objective": 0.25})
        console.on_event("completed", TrialSpec("search", "full", {"train.epochs": 3, "x": 1}), {"epoch": 3, "objective": 0.5})
        console.on_event("failed", TrialSpec("search", "no_dp", {"train.epochs": 3}), {"failure": "loss is NaN"})
        console.on_event("completed", TrialSpec("final", "full", {"train.epochs": 3}), {"epoch": 3, "objective": 0.4})
        console.on_event("publish", None, {})
        logging.getLogger("sweeps.study").info("study: training fixed-no_dp (seed 0) on cpu")
        logging.getLogger("sweeps.test").warning("a warning of ours")
        summary = plan.run_dir / "summary.json"
        console.finish(summary)
    finally:
        console.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\x1b[" not in text and "\r" not in text
    assert any("adversarial sets val   2 from the cache: PGDu PGDt" in line for line in lines)
    assert any("adversarial set CWu      test  generated in 2.5s" in line for line in lines)
    assert any("adversarial set CWt      test  rebuilt in 1.5s (its cache entry was damaged" in line for line in lines)
    assert any("adversarial set LSu      test  loaded after waiting 9.0s for another sweep that built it" in line
               for line in lines)
    assert any("full: search trial 1/2 stopped early at epoch 1/3, objective 0.2500" in line for line in lines)
    assert any("full: search trial 2/2 done, objective 0.5000 | best 0.5000" in line for line in lines)
    assert any("no_dp: search trial 1/2 failed: loss is NaN" in line for line in lines)
    assert any("full: final seed 0 (1/1) done" in line for line in lines)
    assert "warning: a warning of ours" in lines
    assert any(line.endswith("s] study: training fixed-no_dp (seed 0) on cpu") for line in lines)  # progress after the search
    assert "Ray warning" not in text and "detail before" not in text
    assert "sweep done in" in text and f"summary: {summary}" in lines
    assert "then open http://127.0.0.1:5000/#/experiments/7/runs" in text
    log = (plan.run_dir / "sweep.log").read_text()
    assert "detail before the run folder exists" in log and "a Ray warning" in log


def test_mlflow_lines_point_at_the_runs_page():
    assert mlflow_lines("http://127.0.0.1:5001/", "3", "r")[0] == "mlflow:  http://127.0.0.1:5001/#/experiments/3/runs"
    local = mlflow_lines("sqlite:////tmp/r/mlflow.db", "1", "r")
    assert local[0].startswith("mlflow:  mlflow ui --backend-store-uri sqlite:////tmp/r/mlflow.db --host 127.0.0.1")
    assert "#/experiments/1/runs" in local[1]
