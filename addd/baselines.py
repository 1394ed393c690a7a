"""The paper's baselines, trained on the same data, known attacks, epochs and seeds as
ADD-Defense so the ablation study compares like with like.

Every defense is used the same way: ``classifier_for(M_t)(restore(x))``.

- ``"no_defense"`` -> :class:`NoDefense`: M_t alone (``restore`` is the identity, the classifier
  is M_t). Nothing to train.
- ``"ape_gan"`` -> :class:`APEGAN` (paper Table 1, Shen et al. 2017): a generator trained to map
  adversarial examples of the known attacks AND clean examples to the clean image, with
  ``mse_weight * MSE + adv_weight * GAN loss`` (a discriminator on clean vs restored images), and
  none of ADD-Defense's latent losses (no MMD, prior, D_P, latent classifier). The classifier is
  M_t, unchanged.
- ``"adv_training"`` -> :class:`AdversarialTraining` (paper Fig 1's Def-adv): M_t's architecture
  (same constructor arguments) trained from scratch on clean + adversarial examples of the known
  attacks; ``restore`` is the identity and the classifier is the adversarially trained model.

:data:`BASELINES` maps the two trainable baselines' names to their classes;
:func:`build_baseline` builds any of ``BASELINE_NAMES`` (the two plus ``"no_defense"``) from the
settings an ADD-Defense trial uses. Checkpoints are safetensors (addd.storage) with the config in
the metadata; nothing is pickled. :func:`load_baseline` reads either kind.

Determinism: on CPU, the same seed gives the same losses and weights, and ``restore`` /
the classifier give bit-identical outputs before and after save/load. On CUDA the loaded
weights are identical too, but cuDNN's default algorithms vary in the last bit (measured on an
H200: 1.2e-7 between two calls of the same module, and run-to-run loss differences of ~1e-6);
set ``torch.backends.cudnn.deterministic = True`` where bit-exact results matter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from addd import losses
from addd.attack_names import KNOWN_ATTACK_NAMES, is_online
from addd.attacks import ATTACKS, attack_params
from addd.config import NetworkConfig
from addd.networks import Encoder, Generator, ImageDiscriminator
from addd.storage import StorageError, load_tensors, save_tensors
from addd.architectures import DEFAULT_ARCH, arch_kwargs_for, build_target_model
from addd.inference import frozen
from addd.online import OnlinePGD
from addd.training import EpochReport, TrainingRun, TrainingState, check_finite, check_training_data, run_epochs

from addd.errors import AdddError as _ErrorBase

APEGAN_FORMAT = "addd-apegan/1"
ADV_TRAINING_FORMAT = "addd-adv-training/1"

# APE-GAN's loss weights. Shen et al. (2017) use 0.7 * MSE + 0.3 * adversarial (SHEN_*); our
# default is ADD-Defense's eq (7) weighting, θ = 1e3 MSE + 1 adversarial (APEGAN_*). See APEGANConfig.
SHEN_MSE_WEIGHT, SHEN_ADV_WEIGHT = 0.7, 0.3
APEGAN_MSE_WEIGHT, APEGAN_ADV_WEIGHT = 1e3, 1.0
# PGD iterations per batch when adversarial training generates PGD examples online (see
# AdversarialTraining): Madry et al. train with 7 (CIFAR) to 40 (MNIST) steps; 10 keeps the
# step rule of addd.attacks (eps_iter = 2.5 eps / steps) and costs ~11x a clean epoch.
DEFAULT_PGD_STEPS = 10


class BaselineError(_ErrorBase):
    """A bad baseline name, setting, input or checkpoint; the message says what to do."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise BaselineError(message)


def _check_known_attacks(known: Sequence[str], online_allowed: bool) -> tuple[str, ...]:
    known = tuple(known)
    _check(len(known) >= 1, "known_attacks must name at least one attack")
    _check(len(set(known)) == len(known), f"known_attacks has duplicates: {list(known)}")
    bad = [name for name in known if name not in KNOWN_ATTACK_NAMES]
    _check(not bad, f"unknown known attack(s) {bad}; valid names: {', '.join(KNOWN_ATTACK_NAMES)}")
    online = [name for name in known if is_online(name)]
    _check(online_allowed or not online, f"APE-GAN trains on cached sets only; drop the online attack(s) {online} "
                                         f"from its known_attacks (adversarial training and ADD-Defense take them)")
    return known


