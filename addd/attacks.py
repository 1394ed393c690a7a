"""Attack suite (paper Table 3, Appendix C.1): one registry, one interface, one parameter table.

Every attack is ``run_attack(name, model, x, y, dataset=...) -> AttackResult``: images in [0, 1]
(N, C, H, W) float32 and true labels in, adversarial images out. Targeted attacks aim every
example at one class, ``target_class`` (default 3, the paper's example in C.2); examples whose
true label already is that class are attacked too, and Acc_t (addd.metrics) leaves them out.

Parameters live in ``DATASET_PARAMS`` (C.1's values per dataset, plus our digits table) on top of
``FAMILY_DEFAULTS`` (values C.1 does not give: library defaults or common practice, marked "our
choice"). ``budget`` in (0, 1] scales iteration counts, steps and queries for smoke runs.

``run_adaptive_attack`` attacks the whole pipeline model(defense.restore(x)) (paper Sec 4.3):
BPDA (identity backward through the defense, then PGD) and AutoAttack through the defense.

The libraries (advertorch, foolbox, pyautoattack) sit behind addd/_advertorch.py,
addd/_foolbox.py, addd/_autoattack.py and are imported on first use.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from addd import _advertorch, _autoattack, _foolbox
from addd.attack_names import ADAPTIVE_ATTACK_NAMES, ATTACK_NAMES, DEFAULT_TARGET_CLASS
from addd.errors import AdddError
from addd.inference import Pipeline, frozen

logger = logging.getLogger(__name__)


class AttackError(AdddError):
    """Bad attack name, dataset, budget, parameter or input; the message says what to do."""


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

# Values Appendix C.1 does not give. Library defaults unless marked otherwise; all "our choice".
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "PGD": {
        # our choice: step size eps_iter = step_factor * eps / nb_iter (Madry et al. 2018's 2.5
        # rule), so a budget-shortened run still covers the eps-ball; random start as advertorch.
        "step_factor": 2.5,
        "rand_init": True,
        "batch_size": 256,
    },
    "CW": {  # our choice: advertorch defaults
        "learning_rate": 0.01,
        "confidence": 0.0,
        "initial_const": 1e-3,
        "abort_early": True,
        "batch_size": 256,
    },
    "DDN": {  # our choice: advertorch defaults, except float precision (no 256-level rounding)
        "init_norm": 1.0,
        "quantize": False,
        "batch_size": 256,
    },
    "LS": {  # our choice: advertorch defaults (it is per example: batch_size only chunks) ...
        "d": 5,
        "k": 1,
        "round_ub": 10,
        # ... except the seed pixels: advertorch's 0.1 / 128 cap a round at 102 pixels of a
        # 32x32 image, so C.1's t = 300 pixels per round could never take effect.
        "seed_ratio": 0.3,
        "max_nb_seeds": 300,
        "batch_size": 256,
    },
    "BA": {  # our choice: foolbox defaults (init attack: blended uniform noise, 50 steps)
        "spherical_step": 1e-2,
        "source_step": 1e-2,
        "source_step_convergance": 1e-7,
        "step_adaptation": 1.5,
        "init_steps": 50,
        "init_directions": 1000,
        "batch_size": 256,
    },
    "ST": {  # our choice: advertorch defaults. One L-BFGS run per batch, so batch_size matters.
        "initial_const": 1.0,
        "confidence": 0.0,
        "abort_early": True,
        "batch_size": 64,
    },
}
# AutoAttack's standard version: 100 APGD/FAB iterations, 5000 Square queries
FAMILY_DEFAULTS["AA_Linf"] = FAMILY_DEFAULTS["AA_L2"] = {"n_iter": 100, "n_queries": 5000, "batch_size": 256}

# Appendix C.1 per dataset, and our digits table. AutoAttack radii: "our choice" unless noted.
DATASET_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        "PGD": {"eps": 0.15, "nb_iter": 40},
        "CW": {"binary_search_steps": 9, "max_iterations": 300},
        "DDN": {"nb_iter": 100, "gamma": 0.05},
        "LS": {"p": 10.0, "r": 1.5, "t": 300},
        "BA": {"steps": 5000},
        "ST": {"max_iterations": 5000, "search_steps": 20},
        "AA_Linf": {"eps": 0.3},  # Sec 4.3 / Fig 5(b) (it also trains at 0.15)
        "AA_L2": {"eps": 2.0},  # our choice: the usual MNIST L2 radius (Croce & Hein 2020)
    },
    "fashion_mnist": {
        "PGD": {"eps": 0.15, "nb_iter": 40},
        "CW": {"binary_search_steps": 9, "max_iterations": 200},
        "DDN": {"nb_iter": 100, "gamma": 0.05},
        "LS": {"p": 10.0, "r": 1.5, "t": 300},
        "BA": {"steps": 5000},
        "ST": {"max_iterations": 5000, "search_steps": 20},
        "AA_Linf": {"eps": 0.15},  # our choice: C.1's PGD eps for this dataset
        "AA_L2": {"eps": 1.5},  # our choice
    },
    "cifar10": {
        "PGD": {"eps": 0.03, "nb_iter": 40},
        "CW": {"binary_search_steps": 9, "max_iterations": 50},
        "DDN": {"nb_iter": 100, "gamma": 0.05},
        "LS": {"p": 10.0, "r": 1.5, "t": 15},
        "BA": {"steps": 2000},
        "ST": {"max_iterations": 5000, "search_steps": 20},
        "AA_Linf": {"eps": 8 / 255},  # Sec 4.3
        "AA_L2": {"eps": 0.5},  # our choice: the usual CIFAR-10 L2 radius (RobustBench)
    },
    "svhn": {
        "PGD": {"eps": 0.025, "nb_iter": 40},
        "CW": {"binary_search_steps": 9, "max_iterations": 200},
        "DDN": {"nb_iter": 200, "gamma": 0.05},
        "LS": {"p": 10.0, "r": 1.5, "t": 300},
        "BA": {"steps": 5000},
        "ST": {"max_iterations": 5000, "search_steps": 20},
        "AA_Linf": {"eps": 8 / 255},  # our choice: as CIFAR-10
        "AA_L2": {"eps": 0.5},  # our choice: as CIFAR-10
    },
    # Our choice throughout: sklearn 8x8 digits upscaled to 32x32 (smooth, low-detail images).
    # MNIST-like values, except the slow attacks are cut so the whole suite on ~300 test
    # images runs in a few minutes on one CPU: BA 5000 -> 2000 steps, ST 5000 x 20 -> 20 x 1,
    # LS 10 -> 3 rounds, C&W 9 x 300 -> 5 x 50 (5 searches still take the constant 1e-3 -> 10).
    # AA_L2 eps 3.0: at 2.0 a quarter of the images stay robust and FAB-T + Square on them cost
    # ~150 s; 3.0 is about twice the median L2 that DDN / C&W need here.
    "digits": {
        "PGD": {"eps": 0.15, "nb_iter": 40},
        "CW": {"binary_search_steps": 5, "max_iterations": 50},
        "DDN": {"nb_iter": 100, "gamma": 0.05},
        "LS": {"p": 10.0, "r": 1.5, "t": 300, "round_ub": 3},
        "BA": {"steps": 2000},
        "ST": {"max_iterations": 20, "search_steps": 1},
        "AA_Linf": {"eps": 0.15},
        "AA_L2": {"eps": 3.0},
    },
}

# mnist5k is 5,000 real MNIST digits (addd.data): C.1's MNIST table, the same object.
DATASET_PARAMS["mnist5k"] = DATASET_PARAMS["mnist"]
# svhn_synthetic (benchmarks only: SVHN's shape and sizes, generated): SVHN's table.
DATASET_PARAMS["svhn_synthetic"] = DATASET_PARAMS["svhn"]

DATASETS: tuple[str, ...] = tuple(DATASET_PARAMS)

# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

Runner = Callable[[nn.Module, torch.Tensor, torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, int]]]


@dataclass(frozen=True)
class AttackSpec:
    """One attack: which parameter family it reads, how it is run, and what bounds its output."""

    family: str  # key into FAMILY_DEFAULTS / DATASET_PARAMS
    library: str  # name of the outside library that implements it
    targeted: bool
    scaled: tuple[str, ...]  # parameters multiplied by budget (iterations, steps, queries)
    run: Runner  # (model, x, labels_or_targets, params) -> (x_adv, counts)
    norm: str | None = None  # "Linf" / "L2" when x_adv stays within params["eps"] of x


# advertorch constructor arguments taken from the parameter table, per family
_ADVERTORCH_KEYS: dict[str, tuple[str, ...]] = {
    "PGD": ("eps", "nb_iter", "eps_iter", "rand_init"),
    "CW": ("binary_search_steps", "max_iterations", "learning_rate", "confidence", "initial_const",
           "abort_early", "num_classes"),
    "DDN": ("nb_iter", "gamma", "init_norm", "quantize"),
    "LS": ("p", "r", "t", "d", "k", "round_ub", "seed_ratio", "max_nb_seeds"),
    "ST": ("max_iterations", "search_steps", "initial_const", "confidence", "abort_early", "num_classes"),
}
# parameters multiplied by budget, per family
_SCALED: dict[str, tuple[str, ...]] = {
    "PGD": ("nb_iter",),
    "CW": ("binary_search_steps", "max_iterations"),
    "DDN": ("nb_iter",),
    "LS": ("round_ub",),
    "ST": ("max_iterations", "search_steps"),
    "BA": ("steps",),
    "AA": ("n_iter", "n_queries"),
}
_BOUNDARY_KEYS = ("steps", "init_steps", "init_directions", "spherical_step", "source_step",
                  "source_step_convergance", "step_adaptation")
_AUTOATTACK_KEYS = ("eps", "version", "attacks", "n_iter", "n_queries", "seed", "batch_size")


def _advertorch_attack(family: str, targeted: bool, norm: str | None = None) -> AttackSpec:
    def run(model, x, y, params):
        kwargs = {key: params[key] for key in _ADVERTORCH_KEYS[family]}
        return _advertorch.perturb(family, model, x, y, targeted=targeted, **kwargs)

    return AttackSpec(family, _advertorch.LIBRARY, targeted, _SCALED[family], run, norm)


def _boundary_attack(model, x, y, params):
    return _foolbox.boundary_attack(model, x, y, **{key: params[key] for key in _BOUNDARY_KEYS})


def _autoattack_attack(norm: str) -> AttackSpec:
    def run(model, x, y, params):
        kwargs = {key: params[key] for key in _AUTOATTACK_KEYS}
        return _autoattack.autoattack(model, x, y, norm=norm, **kwargs)

    return AttackSpec(f"AA_{norm}", _autoattack.LIBRARY, False, _SCALED["AA"], run, norm)


ATTACKS: dict[str, AttackSpec] = {
    "PGDu": _advertorch_attack("PGD", targeted=False, norm="Linf"),
    "PGDt": _advertorch_attack("PGD", targeted=True, norm="Linf"),
    "CWu": _advertorch_attack("CW", targeted=False),
    "CWt": _advertorch_attack("CW", targeted=True),
    "DDNu": _advertorch_attack("DDN", targeted=False),
    "DDNt": _advertorch_attack("DDN", targeted=True),
    "LSu": _advertorch_attack("LS", targeted=False),
    "BAu": AttackSpec("BA", _foolbox.LIBRARY, False, _SCALED["BA"], _boundary_attack),
    "STu": _advertorch_attack("ST", targeted=False),
    "STt": _advertorch_attack("ST", targeted=True),
    "AA_Linf": _autoattack_attack("Linf"),
    "AA_L2": _autoattack_attack("L2"),
    # adaptive only: PGDu's parameters on model(BPDA(defense.restore)(x)); see run_adaptive_attack
    "BPDA": _advertorch_attack("PGD", targeted=False, norm="Linf"),
}
assert set(ATTACKS) == set(ATTACK_NAMES) | set(ADAPTIVE_ATTACK_NAMES)

_LIBRARY_VERSIONS: dict[str, Callable[[], str]] = {
    _advertorch.LIBRARY: _advertorch.version,
    _foolbox.LIBRARY: _foolbox.version,
    _autoattack.LIBRARY: _autoattack.version,
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackResult:
    """Adversarial images (same shape, dtype and device as x), the target class of a targeted
    attack (else None), and the parameters actually used (after budget), with library, version,
    seed and pass-through counts."""

    x_adv: torch.Tensor
    target: int | None
    params: dict[str, Any]


def _spec(name: str, valid: tuple[str, ...] = tuple(ATTACKS)) -> AttackSpec:
    if name not in valid:
        raise AttackError(f"unknown attack {name!r}; valid names: {', '.join(valid)}")
    return ATTACKS[name]


def is_targeted(name: str) -> bool:
    """True if ``name`` is a targeted attack (it then has a ``target_class`` parameter)."""
    return _spec(name).targeted


def library_versions() -> dict[str, str]:
    """Versions of torch and of each attack library, read without importing the libraries."""
    versions = {name: get_version() for name, get_version in _LIBRARY_VERSIONS.items()}
    return {"torch": torch.__version__, **versions}


def attack_params(
    name: str, dataset: str, budget: float = 1.0, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Parameters of attack ``name`` on ``dataset``, with ``budget`` applied and ``overrides``
    (keys from the table, e.g. ``{"eps": 0.3}`` or ``{"target_class": 7}``) on top."""
    spec = _spec(name)
    if dataset not in DATASET_PARAMS:
        raise AttackError(f"unknown dataset {dataset!r} for attacks; valid: {', '.join(DATASET_PARAMS)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise AttackError(f"budget must be a number in (0, 1], got {budget!r}; use 1.0 for the full attack")
    params = {**copy.deepcopy(FAMILY_DEFAULTS[spec.family]),
              **copy.deepcopy(DATASET_PARAMS[dataset][spec.family])}
    if spec.targeted:
        params["target_class"] = DEFAULT_TARGET_CLASS
    unknown = set(overrides or {}) - set(params)
    if unknown:
        valid = ", ".join(sorted(params))
        raise AttackError(f"unknown parameter(s) {sorted(unknown)} for {name}; valid: {valid}")
    params.update(overrides or {})
    for key in spec.scaled:
        params[key] = max(1, round(params[key] * budget))
    if spec.family == "PGD":
        params["eps_iter"] = params["step_factor"] * params["eps"] / params["nb_iter"]
    if spec.family.startswith("AA"):
        _set_autoattack_version(params, budget)
    params["budget"] = float(budget)
    return params


def _set_autoattack_version(params: dict[str, Any], budget: float) -> None:
    """Full budget: AutoAttack's standard ensemble. Less: APGD-CE + APGD-T only, fewer iterations."""
    if budget == 1 and (params["n_iter"], params["n_queries"]) == (100, 5000):
        params["version"], params["attacks"] = "standard", list(_autoattack.STANDARD_ATTACKS)
    else:
        params["version"], params["attacks"] = "custom", ["apgd-ce", "apgd-t"]
        params["n_queries"] = 0  # no Square in the custom subset


def run_attack(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dataset: str,
    budget: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> AttackResult:
    """Attack ``model`` (moved to ``device``, eval mode expected) on images ``x`` in [0, 1]
    (N, C, H, W) float32 with true labels ``y`` (N,). Same inputs and seed give the same x_adv
    on CPU. ``x`` and ``y`` are left untouched; x_adv comes back on x's device."""
    _spec(name, ATTACK_NAMES)
    return _run(name, model, x, y, dataset=dataset, budget=budget, seed=seed, device=device,
                overrides=overrides)


def run_adaptive_attack(
    name: str,
    model: nn.Module,
    defense: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dataset: str,
    budget: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> AttackResult:
    """Attack the whole pipeline model(defense.restore(x)) (paper Sec 4.3).

    BPDA: advertorch's BPDAWrapper around ``defense.restore`` (identity backward pass), then
    PGDu's parameters. AA_Linf / AA_L2: AutoAttack through the differentiable ``restore``.
    ``defense`` (an nn.Module, or any object with ``restore``) is moved to ``device`` like ``model``.
    """
    _spec(name, ADAPTIVE_ATTACK_NAMES)
    is_module = isinstance(defense, nn.Module)
    if is_module:
        defense.to(device)
        _warn_if_training(defense)
    restore = _advertorch.bpda_identity(defense.restore) if name == "BPDA" else defense.restore
    pipeline = Pipeline(restore, model)
    with frozen(defense) if is_module else contextlib.nullcontext():
        return _run(name, pipeline, x, y, dataset=dataset, budget=budget, seed=seed, device=device,
                    overrides=overrides)


def _run(name, model, x, y, *, dataset, budget, seed, device, overrides) -> AttackResult:
    spec = ATTACKS[name]
    params = attack_params(name, dataset, budget, overrides)
    _check_inputs(x, y)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise AttackError(f"seed must be an int, got {seed!r}")
    _warn_if_training(model)
    device = torch.device(device)
    model.to(device)
    x_in, y_in = x.detach().to(device).clone(), y.detach().to(device).clone()
    with torch.no_grad():
        params["num_classes"] = int(model(x_in[:1]).shape[1])
    target = params.get("target_class")
    if target is not None and not 0 <= target < params["num_classes"]:
        raise AttackError(f"target_class must be in [0, {params['num_classes']}), got {target}")
    labels = torch.full_like(y_in, target) if target is not None else y_in
    params.update(seed=seed, library=spec.library, library_version=_LIBRARY_VERSIONS[spec.library]())

    start = time.perf_counter()
    chunks, counts = [], {}
    with frozen(model), seeded(seed, device):
        for begin in range(0, len(x_in), params["batch_size"]):
            stop = begin + params["batch_size"]
            x_chunk, chunk_counts = spec.run(model, x_in[begin:stop], labels[begin:stop], params)
            chunks.append(x_chunk)
            for key, value in chunk_counts.items():
                counts[key] = counts.get(key, 0) + value
    x_adv = torch.cat(chunks).to(device=x.device, dtype=x.dtype)
    params.update(counts)
    logger.info("%s on %d examples: %.1f s", name, len(x), time.perf_counter() - start)
    return AttackResult(x_adv=x_adv, target=target, params=params)


def _warn_if_training(module: nn.Module) -> None:
    if any(m.training for m in module.modules()):
        logger.warning("attacking a module in training mode; call .eval() on model and defense first")


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 4:
        raise AttackError("x must be a float32 tensor of images (N, C, H, W) in [0, 1]")
    if len(x) == 0:
        raise AttackError("x is empty; pass at least one image")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise AttackError(f"x must lie in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
        raise AttackError(f"y must be an int64 tensor of {len(x)} labels, got {getattr(y, 'shape', y)}")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch and numpy for the attack, leaving the caller's random state as it was."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
