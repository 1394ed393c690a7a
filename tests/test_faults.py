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


# ----------------------------------------------------------------------------- full / read-only storage
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere); ``_remount(mnt, ro=True)`` makes it read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, ro: bool) -> None:
    subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(mnt)], check=True)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_full_disk_gives_a_storage_error_and_leaves_no_partial_file(small_tmpfs):
    from addd.storage import StorageError, atomic_write_bytes, save_tensors

    (small_tmpfs / "kept.json").write_text("{}")
    with pytest.raises(StorageError, match="no space left .* free some space"):
        atomic_write_bytes(small_tmpfs / "summary.json", b"x" * (2 << 20))
    with pytest.raises(StorageError, match="no space left"):
        save_tensors(small_tmpfs / "ckpt" / "defense.safetensors", {"w": torch.zeros(600_000)}, {"epoch": 1})
    assert _files(small_tmpfs) in (["kept.json"], ["ckpt", "kept.json"])  # no temp file, no partial file
    assert not list(small_tmpfs.rglob("*.tmp")) and not (small_tmpfs / "summary.json").exists()


def test_full_cache_leaves_no_half_written_adversarial_set(small_tmpfs, one_thread):
    from addd.advcache import AdvCache, AdvRequest
    from addd.storage import StorageError

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    x, y = torch.rand(96, 3, 32, 32), torch.randint(0, 10, (96,))
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 300 * 1024))  # ~300 KiB left: less than the set
    cache = AdvCache.under(small_tmpfs)
    request = AdvRequest("svhn", "val", x, y, model, "PGDu", model_sha256="m" * 64, budget=0.05, seed=0)
    with pytest.raises(StorageError, match="no space left"):
        cache.get_many([request])
    filler.unlink()
    entries = [p for p in small_tmpfs.rglob("*") if p.is_file()]
    assert all(p.name.endswith(".lock") for p in entries), entries  # no tensors, no manifest, no temp folder


def test_read_only_storage_gives_a_storage_error(small_tmpfs):
    from addd.storage import StorageError, atomic_write_bytes, save_tensors

    _remount(small_tmpfs, ro=True)
    with pytest.raises(StorageError, match="not writable .*Read-only file system"):
        atomic_write_bytes(small_tmpfs / "summary.json", b"{}")
    with pytest.raises(StorageError, match="not writable"):
        save_tensors(small_tmpfs / "sub" / "defense.safetensors", {"w": torch.zeros(3)}, {})
    assert _files(small_tmpfs) == []