def _check_common(cfg: Any) -> None:
    _check(isinstance(cfg.epochs, int) and cfg.epochs >= 1, f"epochs must be an int >= 1, got {cfg.epochs!r}")
    _check(isinstance(cfg.batch_size, int) and cfg.batch_size >= 2, f"batch_size must be an int >= 2, got {cfg.batch_size!r}")
    _check(isinstance(cfg.lr, (int, float)) and 0 < cfg.lr < math.inf, f"lr must be a number > 0, got {cfg.lr!r}")
    _check(isinstance(cfg.seed, int), f"seed must be an int, got {cfg.seed!r}")
    _check(cfg.channels in (1, 3), f"channels must be 1 or 3, got {cfg.channels!r}")


def _adam(params: Sequence[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Optimizer:
    # Same optimiser settings as ADDDefense (Adam, beta1 0.5, fused kernel).
    return torch.optim.Adam(list(params), lr=lr, betas=(0.5, 0.999), fused=device.type in ("cpu", "cuda"))


def _start_run(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer], generators: dict[str, torch.Generator],
               resume_state: TrainingState | None) -> TrainingRun:
    """The TrainingRun of a baseline's fit (shuffled with its seed), resumed from ``resume_state``."""
    run = TrainingRun(optimizers, {"shuffle": torch.Generator().manual_seed(model.config.seed), **generators})
    if resume_state is not None:
        run.resume(resume_state)
    model._training = run
    return run


def _run_state(model: nn.Module) -> TrainingState:
    run = getattr(model, "_training", None)
    if run is None:
        raise RuntimeError("optimizer_state() needs a fit() first: no optimiser exists yet")
    return run.state()


def _history_metadata(history: Sequence[EpochReport]) -> list[dict[str, Any]]:
    return [{"epoch": r.epoch, "losses": r.losses, "seconds": r.seconds, "steps": r.steps} for r in history]


def _history_from_metadata(items: Sequence[Mapping[str, Any]]) -> list[EpochReport]:
    return [EpochReport(h["epoch"], dict(h["losses"]), h["seconds"], h.get("steps", 0)) for h in items]


def _config_from_metadata(cls: type, raw: Mapping[str, Any], path: Path) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise StorageError(f"{path}: config has unknown field(s) {sorted(unknown)}; written by a newer addd?")
    values = dict(raw)
    if "known_attacks" in values:
        values["known_attacks"] = tuple(values["known_attacks"])
    return cls(**values)


def _save(model: nn.Module, path: str | Path, fmt: str, extra_metadata: Mapping[str, object] | None) -> Path:
    """Weights, config and history of a baseline in one safetensors file (atomic)."""
    path = Path(path)
    metadata = {"format": fmt, "config": asdict(model.config), "history": _history_metadata(model.history),
                **(extra_metadata or {})}
    save_tensors(path, model.state_dict(), metadata)
    return path


def _load(cls: type, config_cls: type, path: str | Path, fmt: str, device: str) -> nn.Module:
    """A baseline saved by :func:`_save`, on ``device`` (its config's device too), in eval mode."""
    path = Path(path)
    tensors, metadata = _load_checked(path, fmt)
    config = _config_from_metadata(config_cls, {**metadata["config"], "device": str(device)}, path)
    model = cls(config)
    model.load_state_dict(tensors, strict=True)
    model.history = _history_from_metadata(metadata.get("history", []))
    return model.to(device).eval()


def _load_checked(path: str | Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != expected_format:
        raise StorageError(f"{path} is not a {expected_format} checkpoint (format {metadata.get('format')!r})")
    return tensors, metadata


# ============================================================================ protocol


@runtime_checkable
class Baseline(Protocol):
    """What every defense offers the evaluation: ``classifier_for(M_t)(restore(x))``."""

    def restore(self, x: torch.Tensor) -> torch.Tensor: ...

    def classifier_for(self, target_model: nn.Module) -> nn.Module: ...


class NoDefense(nn.Module):
    """M_t alone: ``restore`` is the identity, the classifier is the target model itself."""

    name = "no_defense"
    is_identity = True  # restore(x) is x: robustness_curve skips re-attacking the same pipeline

    def __init__(self) -> None:
        super().__init__()
        self.history: list[EpochReport] = []

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x)

    def classifier_for(self, target_model: nn.Module) -> nn.Module:
        return target_model

    def fit(self, x, y, x_adv=None, callback=None, epochs=None) -> list[EpochReport]:
        """Nothing to train; present so every defense can be driven alike."""
        return []


# ============================================================================ APE-GAN


@dataclass(frozen=True)
class APEGANConfig:
    """Settings of an APE-GAN baseline.

    Networks (our choice, for equal capacity): the generator is ADD-Defense's E (its mean head
    only: no log-variance, no sampling) followed by its G, and the discriminator is its D_I, all
    at the same ``width`` (paper Table 4 sizes times width). So at one width, APE-GAN and
    ADD-Defense have the same restoration network; the difference is only the latent losses.
    (Shen et al.'s generator keeps the spatial resolution; ours has Table 4's 1x1 bottleneck.)

    Loss weights (our choice): the defaults are ADD-Defense's eq (7) weighting, ``mse_weight``
    = θ = 1e3 and ``adv_weight`` = 1 (the paper's MNIST/SVHN θ), so APE-GAN and ADD-Defense
    differ only in the latent losses; pass the trial's θ for CIFAR-10 (θ = 10). Shen et al.'s
    0.7 * MSE + 0.3 * adversarial (``SHEN_MSE_WEIGHT``, ``SHEN_ADV_WEIGHT``) are available, but
    on images in [0, 1] with this bottlenecked generator the GAN term then dominates: measured on
    digits (width 0.125, 8 epochs, 600 images) the MSE stalled at 0.077 against 0.019 with
    1e3 / 1 (PGD at ε 0.15 itself is at MSE 0.017 from the clean image).
    """

    width: float = 1.0
    channels: int = 3
    epochs: int = 10
    batch_size: int = 64  # clean examples per step; the step sees (1 + K) x batch_size inputs
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    known_attacks: tuple[str, ...] = ("PGDu", "PGDt")
    mse_weight: float = APEGAN_MSE_WEIGHT
    adv_weight: float = APEGAN_ADV_WEIGHT

    def __post_init__(self) -> None:
        object.__setattr__(self, "known_attacks", _check_known_attacks(self.known_attacks, online_allowed=False))
        _check_common(self)
        _check(isinstance(self.width, (int, float)) and self.width > 0, f"width must be > 0, got {self.width!r}")
        for name in ("mse_weight", "adv_weight"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, f"{name} must be a finite number >= 0, got {value!r}")
        _check(self.mse_weight + self.adv_weight > 0, "mse_weight and adv_weight cannot both be 0")

    @property
    def network(self) -> NetworkConfig:
        return NetworkConfig(width=self.width, channels=self.channels)


class APEGANGenerator(nn.Module):
    """x (B, C, 32, 32) -> restored image in [0, 1]: E's conv stack and mean head, then G."""

    def __init__(self, net: NetworkConfig):
        super().__init__()
        encoder = Encoder(net)  # built (and initialised) exactly as ADD-Defense's E ...
        self.features, self.bottleneck = encoder.features, encoder.mean_head  # ... minus log-variance
        self.decoder = Generator(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.bottleneck(self.features(x)).flatten(1))


class APEGAN(nn.Module):
    """APE-GAN baseline (paper Table 1): see :class:`APEGANConfig` and the module docstring.

    Each step: the discriminator (clean originals vs restored images, detached) is updated, then
    the generator minimises ``mse_weight * MSE(G(x_k), x_o) + adv_weight * (-log D(G(x_k)))``
    over x_k in {clean, each known attack's examples}, against the frozen discriminator.
    """

    name = "ape_gan"

    def __init__(self, config: APEGANConfig):
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # seeded initialisation, caller's RNG untouched
            self.generator = APEGANGenerator(config.network)
            self.discriminator = ImageDiscriminator(config.network)
        self.history: list[EpochReport] = []

    # --------------------------------------------------------------- inference
    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """G(x): (B, C, 32, 32) in [0, 1] -> same shape in [0, 1]; deterministic, differentiable."""
        return self.generator(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x)

    def classifier_for(self, target_model: nn.Module) -> nn.Module:
        return target_model

    # --------------------------------------------------------------- training
    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: Mapping[str, torch.Tensor],
        callback: Callable[[EpochReport, "APEGAN"], Any] | None = None,
        epochs: int | None = None,
        resume_state: TrainingState | None = None,
    ) -> list[EpochReport]:
        """Train on clean ``x`` (N, C, H, W) and ``x_adv[name]`` (paired with x) for every known
        attack (addd.training's loop, checks and resuming). ``y`` is checked but unused (APE-GAN
        has no label loss). Raises NonFiniteLossError as soon as a loss is NaN/inf."""
        cfg = self.config
        check_training_data(x, y, x_adv, cfg.known_attacks, BaselineError)
        device = torch.device(cfg.device)
        self.to(device).train()
        opt_g = _adam(self.generator.parameters(), cfg.lr, device)
        opt_d = _adam(self.discriminator.parameters(), cfg.lr, device)
        run = _start_run(self, {"generator": opt_g, "discriminator": opt_d}, {}, resume_state)

        def step(batch: list[torch.Tensor]) -> dict[str, float]:
            x_clean, _, *adversarial = batch
            return self._step(opt_g, opt_d, x_clean, adversarial)

        data = [x, y, *(x_adv[name] for name in cfg.known_attacks)]
        try:
            return run_epochs(self, data, step, run=run, batch_size=cfg.batch_size, epochs=epochs or cfg.epochs,
                              device=device, callback=callback)
        finally:
            self.eval()

    def _step(self, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, x_clean: torch.Tensor,
              adversarial: Sequence[torch.Tensor]) -> dict[str, float]:
        """One update on a batch: the discriminator first, then the generator against it, frozen."""
        cfg = self.config
        restored = self.generator(torch.cat([x_clean, *adversarial]))
        values: dict[str, torch.Tensor] = {}
        if cfg.adv_weight > 0:
            logits = self.discriminator(torch.cat([x_clean, restored.detach()]))
            real, fake = logits.split([len(x_clean), len(restored)])
            values["di"] = losses.image_discriminator_loss(real, fake)
            check_finite(values)
            opt_d.zero_grad(set_to_none=True)
            values["di"].backward()
            opt_d.step()
        with frozen(self.discriminator):
            values["mse"] = losses.reconstruction_loss(restored, x_clean.repeat(1 + len(adversarial), 1, 1, 1))
            total = cfg.mse_weight * values["mse"]
            if cfg.adv_weight > 0:
                values["adv"] = losses.image_generator_loss(self.discriminator(restored))
                total = total + cfg.adv_weight * values["adv"]
            values["total"] = total
            check_finite(values)
            opt_g.zero_grad(set_to_none=True)
            total.backward()
        opt_g.step()
        return {name: v.item() for name, v in values.items()}

    def optimizer_state(self) -> TrainingState:
        """The optimisers' and RNGs' state of the last ``fit``, for ``fit(..., resume_state=...)``."""
        return _run_state(self)

    # --------------------------------------------------------------- persistence
    def save(self, path: str | Path, extra_metadata: Mapping[str, object] | None = None) -> Path:
        """Weights and config in one safetensors file (atomic); returns the path."""
        return _save(self, path, APEGAN_FORMAT, extra_metadata)


