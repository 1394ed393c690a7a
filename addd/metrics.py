"""Accuracy metrics of paper Appendix C.2, on the target model's predictions.

- untargeted: Acc_u = num_correct / N
- targeted toward class c: Acc_t = (num_correct - num_r) / (N - num_r), where num_r is the number
  of *correctly classified* examples whose true label is the target c. Examples that already
  belong to the target class cannot be "moved" to it, so they leave both numerator and
  denominator (when classified correctly; a misclassified example of class c stays in both).
"""

from __future__ import annotations

import torch


def _as_labels(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of class labels, got shape {tuple(tensor.shape)}")
    return tensor.long()


def accuracy_untargeted(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Acc_u = num_correct / N. ``pred``, ``y``: (N,) class labels."""
    pred, y = _as_labels("pred", pred), _as_labels("y", y)
    if pred.shape != y.shape or pred.numel() == 0:
        raise ValueError(f"pred and y must be non-empty and of one shape, got {tuple(pred.shape)} and {tuple(y.shape)}")
    return (pred == y).float().mean().item()


def accuracy_targeted(pred: torch.Tensor, y: torch.Tensor, target: int | torch.Tensor) -> float:
    """Acc_t = (num_correct - num_r) / (N - num_r), Appendix C.2.

    ``target`` is the attack's target class: one int for the whole set (the paper's setting) or a
    (N,) tensor of per-example targets. Returns NaN if every example is a correctly classified
    member of its target class (the metric is undefined there).
    """
    pred, y = _as_labels("pred", pred), _as_labels("y", y)
    if pred.shape != y.shape or pred.numel() == 0:
        raise ValueError(f"pred and y must be non-empty and of one shape, got {tuple(pred.shape)} and {tuple(y.shape)}")
    target = torch.as_tensor(target, dtype=torch.long).expand_as(y)
    correct = pred == y
    num_correct = int(correct.sum())
    num_r = int((correct & (y == target)).sum())
    denominator = y.numel() - num_r
    if denominator == 0:
        return float("nan")
    return (num_correct - num_r) / denominator
