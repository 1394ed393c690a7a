"""Adaptive robustness: attacks on the whole pipeline x -> model(restore(x)), restore = G∘E.

The defense's ``restore`` is deterministic and differentiable at inference, so the strongest
plain attack is white-box PGD with the true gradient through it. BPDA (identity backward pass,
paper Sec 4.3) is reported too, under its own name: on digits it gave 0.74-0.81 where true-gradient
PGD gives 0.000 at eps 0.15. Every oblivious figure should have an adaptive one beside it.

- :func:`adaptive_pgd`: untargeted L∞ PGD on ``model(restore(x))`` (``restore=None``: on
  ``model`` alone, i.e. plain white-box PGD), random start in the eps-ball, ``steps`` steps of
  ``step_factor * eps / steps`` (2.5, Madry et al.), images clipped to [0, 1], run twice: with
  cross-entropy and with the margin loss (max other logit - true logit, CW-style). An example is
  robust only if it is classified correctly after both runs (the worse of the two per example).
  Each run is seeded with ``seed`` on its own, so the CE run is exactly
  ``addd.attacks.run_attack("PGDu", ...)`` with ``nb_iter=steps`` when ``restore`` is None.
- :func:`evaluate_adaptive_suite`: adaptive PGD (CE + margin), AutoAttack L∞ and L2 through the
  pipeline, and BPDA, as rows named with their threat model.
- :func:`robustness_curve`: L∞ accuracy against eps for the undefended model (white-box), the
  defended pipeline under oblivious PGD and under adaptive PGD. Its undefended column and the
  images it feeds the oblivious column depend on the model alone: :func:`whitebox_curve` computes
  them once for every defense's curve (a sweep does so for all its finals).

- :func:`pgd_linf`: the library's one L∞ PGD (one loss, untargeted or targeted, seeded), which
  the two above and adversarial training's online examples (addd.baselines) run.

Implementation: advertorch's ``LinfPGDAttack`` (through addd/_advertorch.py) with the pipeline
as its ``predict`` and our ``loss_fn``. Its step is ``loss(predict(x + delta)).backward()`` on
``delta``, i.e. plain autograd through ``restore``: the true gradient of the whole pipeline. It is
the same code as the oblivious PGDu attack, so "adaptive PGD with the identity as defense" and
"white-box PGD on M_t" agree exactly. It returns the last iterate (no best-iterate tracking).

Metric names (stable; ``AdaptiveSuiteResult.to_metrics()``), each an untargeted accuracy Acc_u
of ``model(restore(x_adv))`` on the first ``n`` examples:

====================  ==============================  =====  ==========================
metric                attack (row label)              norm   eps
====================  ==============================  =====  ==========================
adaptive.pgd_worst    PGD (adaptive, CE+margin)       Linf   ``eps`` (dataset PGD eps)
adaptive.pgd_ce       PGD (adaptive, CE)              Linf   ``eps``
adaptive.pgd_margin   PGD (adaptive, margin)          Linf   ``eps``
adaptive.aa_linf      AutoAttack Linf (adaptive)      Linf   dataset's AA_Linf eps
adaptive.aa_l2        AutoAttack L2 (adaptive)        L2     dataset's AA_L2 eps
adaptive.bpda         BPDA (paper Sec 4.3)            Linf   ``eps``
====================  ==============================  =====  ==========================

Modules are put in eval mode and their parameters frozen (no .grad) while attacking; their
train/eval modes, ``requires_grad`` flags and the caller's torch/numpy random state are restored
afterwards. Pure torch (plus the attack adapters); no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from addd import _advertorch
from addd.errors import AdddError
from addd.figures import ADAPTIVE_FIGURES, FIGURES
from addd.attacks import seeded
from addd.inference import Pipeline, eval_mode, frozen, predict

if TYPE_CHECKING:
    import pandas as pd

LOSSES: tuple[str, ...] = ("ce", "margin")
DEFAULT_STEPS = 100
STEP_FACTOR = 2.5  # step size = STEP_FACTOR * eps / steps (Madry et al. 2018)
THREAT_MODEL = "adaptive"

# metric name -> row label, in the order rows come out (names and labels: addd.figures)
METRICS: dict[str, str] = {name: FIGURES[name].label for name in ADAPTIVE_FIGURES}
CURVE_COLUMNS: tuple[str, ...] = (
    "eps", "undefended_whitebox", "defended_oblivious", "defended_adaptive", "n", "steps", "seed",
)


class AdaptiveError(AdddError):
    """Bad input to an adaptive attack; the message says what to fix."""


Restore = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PGDResult:
    """Result of :func:`adaptive_pgd`. ``correct[loss]`` (N,) bool on CPU: classified correctly
    after that loss's run; ``x_adv[loss]``: its adversarial images (on x's device)."""

    ce: float
    margin: float
    worst: float  # fraction correct after both runs (per-example AND)
    eps: float
    steps: int
    step_size: float
    rand_init: bool
    seed: int
    n: int
    correct: Mapping[str, torch.Tensor] = field(repr=False, compare=False)
    x_adv: Mapping[str, torch.Tensor] = field(repr=False, compare=False)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "eps": self.eps, "steps": self.steps, "step_size": self.step_size, "rand_init": self.rand_init,
            "seed": self.seed, "n": self.n, "losses": "+".join(LOSSES), "norm": "Linf",
            "implementation": f"advertorch {_advertorch.version()} LinfPGDAttack, true gradient",
        }


@dataclass(frozen=True)
class AdaptiveRow:
    """One adaptive figure: accuracy of model(restore(x_adv)) under ``attack``."""

    attack: str  # row label, see METRICS
    metric: str  # flat metric name, see METRICS
    threat_model: str  # always "adaptive" here
    eps: float
    norm: str  # "Linf" or "L2"
    accuracy: float
    n: int
    seed: int
    params: Mapping[str, Any] = field(compare=False)
    correct: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (n,) bool: survived


@dataclass(frozen=True)
class AdaptiveSuiteResult:
    """Result of :func:`evaluate_adaptive_suite`; ``to_metrics`` for MLflow, ``to_frame`` for tables."""

    dataset: str
    rows: tuple[AdaptiveRow, ...]

    def to_metrics(self) -> dict[str, float]:
        """``{"adaptive.pgd_worst": ..., ...}``: the names in METRICS, for the rows that ran."""
        return {row.metric: row.accuracy for row in self.rows}

    def to_frame(self) -> "pd.DataFrame":
        """One row per attack: attack, metric, threat_model, norm, eps, accuracy, n, seed."""
        import pandas as pd

        columns = ["attack", "metric", "threat_model", "norm", "eps", "accuracy", "n", "seed"]
        return pd.DataFrame([{c: getattr(row, c) for c in columns} for row in self.rows], columns=columns)

    def __getitem__(self, metric: str) -> AdaptiveRow:
        for row in self.rows:
            if row.metric == metric:
                return row
        raise KeyError(f"no row {metric!r}; rows: {[row.metric for row in self.rows]}")


# --------------------------------------------------------------------------------------------
# PGD
# --------------------------------------------------------------------------------------------


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of max_{j != y} logit_j - logit_y (CW's margin; > 0 means misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return (others.max(dim=1).values - true).sum()


def _loss_fn(loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    # CE exactly as advertorch's PGD default, so the CE run equals addd.attacks' PGDu
    return nn.CrossEntropyLoss(reduction="sum") if loss == "ce" else margin_loss


def adaptive_pgd(
    model: nn.Module,
    restore: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    step_factor: float = STEP_FACTOR,
    rand_init: bool = True,
    batch_size: int = 256,
) -> PGDResult:
    """Untargeted L∞ PGD on ``model(restore(x))`` with CE and with the margin loss.

    ``restore``: None (attack ``model`` alone: white-box PGD), a callable (an nn.Module or a
    bound method of one, e.g. ``defense.restore``), or a defense object with ``.restore``.
    Parameters of ``model`` and of the defense module are frozen while attacking, so pass the
    module or its bound method, not a lambda around it. ``x``: (N, ...) float in [0, 1];
    ``y``: (N,) int64 true labels. Batches run on the device of ``model``'s parameters.
    """
    restore_fn, modules = _resolve(model, restore)
    _check(x, y, eps=eps, steps=steps, seed=seed, batch_size=batch_size)
    step_size = step_factor * float(eps) / steps
    device = _device(model)
    correct, x_adv = {}, {}
    with _attack_state(modules):
        for loss in LOSSES:
            x_adv[loss] = _pgd(model, restore_fn, x, y, loss=loss, eps=float(eps), steps=steps, step_size=step_size,
                               rand_init=rand_init, seed=seed, batch_size=batch_size, device=device)
            correct[loss] = _correct(model, restore_fn, x_adv[loss], y, batch_size, device)
    worst = correct["ce"] & correct["margin"]
    return PGDResult(
        ce=_mean(correct["ce"]), margin=_mean(correct["margin"]), worst=_mean(worst), eps=float(eps),
        steps=steps, step_size=step_size, rand_init=rand_init, seed=seed, n=len(y), correct=correct, x_adv=x_adv,
    )


def adaptive_worst(model: nn.Module, restore: Any, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                   steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool: correct under both the CE and the margin PGD of :func:`adaptive_pgd`, i.e. its
    ``worst`` mask, with the margin attack run only on the examples CE left correct (PGD treats
    each example on its own; the random start of a survivor is drawn for the smaller batch)."""
    restore_fn, modules = _resolve(model, restore)
    _check(x, y, eps=eps, steps=steps, seed=seed, batch_size=batch_size)
    step_size = STEP_FACTOR * float(eps) / steps
    device = _device(model)
    with _attack_state(modules):
        x_ce = _pgd(model, restore_fn, x, y, loss="ce", eps=float(eps), steps=steps, step_size=step_size,
                    rand_init=True, seed=seed, batch_size=batch_size, device=device)
        worst = _correct(model, restore_fn, x_ce, y, batch_size, device)
        left = worst.nonzero().flatten()
        if len(left):
            x_margin = _pgd(model, restore_fn, x[left], y[left], loss="margin", eps=float(eps), steps=steps,
                            step_size=step_size, rand_init=True, seed=seed, batch_size=batch_size, device=device)
            worst[left] = _correct(model, restore_fn, x_margin, y[left], batch_size, device)
    return worst


