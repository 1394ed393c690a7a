"""ablations.report on a hand-made study summary (fast): every defense kind, threat models named
in the headers, known attacks marked, adaptive beside oblivious, verdicts, sensible PNGs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ablations.report import build_report, per_attack_overview
from ablations.stats import paired_difference
from sweeps.summary import over_seeds

ATTACKS = ["PGDu", "PGDt", "CWu", "BAu"]


def _entry(base: float, known=("PGDu", "PGDt"), spread=0.01):
    seeds = []
    for k in range(3):
        test = {"acc.clean": 0.95, "acc.reconstruction": base + 0.3, "worst.unknown": base - 0.1 + spread * k,
                "worst.unknown_per_sample": base - 0.2, "worst.holdout": base - 0.1}
        for i, a in enumerate(ATTACKS):
            test[f"acc.defended.{a}"] = base + 0.02 * i + spread * k
            test[f"acc.undefended.{a}"] = 0.05
        seeds.append({"seed": k, "test": test, "adaptive": {"pgd_worst": base / 4 + spread * k, "aa_linf": 0.01,
                                                            "aa_l2": 0.02, "bpda": 0.6}})
    return {"search": {"trials": 4, "best_val_objective": base}, "known_attacks": list(known),
            "best_config": {"phase": "final", "variant": "full", "known_attacks": "+".join(known),
                            "loss.lambda_prior": 1e-4}, "seeds": seeds,
            "test": over_seeds(seeds, "test"), "adaptive": over_seeds(seeds, "adaptive")}


def _summary():
    rng = np.random.default_rng(0)
    arrays = {k: {"y": np.arange(40) % 10, "oblivious.CWu.correct": rng.integers(0, 2, 40).astype(bool),
                  "oblivious.CWu.excluded": np.zeros(40, bool)} for k in range(3)}
    near = paired_difference(arrays, arrays, "acc.defended.CWu", n_boot=100).to_dict()
    far = {**near, "difference": -0.3, "ci95": [-0.4, -0.2], "within_noise": False,
           "verdict": "0.300 lower than full (95% interval [-0.400, -0.200] excludes 0)"}
    return {
        "space": "toy", "smoke": False, "dataset": "digits", "splits": {"test": 40}, "attack_budget": 1.0,
        "eval_attacks": ATTACKS, "holdout_attacks": ["BAu"], "objective": "val worst",
        "variants": {"full": _entry(0.5), "no_dp": _entry(0.49, known=("CWu", "PGDt"))},
        "fixed": {"no_dp": _entry(0.48)}, "baselines": {"no_defense": _entry(0.05), "ape_gan": _entry(0.3)},
        "comparisons": {"no_dp": {"kind": "tuned", "n_boot": 100, "figures": {"worst.unknown": near}},
                        "fixed-no_dp": {"kind": "fixed", "n_boot": 100, "figures": {"worst.unknown": near}},
                        "no_defense": {"kind": "baseline", "n_boot": 100, "figures": {"worst.unknown": far}}},
    }


def test_report_names_threat_models_marks_known_attacks_and_says_within_noise(tmp_path):
    summary = _summary()
    paths = build_report(summary, tmp_path)
    text = (tmp_path / "report.md").read_text()
    for needle in ("clean: M_t(x), no attack, no defense", "reconstruction: M_t(G(E(x)))", "undefended: white-box on M_t",
                   "oblivious: on M_t, then defended", "adaptive: on the whole pipeline, same ε", "PGDu* ε=0.15",
                   "CWu*", "within noise", "excludes 0", "fixed-no_dp — fixed ablation", "ape_gan — baseline",
                   "no_dp — tuned ablation", "Paper Fig 12 ordering", "n=3"):
        assert needle in text, needle
    assert "full ≥ no_dp on worst unknown attack: no difference can be claimed (within noise)" in text
    # every oblivious PGD figure has the adaptive PGD figure of the same defense right beside it
    wide = per_attack_overview(summary)
    columns = list(wide.columns)
    assert columns[columns.index("PGDu ε=0.15 oblivious") + 1] == "pgd_worst ε=0.15 adaptive"
    assert columns[columns.index("PGDt ε=0.15 oblivious") - 1] == "pgd_worst ε=0.15 adaptive"
    assert wide.loc[wide["defense"] == "full", "PGDu ε=0.15 oblivious"].iloc[0].endswith("*")
    assert f"{summary['variants']['full']['test']['worst.unknown']['mean']:.3f} ± " in text
    for path in paths:
        assert path.exists() and path.stat().st_size > 0
    for name in ("ablation.png",):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 200


def test_ablation_plot_separates_known_and_unknown_and_zooms(tmp_path):
    from ablations.plots import ablation_bars
    from ablations.report import accuracy_table

    summary = _summary()
    figure = ablation_bars(accuracy_table(summary), summary, ("PGDu", "PGDt"), "t")
    axes = figure.axes
    titles = [ax.get_title() for ax in axes]
    assert any("known attacks" in t for t in titles) and any("unknown attacks" in t for t in titles)
    assert len(axes) == 6  # tuned, fixed, baselines x known, unknown
    tuned_low, tuned_high = axes[0].get_ylim()
    assert tuned_low > 0.3 and tuned_high < 0.7  # zoomed to the bars, not 0-1
    legend = axes[1].get_legend()
    assert legend is not None
    figure.canvas.draw()
    box, bars = legend.get_window_extent(), axes[1].get_window_extent()
    assert box.x0 >= bars.x1 - 1  # the legend sits right of the bars, covering none
    pytest.importorskip("matplotlib")


def test_search_table_shows_the_best_trials_adaptive_probe_beside_its_objective(tmp_path):
    from addd import figures
    from ablations.report import search_table

    summary = _summary()
    summary["variants"]["full"]["search"]["best_val_probe"] = 0.125
    table = search_table(summary).set_index("variant")
    header = figures.FIGURES[figures.PROBE].header
    assert "probe" in header and table.loc["full", header] == 0.125
    assert pd.isna(table.loc["no_dp", header])  # a variant without a probe shows none, not a made-up value
    build_report(summary, tmp_path)
    assert header in (tmp_path / "report.md").read_text()


def test_config_table_shows_the_config_that_ran_not_a_reapplied_ablation(tmp_path):
    from ablations.report import _config_rows

    summary = _summary()
    summary["fixed"]["no_dp"]["ran_config"] = {"loss.use_dp": False, "known_attacks": ["PGDu", "PGDt"]}
    summary["variants"]["full"]["ran_config"] = {"loss.use_dp": True, "known_attacks": ["PGDu", "PGDt"]}
    rows = _config_rows(summary).set_index("defense")
    assert rows.loc["fixed-no_dp", "loss.use_dp"] == "False" and rows.loc["full", "loss.use_dp"] == "True"
    assert rows.loc["full", "known_attacks"] == "PGDu+PGDt"


def test_a_defense_trained_on_online_adaptive_pgd_has_its_adaptive_pgd_marked_known(tmp_path):
    from ablations.report import defense_table

    summary = _summary()
    entry = summary["variants"]["full"]
    rows = defense_table(summary, {**entry, "known_attacks": ["PGDu", "PGDa"]}).set_index("attack (* known)")
    cell = rows.filter(like="PGDu", axis=0)["adaptive: on the whole pipeline, same ε"].iloc[0]
    assert cell.startswith("pgd_worst*:")  # trained on it: not an unknown attack any more
    assert any(i.startswith("bpda ") for i in rows.index)  # BPDA stays an unknown attack (no *)
    plain = defense_table(summary, entry).set_index("attack (* known)")
    assert plain.filter(like="PGDu", axis=0)["adaptive: on the whole pipeline, same ε"].iloc[0].startswith("pgd_worst:")
    per_attack = per_attack_overview({**summary, "variants": {"full": {**entry, "known_attacks": ["PGDu", "PGDa"]}},
                                      "fixed": {}, "baselines": {}})
    assert per_attack.filter(like="pgd_worst").iloc[0, 0].endswith(" *")


def test_a_summary_without_any_final_still_gets_its_report(tmp_path):
    """Every trial failed (e.g. a non-finite loss): no test figures, yet the report and its plot are written."""
    summary = {**_summary(), "variants": {"full": {"search": {"trials": 2, "failed": 2}, "seeds": [], "test": {},
                                                   "adaptive": {}}}, "fixed": {}, "baselines": {}, "comparisons": {}}
    paths = build_report(summary, tmp_path)
    assert (tmp_path / "ablation.png") in paths and (tmp_path / "report.md").read_text().startswith("# Ablation report")


def test_each_optuna_plot_is_described_by_what_it_draws(tmp_path):
    from ablations.report import _figure_lines

    names = ["optuna_history_s-full.png", "optuna_importances_s-full.png", "optuna_pareto_front_s-full.png",
             "optuna_hypervolume_s-full.png"]
    lines = _figure_lines(None, False, [tmp_path / n for n in names])
    words = {n: next(line for line in lines if n in line) for n in names}
    assert "optimisation history" in words["optuna_history_s-full.png"]
    assert "parameter importances" in words["optuna_importances_s-full.png"]
    assert "Pareto front" in words["optuna_pareto_front_s-full.png"]
    assert "hypervolume history" in words["optuna_hypervolume_s-full.png"]  # it read "parameter importances"