def load_apegan(path: str | Path, device: str = "cpu") -> APEGAN:
    """Load an APE-GAN saved by :meth:`APEGAN.save`, in eval mode (config.device set to ``device``)."""
    return _load(APEGAN, APEGANConfig, path, APEGAN_FORMAT, device)


# ============================================================================ adversarial training


def is_online_attack(name: str) -> bool:
    """True for the attacks adversarial training regenerates each batch: the PGD family (PGDu,
    PGDt) and the online known attack PGDa, which for this baseline is the same online PGD: its
    pipeline is its own classifier (restore is the identity), so PGDa is untargeted PGD on it."""
    return is_online(name) or ATTACKS[name].family == "PGD"


@dataclass(frozen=True)
class AdversarialTrainingConfig:
    """Settings of the Def-adv baseline. ``arch`` / ``arch_kwargs`` must be M_t's (the target
    model of the dataset); ``dataset`` picks the PGD parameters (eps, step rule, random start,
    target class) from addd.attacks; ``pgd_eps`` overrides eps."""

    arch: str = "digits_cnn"
    channels: int = 1
    num_classes: int = 10
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    known_attacks: tuple[str, ...] = ("PGDu", "PGDt")
    pgd_steps: int = DEFAULT_PGD_STEPS
    dataset: str = "digits"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # completed by arch_kwargs_for
    pgd_eps: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "known_attacks", _check_known_attacks(self.known_attacks, online_allowed=True))
        _check_common(self)
        _check(isinstance(self.num_classes, int) and self.num_classes >= 2, f"num_classes must be an int >= 2, got {self.num_classes!r}")
        _check(isinstance(self.pgd_steps, int) and self.pgd_steps >= 1, f"pgd_steps must be an int >= 1, got {self.pgd_steps!r}")
        _check(self.pgd_eps is None or (isinstance(self.pgd_eps, (int, float)) and self.pgd_eps > 0), f"pgd_eps must be > 0 or None, got {self.pgd_eps!r}")
        try:
            kwargs = arch_kwargs_for(self.arch, self.channels, self.num_classes, {
                k: v for k, v in dict(self.arch_kwargs).items() if k not in ("channels", "num_classes")
            })
            attack_params("PGDu", self.dataset)  # the dataset must have PGD parameters
        except ValueError as exc:
            raise BaselineError(f"adversarial training: {exc}") from exc
        _check(
            dict(self.arch_kwargs).get("channels", self.channels) == self.channels
            and dict(self.arch_kwargs).get("num_classes", self.num_classes) == self.num_classes,
            f"arch_kwargs {dict(self.arch_kwargs)} disagree with channels={self.channels}, num_classes={self.num_classes}",
        )
        object.__setattr__(self, "arch_kwargs", kwargs)

    def pgd_settings(self, name: str) -> OnlinePGD:
        """The online PGD of attack ``name`` (PGDu, PGDt, or PGDa = PGDu's settings): the
        dataset's eps (or ``pgd_eps``), random start and target class, ``pgd_steps`` iterations."""
        suite_name = "PGDu" if is_online(name) else name  # PGDa: untargeted PGD on the classifier
        params = attack_params(suite_name, self.dataset, overrides=None if self.pgd_eps is None else {"eps": self.pgd_eps})
        eps = params["eps"]
        return OnlinePGD(
            eps=eps,
            steps=self.pgd_steps,
            step_size=params["step_factor"] * eps / self.pgd_steps,  # addd.attacks' step rule
            rand_init=params["rand_init"],
            target=params.get("target_class"),
        )


