"""sweeps.summary and ablations.report on hand-made trial outcomes (fast, no Ray run)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from ablations.report import build_report, accuracy_table
from sweeps._ray import TrialOutcome
from sweeps.summary import best_trial, build_summary


def _outcome(trial_id, phase, variant, objective, seed=0, test=None, lambda_cls=1e-3):
    config = {"phase": phase, "variant": variant, "train.seed": seed, "loss.lambda_cls": lambda_cls, "network.channels": 1}
    metrics = {"objective": objective, "epoch": 3, **{f"test/{k}": v for k, v in (test or {}).items()}}
    return TrialOutcome(trial_id, config, metrics, checkpoint=None, error=None)


def _sweep():
    search = {
        "full": [_outcome("a", "search", "full", 0.2, lambda_cls=1e-2), _outcome("b", "search", "full", 0.6, lambda_cls=1e-4),
                 _outcome("c", "search", "full", float("nan"))],
        "no_dp": [_outcome("d", "search", "no_dp", 0.4)],
    }
    final = [
        _outcome("f0", "final", "full", 0.55, 0, {"acc.defended.CWu": 0.5, "worst.unknown": 0.4}),
        _outcome("f1", "final", "full", 0.65, 1, {"acc.defended.CWu": 0.7, "worst.unknown": 0.6}),
        _outcome("n0", "final", "no_dp", 0.45, 0, {"acc.defended.CWu": 0.3, "worst.unknown": 0.2}),
        _outcome("n1", "final", "no_dp", 0.35, 1, {"acc.defended.CWu": 0.3, "worst.unknown": 0.2}),
    ]
    return search, final


def test_summary_picks_best_configs_and_aggregates_seeds():
    search, final = _sweep()
    assert best_trial(search["full"]).trial_id == "b"  # NaN objective never wins
    summary = build_summary(header={"space": "toy"}, search=search, final=final, best_artifact="best/x")
    full = summary["variants"]["full"]
    assert full["search"]["best_trial_id"] == "b" and full["best_config"]["loss.lambda_cls"] == 1e-4
    assert [s["seed"] for s in full["seeds"]] == [0, 1]
    assert full["test"]["acc.defended.CWu"]["mean"] == pytest.approx(0.6)
    assert full["test"]["acc.defended.CWu"]["std"] == pytest.approx(math.sqrt(0.02))
    assert summary["variants"]["no_dp"]["test"]["worst.unknown"]["std"] == 0.0
    assert summary["best"]["trial_id"] == "f1" and summary["best"]["test"]["worst.unknown"] == 0.6
    json.dumps(summary)  # JSON-ready


def test_best_trial_refuses_a_search_without_any_finite_objective():
    with pytest.raises(RuntimeError, match="finite objective"):
        best_trial([_outcome("x", "search", "full", float("nan"))])


def test_report_tables_and_plot_follow_the_summary(tmp_path):
    search, final = _sweep()
    summary = build_summary(header={"space": "toy", "smoke": False}, search=search, final=final, best_artifact="b")
    table = accuracy_table(summary)
    row = table[(table["variant"] == "full") & (table["attack"] == "CWu")].iloc[0]
    assert (row["mean"], row["n_seeds"]) == (pytest.approx(0.6), 2)
    paths = build_report(summary, tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert pd.read_csv(tmp_path / "test_accuracy.csv").shape[0] == len(table)
    text = (tmp_path / "report.md").read_text()
    assert "0.600 ± 0.141" in text and "| no_dp | 1 | 0.4 |" in text
