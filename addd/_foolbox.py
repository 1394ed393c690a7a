"""The one adapter to foolbox 3 (boundary attack). foolbox is imported lazily, on first use."""

from __future__ import annotations

import importlib.metadata
import warnings

import torch
from torch import nn

LIBRARY = "foolbox"


def version() -> str:
    """Installed foolbox version, read without importing it."""
    return importlib.metadata.version(LIBRARY)


def boundary_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    init_steps: int,
    init_directions: int,
    spherical_step: float,
    source_step: float,
    source_step_convergance: float,
    step_adaptation: float,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Untargeted L2 boundary attack (Brendel et al. 2018) on one batch of images in [0, 1].

    Starting points come from foolbox's default init attack (LinearSearchBlendedUniformNoise).
    Examples it finds no adversarial start for are returned unchanged; returns
    ``(x_adv, {"ba_no_start": how many})``.
    """
    import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    init_attack = foolbox.attacks.LinearSearchBlendedUniformNoiseAttack(
        steps=init_steps, directions=init_directions
    )
    with warnings.catch_warnings():  # it warns when some starts are missing; we count them below
        warnings.simplefilter("ignore", UserWarning)
        starts = init_attack.run(fmodel, x, foolbox.criteria.Misclassification(y))
    with torch.no_grad():
        has_start = model(starts).argmax(dim=1) != y
    x_adv = x.clone()
    if has_start.any():
        attack = foolbox.attacks.BoundaryAttack(
            steps=steps,
            spherical_step=spherical_step,
            source_step=source_step,
            source_step_convergance=source_step_convergance,
            step_adaptation=step_adaptation,
        )
        x_adv[has_start] = attack.run(
            fmodel,
            x[has_start],
            foolbox.criteria.Misclassification(y[has_start]),
            starting_points=starts[has_start],
        )
    return x_adv.detach(), {"ba_no_start": int((~has_start).sum())}