class AdversarialTraining(nn.Module):
    """Def-adv baseline (paper Fig 1): M_t's architecture trained from scratch on clean and
    adversarial examples of the known attacks; ``restore`` is the identity.

    Adversarial examples (our choice):
    - PGD family (PGDu, PGDt): generated ONLINE each batch against the current model, Madry
      style, by the library's one PGD (``addd.adaptive.pgd_linf``, advertorch's LinfPGDAttack)
      with the dataset's PGD parameters from addd.attacks (eps, random start, step rule
      eps_iter = 2.5 eps / steps, target class) but ``pgd_steps`` iterations (default 10 instead
      of 40, to keep training cost ~11x a clean epoch); each batch's random start is seeded
      from the fit's ``noise`` generator, so a resumed fit draws the same starts. The model is in eval mode while
      attacking (batch-norm statistics and dropout are not disturbed by the attack).
    - Every other known attack (CW, DDN, LS, BA, ST, AutoAttack): the precomputed oblivious sets
      passed in ``x_adv`` (computed once against M_t, as ADD-Defense and APE-GAN get them) are
      used as STATIC training data; regenerating them against the moving model each batch would
      cost 10-1000x more. So Def-adv is Madry training for PGD and data augmentation with
      transferred examples for the rest.
    Loss: cross-entropy averaged over the clean batch and each known attack's batch (equal
    weight per domain, as ADD-Defense's domains), Adam at ``lr``, constant.
    """

    name = "adv_training"
    is_identity = True  # restore(x) is x: the robustness lies in its own classifier

    def __init__(self, config: AdversarialTrainingConfig):
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # seeded initialisation, caller's RNG untouched
            self.classifier = build_target_model(config.arch, **config.arch_kwargs)
        self.history: list[EpochReport] = []

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x)

    def classifier_for(self, target_model: nn.Module) -> nn.Module:
        """The adversarially trained model (``target_model`` is not used)."""
        return self.classifier

    @property
    def online_attacks(self) -> tuple[str, ...]:
        return tuple(name for name in self.config.known_attacks if is_online_attack(name))

    @property
    def static_attacks(self) -> tuple[str, ...]:
        return tuple(name for name in self.config.known_attacks if not is_online_attack(name))

    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: Mapping[str, torch.Tensor] | None = None,
        callback: Callable[[EpochReport, "AdversarialTraining"], Any] | None = None,
        epochs: int | None = None,
        resume_state: TrainingState | None = None,
    ) -> list[EpochReport]:
        """Train on clean ``x`` (N, C, H, W), labels ``y`` (N,), online PGD examples and, for
        each non-PGD known attack, ``x_adv[name]`` paired with x (PGD entries of x_adv are not
        needed and are ignored), in addd.training's loop. Losses reported: ``clean``,
        ``adv_<name>`` per known attack, ``total``. Raises NonFiniteLossError on a NaN/inf loss."""
        cfg = self.config
        x_adv = x_adv or {}
        check_training_data(x, y, x_adv, self.static_attacks, BaselineError)
        device = torch.device(cfg.device)
        self.to(device).train()  # a model loaded or fitted before is in eval mode
        optimizer = _adam(self.classifier.parameters(), cfg.lr, device)
        noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        run = _start_run(self, {"main": optimizer}, {"noise": noise}, resume_state)
        pgd = {name: cfg.pgd_settings(name) for name in self.online_attacks}

        def step(batch: list[torch.Tensor]) -> dict[str, float]:
            x_clean, y_batch, *static = batch
            inputs = {"clean": x_clean, **self._adversarial_inputs(x_clean, y_batch, static, pgd, noise)}
            logits = self.classifier(torch.cat(list(inputs.values())))
            values = {key: F.cross_entropy(part, y_batch) for key, part in zip(inputs, logits.split(len(x_clean)))}
            values["total"] = torch.stack(list(values.values())).mean()
            check_finite(values)
            optimizer.zero_grad(set_to_none=True)
            values["total"].backward()
            optimizer.step()
            return {key: v.item() for key, v in values.items()}

        data = [x, y, *(x_adv[name] for name in self.static_attacks)]
        try:
            return run_epochs(self, data, step, run=run, batch_size=cfg.batch_size, epochs=epochs or cfg.epochs,
                              device=device, callback=callback)
        finally:
            self.eval()

    def _adversarial_inputs(self, x_clean: torch.Tensor, y_batch: torch.Tensor, static: Sequence[torch.Tensor],
                            pgd: Mapping[str, OnlinePGD], noise: torch.Generator) -> dict[str, torch.Tensor]:
        """``adv_<name>`` -> the batch's examples of each known attack, in the config's order:
        online PGD against the current model (addd.online: in eval mode, frozen, training mode
        restored afterwards), or the static set's batch."""
        static_batches = dict(zip(self.static_attacks, static))
        return {
            f"adv_{name}": pgd[name].examples(self.classifier, None, x_clean, y_batch, noise) if name in pgd
            else static_batches[name]
            for name in self.config.known_attacks
        }

    def optimizer_state(self) -> TrainingState:
        """The optimiser's and RNGs' state of the last ``fit``, for ``fit(..., resume_state=...)``."""
        return _run_state(self)

    def save(self, path: str | Path, extra_metadata: Mapping[str, object] | None = None) -> Path:
        """Weights and config in one safetensors file (atomic); returns the path."""
        return _save(self, path, ADV_TRAINING_FORMAT, extra_metadata)


