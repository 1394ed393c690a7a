"""Typed, validated configuration of an ADD-Defense, and its one flattening to dotted dicts.

Ray's ``param_space``, Optuna's search space and MLflow's params all want flat
``{"loss.lambda_prior": 1e-4, ...}`` dicts; :func:`to_flat_dict` / :func:`from_flat_dict`
are the only place that conversion happens. A flat dict (a search space's categorical, a
``--set`` value) may spell the known attacks as one string ``"PGDu+PGDt"``: :func:`pair_name`
and :func:`pair_attacks` are that spelling's only writer and parser (``sweeps.trialspec``
re-exports them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from addd.attack_names import KNOWN_ATTACK_NAMES, ONLINE_ATTACK_NAMES
from addd.errors import AdddError


class ConfigError(AdddError):
    """A configuration value is invalid; the message says which and what to do."""


PAIR_SEP = "+"


def pair_name(attacks: Sequence[str]) -> str:
    """The one-string spelling of a known-attack choice: ``("PGDu", "PGDt") -> "PGDu+PGDt"``."""
    return PAIR_SEP.join(attacks)


def pair_attacks(name: str) -> tuple[str, ...]:
    """Inverse of :func:`pair_name`: ``"PGDu+PGDt" -> ("PGDu", "PGDt")``."""
    return tuple(a for a in str(name).split(PAIR_SEP) if a)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of E, G, D_P, D_I and C (paper Table 4 at width 1.0 on 32x32x3)."""

    width: float = 1.0  # multiplies every channel / hidden size of Table 4
    image_size: int = 32  # square input side; Table 4's five stride-2 layers need 32
    channels: int = 3  # image channels (1 for grey digits / MNIST)
    num_classes: int = 10  # classes of the latent classifier C
    leaky_slope: float = 0.2  # LeakyReLU negative slope

    def __post_init__(self) -> None:
        _check(self.width > 0, f"network.width must be > 0, got {self.width}")
        _check(
            self.image_size == 32,
            f"network.image_size must be 32 (Table 4: five stride-2 layers take 32x32 to 1x1), "
            f"got {self.image_size}; resize or pad the data to 32x32",
        )
        _check(self.channels in (1, 3), f"network.channels must be 1 or 3, got {self.channels}")
        _check(self.num_classes >= 2, f"network.num_classes must be >= 2, got {self.num_classes}")
        _check(0 <= self.leaky_slope < 1, f"network.leaky_slope must be in [0, 1), got {self.leaky_slope}")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights of eq (5) and (7), the MMD bandwidth, and the ablation switches."""

    lambda_prior: float = 1e-4  # λ1, weight of the Gaussian prior term L_g, eq (3)
    lambda_dp: float = 1.0  # λ2, weight of the perturbation-confusion term L_p, eq (2)
    lambda_cls: float = 1e-3  # λ3, weight of the latent classification term L_c, eq (4)
    theta_mse: float = 1e3  # θ, weight of the reconstruction MSE in eq (7)
    sigma: float | tuple[float, ...] = (1.0, 4.0, 16.0)  # RBF bandwidth(s) of the MMD, App. B
    use_mmd: bool = True  # L_mmd in eq (5)
    use_prior: bool = True  # L_g in eq (5); False is the paper's "No prior" ablation
    use_dp: bool = True  # D_P and L_p; False is the paper's "No D_P" ablation
    use_di: bool = True  # D_I and L_adv of eq (6); False leaves a plain MSE generator

    def __post_init__(self) -> None:
        for name in ("lambda_prior", "lambda_dp", "lambda_cls", "theta_mse"):
            value = getattr(self, name)
            _check(
                isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                f"loss.{name} must be a finite number >= 0, got {value!r}",
            )
        sigma = self.sigma
        if isinstance(sigma, (list, tuple)):
            sigma = tuple(float(s) for s in sigma)
            object.__setattr__(self, "sigma", sigma)
            _check(len(sigma) > 0, "loss.sigma must be a positive number or a non-empty list of them")
            values: Sequence[float] = sigma
        else:
            _check(isinstance(sigma, (int, float)), f"loss.sigma must be a number or list, got {sigma!r}")
            object.__setattr__(self, "sigma", float(sigma))
            values = (float(sigma),)
        _check(
            all(math.isfinite(s) and s > 0 for s in values),
            f"loss.sigma (MMD bandwidth) must be > 0, got {self.sigma!r}",
        )


AUTOCAST_MODES = ("none", "bf16")  # train.autocast: "none" runs fp32 throughout


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of the alternating min-max training."""

    epochs: int = 10
    batch_size: int = 64  # examples per domain in one step (the step sees (K+1) x batch_size)
    lr: float = 1e-3  # Adam learning rate of every network (measured on digits: 2e-4 learns ~5x slower)
    beta1: float = 0.5  # Adam beta1 (0.5 is the usual GAN setting)
    beta2: float = 0.999
    seed: int = 0
    device: str = "cpu"
    # The GPU path (docs/gpu.md), off by default: the CPU path and its figures are unchanged.
    autocast: str = "none"  # "bf16": the step's network forward passes in bfloat16 autocast (losses, Adam in fp32)
    resident: bool = False  # True: x, y and the cached sets moved to `device` once per fit, batches indexed there

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 2, f"train.batch_size must be >= 2, got {self.batch_size}")
        _check(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be > 0, got {self.lr}")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2 must be in [0, 1)")
        _check(self.autocast in AUTOCAST_MODES,
               f"train.autocast must be one of {', '.join(AUTOCAST_MODES)}, got {self.autocast!r}")
        _check(isinstance(self.resident, bool), f"train.resident must be true or false, got {self.resident!r}")


