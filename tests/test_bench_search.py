"""bench/search.py's figures: the oblivious ratio (trial-epochs to random search's best) and the
pareto mode's hypervolume at equal trial-epochs, from hand-made search histories; and one tiny
pareto search end to end (slow), so the mode's wiring into the sweep's schedule is exercised."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_search", REPO / "bench" / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_ratio_counts_trial_epochs_until_random_search_best():
    bench = _bench()
    random = [(8, 0.40), (16, 0.55), (24, 0.50)]  # best 0.55 after 16 trial-epochs
    tpe = [(8, 0.40), (10, None), (18, 0.56)]  # stopped trial in between; reaches 0.55 at 18
    r = bench.seed_ratio(random, tpe)
    assert (r["random_best"], r["random_epochs"], r["tpe_reached"]) == (0.55, 16, 18)
    assert r["ratio"] == pytest.approx(18 / 16)
    assert bench.seed_ratio(random, [(8, 0.1), (16, 0.2)])["ratio"] == math.inf


def test_hypervolume_history_grows_with_each_dominating_trial_and_skips_failed_ones():
    bench = _bench()
    history = bench.hypervolume_history([(8, (0.5, 0.5, 0.5)), (16, None), (24, (1.0, 0.5, 0.5)), (32, (0.2, 0.2, 0.2))])
    assert [e for e, _ in history] == [8, 16, 24, 32]
    assert [hv for _, hv in history] == pytest.approx([0.125, 0.125, 0.25, 0.25])  # the last is dominated


def test_pareto_seed_compares_hypervolumes_at_equal_trial_epochs():
    bench = _bench()
    random = [(8, (0.5, 0.5, 0.5)), (16, (0.6, 0.2, 0.2)), (24, None), (32, (0.4, 0.4, 0.4))]
    tpe = [(8, (0.5, 0.5, 0.5)), (16, (1.0, 0.5, 0.5)), (24, (0.5, 1.0, 0.5)), (32, None)]
    r = bench.pareto_seed(random, tpe)
    assert (r["half_epochs"], r["epochs"]) == (16, 32)
    assert r["tpe_half"] == pytest.approx(0.25) and r["tpe"] == pytest.approx(0.375)
    assert r["random"] == pytest.approx(0.125 + 0.1 * 0.2 * 0.2)
    assert r["ratio"] == pytest.approx(r["tpe"] / r["random"])
    with pytest.raises(ValueError, match="equal trial-epochs"):
        bench.pareto_seed(random, tpe[:2] + [(30, None), (40, None)])


@pytest.mark.slow
def test_pareto_mode_runs_both_searches_and_prints_a_ratio(tmp_path):
    """On digits_robust's space: its online adaptive PGD (PGDa) choices are trained per batch
    through the current defense, as in the sweep (sampler seed 0 draws one in 3 trials)."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "search.py"), "--quick", "--objective", "pareto",
                          "--space", "digits_robust", "--seeds", "1", "--trials", "3", "--cache-dir", str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    seed_line = next(line for line in lines if line.startswith("seed 0: hypervolume"))
    assert "TPE" in seed_line and "random" in seed_line
    ratio = float(lines[-1].removeprefix("ratio: "))
    assert ratio > 0
    # both searches logged 3 trials each, with three values per complete trial
    assert out.stderr.count("pareto tpe trial") == 3 and out.stderr.count("pareto random trial") == 3
    assert "space: digits_robust (quick)" in out.stdout
    assert "PGDa" in out.stderr, out.stderr[-3000:]  # a trial trained on the online attack
