"""Online adversarial examples: L∞ PGD against the model being trained, one batch at a time.

Two fits use it, so both run the same code:
- ``ADDDefense.fit`` for the online known attack ``PGDa`` (addd.attack_names): PGD through the
  whole pipeline M_t ∘ G ∘ E of the *current* defense (``restore`` = the defense);
- adversarial training (addd.baselines) for PGDu, PGDt and PGDa: PGD on its own classifier
  (``restore`` None), Madry style.

The attack is the library's one L∞ PGD, :func:`addd.adaptive.pgd_linf`, which puts every module
it is given in eval mode with frozen parameters while attacking (addd.inference.eval_mode /
frozen) and restores both afterwards: batch-norm statistics and parameter gradients of the model
in training are not touched by the attack. Each batch's random start is seeded from a
``torch.Generator`` the fit owns and saves in its TrainingState, so a resumed fit draws the same
starts as an uninterrupted one. Pure torch; no Ray, Optuna or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from addd.adaptive import STEP_FACTOR, pgd_linf


@dataclass(frozen=True)
class OnlinePGD:
    """One online PGD attack: radius, iterations and step, random start, target, share attacked."""

    eps: float  # L∞ radius, images in [0, 1]
    steps: int  # iterations per batch
    step_size: float  # per-iteration step (addd.attacks' rule: STEP_FACTOR * eps / steps)
    rand_init: bool = True  # random start in the eps-ball
    target: int | None = None  # class every example is pushed to; None: untargeted
    fraction: float = 1.0  # the first round(fraction * B) examples of a batch are attacked

    @classmethod
    def with_step_rule(cls, eps: float, steps: int, **settings: Any) -> "OnlinePGD":
        """Settings with the step size of addd.attacks' PGD: 2.5 ε / steps (Madry et al. 2018)."""
        return cls(eps=float(eps), steps=steps, step_size=STEP_FACTOR * float(eps) / steps, **settings)

    def attacked_count(self, batch: int) -> int:
        """How many examples of a batch of ``batch`` are replaced by their PGD version (>= 1)."""
        return min(batch, max(1, round(self.fraction * batch)))

    def examples(self, model: nn.Module, restore: Any, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        """x (B, C, H, W) with its first :meth:`attacked_count` examples replaced by PGD on
        ``model(restore(x))`` (``restore`` None: ``model`` alone) against labels ``y`` (B,) (or
        the target), seeded by one draw from ``generator``. Detached, within ε of x, in [0, 1]."""
        count = self.attacked_count(len(x))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        labels = y if self.target is None else torch.full_like(y, self.target)
        x_attacked = pgd_linf(
            model, restore, x[:count], labels[:count], eps=self.eps, step_size=self.step_size, steps=self.steps,
            rand_init=self.rand_init, targeted=self.target is not None, seed=seed, batch_size=count,
        )
        return x_attacked if count == len(x) else torch.cat([x_attacked, x[count:].detach()])
