"""Target classifiers M_t (paper App. C.2): architectures, seeded training, and a cache that
trains each (data, architecture, settings) once.

Every model takes images in [0, 1], (N, C, 32, 32), and returns logits (N, num_classes); any
normalisation is the model's first layer, so attacks and defenses all see the same threat model.

Files are safetensors (via ``addd.storage``) with JSON metadata; loading rebuilds the model from
that metadata and never unpickles anything (our equivalent of ``torch.load(weights_only=True)``).
The cache lives in ``<cache_dir>/target_models/``, with ``cache_dir`` from ``$ADDD_CACHE_DIR``
or ``./.addd_cache``; a file lock makes concurrent processes train once while the others wait.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from addd.data import Dataset, Split
from addd.storage import StorageError, load_tensors, save_tensors, sha256_state_dict, stable_hash

logger = logging.getLogger(__name__)

FORMAT = "addd-target-model/1"
CACHE_SUBDIR = "target_models"


class TargetModelError(ValueError):
    """Bad architecture / settings, or a target-model file that cannot be used; says what to do."""


# ----------------------------------------------------------------------------- architectures


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
            *_conv_relu(channels, width), nn.MaxPool2d(2),  # (N, w, 16, 16)
            *_conv_relu(width, 2 * width), nn.MaxPool2d(2),  # (N, 2w, 8, 8)
            nn.Flatten(),
            nn.Linear(2 * width * 8 * 8, 64), nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )


class LeNet(_NormalizedStack):
    """MNIST target (App. C.2: advertorch's LeNet5): 2 conv + pool, FC 200, FC; at 32x32 input."""

    def __init__(self, channels: int = 1, num_classes: int = 10, mean: float = 0.5, std: float = 0.5):
        super().__init__(
            Normalize(channels, mean, std),
            *_conv_relu(channels, 32), nn.MaxPool2d(2),  # (N, 32, 16, 16)
            *_conv_relu(32, 64), nn.MaxPool2d(2),  # (N, 64, 8, 8)
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 200), nn.ReLU(inplace=True),
            nn.Linear(200, num_classes),
        )


class FashionCNN(_NormalizedStack):
    """Fashion-MNIST target (App. C.2): 3 conv layers, each followed by max-pooling, then one FC."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, mean: float = 0.5, std: float = 0.5):
        super().__init__(
            Normalize(channels, mean, std),
            *_conv_relu(channels, width), nn.MaxPool2d(2),  # (N, w, 16, 16)
            *_conv_relu(width, 2 * width), nn.MaxPool2d(2),  # (N, 2w, 8, 8)
            *_conv_relu(2 * width, 4 * width), nn.MaxPool2d(2),  # (N, 4w, 4, 4)
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
            nn.MaxPool2d(2), nn.Dropout(dropout),  # (N, w, 16, 16)
            *_conv_relu(width, 2 * width, True), *_conv_relu(2 * width, 2 * width, True),
            nn.MaxPool2d(2), nn.Dropout(dropout),  # (N, 2w, 8, 8)
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
    "fashion_mnist": "fmnist_cnn",
    "svhn": "svhn_cnn",
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


# ----------------------------------------------------------------------------- settings


def _augment_none(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x


def _augment_crop(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random 32x32 crop of each image zero-padded by ``pad`` pixels (a shift of up to 4)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def _augment_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = _augment_crop(x, generator)
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "none": _augment_none,
    "crop": _augment_crop,  # random shifts of up to 4 pixels
    "crop_flip": _augment_crop_flip,  # natural images (CIFAR); not digits: a flipped digit is another digit
}
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, s: torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay),
    "sgd": lambda params, s: torch.optim.SGD(
        params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=s.momentum > 0
    ),
}
LR_SCHEDULES: dict[str, Callable[[int], Callable[[int], float]]] = {
    "constant": lambda total_steps: lambda step: 1.0,
    "cosine": lambda total_steps: lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TargetTrainSettings:
    """How a target model is trained; every field is part of the cache key."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # a key of OPTIMIZERS
    momentum: float = 0.9  # SGD only (Nesterov when > 0)
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # a key of LR_SCHEDULES, stepped per batch
    augment: str = "none"  # a key of AUGMENTATIONS
    seed: int = 0  # initialisation, shuffling, dropout and augmentation

    def __post_init__(self) -> None:
        checks = [  # (field, valid?, what it must be)
            ("epochs", _is_int(self.epochs) and self.epochs >= 1, "an int >= 1"),
            ("batch_size", _is_int(self.batch_size) and self.batch_size >= 2, "an int >= 2"),
            ("lr", _is_number(self.lr) and 0 < self.lr < math.inf, "a number > 0"),
            ("momentum", _is_number(self.momentum) and 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", _is_number(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("seed", _is_int(self.seed), "an int"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise TargetModelError(f"TargetTrainSettings.{name} must be {rule}, got {getattr(self, name)!r}")
        for name, registry in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES), ("augment", AUGMENTATIONS)):
            if getattr(self, name) not in registry:
                raise TargetModelError(
                    f"TargetTrainSettings.{name}={getattr(self, name)!r} is unknown; valid: {', '.join(registry)}"
                )