def pgd_linf(
    model: nn.Module,
    restore: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    loss: str = "ce",
    rand_init: bool = True,
    targeted: bool = False,
    seed: int = 0,
    batch_size: int = 256,
) -> torch.Tensor:
    """The library's one L∞ PGD on ``model(restore(x))`` (``restore`` None: ``model`` alone), used
    by :func:`adaptive_pgd`, :func:`adaptive_worst` and the online examples of adversarial training.

    ``loss``: "ce" or "margin" (see LOSSES); ``y``: the true labels, or the targets when
    ``targeted`` (then the loss is lowered instead of raised); random start in the eps-ball drawn
    from ``seed`` (the caller's RNG state is left alone); ``steps`` steps of ``step_size``; images
    clipped to [0, 1]. Modules are in eval mode with frozen parameters while attacking, restored
    afterwards. Returns x_adv (detached, on x's device).

    It runs advertorch's LinfPGDAttack, the implementation of the oblivious PGDu/PGDt sets of
    addd.attacks; those keep their own call (``run_attack``) because the adversarial-example cache
    keys and stores exactly its parameters and output, but it is the same PGD code.
    """
    restore_fn, modules = _resolve(model, restore)
    _check(x, y, eps=eps, steps=steps, seed=seed, batch_size=batch_size)
    if loss not in LOSSES:
        raise AdaptiveError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    with _attack_state(modules):
        return _pgd(model, restore_fn, x, y, loss=loss, eps=float(eps), steps=steps, step_size=step_size,
                    rand_init=rand_init, seed=seed, batch_size=batch_size, device=_device(model), targeted=targeted)


