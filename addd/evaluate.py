"""Robustness of a defense x -> M_t(defense.restore(x)) on cached adversarial sets (App. C.2).

Oblivious evaluation (:func:`evaluate`): per-attack accuracy with and without the defense, clean
and reconstruction accuracy, and the worst cases a sweep optimises and compares:

- ``worst.unknown``: min over the unknown attacks (suite attacks the defense did not train on)
  of the per-attack accuracy (Acc_u, or Acc_t for targeted attacks).
- ``worst.unknown_per_sample``: an example counts only if it is classified correctly under every
  unknown attack (as AutoAttack does). Targeted attacks follow Acc_t: an example that is a
  correctly classified member of a targeted attack's target class leaves the denominator when
  every unknown attack leaves it out that way; otherwise it counts as not robust. This equals
  Acc_u (Acc_t) for one untargeted (targeted) attack and is never above ``worst.unknown``.
- ``worst.holdout``: min over a fixed holdout set of attacks that no trial may train on.

The clean and undefended figures are M_t's alone and do not depend on the defense: a caller that
evaluates many defenses on the same sets computes them once (:func:`reference_predictions`) and
passes them as ``reference`` (a sweep's trials do, at every validation epoch).

Adaptive figures (attacks on the whole pipeline M_t ∘ G ∘ E) are not computed here: see
addd.adaptive (adaptive PGD, AutoAttack and BPDA through the defense) and
``addd.attacks.run_adaptive_attack``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

import torch
from torch import nn

from addd.errors import AdddError
from addd.inference import eval_mode, predict
from addd.metrics import accuracy_targeted, accuracy_untargeted
from addd.storage import sha256_tensor

if TYPE_CHECKING:
    import pandas as pd

    from addd.advcache import AdvSet

logger = logging.getLogger(__name__)


class EvaluationError(AdddError):
    """Inputs of an evaluation do not fit together; the message says what to fix."""


class Defense(Protocol):
    def restore(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class AttackAccuracy:
    """Accuracy of the target model on one attack's examples, with and without the defense."""

    attack: str
    defended: float  # on defense.restore(x_adv): Acc_u, or Acc_t if targeted
    undefended: float  # on x_adv itself, same metric
    targeted: bool
    known: bool  # the defense trained on this attack
    holdout: bool  # in the caller's fixed holdout set
    n: int


