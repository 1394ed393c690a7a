"""addd.adaptive: true-gradient PGD through the defense, the adaptive suite and robustness curves.

A tiny MLP trained for about a second on sklearn digits is the target model; the "defenses" are
small differentiable maps built here (identity, inversion 1 - x, 3x3 smoothing).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from addd.adaptive import (
    CURVE_COLUMNS, METRICS, AdaptiveError, adaptive_pgd, adaptive_worst, evaluate_adaptive_suite, robustness_curve,
    whitebox_curve,
)
from addd.attacks import run_attack
from addd.data import load_dataset

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # the attack libraries' chatter
]

DATASET = "digits"
N = 64
EPS = 0.1
STEPS = 10


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DATASET)


@pytest.fixture(scope="module")
def model(digits) -> nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 32), nn.ReLU(), nn.Linear(32, 10))
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        x, y = digits.train.x[:600], digits.train.y[:600]
        for _ in range(10):
            for begin in range(0, len(x), 50):
                optimizer.zero_grad()
                F.cross_entropy(net(x[begin:begin + 50]), y[begin:begin + 50]).backward()
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    return net.eval()


@pytest.fixture(scope="module")
def examples(digits):
    return digits.test.x[:N], digits.test.y[:N]


class IdentityDefense:
    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Invert(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - x


class InvertDefense(nn.Module):
    """restore(x) = 1 - x: its Jacobian is -I, so BPDA's identity backward pass points the wrong way."""

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - x

    forward = restore


