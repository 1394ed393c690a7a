"""ADD-Defense: the model, its alternating min-max training, saving and loading.

Training alternates, on every batch, the two min-max problems of the paper:
1. the discriminators step: D_P maximises eq (2) (predicts the true domain of z) and D_I
   maximises eq (6) (tells originals from restored images), on detached inputs;
2. the encoder/generator/classifier step: E, G and C minimise
   L_mmd + λ1 L_g + λ2 L_p + λ3 L_c  (eq 5)  +  L_adv + θ L_mse  (eq 7)
   against the just-updated, frozen discriminators (no gradient reaches D_P or D_I).
The domains are the original examples plus one per known attack (D_P has 1 + K classes).
A known attack is either a cached set (examples computed once against M_t, passed to ``fit``) or
the online attack ``PGDa``: for every batch, L∞ PGD through M_t ∘ G ∘ E of the *current*
defense (addd.online; the defense in eval mode and frozen while attacking), replacing the share
``online.fraction`` of that domain's batch; its domain then enters eqs (1)-(7) like a cached one
(MMD to the original domain, its own D_P label, MSE to x_o). It costs ~(online.steps + 1) forward
and backward passes per step and cannot be cached, since it depends on the defense's weights.

At inference ``restore(x) = G(E(x))`` uses z = E's mean, so the defense is deterministic (and
differentiable, for adaptive attacks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from addd import losses
from addd.attack_names import is_online
from addd.config import DefenseConfig, from_flat_dict, to_flat_dict
from addd.errors import AdddError
from addd.inference import frozen
from addd.online import OnlinePGD
from addd.networks import Encoder, Generator, ImageDiscriminator, LatentClassifier, PerturbationDiscriminator
from addd.storage import StorageError, load_tensors, save_tensors
from addd.training import (  # noqa: F401  (EpochCallback, EpochReport, NonFiniteLossError, TrainingState: public here too)
    EpochCallback,
    EpochReport,
    NonFiniteLossError,
    TrainingRun,
    TrainingState,
    check_finite,
    check_training_data,
    run_epochs,
)

FORMAT = "addd-defense/1"


class DefenseError(AdddError):
    """Bad input to the defense (missing or mis-shaped adversarial examples, non-finite data)."""


@dataclass(frozen=True)
class DomainForward:
    """E and G outputs over the concatenated domains (original first, then known attacks)."""

    z_mean: torch.Tensor  # (nB, d)
    z_logvar: torch.Tensor  # (nB, d)
    z: torch.Tensor  # (nB, d) sampled representation
    x_restored: torch.Tensor  # (nB, C, H, W) = G(z)
    domain: torch.Tensor  # (nB,) domain label: 0 original, k for the k-th known attack
    batch: int  # B, examples per domain

    @property
    def num_domains(self) -> int:
        return self.z.shape[0] // self.batch


@dataclass
class _Optimizers:
    main: torch.optim.Optimizer  # E, G, C
    discriminators: torch.optim.Optimizer | None  # D_P and D_I


class ADDDefense(nn.Module):
    """E, G, C (+ D_P, D_I unless ablated) and their training. See the module docstring."""

    def __init__(self, config: DefenseConfig):
        super().__init__()
        self.config = config
        net, loss = config.network, config.loss
        torch.manual_seed(config.train.seed)  # seeded initialisation
        self.encoder = Encoder(net)
        self.generator = Generator(net)
        self.classifier = LatentClassifier(net)
        self.perturbation_discriminator = PerturbationDiscriminator(net, config.num_domains) if loss.use_dp else None
        self.image_discriminator = ImageDiscriminator(net) if loss.use_di else None
        self.history: list[EpochReport] = []

    # ----------------------------------------------------------------- inference
    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """G(E(x)) with z = E's mean: (B, C, 32, 32) in [0, 1] -> same shape, in [0, 1]."""
        z_mean, _ = self.encoder(x)
        return self.generator(z_mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x)

    # ----------------------------------------------------------------- training
    def forward_domains(
        self,
        x_original: torch.Tensor,
        x_adversarial: Sequence[torch.Tensor],
        noise: torch.Generator | None = None,
    ) -> DomainForward:
        """Run E (sampling z) and G once over the original batch and its K adversarial versions.

        x_original: (B, C, H, W); x_adversarial: K tensors (B, C, H, W) paired with x_original.
        """
        batch = x_original.shape[0]
        x_all = torch.cat([x_original, *x_adversarial])  # (nB, C, H, W), domain-major
        z_mean, z_logvar = self._net(self.encoder, x_all)  # (nB, d) each
        eps = torch.randn(z_mean.shape, generator=noise, device=z_mean.device, dtype=z_mean.dtype)
        z = z_mean + torch.exp(0.5 * z_logvar) * eps  # reparameterised sample of the PIR
        domain = torch.arange(1 + len(x_adversarial), device=x_all.device).repeat_interleave(batch)
        return DomainForward(z_mean, z_logvar, z, self._net(self.generator, z), domain, batch)

    def _net(self, module: nn.Module, x: torch.Tensor):
        """``module(x)`` for the training step. With ``train.autocast`` "bf16" the forward pass runs
        under bfloat16 autocast on x's device type and its output(s) come back as fp32, so the losses
        (and, through them, the gradients' accumulation and Adam) stay in fp32; "none" is plain ``module(x)``."""
        if self.config.train.autocast == "none":
            return module(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = module(x)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    def generator_side_losses(self, fwd: DomainForward, x_original: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms E, G and C minimise (eq 5 + eq 7) and their weighted ``total``.

        Names: mmd, prior, confusion, cls, adv, mse (absent when ablated), total. y: (B,).
        """
        cfg = self.config.loss
        n = fwd.num_domains
        terms: dict[str, torch.Tensor] = {}
        if cfg.use_mmd:
            terms["mmd"] = losses.multi_domain_mmd(fwd.z.split(fwd.batch), cfg.sigma)
        if cfg.use_prior:
            terms["prior"] = losses.prior_loss(fwd.z_mean.split(fwd.batch), fwd.z_logvar.split(fwd.batch))
        if self.perturbation_discriminator is not None:
            terms["confusion"] = losses.perturbation_confusion_loss(self._net(self.perturbation_discriminator, fwd.z))
        terms["cls"] = losses.classification_loss(self._net(self.classifier, fwd.z), y.repeat(n))
        if self.image_discriminator is not None:
            terms["adv"] = losses.image_generator_loss(self._net(self.image_discriminator, fwd.x_restored))
        terms["mse"] = losses.reconstruction_loss(fwd.x_restored, x_original.repeat(n, 1, 1, 1))
        weights = {
            "mmd": 1.0,
            "prior": cfg.lambda_prior,
            "confusion": cfg.lambda_dp,
            "cls": cfg.lambda_cls,
            "adv": 1.0,
            "mse": cfg.theta_mse,
        }
        terms["total"] = sum(weights[name] * value for name, value in terms.items())
        return terms

    def discriminator_losses(self, fwd: DomainForward, x_original: torch.Tensor) -> dict[str, torch.Tensor]:
        """D_P's eq (2) and D_I's eq (6) losses on detached E/G outputs (what D_P, D_I minimise)."""
        terms: dict[str, torch.Tensor] = {}
        if self.perturbation_discriminator is not None:
            logits = self._net(self.perturbation_discriminator, fwd.z.detach())
            terms["dp"] = losses.perturbation_discriminator_loss(logits, fwd.domain)
        if self.image_discriminator is not None:
            logits = self._net(self.image_discriminator, torch.cat([x_original, fwd.x_restored.detach()]))  # one pass
            real, fake = logits.split([x_original.shape[0], fwd.x_restored.shape[0]])
            terms["di"] = losses.image_discriminator_loss(real, fake)
        return terms

    def _make_optimizers(self) -> _Optimizers:
        t = self.config.train

        def adam(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            # The fused kernel is ~4x faster than the default on CPU at Table 4 sizes (bench/step.py).
            return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)

        main = [*self.encoder.parameters(), *self.generator.parameters(), *self.classifier.parameters()]
        disc = [p for m in (self.perturbation_discriminator, self.image_discriminator) if m is not None for p in m.parameters()]
        return _Optimizers(main=adam(main), discriminators=adam(disc) if disc else None)

    def training_step(
        self,
        optimizers: _Optimizers,
        x_original: torch.Tensor,
        y: torch.Tensor,
        x_adversarial: Sequence[torch.Tensor],
        noise: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One alternating update on one batch: discriminators first, then E/G/C against the
        updated, frozen discriminators. Returns the loss values."""
        fwd = self.forward_domains(x_original, x_adversarial, noise)
        values: dict[str, float] = {}
        if optimizers.discriminators is not None:
            d_terms = self.discriminator_losses(fwd, x_original)
            check_finite(d_terms)
            optimizers.discriminators.zero_grad(set_to_none=True)
            sum(d_terms.values()).backward()
            optimizers.discriminators.step()
            values.update({name: v.item() for name, v in d_terms.items()})
        with frozen(self.perturbation_discriminator, self.image_discriminator):
            terms = self.generator_side_losses(fwd, x_original, y)
            check_finite(terms)
            optimizers.main.zero_grad(set_to_none=True)
            terms["total"].backward()
        optimizers.main.step()
        values.update({name: v.item() for name, v in terms.items()})
        return values

    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: Mapping[str, torch.Tensor],
        callback: EpochCallback | None = None,
        epochs: int | None = None,
        resume_state: TrainingState | None = None,
        target_model: nn.Module | None = None,
    ) -> list[EpochReport]:
        """Train on originals ``x`` (N, C, H, W), labels ``y`` (N,) and, for every cached known
        attack of the config, its adversarial examples ``x_adv[name]`` paired with ``x``.

        An online known attack (``PGDa``) needs no ``x_adv`` entry (one is ignored) but needs
        ``target_model`` (M_t, moved to the training device): its examples are made per batch
        against ``target_model(restore(x))`` of the current defense (module docstring).
        ``callback(report, defense)`` runs after each epoch (return False to stop). Raises
        NonFiniteLossError as soon as a loss is NaN/inf. ``resume_state`` (from
        :meth:`optimizer_state` after an earlier ``fit``) continues that training where it stopped:
        same Adam moments and step counts, same shuffling, noise and online-attack streams.
        """
        known = self.config.known_attacks
        cached = tuple(name for name in known if not is_online(name))
        check_training_data(x, y, x_adv, cached, DefenseError)
        online = self._online_attacks(target_model)
        t = self.config.train
        device = torch.device(t.device)
        self.to(device).train()
        optimizers = self._make_optimizers()
        noise = torch.Generator(device=device).manual_seed(t.seed + 1)
        generators = {"shuffle": torch.Generator().manual_seed(t.seed), "noise": noise}
        if online:  # only then: a state saved without online attacks has no such stream
            generators["online"] = torch.Generator().manual_seed(t.seed + 2)
            target_model.to(device)
        run = TrainingRun(optimizers={"main": optimizers.main, "discriminators": optimizers.discriminators},
                          generators=generators)
        if resume_state is not None:
            run.resume(resume_state)
        self._training = run

        def step(batch: list[torch.Tensor]) -> dict[str, float]:
            x_batch, y_batch, *cached_batches = batch
            by_name = dict(zip(cached, cached_batches))
            for name, attack in online.items():  # against the defense as it is at this step
                by_name[name] = attack.examples(target_model, self, x_batch, y_batch, generators["online"])
            return self.training_step(optimizers, x_batch, y_batch, [by_name[name] for name in known], noise)

        try:
            return run_epochs(self, [x, y, *(x_adv[name] for name in cached)], step, run=run, batch_size=t.batch_size,
                              epochs=epochs or t.epochs, device=device, callback=callback, resident=t.resident)
        finally:
            self.eval()

    def _online_attacks(self, target_model: nn.Module | None) -> dict[str, OnlinePGD]:
        """name -> settings of each online known attack of the config (empty if none); raises
        DefenseError if there is one but no target model to attack through."""
        names = [name for name in self.config.known_attacks if is_online(name)]
        if names and not isinstance(target_model, nn.Module):
            raise DefenseError(f"known attack {names[0]} is PGD through M_t ∘ G ∘ E, made online: "
                               f"pass the target model, fit(..., target_model=M_t)")
        settings = self.config.online
        return {name: OnlinePGD.with_step_rule(settings.eps, settings.steps, fraction=settings.fraction)
                for name in names}

    def optimizer_state(self) -> TrainingState:
        """The optimisers' and RNGs' state of the last ``fit`` (call it from the epoch callback
        or after ``fit``), for ``fit(..., resume_state=...)``."""
        run = getattr(self, "_training", None)
        if run is None:
            raise RuntimeError("optimizer_state() needs a fit() first: no optimiser exists yet")
        return run.state()

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path, extra_metadata: Mapping[str, object] | None = None) -> Path:
        """Save weights and config to one safetensors file (atomic); returns the path."""
        path = Path(path)
        metadata = {
            "format": FORMAT,
            "config": to_flat_dict(self.config),
            "history": [{"epoch": r.epoch, "losses": r.losses, "seconds": r.seconds} for r in self.history],
            **(extra_metadata or {}),
        }
        save_tensors(path, self.state_dict(), metadata)
        return path


def load_defense(path: str | Path, device: str = "cpu") -> ADDDefense:
    """Load a defense saved by :meth:`ADDDefense.save`, in eval mode, ready to ``restore``."""
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != FORMAT:
        raise StorageError(f"{path} is not an ADD-Defense checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    config = from_flat_dict(metadata["config"])
    defense = ADDDefense(config)
    defense.load_state_dict(tensors, strict=True)
    defense.history = [EpochReport(h["epoch"], h["losses"], h["seconds"]) for h in metadata.get("history", [])]
    return defense.to(device).eval()

