"""The five networks of ADD-Defense, paper Table 4, with a width factor.

At ``width=1.0`` on 32x32x3 images these are exactly Table 4 (E 128..2048, G 1024..3,
D_P 1024-256-64-n, D_I 32..256 + FC 512 + FC 1); smaller widths scale every channel and hidden
size so CPU runs stay small. Conv(m, 4, 2, 1) everywhere, LeakyReLU between layers, no
normalisation layers (Table 4 lists none).

Our readings where Table 4 is silent:
- E is a Gaussian encoder: Table 4's last Conv(2048) gives the mean of z, and a parallel Conv of the
  same shape on the same features gives its log-variance (needed by the prior term, eq (3)).
- G ends in a sigmoid so restored images lie in [0, 1], the range every attack and the target
  model use.
- C (not in Table 4) is FC(256) - LeakyReLU - FC(num_classes) on z.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from addd.config import NetworkConfig

ENCODER_CHANNELS = (128, 256, 512, 1024)  # followed by the Conv(2048) mean / log-variance heads
LATENT_CHANNELS = 2048
GENERATOR_CHANNELS = (1024, 512, 256, 128)  # followed by Deconv(image channels)
DP_HIDDEN = (1024, 256, 64)
DI_CHANNELS = (32, 64, 128, 256)
DI_HIDDEN = 512
CLASSIFIER_HIDDEN = 256
LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite in float32
INITIAL_LOGVAR = -6.0  # bias of E's log-variance head at initialisation


def init_weights(module: nn.Module, leaky_slope: float) -> None:
    """He init for LeakyReLU and zero biases, so the signal keeps its scale through the five
    un-normalised layers of E and G. (PyTorch's default init shrinks it ~3x per layer: E's output
    then barely depends on its input, and G learns only the average image.)"""
    gain = math.sqrt(2.0 / (1.0 + leaky_slope**2))
    for m in module.modules():
        if isinstance(m, nn.Linear):
            fan_in = m.in_features
        elif isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):  # each output sums k*k/stride^2 taps per input channel
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // (m.stride[0] * m.stride[1])
        else:
            continue
        nn.init.normal_(m.weight, 0.0, gain / math.sqrt(fan_in))
        nn.init.zeros_(m.bias)


def scaled(size: int, width: float) -> int:
    """A Table 4 size scaled by the width factor (at least 1)."""
    return max(1, round(size * width))


def latent_dim(config: NetworkConfig) -> int:
    """Size of the representation z (E's output is (B, latent_dim, 1, 1))."""
    return scaled(LATENT_CHANNELS, config.width)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1)


def _conv_stack(c_in: int, channels: tuple[int, ...], config: NetworkConfig) -> tuple[nn.Sequential, int]:
    """[Conv(c, 4, 2, 1) + LeakyReLU] for each Table 4 size c (scaled); returns it and its out channels."""
    layers: list[nn.Module] = []
    for size in channels:
        c_out = scaled(size, config.width)
        layers += [_conv(c_in, c_out), nn.LeakyReLU(config.leaky_slope)]
        c_in = c_out
    return nn.Sequential(*layers), c_in


def _deconv(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)


class Encoder(nn.Module):
    """E: (B, C, 32, 32) -> z_mean, z_logvar, each (B, latent_dim)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.features, c_in = _conv_stack(config.channels, ENCODER_CHANNELS, config)  # (B, 1024w, 2, 2)
        self.mean_head = _conv(c_in, latent_dim(config))  # (B, 2048w, 1, 1)
        self.logvar_head = _conv(c_in, latent_dim(config))
        init_weights(self, config.leaky_slope)
        # Start close to deterministic (std e^-3 ~ 0.05 everywhere): unit-variance noise at the
        # start drowns the mean, and G then learns only the average image.
        nn.init.zeros_(self.logvar_head.weight)
        nn.init.constant_(self.logvar_head.bias, INITIAL_LOGVAR)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        z_mean = self.mean_head(h).flatten(1)
        z_logvar = self.logvar_head(h).flatten(1).clamp(*LOGVAR_RANGE)
        return z_mean, z_logvar


class Generator(nn.Module):
    """G: z (B, latent_dim) -> restored image (B, C, 32, 32) in [0, 1]."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = latent_dim(config)
        for channels in GENERATOR_CHANNELS:
            c_out = scaled(channels, config.width)
            layers += [_deconv(c_in, c_out), nn.LeakyReLU(config.leaky_slope)]
            c_in = c_out
        layers += [_deconv(c_in, config.channels), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        init_weights(self, config.leaky_slope)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


def _mlp(sizes: list[int], slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


class PerturbationDiscriminator(nn.Module):
    """D_P: z (B, latent_dim) -> logits over {original, known attacks} (B, num_domains)."""

    def __init__(self, config: NetworkConfig, num_domains: int):
        super().__init__()
        hidden = [scaled(h, config.width) for h in DP_HIDDEN]
        self.net = _mlp([latent_dim(config), *hidden, num_domains], config.leaky_slope)
        init_weights(self, config.leaky_slope)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ImageDiscriminator(nn.Module):
    """D_I: image (B, C, 32, 32) -> real/restored logit (B,)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.features, c_in = _conv_stack(config.channels, DI_CHANNELS, config)  # (B, 256w, 2, 2)
        spatial = config.image_size // 2 ** len(DI_CHANNELS)
        hidden = scaled(DI_HIDDEN, config.width)
        self.head = _mlp([c_in * spatial * spatial, hidden, 1], config.leaky_slope)
        init_weights(self, config.leaky_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)


class LatentClassifier(nn.Module):
    """C: z (B, latent_dim) -> class logits (B, num_classes)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        hidden = scaled(CLASSIFIER_HIDDEN, config.width)
        self.net = _mlp([latent_dim(config), hidden, config.num_classes], config.leaky_slope)
        init_weights(self, config.leaky_slope)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
