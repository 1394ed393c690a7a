"""Files the sweep writes are readable by the team: atomic writes get 0o666 minus the umask
(mkstemp alone would leave them 0o600), for summaries, evaluation files and cache entries."""

from __future__ import annotations

import os

import pytest
import torch

from addd.storage import atomic_write_bytes, load_tensors, save_tensors


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_write_bytes_respects_the_umask(tmp_path, umask):
    path = tmp_path / "out" / "summary.json"
    atomic_write_bytes(path, b"{}")
    atomic_write_bytes(path, b"{ }")  # replacing keeps it readable too
    assert _mode(path) == 0o666 & ~umask
    assert _mode(path.parent) == 0o777 & ~umask
    assert not [p for p in path.parent.iterdir() if p.name != "summary.json"]  # no temp file left


def test_save_tensors_respects_the_umask(tmp_path, umask):
    path = tmp_path / "defense.safetensors"
    save_tensors(path, {"w": torch.ones(2)}, {"kind": "test"})
    assert _mode(path) == 0o666 & ~umask
    assert load_tensors(path)[1] == {"kind": "test"}


def test_cache_entries_respect_the_umask(tmp_path, umask):
    from addd.advcache import AdvCache, AdvRequest

    def run_attack(name, model, x, y, **kw):
        from types import SimpleNamespace

        return SimpleNamespace(x_adv=x.clone(), target=None, params={})

    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    cache = AdvCache(tmp_path / "cache", run_attack=run_attack, attack_params=lambda *a, **k: {},
                     library_versions=lambda: {})
    cache.get_or_create(AdvRequest("digits", "test", x, y, model, "PGDu", model_sha256="m"))
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert files
    for path in files:
        assert _mode(path) & 0o044 == 0o044 & ~umask, f"{path}: {oct(_mode(path))}"
