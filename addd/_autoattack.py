"""The one adapter to AutoAttack (the ``pyautoattack`` package). Imported lazily, on first use."""

from __future__ import annotations

import importlib.metadata
from typing import Sequence

import torch
from torch import nn

LIBRARY = "pyautoattack"
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def version() -> str:
    """Installed pyautoattack version, read without importing it."""
    return importlib.metadata.version(LIBRARY)


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    version: str,
    attacks: Sequence[str],
    n_iter: int,
    n_queries: int,
    seed: int,
    batch_size: int,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Untargeted AutoAttack with ``norm`` ("Linf" or "L2") radius ``eps`` on images in [0, 1].

    ``version="standard"`` is AutoAttack's standard ensemble (``attacks``, ``n_iter`` and
    ``n_queries`` must then be its standard values); ``version="custom"`` runs ``attacks`` with
    ``n_iter`` APGD/FAB iterations and ``n_queries`` Square queries (one restart each).
    """
    from pyautoattack import AutoAttack

    if version == "standard":
        adversary = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed, device=x.device)
        _check_standard(adversary, attacks, n_iter, n_queries)
    else:
        adversary = AutoAttack(
            model, norm=norm, eps=eps, version="custom", attacks=list(attacks), seed=seed, device=x.device
        )
        # pyautoattack only exposes these as attributes of its sub-attacks
        for sub_attack in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
            sub_attack.n_iter = n_iter
            sub_attack.n_restarts = 1
        adversary.square.n_queries = n_queries
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach(), {}


def _check_standard(adversary, attacks: Sequence[str], n_iter: int, n_queries: int) -> None:
    """Fail loudly if pyautoattack's standard preset no longer matches what we record."""
    actual = (tuple(adversary.attacks_to_run), adversary.apgd.n_iter, adversary.square.n_queries)
    if actual != (tuple(attacks), n_iter, n_queries):
        raise RuntimeError(
            f"pyautoattack {version()} standard preset is {actual}, expected "
            f"{(tuple(attacks), n_iter, n_queries)}; update addd/attacks.py's AutoAttack table"
        )