@dataclass(frozen=True)
class RobustnessReport:
    """Result of :func:`evaluate`; ``to_metrics`` for MLflow, ``to_frame`` for tables."""

    clean: float  # target model on clean x, no defense
    reconstruction: float  # target model on defense.restore(x)
    attacks: tuple[AttackAccuracy, ...]
    known_attacks: tuple[str, ...]
    holdout_attacks: tuple[str, ...]
    worst_unknown: float  # NaN if no suite attack is unknown
    worst_unknown_per_sample: float
    worst_holdout: float  # NaN if no holdout set was given
    # attack -> (correct, excluded) per example of the defended pipeline (see robust_masks); for
    # paired statistics between defenses evaluated on the same examples
    masks: Mapping[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def unknown_attacks(self) -> tuple[str, ...]:
        return tuple(a.attack for a in self.attacks if not a.known)

    def to_metrics(self) -> dict[str, float]:
        """Flat, MLflow-friendly names: ``acc.defended.PGDu``, ``worst.unknown``, ..."""
        metrics = {"acc.clean": self.clean, "acc.reconstruction": self.reconstruction}
        for row in self.attacks:
            metrics[f"acc.defended.{row.attack}"] = row.defended
            metrics[f"acc.undefended.{row.attack}"] = row.undefended
        metrics["worst.unknown"] = self.worst_unknown
        metrics["worst.unknown_per_sample"] = self.worst_unknown_per_sample
        if self.holdout_attacks:
            metrics["worst.holdout"] = self.worst_holdout
        return metrics

    def to_frame(self) -> "pd.DataFrame":
        """One row per attack: attack, targeted, known, holdout, n, defended, undefended."""
        import pandas as pd

        columns = ["attack", "targeted", "known", "holdout", "n", "defended", "undefended"]
        return pd.DataFrame([{c: getattr(row, c) for c in columns} for row in self.attacks], columns=columns)


@dataclass(frozen=True)
class ReferencePredictions:
    """Predictions of the undefended model M_t on one split's clean examples and on each of its
    adversarial sets: the inputs of :func:`evaluate`'s ``clean`` and ``undefended`` figures, which
    no defense changes. Made by :func:`reference_predictions`."""

    model: nn.Module  # the model they are predictions of; evaluate accepts them for this very object only
    clean: torch.Tensor  # (N,) int64 on CPU: model(x)
    adv: Mapping[str, torch.Tensor]  # attack -> (N,) int64 on CPU: model(x_adv)


def reference_predictions(model: nn.Module, x: torch.Tensor, adv_sets: Mapping[str, "AdvSet"], *,
                          batch_size: int = 256) -> ReferencePredictions:
    """M_t's predictions on ``x`` and on every set of ``adv_sets``, exactly as :func:`evaluate`
    computes them (same batches), to hand to every later ``evaluate(..., reference=...)``."""
    return ReferencePredictions(model=model, clean=predict(model, x, batch_size=batch_size),
                                adv={name: predict(model, adv.x_adv, batch_size=batch_size)
                                     for name, adv in adv_sets.items()})


def evaluate(
    defense: Defense,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adv_sets: Mapping[str, "AdvSet"],
    *,
    known_attacks: Sequence[str],
    holdout: Sequence[str] = (),
    batch_size: int = 256,
    undefended_model: nn.Module | None = None,
    reference: ReferencePredictions | None = None,
) -> RobustnessReport:
    """Oblivious robustness of ``defense`` in front of ``model`` (see the module docstring).

    ``x``, ``y``: the clean examples the sets in ``adv_sets`` (attack name -> AdvSet) were made
    from. ``holdout`` attacks must all be in ``adv_sets`` and none may be a known attack.
    ``undefended_model``: the target model M_t the sets were computed on, for the ``clean`` and
    ``undefended`` figures, when ``model`` is not M_t (a defense with its own classifier, e.g.
    adversarial training); default ``model``. ``reference``: that model's predictions on ``x`` and
    on these sets (:func:`reference_predictions`), so they are not recomputed; None: computed here.
    """
    known, holdout = tuple(known_attacks), tuple(holdout)
    _check_sets(x, y, adv_sets)
    _check_holdout(known, holdout, adv_sets)
    y = y.cpu()
    undefended_model = model if undefended_model is None else undefended_model
    reference = _checked_reference(reference, undefended_model, x, adv_sets, batch_size)
    with eval_mode(defense):
        clean = accuracy_untargeted(reference.clean, y)
        reconstruction = accuracy_untargeted(predict(model, x, transform=defense.restore, batch_size=batch_size), y)
        rows, masks = [], {}
        for name, adv in adv_sets.items():
            row, masks[name] = _attack_accuracy(name, adv, defense, model, reference.adv[name], y, batch_size,
                                                known=name in known, holdout=name in holdout)
            rows.append(row)
    unknown = [r.defended for r in rows if not r.known]
    if not unknown:
        logger.warning("evaluate: every attack in the suite is a known attack; worst.unknown is NaN")
    return RobustnessReport(
        clean=clean,
        reconstruction=reconstruction,
        attacks=tuple(rows),
        known_attacks=known,
        holdout_attacks=holdout,
        worst_unknown=_nanmin(unknown),
        worst_unknown_per_sample=per_sample_accuracy([masks[r.attack] for r in rows if not r.known]),
        worst_holdout=_nanmin([r.defended for r in rows if r.holdout]),
        masks=masks,
    )


def _checked_reference(reference: ReferencePredictions | None, model: nn.Module, x: torch.Tensor,
                       adv_sets: Mapping[str, "AdvSet"], batch_size: int) -> ReferencePredictions:
    """``reference`` if it holds ``model``'s predictions for ``x`` and every set; computed if None."""
    if reference is None:
        return reference_predictions(model, x, adv_sets, batch_size=batch_size)
    if reference.model is not model:
        raise EvaluationError("the reference predictions were made with another model than this evaluation's "
                              "undefended model; pass the ones made with it (reference_predictions) or none")
    missing = sorted(set(adv_sets) - set(reference.adv))
    if missing or len(reference.clean) != len(x) or any(len(reference.adv[a]) != len(x) for a in adv_sets):
        raise EvaluationError(f"the reference predictions do not cover these {len(x)} examples and sets "
                              f"(missing: {missing or 'none'}); make them from the same x and adv_sets")
    return reference


def _attack_accuracy(
    name: str, adv: "AdvSet", defense: Defense, model: nn.Module, undefended_pred: torch.Tensor, y: torch.Tensor,
    batch_size: int, *, known: bool, holdout: bool,
) -> tuple[AttackAccuracy, tuple[torch.Tensor, torch.Tensor]]:
    """One attack's row and the defended pipeline's per-example (correct, excluded) masks;
    ``undefended_pred``: M_t's predictions on this set."""
    target = None if adv.target is None else adv.target.cpu()
    defended_pred = predict(model, adv.x_adv, transform=defense.restore, batch_size=batch_size)
    row = AttackAccuracy(
        attack=name,
        defended=_accuracy(defended_pred, y, target),
        undefended=_accuracy(undefended_pred, y, target),
        targeted=target is not None,
        known=known,
        holdout=holdout,
        n=len(y),
    )
    return row, robust_masks(defended_pred, y, target)


def _check_holdout(known: Sequence[str], holdout: Sequence[str], adv_sets: Mapping[str, "AdvSet"]) -> None:
    clash = sorted(set(holdout) & set(known))
    if clash:
        raise EvaluationError(
            f"holdout attacks {clash} are known attacks of this defense; a holdout attack must never be "
            f"trained on, so drop them from known_attacks or from the holdout set"
        )
    missing = sorted(set(holdout) - set(adv_sets))
    if missing:
        raise EvaluationError(
            f"holdout attacks {missing} have no adversarial set; generate them or fix the holdout list"
        )


def robust_masks(pred: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (correct, excluded) for one attack; ``excluded`` = Acc_t's num_r examples."""
    correct = pred == y
    if target is None:
        return correct, torch.zeros_like(correct)
    return correct, correct & (y == target)


def per_sample_accuracy(masks: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Fraction robust under every attack; see the module docstring for targeted attacks."""
    if not masks:
        return float("nan")
    correct = torch.stack([c for c, _ in masks])  # (A, N)
    excluded = torch.stack([e for _, e in masks])  # (A, N)
    robust = correct.all(dim=0) & ~excluded.any(dim=0)
    counted = ~excluded.all(dim=0)
    if not bool(counted.any()):
        return float("nan")
    return robust.sum().item() / counted.sum().item()


def _accuracy(pred: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> float:
    return accuracy_untargeted(pred, y) if target is None else accuracy_targeted(pred, y, target)


def _nanmin(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return min(finite) if finite else float("nan")


def _check_sets(x: torch.Tensor, y: torch.Tensor, adv_sets: Mapping[str, "AdvSet"]) -> None:
    if len(x) != len(y) or len(x) == 0:
        raise EvaluationError(f"x and y must be non-empty and of one length, got {len(x)} and {len(y)}")
    x_sha256 = None
    for name, adv in adv_sets.items():
        if adv.x_adv.shape != x.shape or not torch.equal(adv.y.cpu(), y.cpu()):
            raise EvaluationError(
                f"the {name} set ({tuple(adv.x_adv.shape)}) was not made from these clean examples "
                f"({tuple(x.shape)}); pass the x, y the sets were generated from"
            )
        if adv.manifest is not None:
            x_sha256 = x_sha256 or sha256_tensor(x.cpu())
            if adv.manifest.x_sha256 != x_sha256:
                raise EvaluationError(f"the {name} set was generated from other images than x; pass the matching x")

