"""A trial's objective is the minimum over every unknown attack of the space (fast, hand-built).

The model reads the class off the image (the mean brightness of the first pixel row, one class
per brightness band), the defense is the identity, and each attack's set is made by hand so its
accuracy is known. The decision-based boundary attack (BAu) is made the worst on purpose: an
objective over an easy subset (the old CW/DDN-only spaces) would miss it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from addd.advcache import AdvSet
from addd.attack_names import ATTACK_KINDS, ATTACK_NAMES, DEFAULT_TARGET_CLASS
from addd.attacks import is_targeted
from sweeps.spaces import get_space
from sweeps.trial import SplitSets, TrialContext, evaluate_split

N, CLASSES = 20, 10


class _BrightnessClassifier(nn.Module):
    """Class k for a first row of brightness (k + 0.5) / 10."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, x):
        level = x[:, 0, 0, :].mean(dim=1) * self.scale  # (N,)
        centres = (torch.arange(CLASSES, dtype=x.dtype) + 0.5) / CLASSES
        return -(level[:, None] - centres[None, :]).abs()


class _Identity(nn.Module):
    def restore(self, x):
        return x


def _images(labels: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(len(labels), 1, 32, 32)
    x[:, 0, 0, :] = ((labels.float() + 0.5) / CLASSES)[:, None]
    return x


def _set(attack: str, y: torch.Tensor, wrong: int) -> AdvSet:
    """A set whose first ``wrong`` examples are pushed to another class (the target, if targeted)."""
    target = torch.full_like(y, DEFAULT_TARGET_CLASS) if is_targeted(attack) else None
    labels = y.clone()
    for i in range(wrong):
        labels[i] = DEFAULT_TARGET_CLASS if target is not None and y[i] != DEFAULT_TARGET_CLASS else (y[i] + 1) % CLASSES
    return AdvSet(attack, _images(labels), y, target)


def test_the_objective_is_the_minimum_over_every_unknown_attack_with_a_decision_based_worst():
    space = get_space("digits_ablation")
    assert set(space.attacks) == set(ATTACK_NAMES) and ATTACK_KINDS["BAu"] == "decision"
    y = torch.arange(N) % CLASSES
    y[y == DEFAULT_TARGET_CLASS] = 0  # no example of the target class: Acc_t == Acc_u here
    wrong = {attack: 2 for attack in space.attacks}
    wrong["PGDu"] = wrong["PGDt"] = 15  # known attacks: terrible, and must not count
    wrong["BAu"] = 9  # the worst unknown attack
    wrong["STu"] = 4  # a holdout attack
    sets = {attack: _set(attack, y, wrong[attack]) for attack in space.attacks}
    ctx = TrialContext(train=SplitSets(_images(y), y, {}), val=SplitSets(_images(y), y, sets),
                       test=SplitSets(_images(y), y, sets), target_model=_BrightnessClassifier(),
                       holdout_attacks=space.holdout_attacks, threads=1, events_path=None)

    metrics = evaluate_split(_Identity(), ctx, "val", ("PGDu", "PGDt"))

    unknown = [a for a in space.attacks if a not in ("PGDu", "PGDt")]
    assert metrics["val/acc.defended.BAu"] == pytest.approx(1 - 9 / N)
    assert metrics["val/worst.unknown"] == pytest.approx(min(metrics[f"val/acc.defended.{a}"] for a in unknown))
    assert metrics["val/worst.unknown"] == pytest.approx(1 - 9 / N)  # BAu, not an easy gradient attack
    assert metrics["val/acc.defended.PGDu"] == pytest.approx(1 - 15 / N)  # lower, but known: not the objective
    assert metrics["val/worst.holdout"] == pytest.approx(1 - 9 / N)  # BAu is a holdout attack too
    assert metrics["val/worst.unknown_per_sample"] <= metrics["val/worst.unknown"]


def test_restored_examples_work_for_defenses_with_and_without_parameters():
    """Every trial saves a few restored images; the no-defense baseline has no parameters (its
    device comes from M_t) and an identity restore must not share memory with its input."""
    from addd.baselines import NoDefense
    from addd.config import DefenseConfig, NetworkConfig
    from addd.defense import ADDDefense
    from addd.storage import save_tensors
    from sweeps.trial import restored_examples

    y = torch.arange(6) % CLASSES
    x = _images(y)
    ctx = TrialContext(train=SplitSets(x, y, {}), val=SplitSets(x, y, {"BAu": _set("BAu", y, 3)}),
                       test=SplitSets(x, y, {}), target_model=_BrightnessClassifier(), holdout_attacks=(),
                       threads=1, events_path=None, grid_examples=4)
    for defense in (ADDDefense(DefenseConfig(network=NetworkConfig(width=0.03125, channels=1))).eval(), NoDefense()):
        tensors = restored_examples(defense, ctx)
        assert tensors["restored.BAu"].shape == (4, 1, 32, 32)
        assert torch.equal(tensors["pred.x_adv.BAu"][:3], (y[:3] + 1) % CLASSES)  # the hand-made attack
        save_tensors(Path(tempfile.mkdtemp()) / "r.safetensors", tensors, {})  # no shared memory