class SmoothDefense(nn.Module):
    """A 3x3 box blur as a conv with (trainable-looking) parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="replicate")
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.conv.bias.zero_()

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).clamp(0, 1)

    forward = restore


def _accuracy(model, x, y, restore=None) -> float:
    with torch.no_grad():
        return (model(x if restore is None else restore(x)).argmax(1) == y).float().mean().item()


# (a) identity defense == white-box PGD on M_t ---------------------------------------------------


def test_identity_defense_equals_whitebox_pgd(model, examples):
    x, y = examples
    kwargs = dict(eps=EPS, steps=STEPS, seed=3)
    whitebox = adaptive_pgd(model, None, x, y, **kwargs)
    for identity in (IdentityDefense(), IdentityDefense().restore, nn.Identity()):
        adaptive = adaptive_pgd(model, identity, x, y, **kwargs)
        assert (adaptive.ce, adaptive.margin, adaptive.worst) == (whitebox.ce, whitebox.margin, whitebox.worst)
        for loss in ("ce", "margin"):
            assert torch.equal(adaptive.x_adv[loss], whitebox.x_adv[loss])
    assert whitebox.worst < _accuracy(model, x, y) - 0.3  # the attack does bite

    # ... and its CE run is exactly the oblivious suite's PGDu with the same step count and seed
    pgdu = run_attack("PGDu", model, x, y, dataset=DATASET, seed=3, overrides={"eps": EPS, "nb_iter": STEPS})
    assert torch.equal(pgdu.x_adv, whitebox.x_adv["ce"])
    assert _accuracy(model, pgdu.x_adv, y) == whitebox.ce


def test_suite_with_identity_defense_matches_whitebox(model, examples):
    x, y = examples
    suite = evaluate_adaptive_suite(model, IdentityDefense(), x, y, dataset=DATASET, eps=EPS, steps=STEPS, seed=1,
                                    autoattack=False, bpda=False)
    whitebox = adaptive_pgd(model, None, x, y, eps=EPS, steps=STEPS, seed=1)
    assert suite.to_metrics() == {
        "adaptive.pgd_worst": whitebox.worst, "adaptive.pgd_ce": whitebox.ce, "adaptive.pgd_margin": whitebox.margin,
    }


# (b) BPDA is not the adaptive attack where the defense's Jacobian is far from the identity --------


def test_adaptive_pgd_beats_bpda_when_identity_backward_is_wrong(model, examples):
    x, y = examples
    target = nn.Sequential(Invert(), model).eval()  # target(restore(x)) = model(x): accurate pipeline
    defense = InvertDefense()
    clean = _accuracy(target, x, y, defense.restore)
    assert clean > 0.85
    suite = evaluate_adaptive_suite(target, defense, x, y, dataset=DATASET, steps=20, budget=0.5,
                                    autoattack=False, bpda=True)
    metrics = suite.to_metrics()
    assert suite["adaptive.bpda"].eps == suite["adaptive.pgd_worst"].eps == 0.15  # digits' PGD eps
    assert suite["adaptive.bpda"].params["nb_iter"] == 20
    assert metrics["adaptive.bpda"] >= clean - 0.05  # the identity backward pass climbs the wrong way
    assert metrics["adaptive.pgd_worst"] <= 0.1
    assert metrics["adaptive.bpda"] - metrics["adaptive.pgd_worst"] >= 0.6


# (c) worse-of-two rule -----------------------------------------------------------------------


def test_worst_is_per_example_and_of_both_losses(model, examples):
    x, y = examples
    result = adaptive_pgd(model, SmoothDefense(), x, y, eps=0.05, steps=STEPS, seed=0)
    restore = SmoothDefense().restore
    for loss in ("ce", "margin"):
        x_adv = result.x_adv[loss]
        assert (x_adv - x).abs().max() <= 0.05 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            correct = model(restore(x_adv)).argmax(1) == y
        assert torch.equal(correct, result.correct[loss])
        assert getattr(result, loss) == correct.float().mean().item()
    both = result.correct["ce"] & result.correct["margin"]
    assert result.worst == both.float().mean().item()
    assert result.worst <= min(result.ce, result.margin)
    assert result.n == N and result.steps == STEPS and result.seed == 0
    assert result.step_size == pytest.approx(2.5 * 0.05 / STEPS)
    assert result.params["eps"] == 0.05 and result.params["rand_init"] is True


# (d) robustness curve ------------------------------------------------------------------------


def test_robustness_curve(model, examples):
    x, y = examples
    defense = SmoothDefense()
    curve = robustness_curve(model, defense, x, y, eps_max=0.2, num=3, steps=STEPS, seed=0)
    assert list(curve.columns) == list(CURVE_COLUMNS)
    assert curve["eps"].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert (curve["n"] == N).all() and (curve["steps"] == STEPS).all() and (curve["seed"] == 0).all()

    clean, reconstruction = _accuracy(model, x, y), _accuracy(model, x, y, defense.restore)
    first = curve.iloc[0]
    assert first["undefended_whitebox"] == clean
    assert first["defended_oblivious"] == reconstruction
    assert first["defended_adaptive"] == reconstruction
    # white-box columns fall with eps (a fixed step count may leave a little noise)
    for column in ("undefended_whitebox", "defended_adaptive"):
        assert (curve[column].diff().dropna() <= 2 / N).all(), curve
    assert curve["undefended_whitebox"].iloc[-1] < clean - 0.3
    assert curve["defended_adaptive"].iloc[-1] < reconstruction - 0.3
    assert curve[list(CURVE_COLUMNS[1:4])].apply(lambda c: c.between(0, 1)).all().all()


def test_curve_with_a_precomputed_whitebox_column_is_the_same_curve(model, examples, monkeypatch):
    """whitebox_curve once, handed to robustness_curve: the same frame, and no white-box attack run again."""
    from addd import adaptive

    x, y = examples
    whitebox = whitebox_curve(model, x, y, eps_max=0.2, num=3, steps=STEPS, seed=0)
    assert whitebox.eps == pytest.approx((0.0, 0.1, 0.2))
    plain = robustness_curve(model, SmoothDefense(), x, y, eps_max=0.2, num=3, steps=STEPS, seed=0)

    def no_whitebox_attack(*args, **kwargs):
        raise AssertionError("robustness_curve re-ran the white-box attacks it was handed")

    monkeypatch.setattr(adaptive, "adaptive_pgd", no_whitebox_attack)
    handed = robustness_curve(model, SmoothDefense(), x, y, eps_max=0.2, num=3, steps=STEPS, seed=0, whitebox=whitebox)
    assert handed.equals(plain)
    with pytest.raises(AdaptiveError, match="whitebox was computed"):
        robustness_curve(model, SmoothDefense(), x, y, eps_max=0.2, num=3, steps=STEPS, seed=1, whitebox=whitebox)
    with pytest.raises(AdaptiveError, match="whitebox was computed"):
        robustness_curve(model, SmoothDefense(), x[:-1], y[:-1], eps_max=0.2, num=3, steps=STEPS, seed=0,
                         whitebox=whitebox)


def test_adaptive_worst_is_the_worst_mask_of_both_losses(model, examples):
    """The curve's cheaper worst case: margin PGD only where CE PGD left the example correct."""
    x, y = examples
    defense = SmoothDefense()
    for eps in (0.05, EPS):
        full = adaptive_pgd(model, defense, x, y, eps=eps, steps=STEPS, seed=1)
        worst = adaptive_worst(model, defense, x, y, eps=eps, steps=STEPS, seed=1)
        assert worst.dtype == torch.bool and worst.shape == (N,)
        assert not (worst & ~full.correct["ce"]).any()  # the CE run is the very same attack
        # the margin run on the survivors draws its random start for a smaller batch: the same
        # figure up to an example or two
        assert abs(worst.float().mean().item() - full.worst) <= 2 / N, (worst.float().mean().item(), full.worst)
        assert worst.float().mean().item() < full.ce or full.ce == full.worst  # margin does bite where CE left some