@dataclass(frozen=True)
class OnlineAttackConfig:
    """The online known attack (``PGDa``, addd.attack_names): L∞ PGD through M_t ∘ G ∘ E against
    the current defense, generated for every training batch (addd.online). Used only when an
    online attack is among ``known_attacks``; its fields are searchable like any other."""

    eps: float | None = None  # L∞ radius: the dataset's PGD ε (addd.attacks); required with PGDa
    steps: int = 10  # PGD iterations per batch, step size 2.5 ε / steps; a step costs ~(steps + 1)x
    fraction: float = 1.0  # share of each batch's PGDa domain that is attacked; the rest stays clean

    def __post_init__(self) -> None:
        _check(
            self.eps is None or (_is_number(self.eps) and 0 < self.eps <= 1),
            f"online.eps must be in (0, 1] (the dataset's PGD ε on images in [0, 1]), got {self.eps!r}",
        )
        _check(
            isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1,
            f"online.steps must be an int >= 1 (PGD iterations per batch), got {self.steps!r}",
        )
        _check(
            _is_number(self.fraction) and 0 < self.fraction <= 1,
            f"online.fraction must be in (0, 1] (share of each batch attacked online), got {self.fraction!r}",
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DefenseConfig:
    """Everything that defines one ADD-Defense: networks, losses, known attacks, training."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    known_attacks: tuple[str, ...] = ("PGDu", "PGDt")  # attacks whose examples train the defense
    online: OnlineAttackConfig = field(default_factory=OnlineAttackConfig)  # used when PGDa is known

    def __post_init__(self) -> None:
        known = tuple(self.known_attacks)
        object.__setattr__(self, "known_attacks", known)
        _check(len(known) >= 1, "known_attacks must name at least one attack")
        _check(len(set(known)) == len(known), f"known_attacks has duplicates: {list(known)}")
        unknown = [name for name in known if name not in KNOWN_ATTACK_NAMES]
        _check(
            not unknown,
            f"unknown attack name(s) {unknown} in known_attacks; valid names: {', '.join(KNOWN_ATTACK_NAMES)} "
            f"(several: {pair_name(('PGDu', 'PGDt'))} or a JSON list)",
        )
        online = [name for name in known if name in ONLINE_ATTACK_NAMES]
        _check(
            not online or self.online.eps is not None,
            f"known attack(s) {online} need online.eps: set it to the dataset's PGD ε (e.g. 0.15 on digits)",
        )

    @property
    def num_domains(self) -> int:
        """Domains seen in training: the original examples plus one per known attack."""
        return 1 + len(self.known_attacks)

    def replace(self, **flat_overrides: Any) -> "DefenseConfig":
        """Return a copy with dotted-key overrides, e.g. ``replace(**{"loss.lambda_dp": 0.0})``."""
        flat = to_flat_dict(self)
        unknown = sorted(set(flat_overrides) - set(flat))
        _check(not unknown, f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(flat))}")
        flat.update(flat_overrides)
        return from_flat_dict(flat)


_SECTIONS = {"network": NetworkConfig, "loss": LossConfig, "train": TrainConfig, "online": OnlineAttackConfig}


def to_flat_dict(config: DefenseConfig) -> dict[str, Any]:
    """Flatten to ``{"section.field": value}`` with JSON-friendly values (lists for tuples)."""
    flat: dict[str, Any] = {}
    for section in _SECTIONS:
        for f in fields(getattr(config, section)):
            value = getattr(getattr(config, section), f.name)
            flat[f"{section}.{f.name}"] = list(value) if isinstance(value, tuple) else value
    flat["known_attacks"] = list(config.known_attacks)
    return flat


def from_flat_dict(flat: Mapping[str, Any]) -> DefenseConfig:
    """Inverse of :func:`to_flat_dict`; missing keys take their defaults, unknown keys fail.
    ``known_attacks`` may be a list or one :func:`pair_name` string (``"PGDu+PGDt"``)."""
    grouped: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    known_attacks: Any = None
    for key, value in flat.items():
        if key == "known_attacks":
            known_attacks = value
            continue
        section, _, name = key.partition(".")
        valid = {f.name for f in fields(_SECTIONS[section])} if section in _SECTIONS else set()
        _check(name in valid, f"unknown config key {key!r}; sections are {', '.join(_SECTIONS)}")
        if isinstance(value, list):
            value = tuple(value)
        grouped[section][name] = value
    kwargs: dict[str, Any] = {s: _SECTIONS[s](**grouped[s]) for s in _SECTIONS}
    if known_attacks is not None:
        kwargs["known_attacks"] = pair_attacks(known_attacks) if isinstance(known_attacks, str) else tuple(known_attacks)
    return DefenseConfig(**kwargs)


def ablation(config: DefenseConfig, variant: str) -> DefenseConfig:
    """Apply a named ablation of paper Fig 12 (and two extra ones) to a config."""
    overrides = ABLATIONS.get(variant)
    _check(overrides is not None, f"unknown ablation {variant!r}; valid: {', '.join(ABLATIONS)}")
    return config.replace(**overrides)


# Ablation variants: name -> dotted overrides. `no_dp` also zeroes λ2 so logged params say so.
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_dp": {"loss.use_dp": False, "loss.lambda_dp": 0.0},
    "no_prior": {"loss.use_prior": False, "loss.lambda_prior": 0.0},
    "no_mmd": {"loss.use_mmd": False},
    "no_di": {"loss.use_di": False},
}

# Paper Appendix D loss weights.
PAPER_LOSS_WEIGHTS: dict[str, dict[str, float]] = {
    "mnist": {"lambda_prior": 1e-4, "lambda_dp": 1.0, "lambda_cls": 1e-3, "theta_mse": 1e3},
    "fashion_mnist": {"lambda_prior": 1e-4, "lambda_dp": 1.0, "lambda_cls": 1e-3, "theta_mse": 1e3},
    "svhn": {"lambda_prior": 1e-4, "lambda_dp": 1.0, "lambda_cls": 1e-3, "theta_mse": 1e3},
    "cifar10": {"lambda_prior": 1e-6, "lambda_dp": 0.1, "lambda_cls": 1e-3, "theta_mse": 10.0},
}

__all__ = [
    "ABLATIONS",
    "AUTOCAST_MODES",
    "ConfigError",
    "DefenseConfig",
    "LossConfig",
    "NetworkConfig",
    "OnlineAttackConfig",
    "PAPER_LOSS_WEIGHTS",
    "TrainConfig",
    "ablation",
    "from_flat_dict",
    "pair_attacks",
    "pair_name",
    "to_flat_dict",
]
