"""The GPU path's training-step options (issue 18, docs/gpu.md), checked on CPU: ``train.autocast``
"bf16" (CPU autocast supports bfloat16) and ``train.resident``. Both are off by default, and off
they are the fp32 step as before, bit for bit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import addd.defense
from addd.config import DefenseConfig, NetworkConfig, TrainConfig
from addd.defense import ADDDefense
from addd.training import TrainingRun, run_epochs

# One seeded epoch of the tiny fit below, bf16 against none, measured on the 2-core CPU machine
# (torch 2.x CPU autocast): the largest relative difference of any epoch-mean loss term was 3.9e-4
# with this test's data (seed 0, mmd) and 5.8e-4 over seeds 0-4 (cls, seed 1). 1.5e-3 is ~3x the
# largest, room for another CPU's bf16 kernels; a step gone wrong in bf16 (diverging, or the
# losses themselves in bf16: one rounding is ~4e-3 relative) shows up above it or in the dtype checks.
BF16_RTOL = 1.5e-3


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 1, 32, 32, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    adv = {name: (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1) for name in ("PGDu", "PGDt")}
    return x, y, adv


def _fit(train: TrainConfig | None = None) -> tuple[dict[str, float], ADDDefense]:
    """One epoch (4 steps of 16 per domain) of a width-0.0625 defense; its epoch losses and itself."""
    config = DefenseConfig(network=NetworkConfig(width=0.0625, channels=1),
                           train=train or TrainConfig(epochs=1, batch_size=16))
    defense = ADDDefense(config)
    return defense.fit(*_data())[0].losses, defense


def _same_weights(a: ADDDefense, b: ADDDefense) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _output_dtypes(defense: ADDDefense, monkeypatch) -> tuple[set, set]:
    """Record the dtypes of every network output and of every loss term the step checks."""
    outputs, terms = set(), set()
    for module in defense.children():
        module.register_forward_hook(lambda m, i, out: outputs.update(
            o.dtype for o in (out if isinstance(out, tuple) else (out,))))
    real_check = addd.defense.check_finite

    def check(values):
        terms.update(v.dtype for v in values.values())
        return real_check(values)

    monkeypatch.setattr(addd.defense, "check_finite", check)
    return outputs, terms


def test_autocast_none_is_the_default_fp32_step_bit_for_bit(monkeypatch, one_thread):
    default_losses, default = _fit()

    def no_autocast(*args, **kwargs):
        raise AssertionError("train.autocast none entered torch.autocast")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    none_losses, none = _fit(TrainConfig(epochs=1, batch_size=16, autocast="none"))
    assert none_losses == default_losses and _same_weights(none, default)


def test_autocast_bf16_runs_the_networks_in_bf16_and_the_losses_in_fp32(monkeypatch, one_thread):
    fp32_losses, fp32 = _fit(TrainConfig(epochs=1, batch_size=16))
    config = DefenseConfig(network=NetworkConfig(width=0.0625, channels=1),
                           train=TrainConfig(epochs=1, batch_size=16, autocast="bf16"))
    defense = ADDDefense(config)
    outputs, terms = _output_dtypes(defense, monkeypatch)
    bf16_losses = defense.fit(*_data())[0].losses
    assert outputs == {torch.bfloat16}  # E, G, C, D_P and D_I all ran under autocast
    assert terms == {torch.float32}  # every loss term back in fp32
    assert bf16_losses.keys() == fp32_losses.keys()
    for name, value in fp32_losses.items():
        assert bf16_losses[name] == pytest.approx(value, rel=BF16_RTOL), name
    assert bf16_losses != fp32_losses and not _same_weights(defense, fp32)  # it did run in bf16
    assert all(p.dtype == torch.float32 for p in defense.parameters())  # weights and Adam stay fp32


def test_resident_training_data_gives_the_same_losses_and_weights(monkeypatch, one_thread):
    """On CPU the data is where it was, so the fit must be the same; fit hands the flag to run_epochs."""
    losses, defense = _fit()
    asked = []
    real_run_epochs = addd.defense.run_epochs

    def run_epochs_recording(*args, **kwargs):
        asked.append(kwargs.get("resident"))
        return real_run_epochs(*args, **kwargs)

    monkeypatch.setattr(addd.defense, "run_epochs", run_epochs_recording)
    resident_losses, resident = _fit(TrainConfig(epochs=1, batch_size=16, resident=True))
    assert asked == [True] and resident_losses == losses and _same_weights(resident, defense)


@pytest.mark.parametrize("resident", [False, True])
def test_resident_moves_the_data_once_not_every_batch(monkeypatch, resident):
    """run_epochs: resident, each tensor (and each epoch's shuffle) goes to the device once and
    batches are indexed there; not resident, every batch of every tensor is moved. Same batches."""
    x, y = torch.rand(20, 1, 4, 4), torch.arange(20)
    moved, seen = [], []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        moved.append(self.shape[0])
        return real_to(self, *args, **kwargs)

    def step(batch):
        seen.append([t.clone() for t in batch])
        return {"loss": float(batch[0].sum())}

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    run = TrainingRun(optimizers={}, generators={"shuffle": torch.Generator().manual_seed(3)})
    run_epochs(SimpleNamespace(history=[]), [x, y], step, run=run, batch_size=4, epochs=2,
               device=torch.device("cpu"), resident=resident)
    assert moved == ([20, 20, 20, 20] if resident else [4] * 20)  # x, y, then a shuffle per epoch
    first = torch.randperm(20, generator=torch.Generator().manual_seed(3))  # epoch 1's shuffle
    assert len(seen) == 10 and torch.equal(seen[0][1], first[:4]) and torch.equal(seen[0][0], x[first[:4]])