# Per-dataset defaults. Only the digits one has been measured on this project's CPUs (see
# tests); the others follow common practice for these architectures and are starting points.
DEFAULT_SETTINGS: dict[str, TargetTrainSettings] = {
    "digits": TargetTrainSettings(epochs=10, batch_size=64, lr=3e-3),
    "mnist": TargetTrainSettings(epochs=10, batch_size=128, lr=1e-3),
    "fashion_mnist": TargetTrainSettings(epochs=20, batch_size=128, lr=1e-3),
    "svhn": TargetTrainSettings(epochs=20, batch_size=128, lr=1e-3, weight_decay=5e-4),
    "cifar10": TargetTrainSettings(
        epochs=160, batch_size=128, lr=0.1, optimizer="sgd", weight_decay=1e-4, augment="crop_flip"
    ),
}


def default_settings(dataset_name: str) -> TargetTrainSettings:
    """The per-dataset defaults, or the generic ``TargetTrainSettings()`` for other data."""
    return DEFAULT_SETTINGS.get(dataset_name, TargetTrainSettings())


# ----------------------------------------------------------------------------- training


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Predicted labels (N,) int64 on the CPU, in batches; the model's mode is left as it is."""
    labels = [model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64)


def accuracy(model: nn.Module, split: Split, device: str | torch.device = "cpu") -> float | None:
    """Top-1 accuracy on ``split`` in eval mode (None for an empty split)."""
    if len(split) == 0:
        return None
    was_training = model.training
    model.eval()
    correct = (predict(model, split.x, device=device) == split.y).sum().item()
    model.train(was_training)
    return correct / len(split)


@dataclass
class TrainResult:
    """What :func:`train_target_model` returns: the model (eval mode) and its record."""

    model: nn.Module
    clean_test_accuracy: float | None
    val_accuracy: float | None
    history: list[dict[str, float | None]] = field(default_factory=list)
    seconds: float = 0.0


