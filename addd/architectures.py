"""Target-model architectures M_t (paper App. C.2) and their registry: pure torch modules.

Every model takes images in [0, 1], (N, C, 32, 32), and returns logits (N, num_classes); any
normalisation is the model's first layer (:class:`Normalize`), so attacks and defenses all see
the same threat model. ``TARGET_ARCHS`` maps a name to its constructor, ``DEFAULT_ARCH`` a
dataset to the paper's architecture for it; :func:`arch_kwargs_for` spells out every
constructor argument (what the target-model cache keys on and stores), :func:`build_target_model`
builds one, untrained. Training, caching and loading live in :mod:`addd.target_models`.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from addd.errors import AdddError


class TargetModelError(AdddError):
    """Bad architecture / settings, or a target-model file that cannot be used; says what to do."""


class Normalize(nn.Module):
    """(x - mean) / std per channel; constants, not parameters (kept out of the state dict)."""

    def __init__(self, channels: int, mean: float | Sequence[float], std: float | Sequence[float]):
        super().__init__()
        mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (mean, std))
        if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels):
            raise TargetModelError(f"normalisation mean/std need 1 or {channels} values, got {mean} / {std}")
        mean_t, std_t = (t.expand(channels).reshape(1, channels, 1, 1) for t in (mean_t, std_t))
        if not bool((std_t > 0).all()):
            raise TargetModelError(f"normalisation std must be > 0, got {std}")
        self.register_buffer("mean", mean_t.clone(), persistent=False)
        self.register_buffer("std", std_t.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _NormalizedStack(nn.Module):
    """``Normalize`` then a plain stack of layers (a Module, not a Sequential subclass, so
    slicing never tries to call the architecture's constructor with a layer dict)."""

    def __init__(self, normalize: Normalize, *layers: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(x))  # (N, C, 32, 32) -> (N, num_classes)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose forward-only calls on a CPU (the input needs no gradient: evaluation,
    decision-based attacks, AutoAttack's Square) pool a channels-last copy and hand back the usual
    layout. A maximum is exact, so the values are the same bit for bit, and torch's channels-last
    CPU kernel is vectorised where its NCHW one is not (bench/maxpool.py: the digits target
    model's forward pass at batch 300, one thread). With a gradient to carry, or on a GPU, it is
    ``nn.MaxPool2d`` itself, so training and gradient attacks are untouched. No parameters:
    state dicts and weight hashes do not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or x.device.type != "cpu" or x.dim() != 4:
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def with_torch_pools(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``MaxPool2d`` above swapped for torch's own ``nn.MaxPool2d``
    (the same weights): what the fast path is compared with and timed against
    (tests/test_target_models.py, bench/maxpool.py)."""
    import copy

    plain = copy.deepcopy(model)
    for module in plain.modules():
        for name, child in module.named_children():
            if isinstance(child, MaxPool2d):
                setattr(module, name, nn.MaxPool2d(child.kernel_size, child.stride, child.padding, child.dilation,
                                                   child.return_indices, child.ceil_mode))
    return plain


def _conv_relu(c_in: int, c_out: int, batch_norm: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class DigitsCNN(_NormalizedStack):
    """Small CNN for the bundled 8x8 digits (upsampled to 32x32): 2 conv + pool, FC."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 8, mean: float = 0.5, std: float = 0.5):
        super().__init__(
            Normalize(channels, mean, std),
            *_conv_relu(channels, width), MaxPool2d(2),  # (N, w, 16, 16)
            *_conv_relu(width, 2 * width), MaxPool2d(2),  # (N, 2w, 8, 8)
            nn.Flatten(),
            nn.Linear(2 * width * 8 * 8, 64), nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )


class LeNet(_NormalizedStack):
    """MNIST target (App. C.2: advertorch's LeNet5): 2 conv + pool, FC 200, FC; at 32x32 input."""

    def __init__(self, channels: int = 1, num_classes: int = 10, mean: float = 0.5, std: float = 0.5):
        super().__init__(
            Normalize(channels, mean, std),
            *_conv_relu(channels, 32), MaxPool2d(2),  # (N, 32, 16, 16)
            *_conv_relu(32, 64), MaxPool2d(2),  # (N, 64, 8, 8)
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 200), nn.ReLU(inplace=True),
            nn.Linear(200, num_classes),
        )


class FashionCNN(_NormalizedStack):
    """Fashion-MNIST target (App. C.2): 3 conv layers, each followed by max-pooling, then one FC."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, mean: float = 0.5, std: float = 0.5):
        super().__init__(
            Normalize(channels, mean, std),
            *_conv_relu(channels, width), MaxPool2d(2),  # (N, w, 16, 16)
            *_conv_relu(width, 2 * width), MaxPool2d(2),  # (N, 2w, 8, 8)
            *_conv_relu(2 * width, 4 * width), MaxPool2d(2),  # (N, 4w, 4, 4)
            nn.Flatten(),
            nn.Linear(4 * width * 4 * 4, num_classes),
        )


class SVHNCNN(_NormalizedStack):
    """SVHN target (App. C.2): 4 conv layers (with batch norm) in two max-pooled blocks, dropout."""

    def __init__(
        self,
        channels: int = 3,
        num_classes: int = 10,
        width: int = 32,
        dropout: float = 0.3,
        mean: float = 0.5,
        std: float = 0.5,
    ):
        super().__init__(
            Normalize(channels, mean, std),
            *_conv_relu(channels, width, True), *_conv_relu(width, width, True),
            MaxPool2d(2), nn.Dropout(dropout),  # (N, w, 16, 16)
            *_conv_relu(width, 2 * width, True), *_conv_relu(2 * width, 2 * width, True),
            MaxPool2d(2), nn.Dropout(dropout),  # (N, 2w, 8, 8)
            nn.Flatten(),
            nn.Linear(2 * width * 8 * 8, 256), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )


class _BasicBlock(nn.Module):
    """CIFAR ResNet block; the shortcut is He et al.'s option A (subsample + zero channels)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra_channels = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, half, self.extra_channels - half))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """CIFAR ResNet of He et al. (2016), depth = 6n + 2. The paper's CIFAR-10 target is
    ResNet-110 (``depth=110``), out of reach on CPU; the default here is ResNet-20."""

    def __init__(
        self,
        channels: int = 3,
        num_classes: int = 10,
        depth: int = 20,
        width: int = 16,
        mean: float | Sequence[float] = 0.5,  # about CIFAR-10's (0.49, 0.48, 0.45); scalar fits any channels
        std: float | Sequence[float] = 0.25,  # about CIFAR-10's (0.25, 0.24, 0.26)
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise TargetModelError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.normalize = Normalize(channels, mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, c_in = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):  # 32x32, 16x16, 8x8
            for block in range(blocks_per_stage):
                stages.append(_BasicBlock(c_in, c_out, stride=2 if stage > 0 and block == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(self.normalize(x)))  # (N, 4w, 8, 8)
        return self.head(features.mean(dim=(2, 3)))


TARGET_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "lenet": LeNet,
    "fmnist_cnn": FashionCNN,
    "svhn_cnn": SVHNCNN,
    "resnet": CifarResNet,
}
DEFAULT_ARCH: dict[str, str] = {
    "digits": "digits_cnn",
    "mnist": "lenet",
    "mnist5k": "lenet",  # real MNIST digits: the paper's MNIST target (C.2)
    "fashion_mnist": "fmnist_cnn",
    "svhn": "svhn_cnn",
    "svhn_synthetic": "svhn_cnn",  # benchmarks only: SVHN's shape
    "cifar10": "resnet",
}


def arch_kwargs_for(arch: str, channels: int, num_classes: int, overrides: Mapping[str, Any] | None = None) -> dict:
    """All constructor arguments of ``arch`` (defaults filled in), as JSON would return them."""
    if arch not in TARGET_ARCHS:
        raise TargetModelError(f"unknown target architecture {arch!r}; valid names: {', '.join(TARGET_ARCHS)}")
    signature = inspect.signature(TARGET_ARCHS[arch])
    try:
        bound = signature.bind(channels=channels, num_classes=num_classes, **dict(overrides or {}))
    except TypeError as exc:
        raise TargetModelError(f"bad arguments for {arch} ({exc}); it takes {', '.join(signature.parameters)}") from exc
    bound.apply_defaults()
    return json.loads(json.dumps(bound.arguments))  # tuples -> lists, exactly as stored in metadata


def build_target_model(arch: str, **kwargs: Any) -> nn.Module:
    """Construct architecture ``arch`` from the registry (untrained)."""
    if arch not in TARGET_ARCHS:
        raise TargetModelError(f"unknown target architecture {arch!r}; valid names: {', '.join(TARGET_ARCHS)}")
    return TARGET_ARCHS[arch](**kwargs)
