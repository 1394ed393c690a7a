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

import numpy as np
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


def _local_search_class():
    """advertorch's LocalSearchAttack with its per-pixel Python loops done as tensor operations:
    the same algorithm, the same random draws in the same order and the same float32 arithmetic,
    so the same adversarial images bit for bit (tests/test_attacks.py compares the two), in a
    fraction of the time (``python bench/local_search.py``). Three loops go: building the
    candidate images (one seed pixel set to +-p each), the distance of every candidate (now only
    of the ones that fool the model, the only ones the original keeps), the cyclic update of the
    chosen pixels and the next round's neighbourhood; and a model pass whose output advertorch
    discards (the candidates unclamped, before the clamped pass it uses). The rest of
    ``perturb_single`` is advertorch's, line for line."""
    advertorch = _import()
    methods = {"_candidates": _ls_candidates, "_score": _ls_score, "_cyclic_update": _ls_cyclic_update,
               "_neighbourhood": _ls_neighbourhood, "perturb_single": _ls_perturb_single}
    return type("LocalSearchAttack", (advertorch.attacks.LocalSearchAttack,), methods)


def _ls_candidates(self, adv: torch.Tensor, pxy: torch.Tensor) -> torch.Tensor:
    """advertorch's candidate list, stacked: a copy of ``adv`` per seed pixel with that pixel set
    to p, -p or 0 by the sign of its value in every channel."""
    rows, cols = pxy[:, 0].long(), pxy[:, 1].long()  # int() of the non-negative coordinates
    pixels = adv[:, rows, cols].T  # (N, C)
    zero = torch.zeros((), dtype=adv.dtype)
    values = torch.where(pixels > 0, torch.full_like(pixels, self.p),
                         torch.where(pixels < 0, torch.full_like(pixels, -1 * self.p), zero))
    batch = adv.unsqueeze(0).repeat(len(pxy), 1, 1, 1)
    batch[torch.arange(len(pxy)), :, rows, cols] = values
    return batch


def _ls_score(self, batch, y, ori, best_dist):
    """advertorch's ``_rescale_x_score`` on the stacked candidates, one model pass."""
    from advertorch.utils import clamp

    x = self._revert_rescale(batch)
    if not self.comply_with_foolbox:  # advertorch also predicts the unclamped x here, then discards it
        x = clamp(x, self.clip_min, self.clip_max)
    batch_logits = self.predict(x)
    _, bests = torch.max(batch_logits, dim=1)
    best_img = None
    fooled = bests == y if self.targeted is True else bests != y
    for ii in fooled.nonzero().flatten().tolist():  # in order, as advertorch's loop over all
        curr_dist = torch.sum((x[ii] - ori) ** 2)
        if curr_dist < best_dist:
            best_img, best_dist = x[ii], curr_dist
    return torch.nn.Softmax(dim=1)(batch_logits)[:, y], best_img, best_dist


def _ls_cyclic_update(self, adv, pxy_star, lb, ub) -> None:
    """advertorch's ``_cyclic`` on every chosen pixel and channel at once."""
    rows, cols = pxy_star[:, 0].long(), pxy_star[:, 1].long()
    result = self.r * adv[:, rows, cols]
    result = torch.where(result < lb, result + (ub - lb), torch.where(result > ub, result - (ub - lb), result))
    adv[:, rows, cols] = result  # the chosen pixels are distinct: order does not matter


def _ls_neighbourhood(self, pxy_star: torch.Tensor, shape) -> list:
    """advertorch's next seed pixels: the (2d+1)^2 square around each chosen pixel, in its
    order (pixel, row, column), inside the image, put in a set and listed. The same
    Python ints go into the set in the same order, so the list has the same order too."""
    centres = pxy_star.long()  # int() of each non-negative coordinate
    offsets = torch.arange(-self.d, self.d + 1)
    rows = (centres[:, 0, None, None] + offsets[None, :, None]).expand(-1, len(offsets), len(offsets))
    cols = (centres[:, 1, None, None] + offsets[None, None, :]).expand(-1, len(offsets), len(offsets))
    rows, cols = rows.flatten(), cols.flatten()
    inside = (rows >= 0) & (rows < shape[2]) & (cols >= 0) & (cols < shape[1])
    return list(set(zip(rows[inside].tolist(), cols[inside].tolist())))


def _ls_perturb_single(self, x, y):
    """advertorch's ``LocalSearchAttack.perturb_single``, line for line, with the methods above."""
    from advertorch.attacks.utils import is_successful

    rescaled_x = x.detach().clone()
    best_img, best_dist = None, np.inf
    rescaled_x, lb, ub = self._rescale_to_m0d5_to_0d5(rescaled_x, vmin=self.clip_min, vmax=self.clip_max)
    init_rand = np.random.permutation(x.shape[1] * x.shape[2]) if self.comply_with_foolbox is True else None
    pxy = self._random_sample_seeds(x.shape[1], x.shape[2], seed_ratio=self.seed_ratio,
                                    max_nb_seeds=self.max_nb_seeds, init_rand=init_rand).to(x.device)
    adv = rescaled_x
    for _ in range(self.round_ub):
        if not self.comply_with_foolbox:
            adv = rescaled_x.detach().clone()
        if self.comply_with_foolbox:
            pxy = pxy[torch.from_numpy(np.random.permutation(len(pxy))[:self.max_nb_seeds])]
        else:
            pxy = pxy[torch.randperm(len(pxy))[:self.max_nb_seeds]]
        scores, curr_best_img, curr_best_dist = self._score(self._candidates(adv, pxy), y, x, best_dist)
        if curr_best_img is not None:
            best_img, best_dist = curr_best_img, curr_best_dist
        _, indices = torch.sort(scores)
        pxy_star = pxy[indices[:self.t].data.cpu()]
        self._cyclic_update(adv, pxy_star, lb, ub)
        revert_adv = self._revert_rescale(adv)
        curr_lb = self._get_predicted_label(revert_adv.unsqueeze(0))
        curr_dist = torch.sum((x - revert_adv) ** 2)
        if is_successful(int(curr_lb), y, self.targeted) and curr_dist < best_dist:
            return revert_adv
        if is_successful(curr_lb, y, self.targeted):
            return best_img
        pxy = torch.FloatTensor(self._neighbourhood(pxy_star, x.shape))
    return x if best_img is None else best_img


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
    cls = _local_search_class() if family == "LS" else getattr(advertorch.attacks, _CLASSES[family])
    attack = cls(model, **kwargs)
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