def train_target_model(
    dataset: Dataset,
    arch: str,
    settings: TargetTrainSettings,
    arch_kwargs: Mapping[str, Any],
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train ``arch`` on ``dataset.train`` (cross-entropy), seeded; deterministic on CPU.

    The caller's global RNG state is left untouched. Reports val accuracy per epoch and the
    clean test accuracy at the end.
    """
    if len(dataset.train) < 2:
        raise TargetModelError(f"{dataset.name}: need at least 2 training examples, got {len(dataset.train)}")
    device = torch.device(device)
    start = time.perf_counter()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(settings.seed)  # initialisation and dropout
        model = build_target_model(arch, **arch_kwargs).to(device)
        generator = torch.Generator().manual_seed(settings.seed)  # shuffling and augmentation
        optimizer = OPTIMIZERS[settings.optimizer](model.parameters(), settings)
        n = len(dataset.train)
        total_steps = settings.epochs * math.ceil(n / settings.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LR_SCHEDULES[settings.lr_schedule](total_steps))
        augment = AUGMENTATIONS[settings.augment]
        history: list[dict[str, float | None]] = []
        for epoch in range(1, settings.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator)
            loss_sum, seen = 0.0, 0
            for i in range(0, n, settings.batch_size):
                index = order[i : i + settings.batch_size]
                if len(index) < 2:  # batch norm cannot train on a single example
                    continue
                x = augment(dataset.train.x[index], generator).to(device)
                y = dataset.train.y[index].to(device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum, seen = loss_sum + loss.item() * len(index), seen + len(index)
            val_acc = accuracy(model, dataset.val, device)
            history.append({"epoch": epoch, "loss": loss_sum / max(seen, 1), "val_accuracy": val_acc})
            logger.info(
                "target %s/%s epoch %d: loss %.4f, val acc %s", dataset.name, arch, epoch, history[-1]["loss"], val_acc
            )
    model.eval()
    test_acc = accuracy(model, dataset.test, device)
    return TrainResult(model, test_acc, history[-1]["val_accuracy"], history, time.perf_counter() - start)


# ----------------------------------------------------------------------------- cache


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict; the same hash the adversarial-example cache keys on."""
    return sha256_state_dict(state)


@dataclass(frozen=True)
class TargetModel:
    """A trained target model (eval mode) and its record."""

    model: nn.Module
    path: Path
    key: str
    weights_sha256: str
    clean_test_accuracy: float | None
    arch: str
    settings: TargetTrainSettings
    arch_kwargs: dict = field(default_factory=dict)
    val_accuracy: float | None = None
    dataset_fingerprint: str = ""
    trained: bool = False  # True when this call trained it, False when it was loaded from disk


def default_cache_dir() -> Path:
    """``$ADDD_CACHE_DIR`` or ``./.addd_cache`` (read at call time)."""
    return Path(os.environ.get("ADDD_CACHE_DIR") or "./.addd_cache")


def target_model_key(
    dataset_fingerprint: str, arch: str, arch_kwargs: Mapping[str, Any], settings: TargetTrainSettings
) -> str:
    """Cache key: hash of the data, architecture (all constructor args) and training settings."""
    return stable_hash(
        {
            "format": FORMAT,
            "dataset": dataset_fingerprint,
            "arch": arch,
            "arch_kwargs": dict(arch_kwargs),
            "settings": asdict(settings),
        }
    )


def get_target_model(
    dataset: Dataset,
    arch: str | None = None,
    settings: TargetTrainSettings | None = None,
    cache_dir: str | Path | None = None,
    *,
    arch_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> TargetModel:
    """The target model for ``dataset``: loaded from the cache, or trained once and saved.

    ``arch`` defaults to ``DEFAULT_ARCH[dataset.name]``, ``settings`` to the dataset's defaults,
    ``cache_dir`` to :func:`default_cache_dir`. ``arch_kwargs`` override constructor arguments
    (e.g. ``{"depth": 110}``). Concurrent callers with the same key train once: the others wait
    on a file lock and then load.
    """
    from filelock import FileLock

    if arch is None:
        if dataset.name not in DEFAULT_ARCH:
            raise TargetModelError(
                f"no default target architecture for dataset {dataset.name!r}; "
                f"pass arch= one of {', '.join(TARGET_ARCHS)}"
            )
        arch = DEFAULT_ARCH[dataset.name]
    settings = settings if settings is not None else default_settings(dataset.name)
    kwargs = arch_kwargs_for(arch, dataset.channels, dataset.num_classes, arch_kwargs)
    key = target_model_key(dataset.fingerprint(), arch, kwargs, settings)
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset.name}-{arch}-{key}.safetensors"

    with FileLock(str(path) + ".lock"):
        if path.is_file():
            entry = load_target_entry(path, device)
            if entry.key != key:
                raise TargetModelError(f"{path} holds key {entry.key}, expected {key}; delete the file and rerun")
            logger.info(
                "target %s/%s: loaded %s (clean test acc %s)", dataset.name, arch, path, entry.clean_test_accuracy
            )
            return entry
        logger.info("target %s/%s: training (key %s) with %s", dataset.name, arch, key, settings)
        result = train_target_model(dataset, arch, settings, kwargs, device)
        state = {name: tensor.detach().cpu() for name, tensor in result.model.state_dict().items()}
        weights_sha = weights_sha256(state)
        metadata = {
            "format": FORMAT,
            "key": key,
            "arch": arch,
            "arch_kwargs": kwargs,
            "settings": asdict(settings),
            "dataset": {
                "name": dataset.name,
                "fingerprint": dataset.fingerprint(),
                "n_train": len(dataset.train),
                "n_val": len(dataset.val),
                "n_test": len(dataset.test),
            },
            "clean_test_accuracy": result.clean_test_accuracy,
            "val_accuracy": result.val_accuracy,
            "weights_sha256": weights_sha,
            "history": result.history,
            "train_seconds": result.seconds,
            "torch_version": torch.__version__,
        }
        save_tensors(path, state, metadata)
        logger.info(
            "target %s/%s: clean test acc %s after %.1f s, saved %s",
            dataset.name, arch, result.clean_test_accuracy, result.seconds, path,
        )
    return TargetModel(
        model=result.model,
        path=path,
        key=key,
        weights_sha256=weights_sha,
        clean_test_accuracy=result.clean_test_accuracy,
        arch=arch,
        settings=settings,
        arch_kwargs=kwargs,
        val_accuracy=result.val_accuracy,
        dataset_fingerprint=dataset.fingerprint(),
        trained=True,
    )


def load_target_entry(path: str | Path, device: str | torch.device = "cpu") -> TargetModel:
    """Load a saved target model with its record; the weights' SHA-256 is checked."""
    path = Path(path)
    try:
        tensors, metadata = load_tensors(path)
    except StorageError as exc:
        raise TargetModelError(f"cannot load target model: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise TargetModelError(
            f"{path} is not a target model (format {metadata.get('format')!r}, expected {FORMAT!r}); "
            "pass a file written by get_target_model"
        )
    if weights_sha256(tensors) != metadata.get("weights_sha256"):
        raise TargetModelError(
            f"{path}: weights do not match their recorded SHA-256 (corrupted); delete it and retrain"
        )
    try:
        model = build_target_model(metadata["arch"], **metadata["arch_kwargs"])
        model.load_state_dict(tensors, strict=True)
        settings = TargetTrainSettings(**metadata["settings"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise TargetModelError(
            f"{path} does not match this version's architectures ({exc}); delete it and retrain"
        ) from exc
    return TargetModel(
        model=model.to(device).eval(),
        path=path,
        key=metadata["key"],
        weights_sha256=metadata["weights_sha256"],
        clean_test_accuracy=metadata["clean_test_accuracy"],
        arch=metadata["arch"],
        settings=settings,
        arch_kwargs=metadata["arch_kwargs"],
        val_accuracy=metadata.get("val_accuracy"),
        dataset_fingerprint=metadata["dataset"]["fingerprint"],
        trained=False,
    )


def load_target_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a target model saved by :func:`get_target_model`, in eval mode (no pickle involved)."""
    return load_target_entry(path, device).model
