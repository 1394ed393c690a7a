"""Losses against independent brute-force computations (numpy, explicit loops) and invariants."""

import math

import numpy as np
import pytest
import torch

from addd import losses


def _rbf_np(a, b, sigmas):
    return sum(math.exp(-float(np.sum((a - b) ** 2)) / (2 * s * s)) for s in sigmas)


def _mmd_np(x, y, sigmas):
    """Biased MMD by explicit double sums over examples, Appendix B."""
    x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    n, m = len(x), len(y)
    kxx = sum(_rbf_np(x[i], x[j], sigmas) for i in range(n) for j in range(n)) / n**2
    kyy = sum(_rbf_np(y[i], y[j], sigmas) for i in range(m) for j in range(m)) / m**2
    kxy = sum(_rbf_np(x[i], y[j], sigmas) for i in range(n) for j in range(m)) / (n * m)
    return math.sqrt(max(kxx - 2 * kxy + kyy, 0.0))


@pytest.mark.parametrize("sigma", [1.0, 3.0, [0.5, 2.0, 8.0]])
def test_mmd_matches_brute_force(sigma):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 2, 3)).astype(np.float32)
    y = (rng.normal(size=(5, 2, 3)) + 0.7).astype(np.float32)
    sigmas = sigma if isinstance(sigma, list) else [sigma]
    got = losses.mmd(torch.from_numpy(x), torch.from_numpy(y), sigma).item()
    assert got == pytest.approx(_mmd_np(x, y, sigmas), rel=1e-4, abs=1e-5)
    assert got > 0.05  # shifted distributions are told apart


def test_mmd_symmetric_and_zero_on_itself():
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.randn(9, 4) * 2
    assert losses.mmd(x, y, 2.0).item() == pytest.approx(losses.mmd(y, x, 2.0).item(), rel=1e-5)
    assert losses.mmd(x, x, 2.0).item() < 1e-5  # only the 1e-12 stabiliser remains (sqrt = 1e-6)


def test_mmd_rejects_bad_bandwidth():
    with pytest.raises(ValueError, match="sigma"):
        losses.mmd(torch.randn(3, 2), torch.randn(3, 2), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        losses.mmd(torch.randn(3, 2), torch.randn(3, 2), [])


def test_multi_domain_mmd_matches_double_sum_of_pairs():
    rng = np.random.default_rng(1)
    zs = [rng.normal(loc=k, size=(5 + k, 6)).astype(np.float32) for k in range(3)]
    sigma = [1.0, 4.0]
    n = len(zs)
    expected = sum(_mmd_np(zs[k], zs[l], sigma) for k in range(n) for l in range(n)) / n**2
    got = losses.multi_domain_mmd([torch.from_numpy(z) for z in zs], sigma).item()
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_multi_domain_mmd_zero_for_identical_domains_and_gradient_finite():
    z = torch.randn(8, 5, requires_grad=True)
    value = losses.multi_domain_mmd([z, z, z], 1.0)
    assert value.item() < 1e-6
    value.backward()
    assert torch.isfinite(z.grad).all()


def test_multi_domain_mmd_uses_one_kernel_evaluation(monkeypatch):
    calls = []
    real = losses.rbf_kernel
    monkeypatch.setattr(losses, "rbf_kernel", lambda *a, **k: calls.append(1) or real(*a, **k))
    losses.multi_domain_mmd([torch.randn(4, 3) for _ in range(5)], 1.0)
    assert len(calls) == 1


def test_prior_kl_matches_closed_form_and_is_zero_at_prior():
    zero = torch.zeros(4, 3)
    assert losses.prior_loss([zero, zero], [zero, zero]).item() == 0.0
    rng = np.random.default_rng(2)
    mean, logvar = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)) * 0.5
    # KL(N(m, s^2) || N(0, 1)) per dimension = log(1/s) + (s^2 + m^2)/2 - 1/2, summed over dims
    expected = np.mean(
        [sum(-0.5 * logvar[i, j] + (math.exp(logvar[i, j]) + mean[i, j] ** 2) / 2 - 0.5 for j in range(4)) for i in range(3)]
    )
    got = losses.prior_loss([torch.tensor(mean)], [torch.tensor(logvar)]).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got > 0


def test_prior_loss_averages_domains():
    m1, v1 = torch.randn(5, 2), torch.randn(5, 2)
    m2, v2 = torch.randn(3, 2) + 2, torch.randn(3, 2)
    both = losses.prior_loss([m1, m2], [v1, v2])
    single = (losses.prior_loss([m1], [v1]) + losses.prior_loss([m2], [v2])) / 2
    assert both.item() == pytest.approx(single.item(), rel=1e-6)


def test_confusion_loss_is_cross_entropy_against_uniform():
    logits = torch.randn(6, 3)
    log_p = torch.log_softmax(logits, 1).numpy()
    expected = -np.mean([sum(log_p[i, c] / 3 for c in range(3)) for i in range(6)])
    assert losses.perturbation_confusion_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    # minimum log(n) exactly at the confused (uniform) prediction
    assert losses.perturbation_confusion_loss(torch.zeros(4, 3)).item() == pytest.approx(math.log(3))
    assert losses.perturbation_confusion_loss(logits).item() > math.log(3)


def test_discriminator_and_classification_losses_are_cross_entropy():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    log_p = torch.log_softmax(logits, 1)
    expected = -np.mean([log_p[i, labels[i]].item() for i in range(5)])
    assert losses.perturbation_discriminator_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert losses.classification_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_image_gan_losses_match_eq6():
    real, fake = torch.randn(5), torch.randn(7)
    sig = torch.sigmoid
    expected_d = -(torch.log(sig(real)).mean() + torch.log(1 - sig(fake)).mean())
    assert losses.image_discriminator_loss(real, fake).item() == pytest.approx(expected_d.item(), rel=1e-5)
    assert losses.image_generator_loss(fake).item() == pytest.approx(-torch.log(sig(fake)).mean().item(), rel=1e-5)


def test_reconstruction_loss_is_mse():
    a, b = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    assert losses.reconstruction_loss(a, b).item() == pytest.approx(((a - b) ** 2).mean().item(), rel=1e-6)
    assert losses.reconstruction_loss(a, a).item() == 0.0