def _pgd(model, restore, x, y, *, loss, eps, steps, step_size, rand_init, seed, batch_size, device,
         targeted=False) -> torch.Tensor:
    if eps == 0:
        return x.detach().clone()  # the eps-ball is {x}
    predict = model if restore is None else Pipeline(restore, model)
    chunks = []
    with seeded(seed, device), torch.enable_grad():
        for begin in range(0, len(x), batch_size):
            x_batch = x[begin:begin + batch_size].detach().to(device).clone()
            y_batch = y[begin:begin + batch_size].detach().to(device)
            x_batch_adv, _ = _advertorch.perturb(
                "PGD", predict, x_batch, y_batch, targeted=targeted, loss_fn=_loss_fn(loss), eps=eps,
                nb_iter=steps, eps_iter=step_size, rand_init=rand_init,
            )
            chunks.append(x_batch_adv)
    return torch.cat(chunks).to(device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------------------------
# Suite
# --------------------------------------------------------------------------------------------


def evaluate_adaptive_suite(
    model: nn.Module,
    defense: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dataset: str,
    eps: float | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    budget: float = 1.0,
    autoattack: bool = True,
    bpda: bool = True,
    n: int | None = None,
    run_adaptive_attack: Callable[..., Any] | None = None,
) -> AdaptiveSuiteResult:
    """Adaptive figures for ``model ∘ defense.restore`` on the first ``n`` examples (all if None).

    Adaptive PGD (CE, margin, and the per-example worst of the two) at ``eps`` (default: the
    dataset's PGD eps) with ``steps`` steps; AutoAttack L∞ and L2 through the pipeline at the
    dataset's AutoAttack radii; BPDA with the dataset's PGDu parameters at ``eps``. ``budget``
    scales AutoAttack's and BPDA's iterations as in addd.attacks (adaptive PGD uses ``steps``).
    ``run_adaptive_attack`` defaults to ``addd.attacks.run_adaptive_attack``.
    """
    from addd import attacks

    if run_adaptive_attack is None:
        run_adaptive_attack = attacks.run_adaptive_attack
    if not hasattr(defense, "restore"):
        raise AdaptiveError("defense must have a restore(x) method (use an identity object for no defense)")
    if eps is None:
        eps = float(attacks.attack_params("PGDu", dataset)["eps"])
    x, y = _first(x, y, n)
    device = _device(model)
    rows = []

    start = time.perf_counter()
    pgd = adaptive_pgd(model, defense, x, y, eps=eps, steps=steps, seed=seed)
    params = {**pgd.params, "seconds": time.perf_counter() - start}
    worst = pgd.correct["ce"] & pgd.correct["margin"]
    for metric, accuracy, correct in (("adaptive.pgd_worst", pgd.worst, worst),
                                      ("adaptive.pgd_ce", pgd.ce, pgd.correct["ce"]),
                                      ("adaptive.pgd_margin", pgd.margin, pgd.correct["margin"])):
        rows.append(_row(metric, "Linf", pgd.eps, accuracy, len(y), seed, params, correct))

    library_attacks = []
    if autoattack:
        library_attacks += [("adaptive.aa_linf", "AA_Linf", "Linf", None), ("adaptive.aa_l2", "AA_L2", "L2", None)]
    if bpda:
        library_attacks.append(("adaptive.bpda", "BPDA", "Linf", {"eps": float(eps)}))
    for metric, name, norm, overrides in library_attacks:
        start = time.perf_counter()
        with _attack_state(_resolve(model, defense)[1]):
            result = run_adaptive_attack(name, model, defense, x, y, dataset=dataset, budget=budget, seed=seed,
                                         device=device, overrides=overrides)
            correct = _correct(model, defense.restore, result.x_adv, y, 256, device)
        params = {**result.params, "seconds": time.perf_counter() - start}
        rows.append(_row(metric, norm, float(result.params["eps"]), _mean(correct), len(y), seed, params, correct))
    return AdaptiveSuiteResult(dataset=dataset, rows=tuple(rows))


def _row(metric, norm, eps, accuracy, n, seed, params, correct=None) -> AdaptiveRow:
    return AdaptiveRow(attack=METRICS[metric], metric=metric, threat_model=THREAT_MODEL, eps=float(eps), norm=norm,
                       accuracy=accuracy, n=n, seed=seed, params=dict(params),
                       correct=None if correct is None else correct.cpu().bool())


# --------------------------------------------------------------------------------------------
# Robustness curve
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhiteboxCurve:
    """White-box PGD on the undefended model alone at each eps of a curve (:func:`whitebox_curve`):
    the curve's undefended column and the adversarial images of its oblivious column, the same for
    every defense, so computed once and handed to each :func:`robustness_curve`."""

    model: nn.Module  # the reference model attacked; robustness_curve accepts it for this very object only
    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)
    eps: tuple[float, ...]
    steps: int
    seed: int
    points: tuple[PGDResult, ...] = field(repr=False)  # one per eps

    def matches(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: tuple[float, ...], steps: int,
                seed: int) -> bool:
        return (self.model is model and self.eps == eps and self.steps == steps and self.seed == seed
                and self.x.shape == x.shape and torch.equal(self.x, x) and torch.equal(self.y, y))


