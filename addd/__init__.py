"""ADD-Defense: perturbation-invariant representations against widespread adversarial examples.

Pure torch (plus the attack libraries); never imports ray, optuna or mlflow.
"""

from addd.config import ConfigError, DefenseConfig, LossConfig, NetworkConfig, TrainConfig
from addd.errors import AdddError

__all__ = [
    "ADDDefense",
    "AdddError",
    "ConfigError",
    "DefenseConfig",
    "LossConfig",
    "NetworkConfig",
    "TrainConfig",
    "load_defense",
    "load_target_model",
]


def __getattr__(name):  # lazy: `import addd` stays cheap for Ray workers and the CLI
    if name in ("ADDDefense", "load_defense"):
        from addd import defense

        return getattr(defense, name)
    if name == "load_target_model":
        from addd.target_models import load_target_model

        return load_target_model
    raise AttributeError(f"module 'addd' has no attribute {name!r}")
