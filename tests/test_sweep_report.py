"""sweeps.summary and ablations.report on hand-made trial outcomes (fast, no Ray run)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from ablations.report import build_report, accuracy_table
from sweeps.summary import build_summary
from sweeps.trialspec import TrialOutcome


def _outcome(trial_id, phase, variant, objective, seed=0, test=None, lambda_cls=1e-3):
    config = {"phase": phase, "variant": variant, "train.seed": seed, "loss.lambda_cls": lambda_cls, "network.channels": 1,
              "train.epochs": 3}
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
    summary = build_summary(header={"space": "toy"}, search=search, final=final, best_artifact="best/x")
    full = summary["variants"]["full"]
    assert full["search"]["best_trial_id"] == "b" and full["best_config"]["loss.lambda_cls"] == 1e-4  # NaN never wins
    assert (full["search"]["complete"], full["search"]["failed"]) == (2, 1)
    assert full["search"]["errors"] == {"c": "no finite objective"}
    assert [s["seed"] for s in full["seeds"]] == [0, 1]
    assert full["test"]["acc.defended.CWu"]["mean"] == pytest.approx(0.6)
    assert full["test"]["acc.defended.CWu"]["std"] == pytest.approx(math.sqrt(0.02))
    half = 12.706 * math.sqrt(0.02) / math.sqrt(2)  # t(0.975, 1 dof) * std / sqrt(n)
    assert full["test"]["acc.defended.CWu"]["ci95"] == pytest.approx([0.6 - half, 0.6 + half])
    assert summary["variants"]["no_dp"]["test"]["worst.unknown"]["std"] == 0.0
    assert summary["best"]["trial_id"] == "f1" and summary["best"]["test"]["worst.unknown"] == 0.6
    json.dumps(summary)  # JSON-ready


def test_a_variant_without_a_finite_objective_still_gets_a_summary_with_the_reason():
    search = {"full": [_outcome("x", "search", "full", float("nan"))],
              "no_dp": [_outcome("s", "search", "no_dp", 0.3, seed=0), _outcome("p", "search", "no_dp", 0.9)]}
    search["no_dp"][1].metrics["epoch"] = 1  # ASHA stopped it after 1 of 3 epochs: not a result
    summary = build_summary(header={}, search=search, final=[], best_artifact="b")
    full = summary["variants"]["full"]["search"]
    assert full["best"] is None and "finite objective" in full["reason"]
    assert summary["variants"]["full"]["best_config"] is None
    no_dp = summary["variants"]["no_dp"]["search"]
    assert no_dp["best_trial_id"] == "s" and no_dp["stopped_early"] == 1
    assert summary["best"] is None and summary["best_reason"]
    json.dumps(summary)


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
    assert "0.600 ± 0.141" in text and "| no_dp | 1 | 1 | 0 | 0 | 0.4 |" in text


def test_the_adaptive_probe_reaches_the_summary_and_the_parent_run():
    """The best search trial's probe, each seed's val probe and its mean over seeds, spelled by
    addd.figures; the parent run's metric names say the threat model and the split."""
    from addd import figures
    from sweeps.driver import parent_metrics

    probe, with_probe = (figures.FIGURES[n].trial_key() for n in (figures.PROBE, figures.WORST_WITH_PROBE))
    search, final = _sweep()
    search["full"][1].metrics[probe] = 0.125  # the best search trial "b"
    for outcome, value in zip(final, (0.1, 0.3, 0.0, 0.0)):
        outcome.metrics.update({probe: value, with_probe: value})
    summary = build_summary(header={"search_objective": {"name": "worst", "description": "min of both"}},
                            search=search, final=final, best_artifact="b")
    full = summary["variants"]["full"]
    assert full["search"]["best_val_probe"] == 0.125
    assert [s["val"]["probe.pgd_worst"] for s in full["seeds"]] == [0.1, 0.3]
    assert full["val"]["probe.pgd_worst"]["mean"] == pytest.approx(0.2)
    assert summary["best"]["val"] == {"probe.pgd_worst": 0.3, "worst.unknown_with_probe": 0.3}
    assert summary["objective"] == "min of both"
    metrics = parent_metrics(summary)
    assert metrics["full/val/adaptive/probe.pgd_worst"] == pytest.approx(0.2)
    assert metrics["full/search/best_val_probe"] == 0.125
    assert "no_dp/search/best_val_probe" not in metrics  # its trial reported no probe
    json.dumps(summary)