def test_identity_flag_skips_reattacking_with_the_same_curve(model, examples):
    x, y = examples

    class FlaggedIdentity(IdentityDefense):
        is_identity = True

    flagged = robustness_curve(model, FlaggedIdentity(), x, y, eps_max=EPS, num=3, steps=STEPS, seed=0)
    attacked = robustness_curve(model, IdentityDefense(), x, y, eps_max=EPS, num=3, steps=STEPS, seed=0)
    assert flagged["undefended_whitebox"].tolist() == attacked["undefended_whitebox"].tolist()
    assert flagged["defended_oblivious"].tolist() == attacked["defended_oblivious"].tolist()  # same images, identity
    assert flagged["defended_adaptive"].tolist() == flagged["undefended_whitebox"].tolist()
    assert (flagged["defended_adaptive"] - attacked["defended_adaptive"]).abs().max() <= 2 / N
    from addd.baselines import AdversarialTraining, NoDefense

    assert NoDefense.is_identity and AdversarialTraining.is_identity
    assert torch.equal(NoDefense().restore(x), x)


def test_curve_of_a_defense_with_its_own_classifier_keeps_m_t_as_the_reference(model, examples):
    """Adversarial training's curve: M_t under white-box PGD, its adversarial images fed to the
    defense's classifier (transfer), and the white-box attack on that classifier."""
    x, y = examples

    class OwnClassifier(IdentityDefense):
        is_identity = True

    torch.manual_seed(1)
    other = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10)).eval()  # an untrained stand-in classifier
    curve = robustness_curve(other, OwnClassifier(), x, y, eps_max=EPS, num=3, steps=STEPS, seed=0,
                             undefended_model=model)
    of_m_t = robustness_curve(model, OwnClassifier(), x, y, eps_max=EPS, num=3, steps=STEPS, seed=0)
    of_other = robustness_curve(other, OwnClassifier(), x, y, eps_max=EPS, num=3, steps=STEPS, seed=0)
    assert curve["undefended_whitebox"].tolist() == of_m_t["undefended_whitebox"].tolist()
    assert (curve["defended_adaptive"] - of_other["defended_adaptive"]).abs().max() <= 2 / N
    for eps, row in zip(curve["eps"], curve.itertuples()):  # transfer: M_t's images through the other classifier
        x_adv = adaptive_pgd(model, None, x, y, eps=float(eps), steps=STEPS, seed=0).x_adv
        both = (other(x_adv["ce"]).argmax(1) == y) & (other(x_adv["margin"]).argmax(1) == y)
        assert row.defended_oblivious == pytest.approx(both.float().mean().item())
    assert curve["undefended_whitebox"].tolist() != of_other["undefended_whitebox"].tolist()


