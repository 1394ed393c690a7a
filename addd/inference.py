"""The one place addd runs a model for its predictions, and switches modes and gradients.

- :func:`predict`: predicted classes of ``model(transform(x))``, batched, eval mode, no grad.
- :func:`eval_mode`: modules in eval mode for a block, each one's previous mode restored.
- :func:`frozen`: no parameter gradients for a block (inputs still get theirs), restored.
- :class:`Pipeline`: ``model(restore(x))`` as one module, the defended classifier attacks see.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Predicted classes (N,) int64 on CPU of ``model(transform(x))``, batched, in eval mode, no grad.

    Batches go to the device of the model's parameters; the model's train/eval mode is restored.
    ``transform`` (e.g. a defense's ``restore``) runs under the same ``no_grad``.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    preds = []
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device)  # (B, C, H, W)
            if transform is not None:
                batch = transform(batch)
            preds.append(model(batch).argmax(dim=1).cpu())  # (B,)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


@contextlib.contextmanager
def eval_mode(*modules: Any) -> Iterator[None]:
    """Put every ``nn.Module`` among ``modules`` in eval mode for the block, then restore the mode
    of each of them and of each of their submodules exactly (a submodule kept in eval mode inside
    a training model stays so).

    Anything else (None, a defense that is a plain object with ``restore``) is ignored.
    """
    targets = [m for m in modules if isinstance(m, nn.Module)]
    previous = [(sub, sub.training) for m in targets for sub in m.modules()]
    for module in targets:
        module.eval()
    try:
        yield
    finally:
        for sub, was_training in previous:
            sub.training = was_training


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Switch off parameter gradients of ``modules`` (None is skipped) for the block; restore them.

    Inputs still get gradients, so an attack or a generator step can backpropagate through a
    frozen network without touching its parameters' ``.grad``.
    """
    params = [p for m in modules if m is not None for p in m.parameters()]
    previous = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, previous):
            p.requires_grad_(flag)


class Pipeline(nn.Module):
    """``model(restore(x))``: the defended classifier an adaptive attack sees, differentiable
    end to end when ``restore`` is. It reports eval mode (``training`` False) so attack code that
    checks modes does not warn about the wrapper; ``model`` and the defense keep their own modes."""

    def __init__(self, restore: Callable[[torch.Tensor], torch.Tensor], model: nn.Module):
        super().__init__()
        self.restore, self.model = restore, model
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.restore(x))
