import math

import pytest
import torch

from addd.metrics import accuracy_targeted, accuracy_untargeted


def test_untargeted_is_fraction_correct():
    y = torch.tensor([0, 1, 2, 3])
    assert accuracy_untargeted(torch.tensor([0, 1, 0, 0]), y) == 0.5
    assert accuracy_untargeted(y, y) == 1.0


def test_targeted_excludes_correct_examples_of_the_target_class():
    # target 3; true labels include two 3s, one classified correctly (num_r = 1)
    y = torch.tensor([3, 3, 1, 2, 0, 5])
    pred = torch.tensor([3, 0, 1, 3, 0, 3])
    num_correct = 3  # indices 0, 2, 4
    num_r = 1  # index 0: correct and true label == target
    expected = (num_correct - num_r) / (6 - num_r)
    assert accuracy_targeted(pred, y, 3) == pytest.approx(expected)
    # differs from plain accuracy, so the exclusion is really applied
    assert accuracy_targeted(pred, y, 3) != pytest.approx(accuracy_untargeted(pred, y))


def test_targeted_accepts_per_example_targets():
    y = torch.tensor([1, 2, 3, 4])
    pred = torch.tensor([1, 2, 0, 0])
    target = torch.tensor([1, 0, 0, 0])  # only example 0 is correct and already in its target
    assert accuracy_targeted(pred, y, target) == pytest.approx((2 - 1) / (4 - 1))


def test_targeted_undefined_when_everything_is_the_target():
    y = torch.tensor([3, 3])
    assert math.isnan(accuracy_targeted(y, y, 3))


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="shape"):
        accuracy_untargeted(torch.tensor([1, 2]), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="1-D"):
        accuracy_targeted(torch.zeros(2, 2), torch.zeros(2, 2), 1)