def _curve_eps(eps_max: float, num: int) -> tuple[float, ...]:
    return tuple(float(eps) for eps in np.linspace(0.0, float(eps_max), num))


def whitebox_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps_max: float, num: int = 6,
                   steps: int = DEFAULT_STEPS, seed: int = 0) -> WhiteboxCurve:
    """:func:`adaptive_pgd` on ``model`` alone (no defense) at each eps of ``robustness_curve(...,
    eps_max=eps_max, num=num, steps=steps, seed=seed)``: exactly the attacks that curve would run
    for its undefended column, to pass to it (and to every other defense's curve) as ``whitebox``."""
    _check_curve_args(num, eps_max)
    eps_grid = _curve_eps(eps_max, num)
    points = tuple(adaptive_pgd(model, None, x, y, eps=eps, steps=steps, seed=seed) for eps in eps_grid)
    return WhiteboxCurve(model=model, x=x, y=y, eps=eps_grid, steps=steps, seed=seed, points=points)


def _check_curve_args(num: Any, eps_max: Any) -> None:
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise AdaptiveError(f"num must be a positive int, got {num!r}")
    if not _is_number(eps_max) or eps_max < 0:
        raise AdaptiveError(f"eps_max must be a number >= 0, got {eps_max!r}")


def robustness_curve(
    model: nn.Module,
    defense: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps_max: float,
    num: int = 6,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    undefended_model: nn.Module | None = None,
    whitebox: WhiteboxCurve | None = None,
) -> "pd.DataFrame":
    """L∞ accuracy against eps for eps in linspace(0, eps_max, num); eps = 0 is clean accuracy.

    ``undefended_model``: the target model M_t when ``model`` is a defense's own classifier
    (adversarial training): the undefended column is then M_t under white-box PGD, the oblivious
    column M_t's adversarial images fed to the defense (a transfer attack), the adaptive column
    the white-box attack on the defense. Default: ``model``. ``whitebox``: the undefended column's
    attacks already run (:func:`whitebox_curve` with the same model, x, y, eps grid, steps and
    seed), so they are not run again; None: run here.

    Columns (CURVE_COLUMNS): ``undefended_whitebox``: PGD on ``model`` alone, worst of CE/margin,
    accuracy of ``model``; ``defended_oblivious``: the same adversarial images (computed on
    ``model`` alone) through restore, then ``model``, an example robust only if it survives both
    losses' images; ``defended_adaptive``: :func:`adaptive_pgd` through restore, worst of CE/margin.
    At eps = 0 the first is the clean accuracy and the other two the reconstruction accuracy.

    Cost: the adaptive column needs only the worst case, so the margin attack runs on the examples
    the CE attack left correct (same figure, a fraction of the work at the eps where the defense
    breaks). A defense whose ``restore`` is the identity (``is_identity = True``) in front of
    the reference model itself (no defense) gets the white-box figure in all three columns without
    re-attacking: ``adaptive_pgd`` through the identity is the white-box PGD on ``model`` (tested).
    """
    import pandas as pd

    restore_fn, modules = _resolve(model, defense)
    if restore_fn is None:
        raise AdaptiveError("robustness_curve needs a defense (an object with restore, or a callable)")
    _check_curve_args(num, eps_max)
    reference = model if undefended_model is None else undefended_model
    if whitebox is None:
        whitebox = whitebox_curve(reference, x, y, eps_max=eps_max, num=num, steps=steps, seed=seed)
    elif not whitebox.matches(reference, x, y, _curve_eps(eps_max, num), steps, seed):
        raise AdaptiveError("whitebox was computed for another model, examples, eps grid, steps or seed than this "
                            "curve; pass whitebox_curve(...) of the same arguments, or None")
    identity = bool(getattr(defense, "is_identity", False)) and reference is model
    rows = []
    for eps, undefended in zip(whitebox.eps, whitebox.points):
        if identity:
            oblivious = adaptive = undefended.worst
        else:
            oblivious = _oblivious_point(model, restore_fn, modules, undefended, y)
            adaptive = _mean(adaptive_worst(model, defense, x, y, eps=eps, steps=steps, seed=seed))
        rows.append({"eps": eps, "undefended_whitebox": undefended.worst, "defended_oblivious": oblivious,
                     "defended_adaptive": adaptive, "n": len(y), "steps": steps, "seed": seed})
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def _oblivious_point(model, restore_fn, modules, undefended, y) -> float:
    """The curve's oblivious point: the white-box images of both losses (made on ``model`` alone)
    through restore; an example counts only if it survives both."""
    device = _device(model)
    with _attack_state(modules):
        survived = torch.ones(len(y), dtype=torch.bool)
        for loss in LOSSES:
            survived &= _correct(model, restore_fn, undefended.x_adv[loss], y, 256, device)
    return _mean(survived)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _resolve(model: nn.Module, restore: Any) -> tuple[Restore | None, list[nn.Module]]:
    """(restore callable or None, the modules to freeze and put in eval mode)."""
    if not isinstance(model, nn.Module):
        raise AdaptiveError(f"model must be an nn.Module, got {type(model).__name__}")
    modules = [model]
    if restore is None:
        return None, modules
    owner = restore
    if hasattr(restore, "restore"):
        restore = restore.restore
    if not callable(restore):
        raise AdaptiveError(f"restore must be None, a callable or an object with restore(x), got {type(owner).__name__}")
    for candidate in (owner, getattr(restore, "__self__", None), restore):
        if isinstance(candidate, nn.Module) and all(candidate is not m for m in modules):
            modules.append(candidate)
    return restore, modules


