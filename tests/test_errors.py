"""One error root: every error class addd defines derives from addd.AdddError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import addd
from addd.errors import AdddError


def addd_error_classes() -> dict[str, type]:
    """Every Exception subclass defined in a module of addd (not merely imported there)."""
    classes = {}
    for info in pkgutil.walk_packages(addd.__path__, "addd."):
        module = importlib.import_module(info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                classes[f"{module.__name__}.{name}"] = obj
    return classes


def test_every_addd_error_derives_from_adddError():
    classes = addd_error_classes()
    expected = {
        "addd.config.ConfigError", "addd.data.DataError", "addd.advcache.AdvCacheError",
        "addd.attacks.AttackError", "addd.evaluate.EvaluationError", "addd.architectures.TargetModelError",
        "addd.storage.StorageError", "addd.training.NonFiniteLossError", "addd.defense.DefenseError",
        "addd.baselines.BaselineError", "addd.adaptive.AdaptiveError",
    }
    assert expected <= set(classes), sorted(expected - set(classes))  # the walk found them all
    strays = sorted(name for name, cls in classes.items() if not issubclass(cls, AdddError))
    assert not strays, f"error classes not derived from AdddError: {strays}"


def test_root_is_a_value_error_exported_by_addd():
    assert addd.AdddError is AdddError and issubclass(AdddError, ValueError)
    assert "AdddError" in addd.__all__


@pytest.mark.parametrize(
    "module, name", [("addd.storage", "StorageError"), ("addd.defense", "NonFiniteLossError")]
)
def test_former_runtime_errors_are_caught_by_the_root(module, name):
    error = getattr(importlib.import_module(module), name)
    with pytest.raises(AdddError, match="what to do"):
        raise error("what to do")
