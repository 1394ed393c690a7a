"""The figure registry: one name per figure, every spelling derived from it and invertible."""

import pytest

from addd import figures as F
from addd.adaptive import METRICS
from addd.attack_names import ATTACK_NAMES


def _all_figures():
    return [*F.FIGURES.values(), *(F.defended(a) for a in ATTACK_NAMES), *(F.undefended(a) for a in ATTACK_NAMES)]


def test_every_adaptive_metric_addd_computes_is_registered_as_adaptive():
    assert set(METRICS) == set(F.ADAPTIVE_FIGURES)
    assert all(F.figure(m).threat == F.ADAPTIVE for m in METRICS)


@pytest.mark.parametrize("fig", _all_figures(), ids=lambda f: f.name)
def test_spellings_round_trip(fig):
    assert F.figure(fig.name) == fig
    assert F.from_summary(fig.section, fig.key) == fig
    assert fig.threat in F.THREAT_MODELS


def test_spellings_are_unique_per_destination():
    figs = _all_figures()
    for spell in (lambda f: f.parent_metric("full"), lambda f: f.trial_key("test"), lambda f: (f.section, f.key)):
        spelled = [spell(f) for f in figs]
        assert len(set(spelled)) == len(spelled)
    per_example = [f.per_example_key for f in figs if f.per_example_key]
    assert len(set(per_example)) == len(per_example)


def test_known_spellings():
    pgd = F.figure("adaptive.pgd_worst")
    assert (pgd.trial_key(), pgd.section, pgd.key) == ("adaptive/pgd_worst", "adaptive", "pgd_worst")
    assert pgd.parent_metric("full") == "full/adaptive/pgd_worst"
    assert pgd.per_example_key == "adaptive.pgd_worst.correct"
    obl = F.figure("acc.defended.PGDu")
    assert (obl.trial_key("val"), obl.parent_metric("no_dp")) == ("val/acc.defended.PGDu", "no_dp/test/oblivious/PGDu")
    assert (obl.per_example_key, obl.excluded_key) == ("oblivious.PGDu.correct", "oblivious.PGDu.excluded")
    assert F.figure("acc.undefended.CWu").parent_metric("full") == "full/test/undefended/CWu"
    assert F.figure("worst.unknown").parent_metric("full") == "full/test/oblivious/worst.unknown"
    assert F.figure("acc.clean").parent_metric("full") == "full/test/acc.clean"


def test_every_adaptive_figure_names_an_oblivious_counterpart_that_points_back_to_an_adaptive_figure():
    for name in F.ADAPTIVE_FIGURES:
        beside = F.adaptive_beside(F.figure(name).oblivious_attack)
        assert beside is not None and beside.is_adaptive
    assert F.adaptive_beside("PGDu").name == "adaptive.pgd_worst"
    assert F.adaptive_beside("CWu") is None


def test_unknown_figure_lists_the_valid_ones():
    with pytest.raises(F.FigureError, match="unknown figure 'adaptive.nope'; valid: acc.clean"):
        F.figure("adaptive.nope")


def test_parent_metrics_of_a_summary_entry():
    entry = {"test": {"acc.defended.PGDu": {"mean": 0.5}, "worst.unknown": {"mean": 0.25}},
             "adaptive": {"pgd_worst": {"mean": 0.0}}}
    assert F.parent_metrics("full", entry) == {"full/test/oblivious/PGDu": 0.5, "full/test/oblivious/worst.unknown": 0.25,
                                               "full/adaptive/pgd_worst": 0.0}


def test_the_search_probe_is_an_adaptive_validation_figure_named_probe():
    probe = F.figure(F.PROBE)
    assert probe.is_adaptive and "probe" in probe.trial_key() and probe.trial_key() == "val/probe.pgd_worst"
    assert (probe.section, probe.key) == ("val", "probe.pgd_worst")
    assert probe.parent_metric("full") == "full/val/adaptive/probe.pgd_worst"
    assert F.from_summary("val", probe.key) == probe
    with pytest.raises(F.FigureError, match="section 'val', not 'test'"):
        F.from_summary("test", probe.key)


def test_every_adaptive_figure_is_shown_once_in_per_attack_tables():
    beside = {F.adaptive_beside(a).name for a in ("PGDu", "PGDt", "AA_Linf", "AA_L2")}
    assert sorted(beside | set(F.ADAPTIVE_ALONE)) == sorted(F.ADAPTIVE_FIGURES)
    assert not beside & set(F.ADAPTIVE_ALONE)
