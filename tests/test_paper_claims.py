"""ablations.paper_claims and ablations.reproduction: the paper's MNIST claims as data, and the
reproduction table built from a summary.json-shaped dict this test writes (intervals from scipy)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ablations.paper_claims import CLAIMS, MNIST_CLAIMS, THREAT_MODELS, ClaimError, PaperClaim, claims_for
from ablations.reproduction import COLUMNS, NO_CLAIMS, reproduction_section, reproduction_table, verdict


def _stats(values: list[float]) -> dict:
    """summary.json's over-seeds figure: mean, sample std, 95% t-interval of the mean."""
    array = np.asarray(values, dtype=float)
    mean, std = float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0
    half = float(scipy_stats.t.ppf(0.975, len(array) - 1) * std / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return {"mean": mean, "std": std, "n": len(array), "ci95": [mean - half, mean + half], "values": values}


def _summary(dataset: str = "mnist5k", known: str = "PGDu+PGDt") -> dict:
    full_test = {
        "acc.clean": _stats([0.985, 0.985, 0.985]),
        "acc.reconstruction": _stats([0.980, 0.985, 0.990]),  # 0.9867 inside
        "acc.undefended.STu": _stats([0.0, 0.005, 0.0]),
        "acc.undefended.STt": _stats([0.0, 0.0, 0.0]),
        "acc.defended.STu": _stats([0.70, 0.72, 0.71]),  # paper 0.8930 above: lower
        "acc.defended.STt": _stats([0.95, 0.96, 0.97]),  # paper 0.8736 below: higher
        "acc.defended.AA_Linf": _stats([0.97, 0.975, 0.98]),  # 0.9765 inside
    }
    return {
        "dataset": dataset,
        "splits": {"train": 2000, "val": 100, "test": 200},
        "attack_budget": 1.0,
        "target_model": {"arch": "lenet", "clean_test_accuracy": 0.985},
        "variants": {"full": {"best_config": {"known_attacks": known, "network.width": 0.0625, "train.epochs": 8},
                              "known_attacks": known.split("+"),  # as sweeps.summary.config_entry records it
                              "test": full_test,
                              "adaptive": {"aa_linf": _stats([0.0, 0.01, 0.0]), "pgd_worst": _stats([0.0, 0.0, 0.0])}}},
        "baselines": {"ape_gan": {"known_attacks": ["PGDu", "PGDt"], "test": {"acc.reconstruction": _stats([0.98])}}},
    }


def _row(frame, source: str):
    rows = frame[frame["claim (source)"].str.startswith(source)]
    assert len(rows) == 1, f"{source}: {len(rows)} rows"
    return rows.iloc[0]


# ----------------------------------------------------------------------------- the claims
def test_every_claim_names_a_source_a_threat_model_and_a_figure_or_a_reason():
    assert MNIST_CLAIMS and claims_for("mnist5k") == claims_for("mnist") == MNIST_CLAIMS
    for claim in MNIST_CLAIMS:
        assert claim.table and claim.row and claim.column and claim.source.startswith(claim.table)
        assert claim.threat_model in THREAT_MODELS and claim.paper_training
        assert (claim.figure is not None and claim.defense is not None) != (claim.not_measured is not None)
    sources = [c.source for c in MNIST_CLAIMS]
    assert len(sources) == len(set(sources))


def test_the_papers_numbers_and_the_attacks_the_suite_lacks_are_kept():
    by_source = {c.source: c for c in MNIST_CLAIMS}
    assert by_source["Table 2, row ADD-Defense, column STu"].paper_value == 0.8930
    assert by_source["Table 2, row ADD-Defense, column STu"].figure == "acc.defended.STu"
    assert by_source["Table 2, row Ori (target model), column STu"].figure == "acc.undefended.STu"
    table5 = by_source["Table 5, row Our (eps=0.3), column MNIST-Linf (AutoAttack, ε 0.3)"]
    assert (table5.paper_value, table5.figure, table5.adaptive_figure) == (0.9765, "acc.defended.AA_Linf",
                                                                           "adaptive.aa_linf")
    sfw = [c for c in MNIST_CLAIMS if c.column == "SFWu"]
    assert len(sfw) == 4 and all("SFW" in c.not_measured for c in sfw)
    assert {c.row for c in MNIST_CLAIMS if c.table == "Table 5"} == {"Our (eps=0.3)", "CROWN", "IBP"}
    assert len([c for c in MNIST_CLAIMS if c.table.startswith("Table 7")]) == 4


@pytest.mark.parametrize("change,match", [
    ({"threat_model": "adaptive-ish"}, "threat model"),
    ({"paper_value": 97.65}, r"\[0, 1\]"),
    ({"row": ""}, "must all be named"),
    ({"figure": None}, "not_measured"),
    ({"not_measured": "both"}, "not_measured"),
    ({"adaptive_figure": "acc.defended.PGDu"}, "adaptive"),
])
def test_a_malformed_claim_is_refused(change, match):
    claim = MNIST_CLAIMS[1]  # Ori, STu: measured
    with pytest.raises(ClaimError, match=match):
        dataclasses.replace(claim, **change)


# ----------------------------------------------------------------------------- the table
def test_table_has_every_claim_and_the_verdicts_follow_the_intervals():
    frame = reproduction_table(_summary())
    assert list(frame.columns) == COLUMNS and len(frame) == len(MNIST_CLAIMS)
    assert _row(frame, "Table 2, row ADD-Defense, column No attack")["verdict"].startswith("reproduced")
    assert _row(frame, "Table 2, row ADD-Defense, column STu")["verdict"].startswith("lower than the paper")
    assert _row(frame, "Table 2, row ADD-Defense, column STt")["verdict"].startswith("higher than the paper")
    stu = _row(frame, "Table 2, row ADD-Defense, column STu")
    s = _summary()["variants"]["full"]["test"]["acc.defended.STu"]
    assert f"{s['mean']:.4f} ± {s['std']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}] n=3" in stu.iloc[3]
    assert _row(frame, "Table 2, row ADD-Defense, column SFWu")["this run, oblivious (mean ± std [95% interval] n)"] \
        == "not measured"


def test_table5_is_measured_beside_the_adaptive_autoattack_and_says_what_a_gap_means():
    row = _row(reproduction_table(_summary()), "Table 5, row Our (eps=0.3)")
    assert row["verdict"].startswith("reproduced")
    assert "0.0033" in row["this run, adaptive (whole pipeline)"]  # mean of 0, 0.01, 0
    assert "holds only against an attacker who ignores the defense" in row["verdict"]
    assert "ε 0.3" in row["verdict"]  # the paper trained at 0.3, this suite at 0.15: said in the verdict


def test_other_known_attacks_one_seed_and_missing_baselines_are_said():
    frame = reproduction_table(_summary(known="DDNu+DDNt"))
    assert "this run's defense trained on DDNu+DDNt" in _row(frame, "Table 2, row ADD-Defense, column STu")["verdict"]
    assert "one seed, no interval" in _row(frame, "Table 2, row APE-GAN, column No attack")["verdict"]
    assert "not measured in this run" in _row(frame, "Table 2, row APE-GAN, column STu")["verdict"]


def test_adaptive_figure_within_the_interval_agrees():
    claim = next(c for c in MNIST_CLAIMS if c.adaptive_figure)
    oblivious = _stats([0.97, 0.975, 0.98])
    words = verdict(claim, oblivious, _stats([0.975, 0.975, 0.975]), ("PGDu", "PGDt"))
    assert "agrees" in words and "reproduced" in words


def test_section_for_a_dataset_without_claims_and_for_mnist5k():
    assert "digits" not in CLAIMS
    assert NO_CLAIMS in reproduction_section(_summary(dataset="digits"))
    text = reproduction_section(_summary())
    assert "## Reproduction of the paper's figures" in text and text.count("\n| Table ") == len(MNIST_CLAIMS)
    assert "60,000 / 10,000" in text and "2000 training / 100 validation / 200 test" in text


def test_claim_table_is_independent_of_the_claims_it_is_given():
    one = (PaperClaim("Table X", "r", "c", 0.5, "oblivious", "PGD", defense="full", figure="acc.clean"),)
    frame = reproduction_table(_summary(), one)
    assert len(frame) == 1 and frame.iloc[0]["verdict"].startswith("higher than the paper")


def test_build_report_appends_the_section(tmp_path):
    from ablations.report import build_report

    build_report(_summary(), tmp_path / "mnist5k")
    build_report(_summary(dataset="digits"), tmp_path / "digits")
    assert "## Reproduction of the paper's figures" in (tmp_path / "mnist5k" / "report.md").read_text()
    assert "Table 5, row Our (eps=0.3)" in (tmp_path / "mnist5k" / "report.md").read_text()
    assert NO_CLAIMS in (tmp_path / "digits" / "report.md").read_text()
