"""The one adapter to advertorch 0.2.3, and the only place that holds its import fix.

advertorch 0.2.3 imports ``zero_gradients`` from ``torch.autograd.gradcheck``, which torch
removed in 1.9; :func:`_import` puts a replacement there before advertorch is first imported.
advertorch is imported lazily, on the first attack, so ``import addd.attacks`` stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn

LIBRARY = "advertorch"

# our attack family -> advertorch attack class
_CLASSES = {
    "PGD": "LinfPGDAttack",
    "CW": "CarliniWagnerL2Attack",
    "DDN": "DDNL2Attack",
    "LS": "LocalSearchAttack",
    "ST": "SpatialTransformAttack",
}


def version() -> str:
    """Installed advertorch version, read without importing it."""
    return importlib.metadata.version(LIBRARY)


def _zero_gradients(x: Any) -> None:
    """torch<1.9's ``torch.autograd.gradcheck.zero_gradients``, which advertorch still imports."""
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    else:
        for item in x:
            _zero_gradients(item)


def _import():
    import torch.autograd.gradcheck  # noqa: F401  (makes sure the module is in sys.modules)

    gradcheck_module = sys.modules["torch.autograd.gradcheck"]
    if not hasattr(gradcheck_module, "zero_gradients"):
        gradcheck_module.zero_gradients = _zero_gradients
    import advertorch.attacks
    import advertorch.bpda

    return advertorch


@contextlib.contextmanager
def _lbfgs_without_iprint() -> Iterator[None]:
    """advertorch's spatial-transform attack passes ``iprint`` to SciPy's ``fmin_l_bfgs_b``, which
    SciPy 1.18 removed (it only set verbosity): drop it there, for the block."""
    import inspect

    import scipy.optimize

    original = scipy.optimize.fmin_l_bfgs_b
    if "iprint" in inspect.signature(original).parameters:
        yield
        return

    def fmin_l_bfgs_b(*args: Any, iprint: Any = None, **kwargs: Any):
        return original(*args, **kwargs)

    scipy.optimize.fmin_l_bfgs_b = fmin_l_bfgs_b
    try:
        yield
    finally:
        scipy.optimize.fmin_l_bfgs_b = original


def perturb(
    family: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: Any
) -> tuple[torch.Tensor, dict[str, int]]:
    """Run advertorch's attack for ``family`` (PGD, CW, DDN, LS, ST) on one batch.

    ``y`` is the true label for untargeted attacks and the target label for targeted ones
    (``kwargs["targeted"]``); ``kwargs`` are the advertorch constructor's arguments.
    Returns ``(x_adv, counts)``; counts says how many examples were passed through unchanged
    because the attack gave up on them (ST only).
    """
    advertorch = _import()
    attack = getattr(advertorch.attacks, _CLASSES[family])(model, **kwargs)
    with warnings.catch_warnings(), _lbfgs_without_iprint():
        # advertorch 0.2.3 predates these torch defaults; the warnings say nothing about our use
        warnings.filterwarnings("ignore", message=r"Default grid_sample and affine_grid behavior")
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        x_adv = attack.perturb(x, y)
    counts = {}
    if family == "ST":
        # advertorch's SpatialTransformAttack returns an all-zero image where it found no
        # adversarial grid; give those examples back unchanged instead.
        failed = (x_adv.flatten(1) == 0).all(dim=1) & (x.flatten(1) != 0).any(dim=1)
        x_adv[failed] = x[failed]
        counts["st_failed_passthrough"] = int(failed.sum())
    return x_adv.detach(), counts


def bpda_identity(forward: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """advertorch's BPDAWrapper: ``forward`` in the forward pass, identity in the backward pass."""
    advertorch = _import()
    return advertorch.bpda.BPDAWrapper(forward).eval()  # stateless; eval so mode checks see the caller's
