"""The one owner of the trial-config format and of what a finished trial looks like.

A trial's config, as Ray Tune carries it, is a flat dict::

    {"phase": "search" | "final", "variant": "<ablation>", "known_attacks": "PGDu+PGDt", <flat DefenseConfig keys>...}

Only this module writes or reads the ``phase``/``variant`` keys and the ``"A+B"`` spelling of a
known-attack pair (a categorical search value must be a plain string). Everyone else goes
through :class:`TrialSpec` (parse once, at the edge, then typed values) and :class:`TrialOutcome`.

No Ray, Optuna, MLflow or torch imports: the summary, the schedule and the report read trial
results with this module alone.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

SEARCH, FINAL = "search", "final"
PHASES = (SEARCH, FINAL)
OBJECTIVE = "objective"  # = val/worst.unknown: what Optuna maximises and ASHA compares
EPOCH = "epoch"  # the training epoch a result was reported after (1-based)
FAILURE = "failure"  # result key: why a trial ended without a result (e.g. a non-finite loss)
_PHASE, _VARIANT, _KNOWN = "phase", "variant", "known_attacks"
_PAIR_SEP = "+"


def pair_name(attacks: Sequence[str]) -> str:
    """The search-space spelling of a known-attack choice: ``("PGDu", "PGDt") -> "PGDu+PGDt"``."""
    return _PAIR_SEP.join(attacks)


def pair_attacks(name: str) -> tuple[str, ...]:
    """Inverse of :func:`pair_name`."""
    return tuple(a for a in str(name).split(_PAIR_SEP) if a)


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its phase, its ablation variant, and the flat DefenseConfig values (known
    attacks as a tuple). ``defense_config()`` applies the variant's ablation."""

    phase: str
    variant: str
    flat: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"trial phase {self.phase!r}; valid: {', '.join(PHASES)}")

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> "TrialSpec":
        """Read a trial config (as Ray hands it to trials, callbacks and schedulers)."""
        flat = {k: v for k, v in config.items() if k not in (_PHASE, _VARIANT)}
        if isinstance(flat.get(_KNOWN), str):
            flat[_KNOWN] = pair_attacks(flat[_KNOWN])
        elif _KNOWN in flat:
            flat[_KNOWN] = tuple(flat[_KNOWN])
        return cls(config[_PHASE], config[_VARIANT], flat)

    def to_config(self) -> dict[str, Any]:
        """The flat dict Ray carries (JSON-friendly: the pair as one string)."""
        flat = dict(self.flat)
        if _KNOWN in flat:
            flat[_KNOWN] = pair_name(flat[_KNOWN])
        return {_PHASE: self.phase, _VARIANT: self.variant, **flat}

    def params(self) -> dict[str, Any]:
        """What MLflow records: phase, variant and every flat config value."""
        from addd.config import to_flat_dict

        return {_PHASE: self.phase, _VARIANT: self.variant, **to_flat_dict(self.defense_config())}

    def defense_config(self):
        """The typed :class:`addd.config.DefenseConfig` of this trial, the variant's ablation applied."""
        from addd.config import ablation, from_flat_dict

        return ablation(from_flat_dict(dict(self.flat)), self.variant)

    @property
    def seed(self) -> int:
        return int(self.flat.get("train.seed", 0))

    @property
    def epochs(self) -> int | None:
        value = self.flat.get("train.epochs")
        return None if value is None else int(value)

    @property
    def known_attacks(self) -> tuple[str, ...]:
        return tuple(self.flat.get(_KNOWN, ()))

    def rerun(self, seed: int) -> "TrialSpec":
        """This config as a final (seed re-run) trial."""
        return TrialSpec(FINAL, self.variant, {**self.flat, "train.seed": seed})


def ended_early(spec: TrialSpec, result: Mapping[str, Any]) -> bool:
    """A search trial whose last result came before its last epoch, with no failure: ASHA stopped it."""
    epoch = result.get(EPOCH)
    return (spec.phase == SEARCH and not result.get(FAILURE) and spec.epochs is not None
            and isinstance(epoch, (int, float)) and epoch < spec.epochs)


def search_group(config: Mapping[str, Any]) -> str | None:
    """The ASHA bracket of a trial: search trials compete within their variant; finals run to the end."""
    spec = TrialSpec.parse(config)
    return spec.variant if spec.phase == SEARCH else None


# ----------------------------------------------------------------------------- finished trials
class CheckpointRef(Protocol):
    """A trial's last checkpoint, readable on the driver wherever it was stored."""

    def local_dir(self) -> contextlib.AbstractContextManager[Path]: ...
    def copy_to(self, dest: Path) -> Path: ...


@dataclass
class LocalCheckpoint:
    """A checkpoint that is already a local folder (tests, hand-made outcomes)."""

    path: Path

    @contextlib.contextmanager
    def local_dir(self) -> Iterator[Path]:
        yield Path(self.path)

    def copy_to(self, dest: Path) -> Path:
        import shutil

        shutil.copytree(self.path, dest, dirs_exist_ok=True)
        return dest


@dataclass
class TrialOutcome:
    """One trial after tuning: its config, last reported metrics, checkpoint and status."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint: CheckpointRef | None
    error: str | None

    @property
    def spec(self) -> TrialSpec:
        return TrialSpec.parse(self.config)

    @property
    def objective(self) -> float | None:
        value = self.metrics.get(OBJECTIVE)
        return float(value) if is_finite(value) else None

    @property
    def failure(self) -> str | None:
        """Why the trial has no result: Ray's error, the trial's own reason, or a non-finite objective."""
        if self.error is not None:
            return self.error
        if self.metrics.get(FAILURE):
            return str(self.metrics[FAILURE])
        return None if self.objective is not None or self.stopped_early else "no finite objective"

    @property
    def stopped_early(self) -> bool:
        """A search trial that ended before its last epoch without an error (ASHA stopped it)."""
        return self.error is None and ended_early(self.spec, self.metrics)


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
