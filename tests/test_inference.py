"""addd.inference: batched prediction, eval mode and frozen parameters, each restored after."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from addd.inference import eval_mode, frozen, predict


def one_hot_images(pred: list[int]) -> torch.Tensor:
    return nn.functional.one_hot(torch.tensor(pred), 4).float().view(-1, 1, 1, 4)  # (N, 1, 1, 4)


def test_predict_batches_and_restores_model_mode():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9)).train()
    x = one_hot_images([0, 1, 2, 3, 1])
    pred = predict(model, x, batch_size=2)
    assert torch.equal(pred, torch.tensor([0, 1, 2, 3, 1]))  # dropout off: eval mode inside
    assert pred.dtype == torch.int64 and pred.device.type == "cpu"
    assert model.training
    assert not predict(model.eval(), x).requires_grad and not model.training  # eval mode kept too


def test_predict_applies_transform_without_grad_in_batches():
    calls = []

    def swap(batch: torch.Tensor) -> torch.Tensor:
        calls.append((len(batch), torch.is_grad_enabled()))
        return batch[..., [1, 0, 3, 2]]

    x = one_hot_images([0, 1, 2, 3, 0]).requires_grad_()
    assert torch.equal(predict(nn.Flatten(), x, transform=swap, batch_size=3), torch.tensor([1, 0, 3, 2, 1]))
    assert calls == [(3, False), (2, False)]


def test_predict_of_no_examples_is_empty():
    pred = predict(nn.Flatten(), torch.empty(0, 1, 1, 4))
    assert pred.shape == (0,) and pred.dtype == torch.int64


def test_eval_mode_restores_each_modules_mode_and_ignores_non_modules():
    training, evaluating = nn.Linear(2, 2).train(), nn.Linear(2, 2).eval()
    with eval_mode(training, None, object(), evaluating):
        assert not training.training and not evaluating.training
    assert training.training and not evaluating.training
    mixed = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    mixed[1].eval()  # e.g. a frozen batch norm inside a training model
    with eval_mode(mixed):
        assert not any(m.training for m in mixed.modules())
    assert [m.training for m in mixed.modules()] == [True, True, False]
    with pytest.raises(KeyError), eval_mode(training):
        raise KeyError("boom")
    assert training.training  # restored on the way out of an error too


def test_frozen_switches_parameter_grads_off_and_restores_them():
    net, other = nn.Linear(3, 1), nn.Linear(3, 1)
    net.bias.requires_grad_(False)  # already off: must stay off
    x = torch.rand(2, 3, requires_grad=True)
    with frozen(net, None, other):
        assert not any(p.requires_grad for p in [*net.parameters(), *other.parameters()])
        net(x).sum().backward()
    assert x.grad is not None and net.weight.grad is None  # inputs get gradients, parameters do not
    assert net.weight.requires_grad and not net.bias.requires_grad and other.weight.requires_grad
    with pytest.raises(KeyError), frozen(net):
        raise KeyError("boom")
    assert net.weight.requires_grad
