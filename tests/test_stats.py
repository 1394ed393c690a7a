"""ablations.stats: paired bootstrap of accuracy differences, against hand counts and a brute-force loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ablations.stats import StatsError, components, draws, paired_difference, verdict
from addd.evaluate import per_sample_accuracy, robust_masks


def _seed(correct: dict[str, list[int]], excluded: dict[str, list[int]] | None = None, adaptive=None, y=None):
    n = len(next(iter(correct.values())))
    arrays = {"y": np.arange(n) % 10 if y is None else np.asarray(y)}
    for attack, c in correct.items():
        arrays[f"oblivious.{attack}.correct"] = np.asarray(c, bool)
        arrays[f"oblivious.{attack}.excluded"] = np.asarray((excluded or {}).get(attack, [0] * n), bool)
    for metric, c in (adaptive or {}).items():
        arrays[f"{metric}.correct"] = np.asarray(c, bool)
    return arrays


def _figure(arrays, figure, known=(), holdout=()):
    num, den, _ = components(arrays, figure, known, holdout)
    with np.errstate(invalid="ignore"):
        return float(np.min(num.sum(1) / den.sum(1)))


def test_figures_match_hand_counts_and_addd_evaluate():
    # PGDt targeted: examples 0 and 1 are correct members of the target class (excluded, num_r = 2)
    s = _seed({"PGDt": [1, 1, 1, 0, 1, 0], "CWu": [1, 0, 1, 1, 1, 1]}, {"PGDt": [1, 1, 0, 0, 0, 0]},
              adaptive={"adaptive.pgd_worst": [0, 1, 0, 0]})
    assert _figure(s, "acc.defended.PGDt") == pytest.approx((4 - 2) / (6 - 2))  # Acc_t = (correct - num_r)/(N - num_r)
    assert _figure(s, "acc.defended.CWu") == pytest.approx(5 / 6)
    assert _figure(s, "worst.unknown") == pytest.approx(0.5)
    assert _figure(s, "worst.unknown", known=("PGDt",)) == pytest.approx(5 / 6)
    assert _figure(s, "worst.holdout", holdout=("CWu",)) == pytest.approx(5 / 6)
    assert _figure(s, "adaptive.pgd_worst") == pytest.approx(0.25)
    # per-sample worst agrees with addd.evaluate's implementation
    masks = [(torch.tensor(s[f"oblivious.{a}.correct"]), torch.tensor(s[f"oblivious.{a}.excluded"])) for a in ("CWu", "PGDt")]
    assert _figure(s, "worst.unknown_per_sample") == pytest.approx(per_sample_accuracy(masks))
    # and the masks are robust_masks' (excluded = correct members of the target class)
    pred, y, target = torch.tensor([3, 1, 2]), torch.tensor([3, 1, 0]), torch.tensor([3, 3, 3])
    correct, excluded = robust_masks(pred, y, target)
    assert correct.tolist() == [True, True, False] and excluded.tolist() == [True, False, False]


def test_identical_defenses_differ_by_exactly_zero_within_noise():
    rng = np.random.default_rng(1)
    seeds = {k: _seed({"CWu": rng.integers(0, 2, 50).tolist(), "BAu": rng.integers(0, 2, 50).tolist()}) for k in range(3)}
    d = paired_difference(seeds, seeds, "worst.unknown", n_boot=300)
    assert d.difference == 0 and d.ci95 == (0.0, 0.0) and d.within_noise and "within noise" in d.verdict


def test_a_clear_improvement_is_not_within_noise_and_small_noise_is():
    n = 400
    full = {k: _seed({"CWu": [1] * 200 + [0] * 200}) for k in range(3)}
    better = {k: _seed({"CWu": [1] * 300 + [0] * 100}) for k in range(3)}
    d = paired_difference(full, better, "acc.defended.CWu", n_boot=500)
    assert d.difference == pytest.approx(0.25) and d.ci95[0] > 0.15 and not d.within_noise
    assert "higher than full" in d.verdict
    flip = {k: _seed({"CWu": [1] * 199 + [0, 1] + [0] * 199}) for k in range(3)}  # 2 of 400 changed, net 0
    d = paired_difference(full, flip, "acc.defended.CWu", n_boot=500)
    assert d.difference == 0 and d.within_noise
    assert len(full[0]["y"]) == n


def test_bootstrap_equals_a_brute_force_loop_with_the_same_draws():
    rng = np.random.default_rng(7)
    n, seeds = 12, (0, 1, 2)

    def defense():
        return {k: _seed({"CWu": rng.integers(0, 2, n).tolist(), "PGDt": rng.integers(0, 2, n).tolist()},
                         {"PGDt": rng.integers(0, 2, n).tolist()},
                         adaptive={"adaptive.pgd_worst": rng.integers(0, 2, n).tolist()}) for k in seeds}

    full, other = defense(), defense()
    for arrays in (*full.values(), *other.values()):  # excluded examples must be correct ones (robust_masks)
        arrays["oblivious.PGDt.excluded"] &= arrays["oblivious.PGDt.correct"]
    for figure, known in (("acc.defended.PGDt", ()), ("worst.unknown", ()), ("worst.unknown_per_sample", ()),
                          ("adaptive.pgd_worst", ()), ("worst.unknown", ("PGDt",))):
        got = paired_difference(full, other, figure, known_full=known, known_other=(), n_boot=200, seed=3)
        seed_idx, example_idx = draws(np.random.default_rng(3), 200, len(seeds), n)
        diffs = []
        for b in range(200):
            def value(defense, kn):
                per_seed = []
                for s in seed_idx[b]:
                    arrays = defense[seeds[s]]
                    resampled = {k: v[example_idx[b]] for k, v in arrays.items()}
                    per_seed.append(_figure(resampled, figure, kn))
                return np.mean(per_seed)
            diffs.append(value(other, ()) - value(full, known))
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        assert got.ci95 == pytest.approx((lo, hi)), figure
        point = np.mean([_figure(other[s], figure) for s in seeds]) - np.mean([_figure(full[s], figure, known) for s in seeds])
        assert got.difference == pytest.approx(point), figure
        assert got.n_seeds == 3 and got.n_examples == n


def test_seeds_pair_by_index_and_bad_inputs_say_what_is_wrong():
    full = {0: _seed({"CWu": [1, 0]}), 1: _seed({"CWu": [1, 1]})}
    other = {1: _seed({"CWu": [0, 1]}), 5: _seed({"CWu": [0, 0]})}
    d = paired_difference(full, other, "acc.defended.CWu", n_boot=50)
    assert d.n_seeds == 1 and d.difference == pytest.approx(-0.5)
    with pytest.raises(StatsError, match="no seed in common"):
        paired_difference(full, {7: other[5]}, "acc.defended.CWu")
    with pytest.raises(StatsError, match="same test examples"):
        paired_difference(full, {0: _seed({"CWu": [1, 0]}, y=[5, 5])}, "acc.defended.CWu")
    with pytest.raises(StatsError, match="no per-example"):
        paired_difference(full, full, "acc.defended.BAu")
    assert verdict(0.1, (float("nan"), 0.2)).startswith("not enough")


def test_the_interval_is_reproducible_with_its_seed():
    rng = np.random.default_rng(0)
    a = {k: _seed({"CWu": rng.integers(0, 2, 80).tolist()}) for k in range(3)}
    b = {k: _seed({"CWu": rng.integers(0, 2, 80).tolist()}) for k in range(3)}
    assert paired_difference(a, b, "acc.defended.CWu", seed=4).ci95 == paired_difference(a, b, "acc.defended.CWu", seed=4).ci95
