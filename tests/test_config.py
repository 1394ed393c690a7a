import subprocess
import sys
from pathlib import Path

import pytest

import addd

from addd.config import (
    ABLATIONS,
    ConfigError,
    DefenseConfig,
    LossConfig,
    NetworkConfig,
    TrainConfig,
    ablation,
    from_flat_dict,
    to_flat_dict,
)


def test_flat_dict_round_trip():
    config = DefenseConfig(
        network=NetworkConfig(width=0.5, channels=1),
        loss=LossConfig(lambda_prior=1e-5, sigma=[2.0, 8.0], use_dp=False),
        train=TrainConfig(epochs=3, seed=7),
        known_attacks=("DDNu", "DDNt"),
    )
    flat = to_flat_dict(config)
    assert flat["loss.lambda_prior"] == 1e-5 and flat["loss.sigma"] == [2.0, 8.0]
    assert flat["known_attacks"] == ["DDNu", "DDNt"]
    assert all("." in k or k == "known_attacks" for k in flat)
    assert from_flat_dict(flat) == config


def test_the_gpu_path_options_are_off_by_default_and_flat_keys_like_any_other():
    """train.autocast / train.resident (docs/gpu.md): off by default, and set, read back and
    validated through the flat dict like every other key."""
    default = to_flat_dict(DefenseConfig())
    assert (default["train.autocast"], default["train.resident"]) == ("none", False)
    on = DefenseConfig().replace(**{"train.autocast": "bf16", "train.resident": True})
    assert (on.train.autocast, on.train.resident) == ("bf16", True)
    assert from_flat_dict(to_flat_dict(on)) == on != DefenseConfig()
    with pytest.raises(ConfigError, match="train.autocast must be one of none, bf16"):
        DefenseConfig().replace(**{"train.autocast": "float16"})


def test_from_flat_dict_accepts_partial_and_string_attacks():
    config = from_flat_dict({"loss.theta_mse": 10.0, "known_attacks": "CWu+CWt"})
    assert config.loss.theta_mse == 10.0 and config.known_attacks == ("CWu", "CWt")
    assert config.network == NetworkConfig()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LossConfig(lambda_prior=-1.0), "loss.lambda_prior must be a finite number >= 0"),
        (lambda: LossConfig(theta_mse=float("nan")), "loss.theta_mse"),
        (lambda: LossConfig(sigma=0.0), "MMD bandwidth"),
        (lambda: LossConfig(sigma=[1.0, -2.0]), "MMD bandwidth"),
        (lambda: NetworkConfig(width=0), "network.width"),
        (lambda: NetworkConfig(image_size=28), "pad the data to 32x32"),
        (lambda: TrainConfig(epochs=0), "train.epochs"),
        (lambda: TrainConfig(autocast="fp16"), r"train.autocast must be one of none, bf16, got 'fp16'"),
        (lambda: TrainConfig(resident="yes"), "train.resident must be true or false, got 'yes'"),
        (lambda: DefenseConfig(known_attacks=("PGDu", "FGSM")), "unknown attack name"),
        (lambda: DefenseConfig(known_attacks=()), "at least one"),
        (lambda: DefenseConfig(known_attacks=("PGDu", "PGDu")), "duplicates"),
        (lambda: from_flat_dict({"loss.lambda_4": 1.0}), "unknown config key"),
        (lambda: DefenseConfig().replace(**{"loss.nope": 1}), "unknown config key"),
        (lambda: ablation(DefenseConfig(), "no_everything"), "valid: full"),
    ],
)
def test_invalid_values_fail_with_clear_messages(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_unknown_attack_error_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        DefenseConfig(known_attacks=("FGSM",))
    assert "PGDu" in str(info.value) and "BAu" in str(info.value)


def test_ablations():
    base = DefenseConfig()
    assert set(ABLATIONS) >= {"full", "no_dp", "no_prior"}
    assert ablation(base, "full") == base
    no_dp = ablation(base, "no_dp")
    assert not no_dp.loss.use_dp and no_dp.loss.lambda_dp == 0.0 and no_dp.loss.use_prior
    no_prior = ablation(base, "no_prior")
    assert not no_prior.loss.use_prior and no_prior.loss.lambda_prior == 0.0 and no_prior.loss.use_dp


def test_addd_never_imports_ray_optuna_or_mlflow():
    """Import every module of addd (each .py file in its folder) in a fresh interpreter, then
    inspect sys.modules: none of ray, optuna, mlflow may be there."""
    on_disk = sorted(f"addd.{path.stem}" for path in Path(addd.__file__).parent.glob("*.py") if path.stem != "__init__")
    code = (
        "import importlib, json, pkgutil, sys, addd\n"
        "names = sorted(m.name for m in pkgutil.iter_modules(addd.__path__, 'addd.'))\n"
        f"assert names == {on_disk!r}, names\n"
        "for name in names: importlib.import_module(name)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna', 'mlflow'})\n"
        "print(len(names), 'modules;', 'leaked:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