def _check(x, y, *, eps, steps, seed, batch_size) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise AdaptiveError("x must be a non-empty float tensor (N, ...) of images in [0, 1]")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise AdaptiveError(f"x must lie in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
        raise AdaptiveError(f"y must be an int64 tensor of {len(x)} labels, got {getattr(y, 'shape', y)}")
    if not _is_number(eps) or not 0 <= eps <= 1:
        raise AdaptiveError(f"eps must be a number in [0, 1], got {eps!r}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdaptiveError(f"{name} must be a positive int, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise AdaptiveError(f"seed must be an int, got {seed!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None:
        return x, y
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AdaptiveError(f"n must be a positive int or None, got {n!r}")
    return x[:n], y[:n]


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _mean(mask: torch.Tensor) -> float:
    return mask.float().mean().item()


@torch.no_grad()
def _correct(model, restore, x, y, batch_size, device) -> torch.Tensor:
    """(N,) bool on CPU: model(restore(x)) == y (batches go to the model's device)."""
    return predict(model, x, transform=restore, batch_size=batch_size) == y.cpu()


@contextlib.contextmanager
def _attack_state(modules: list[nn.Module]) -> Iterator[None]:
    """Eval mode and frozen parameters for the block (addd.inference), both put back afterwards."""
    with eval_mode(*modules), frozen(*modules):
        yield