def load_adversarial_training(path: str | Path, device: str = "cpu") -> AdversarialTraining:
    """Load a model saved by :meth:`AdversarialTraining.save`, in eval mode."""
    return _load(AdversarialTraining, AdversarialTrainingConfig, path, ADV_TRAINING_FORMAT, device)


# ============================================================================ registry


BASELINES: dict[str, type] = {
    "ape_gan": APEGAN,
    "adv_training": AdversarialTraining,
}
# Every name build_baseline accepts: the trainable baselines plus M_t alone.
BASELINE_NAMES: tuple[str, ...] = (*BASELINES, NoDefense.name)
_LOADERS: dict[str, Callable[[str | Path, str], nn.Module]] = {
    APEGAN_FORMAT: load_apegan,
    ADV_TRAINING_FORMAT: load_adversarial_training,
}


def build_baseline(
    name: str,
    dataset: Any,
    known_attacks: Sequence[str],
    *,
    width: float = 1.0,
    channels: int = 3,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    target_arch: str | None = None,
    target_arch_kwargs: Mapping[str, Any] | None = None,
    num_classes: int = 10,
    pgd_steps: int = DEFAULT_PGD_STEPS,
    mse_weight: float = APEGAN_MSE_WEIGHT,
    adv_weight: float = APEGAN_ADV_WEIGHT,
) -> nn.Module:
    """An untrained baseline ``name`` (one of ``BASELINE_NAMES``) with an ADD-Defense trial's
    settings. ``dataset`` is a dataset name or an ``addd.data.Dataset`` (its name is used).
    ``target_arch`` / ``target_arch_kwargs`` are M_t's (default: the dataset's default
    architecture); only adversarial training uses them, only APE-GAN uses ``width``."""
    if name not in BASELINE_NAMES:
        raise BaselineError(f"unknown baseline {name!r}; valid names: {', '.join(BASELINE_NAMES)}")
    dataset_name = getattr(dataset, "name", dataset)
    _check(isinstance(dataset_name, str), f"dataset must be a name or an addd.data.Dataset, got {dataset!r}")
    if name == NoDefense.name:
        return NoDefense()
    if name == "ape_gan":
        return APEGAN(APEGANConfig(
            width=width, channels=channels, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            device=device, known_attacks=tuple(known_attacks), mse_weight=mse_weight, adv_weight=adv_weight,
        ))
    if target_arch is None:
        _check(dataset_name in DEFAULT_ARCH,
               f"no default target architecture for dataset {dataset_name!r}; pass target_arch=")
        target_arch = DEFAULT_ARCH[dataset_name]
    return AdversarialTraining(AdversarialTrainingConfig(
        arch=target_arch, channels=channels, num_classes=num_classes, epochs=epochs, batch_size=batch_size,
        lr=lr, seed=seed, device=device, known_attacks=tuple(known_attacks), pgd_steps=pgd_steps,
        dataset=dataset_name, arch_kwargs=dict(target_arch_kwargs or {}),
    ))


def load_baseline(path: str | Path, device: str = "cpu") -> nn.Module:
    """Load any saved baseline (APE-GAN or adversarial training), by its recorded format."""
    from addd.storage import read_metadata

    fmt = read_metadata(path).get("format")
    if fmt not in _LOADERS:
        raise StorageError(f"{path} is not a baseline checkpoint (format {fmt!r}; expected one of {', '.join(_LOADERS)})")
    return _LOADERS[fmt](path, device)