# (e) seeds and side effects -----------------------------------------------------------------


def test_seeded_and_leaves_state_alone(model, examples):
    x, y = examples
    defense = SmoothDefense()
    model[1].train()  # a mixed-mode model: one submodule in training mode
    model[3].weight.requires_grad_(False)
    modes = [m.training for m in (*model.modules(), *defense.modules())]
    flags = [p.requires_grad for p in (*model.parameters(), *defense.parameters())]
    torch.manual_seed(12345)
    np.random.seed(12345)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    try:
        with torch.no_grad():  # a caller's no_grad must not stop the attack
            first = adaptive_pgd(model, defense, x, y, eps=EPS, steps=STEPS, seed=7)
        second = adaptive_pgd(model, defense, x, y, eps=EPS, steps=STEPS, seed=7)
        other = adaptive_pgd(model, defense, x, y, eps=EPS, steps=STEPS, seed=8)

        assert first == second
        for loss in ("ce", "margin"):
            assert torch.equal(first.x_adv[loss], second.x_adv[loss])
            assert not torch.equal(first.x_adv[loss], other.x_adv[loss])
        assert first.seed == 7 and other.seed == 8
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
        assert [m.training for m in (*model.modules(), *defense.modules())] == modes
        assert [p.requires_grad for p in (*model.parameters(), *defense.parameters())] == flags
        assert all(p.grad is None for p in (*model.parameters(), *defense.parameters()))
    finally:
        model.eval()
        model[3].weight.requires_grad_(True)


def test_eps_zero_is_clean_accuracy(model, examples):
    x, y = examples
    result = adaptive_pgd(model, None, x, y, eps=0.0, steps=STEPS)
    assert result.worst == result.ce == result.margin == _accuracy(model, x, y)
    assert torch.equal(result.x_adv["ce"], x)


def test_bad_inputs(model, examples):
    x, y = examples
    with pytest.raises(AdaptiveError, match="eps"):
        adaptive_pgd(model, None, x, y, eps=2.0)
    with pytest.raises(AdaptiveError, match="y must"):
        adaptive_pgd(model, None, x, y.float(), eps=EPS)
    with pytest.raises(AdaptiveError, match="steps"):
        adaptive_pgd(model, None, x, y, eps=EPS, steps=0)
    with pytest.raises(AdaptiveError, match="restore"):
        adaptive_pgd(model, 3, x, y, eps=EPS)
    with pytest.raises(AdaptiveError, match="restore"):
        evaluate_adaptive_suite(model, lambda v: v, x, y, dataset=DATASET)


# the whole suite, AutoAttack included, at a smoke budget (well under a second here) ------------


def test_suite_rows_and_names(model, examples):
    x, y = examples
    suite = evaluate_adaptive_suite(model, SmoothDefense(), x, y, dataset=DATASET, steps=STEPS, seed=2,
                                    budget=0.05, n=16)
    assert [row.metric for row in suite.rows] == list(METRICS)
    assert [row.attack for row in suite.rows] == list(METRICS.values())
    assert {row.threat_model for row in suite.rows} == {"adaptive"}
    assert {row.n for row in suite.rows} == {16} and {row.seed for row in suite.rows} == {2}
    assert [row.norm for row in suite.rows] == ["Linf", "Linf", "Linf", "Linf", "L2", "Linf"]
    assert suite["adaptive.aa_linf"].eps == 0.15 and suite["adaptive.aa_l2"].eps == 3.0
    assert suite["adaptive.pgd_worst"].params["steps"] == STEPS
    metrics = suite.to_metrics()
    assert set(metrics) == set(METRICS) and all(0 <= v <= 1 for v in metrics.values())
    frame = suite.to_frame()
    assert list(frame["metric"]) == list(METRICS) and list(frame["accuracy"]) == [metrics[m] for m in METRICS]
