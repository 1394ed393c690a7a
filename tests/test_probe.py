"""The search's adaptive probe and the objective switch (fast, hand-built, CPU).

The probe is white-box PGD through M_t∘G∘E: with the identity as defense it must be exactly the
white-box PGD on M_t (CE, then margin on the CE survivors, same seed and steps), recomputed here
from ``addd.adaptive.pgd_linf``. The objective ``worst`` is min(oblivious worst unknown, probe).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from addd.adaptive import STEP_FACTOR, pgd_linf
from addd.inference import predict
from sweeps.trial import (PROBE_KEY, WORST_UNKNOWN_KEY, WORST_WITH_PROBE_KEY, Probe, ProbeError, SplitSets,
                          TrialContext, evaluate_search, probe_split, search_objective)
from sweeps.trialspec import OBJECTIVE

N = 40


class _Identity(nn.Module):
    is_identity = True

    def restore(self, x):
        return x


class _Blur(nn.Module):
    """A parameter-free 'purifier' that is not the identity: a 3x3 average."""

    def restore(self, x):
        return nn.functional.avg_pool2d(x, 3, stride=1, padding=1)


def _context(objective: str, probe: Probe | None, n: int = N) -> TrialContext:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(n, 1, 8, 8)
    y = predict(model, x)  # every clean image correct: the probe measures only what PGD breaks
    data = SplitSets(x, y, {})
    return TrialContext(train=data, val=data, test=data, target_model=model, holdout_attacks=(), threads=1,
                        events_path=None, probe=probe, objective=objective)


def _white_box_worst(model, x, y, eps, steps, seed) -> torch.Tensor:
    """CE PGD on M_t, then margin PGD on the CE survivors, each from its own seeded random start."""
    step = STEP_FACTOR * eps / steps
    x_ce = pgd_linf(model, None, x, y, eps=eps, steps=steps, step_size=step, loss="ce", seed=seed)
    correct = predict(model, x_ce) == y
    left = correct.nonzero().flatten()
    x_margin = pgd_linf(model, None, x[left], y[left], eps=eps, steps=steps, step_size=step, loss="margin", seed=seed)
    correct[left] = predict(model, x_margin) == y[left]
    return correct


@pytest.mark.parametrize("n", [N, 25])
def test_the_probe_through_the_identity_is_white_box_pgd_on_the_target(n):
    probe = Probe(eps=0.05, n=n, steps=7, seed=3)
    ctx = _context("worst", probe)
    value = probe_split(_Identity(), ctx)[PROBE_KEY]
    expected = _white_box_worst(ctx.target_model, ctx.val.x[:n], ctx.val.y[:n], 0.05, 7, 3).float().mean().item()
    assert value == expected
    assert 0 < value < 1  # the attack did something and left something: the equality is not trivial


def test_the_probe_is_seeded_and_goes_through_the_defense():
    """Same seed, same figure; at eps 0 it is the reconstruction accuracy M_t(G(E(x)))."""
    ctx = _context("worst", Probe(eps=0.05, n=N, steps=10, seed=0))
    assert probe_split(_Blur(), ctx)[PROBE_KEY] == probe_split(_Blur(), ctx)[PROBE_KEY]
    assert probe_split(_Blur(), _context("worst", Probe(eps=0.0, n=N, steps=10)))[PROBE_KEY] == pytest.approx(
        (predict(ctx.target_model, ctx.val.x, transform=_Blur().restore) == ctx.val.y).float().mean().item())


def test_the_objective_switch():
    metrics = {WORST_UNKNOWN_KEY: 0.6, PROBE_KEY: 0.2}
    assert search_objective(metrics, "oblivious") == {WORST_WITH_PROBE_KEY: 0.2, OBJECTIVE: 0.6}
    assert search_objective(metrics, "worst") == {WORST_WITH_PROBE_KEY: 0.2, OBJECTIVE: 0.2}
    assert search_objective({WORST_UNKNOWN_KEY: 0.1, PROBE_KEY: 0.3}, "worst")[OBJECTIVE] == 0.1
    assert search_objective({WORST_UNKNOWN_KEY: 0.6}, "oblivious") == {OBJECTIVE: 0.6}  # no probe: as before
    with pytest.raises(ProbeError, match="needs the adaptive probe"):
        search_objective({WORST_UNKNOWN_KEY: 0.6}, "worst")
    with pytest.raises(ProbeError, match="valid: oblivious, worst"):
        search_objective(metrics, "pareto?")


def test_a_search_epoch_reports_the_probe_beside_the_oblivious_objective(monkeypatch):
    """evaluate_search: the oblivious figures as evaluate_split gives them, the probe, their worst,
    and ``objective`` from the context's objective."""
    import sweeps.trial as trial

    monkeypatch.setattr(trial, "evaluate_split", lambda defense, ctx, split, known: {WORST_UNKNOWN_KEY: 0.9})
    probe = Probe(eps=0.1, n=N, steps=5)
    oblivious = evaluate_search(_Identity(), _context("oblivious", probe), ("PGDu",))
    worst = evaluate_search(_Identity(), _context("worst", probe), ("PGDu",))
    assert oblivious[PROBE_KEY] == worst[PROBE_KEY] < 0.9  # eps 0.1 on an undefended linear net
    assert oblivious[OBJECTIVE] == 0.9 and worst[OBJECTIVE] == worst[PROBE_KEY]
    assert worst[WORST_WITH_PROBE_KEY] == min(0.9, worst[PROBE_KEY])
    assert math.isfinite(worst[OBJECTIVE])


def test_build_context_rejects_a_probe_larger_than_the_validation_split():
    from dataclasses import replace

    from sweeps.spaces import get_space
    from sweeps.trial import build_context

    space = replace(get_space("digits_ablation", smoke=True), probe_n=30)
    ctx = _context("oblivious", None, n=30)
    splits = {"train": ctx.train, "val": ctx.val, "test": ctx.test}
    built = build_context(space, splits, ctx.target_model, threads=1)
    assert built.probe == Probe(eps=0.15, n=30, steps=space.probe_steps) and built.objective == "oblivious"
    small = {**splits, "val": SplitSets(ctx.val.x[:20], ctx.val.y[:20], {})}
    with pytest.raises(ProbeError, match="larger than the validation split"):
        build_context(space, small, ctx.target_model, threads=1)
