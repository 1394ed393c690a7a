"""Faults a days-long sweep must survive, each tested: a resumed trial keeps its optimiser state,
MLflow going away loses nothing (journal + --sync-mlflow, idempotent), a read-only or full
storage path fails with one clear line and leaves no half-written file. The end-to-end ones
(a trial worker killed mid-trial, a NaN trial, the MLflow server killed mid-sweep) are slow."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(REPO / "sweeps" / "run.py")]


# ----------------------------------------------------------------------------- optimiser state
def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g)
    adv = {name: (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1) for name in ("PGDu", "PGDt")}
    return x, torch.randint(0, 10, (n,), generator=g), adv


def _config(**loss):
    from addd.config import DefenseConfig, LossConfig, NetworkConfig, TrainConfig

    return DefenseConfig(network=NetworkConfig(width=0.0625, channels=1), loss=LossConfig(**loss),
                         train=TrainConfig(epochs=2, batch_size=8))


@pytest.mark.parametrize("loss", [{}, {"use_dp": False, "lambda_dp": 0.0, "use_di": False}])
def test_resume_from_checkpoint_continues_with_the_same_adam_moments(tmp_path, one_thread, loss):
    from addd.defense import ADDDefense, TrainingState, load_defense

    x, y, adv = _data()
    straight = ADDDefense(_config(**loss))
    straight.fit(x, y, adv, epochs=2)
    expected = straight.optimizer_state()

    first = ADDDefense(_config(**loss))
    first.fit(x, y, adv, epochs=1)
    first.save(tmp_path / "defense.safetensors")
    first.optimizer_state().save(tmp_path / "optimizer.safetensors")
    resumed = load_defense(tmp_path / "defense.safetensors")
    state = TrainingState.load(tmp_path / "optimizer.safetensors")
    assert any(k.endswith(".exp_avg_sq") for k in state.tensors)
    resumed.fit(x, y, adv, epochs=1, resume_state=state)
    got = resumed.optimizer_state()

    assert set(got.tensors) == set(expected.tensors)
    for key, tensor in expected.tensors.items():  # moments, step counts, RNG streams
        assert torch.equal(got.tensors[key], tensor), key
    assert got.metadata == expected.metadata
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # without the state the second epoch differs: the test would notice a lost optimiser
    fresh = load_defense(tmp_path / "defense.safetensors")
    fresh.fit(x, y, adv, epochs=1)
    assert not torch.equal(fresh.optimizer_state().tensors["optim.main.0.exp_avg"],
                           expected.tensors["optim.main.0.exp_avg"])


def test_training_state_of_another_config_is_refused(tmp_path, one_thread):
    from addd.defense import ADDDefense, TrainingState
    from addd.storage import StorageError

    x, y, adv = _data()
    with_d = ADDDefense(_config())
    with_d.fit(x, y, adv, epochs=1)
    with_d.optimizer_state().save(tmp_path / "opt.safetensors")
    without_d = ADDDefense(_config(use_dp=False, lambda_dp=0.0, use_di=False))
    with pytest.raises(StorageError, match="discriminators"):
        without_d.fit(x, y, adv, epochs=1, resume_state=TrainingState.load(tmp_path / "opt.safetensors"))
