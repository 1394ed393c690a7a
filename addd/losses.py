"""ADD-Defense losses as pure functions (paper Sec 3, Appendix B).

Shapes: B = examples per domain, n = number of domains (original + K known attacks),
d = representation size (z flattened), C = image channels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

MMD_EPS = 1e-12  # inside the square root of MMD^2, so the gradient at MMD = 0 stays finite


def _sigmas(sigma: float | Sequence[float]) -> list[float]:
    values = [float(sigma)] if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if not values or any(not (s > 0) for s in values):
        raise ValueError(f"MMD bandwidth sigma must be > 0 (or a non-empty list of them), got {sigma!r}")
    return values


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, sigma: float | Sequence[float]) -> torch.Tensor:
    """Sum over bandwidths of exp(-||a_i - b_j||^2 / (2 sigma^2)), Appendix B.

    a: (N, ...) and b: (M, ...), flattened to (N, d) and (M, d). Returns (N, M).
    """
    a, b = a.flatten(1), b.flatten(1)
    # ||a||^2 + ||b||^2 - 2 a.b: one matmul instead of an (N, M, d) difference tensor.
    sq_dist = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * a @ b.T).clamp_min(0.0)
    return sum(torch.exp(-sq_dist / (2.0 * s * s)) for s in _sigmas(sigma))


def mmd(x: torch.Tensor, y: torch.Tensor, sigma: float | Sequence[float]) -> torch.Tensor:
    """Biased empirical MMD between two batches of representations, Appendix B.

    MMD(Z_k, Z_l) = sqrt( mean k(z_k, z_k') - 2 mean k(z_k, z_l) + mean k(z_l, z_l') + eps ),
    the square root of the biased MMD^2 estimate (Gretton et al., 2007), eps = 1e-12.
    x: (N, ...), y: (M, ...), flattened. sigma: bandwidth or bandwidths (kernels summed).
    Returns a scalar tensor.
    """
    mmd_sq = rbf_kernel(x, x, sigma).mean() - 2.0 * rbf_kernel(x, y, sigma).mean() + rbf_kernel(y, y, sigma).mean()
    return torch.sqrt(mmd_sq.clamp_min(0.0) + MMD_EPS)


def multi_domain_mmd(zs: Sequence[torch.Tensor], sigma: float | Sequence[float]) -> torch.Tensor:
    """L_mmd = (1/n^2) sum_{k,l} MMD(Z_k, Z_l) over the n domains given, eq (1).

    zs: n tensors (B_k, ...) (original + known attacks). One kernel matrix over the concatenated
    batch; the per-domain block means come from a (total, n) averaging matrix, so the cost is
    one (total x total) kernel, not n^2 separate kernel evaluations. Diagonal terms are exactly
    zero (MMD(Z_k, Z_k) = 0) and are not passed through the square root.
    """
    if len(zs) < 1:
        raise ValueError("multi_domain_mmd needs at least one domain")
    n = len(zs)
    z_all = torch.cat([z.flatten(1) for z in zs], dim=0)  # (total, d)
    kernel = rbf_kernel(z_all, z_all, sigma)  # (total, total)
    sizes = torch.tensor([z.shape[0] for z in zs], device=z_all.device)
    domain = torch.repeat_interleave(torch.arange(n, device=z_all.device), sizes)
    averaging = F.one_hot(domain, n).to(kernel.dtype) / sizes.to(kernel.dtype)  # (total, n)
    block_means = averaging.T @ kernel @ averaging  # (n, n): mean of k over domain k x domain l
    diag = block_means.diagonal()
    mmd_sq = diag.unsqueeze(1) + diag.unsqueeze(0) - 2.0 * block_means
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z_all.device)
    mmd_kl = torch.sqrt(mmd_sq[off_diagonal].clamp_min(0.0) + MMD_EPS)
    return mmd_kl.sum() / (n * n)


def gaussian_kl_to_prior(z_mean: torch.Tensor, z_logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(z_mean, exp(z_logvar)) || N(0, I) ) per example, summed over latent dims.

    z_mean, z_logvar: (B, ...). Returns (B,).
    """
    kl = 0.5 * (z_mean.pow(2) + z_logvar.exp() - 1.0 - z_logvar)
    return kl.flatten(1).sum(1)


def prior_loss(z_means: Sequence[torch.Tensor], z_logvars: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_g = (1/n) sum_k KL(P_k || N(0, I)), eq (3), with the average distribution set to N(0, I).

    P_k is the encoder's Gaussian posterior on domain k, estimated by the mean over its examples.
    z_means, z_logvars: one (B_k, ...) tensor per domain. Returns a scalar.
    """
    if len(z_means) != len(z_logvars) or not z_means:
        raise ValueError("prior_loss needs one (mean, logvar) pair per domain")
    return torch.stack([gaussian_kl_to_prior(m, v).mean() for m, v in zip(z_means, z_logvars)]).mean()


def perturbation_discriminator_loss(logits: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """D_P's side of eq (2): cross-entropy of D_P(z) against the true domain label.

    logits: (B, n) D_P outputs over {original, known attacks}; domain: (B,) in [0, n).
    D_P minimises this (= maximises the Y^p . logsoft term of eq (2)).
    """
    return F.cross_entropy(logits, domain)


def perturbation_confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """E's side of eq (2): cross-entropy of D_P(E(x)) against the confused label Y^p_zeta.

    The confused label is uniform, 1/n for each of the n D_P classes, so E is pushed to make
    the domain unrecognisable. logits: (B, n). Minimum log(n), reached at a uniform prediction.
    """
    return -(F.log_softmax(logits, dim=1).mean(dim=1)).mean()


def classification_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_c, eq (4): cross-entropy of C(E(x)) against the true class, over all domains.

    logits: (B, num_classes), y: (B,).
    """
    return F.cross_entropy(logits, y)


def reconstruction_loss(x_restored: torch.Tensor, x_original: torch.Tensor) -> torch.Tensor:
    """L_mse of Sec 3.2: mean squared error between G(E(x_k)) and the original x_o.

    x_restored, x_original: (B, C, H, W). Mean over every element.
    """
    return F.mse_loss(x_restored, x_original)


def image_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D_I's side of eq (6): maximise log D_I(x_o) + log(1 - D_I(G(E(x_k)))).

    Written as the equivalent binary cross-entropy to minimise; logits (B,) or (B, 1).
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def image_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G and E's side of eq (6)/(7), in the usual non-saturating form -log D_I(G(E(x_k))).

    Same fixed point as minimising log(1 - D_I(.)), with useful gradients early in training.
    """
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
