"""The one owner of the trial-config format and of what a finished trial looks like.

A trial's config, as Ray Tune carries it, is a flat dict::

    {"phase": "search" | "final", "variant": "<ablation>", "known_attacks": "PGDu+PGDt", <flat DefenseConfig keys>...}

Only this module writes or reads the ``phase``/``variant`` keys (and ``front_member``: which
member of a pareto search's front a final re-runs): trial configs are made by
:meth:`TrialSpec.search`, :meth:`TrialSpec.final` and :meth:`TrialSpec.rerun`, read by
:meth:`TrialSpec.parse` (once, at the edge; then typed values), and recorded through
:meth:`TrialSpec.tags`, :meth:`TrialSpec.child_params`, :meth:`TrialSpec.ran_config`,
:meth:`TrialSpec.best_entry` and :func:`final_params` (MLflow child runs, summary.json). The
``"A+B"`` spelling of a known-attack pair (a categorical search value must be a plain string)
has one writer and one parser, :func:`addd.config.pair_name` / :func:`addd.config.pair_attacks`,
re-exported here. :class:`TrialOutcome` is a trial after tuning.

No Ray, Optuna, MLflow or torch imports: the summary, the schedule and the report read trial
results with this module (and the pure ``addd.config``) alone.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

from addd import figures
from addd.config import ablation, from_flat_dict, pair_attacks, pair_name, to_flat_dict

SEARCH, FINAL = "search", "final"
PHASES = (SEARCH, FINAL)
OBJECTIVE = "objective"  # = val/worst.unknown: what Optuna maximises and ASHA compares
EPOCH = "epoch"  # the training epoch a result was reported after (1-based)
FAILURE = "failure"  # result key: why a trial ended without a result (e.g. a non-finite loss)
_PHASE, _VARIANT, _KNOWN = "phase", "variant", "known_attacks"
_FRONT = "front_member"  # a final of a multi-objective (pareto) search: which front member it re-runs (0-based)
# objective "pareto": the search trial's report keys told to the multi-objective study, each maximised,
# in this order (reconstruction accuracy, oblivious worst unknown, adaptive probe; all on val)
PARETO_KEYS: tuple[str, ...] = (figures.FIGURES[figures.RECONSTRUCTION].trial_key("val"),
                                figures.FIGURES[figures.WORST_UNKNOWN].trial_key("val"),
                                figures.FIGURES[figures.PROBE].trial_key())
PHASE_KEY = _PHASE  # the events log (events.jsonl) names a trial's phase with the same key

__all__ = ["EPOCH", "FAILURE", "FINAL", "OBJECTIVE", "PARETO_KEYS", "PHASES", "SEARCH", "CheckpointRef", "LocalCheckpoint",
           "TrialOutcome", "TrialSpec", "ended_early", "final_params", "is_finite", "is_trial_config",
           "pair_attacks", "pair_name", "ran_config", "search_group"]


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its phase, its ablation variant, and the flat DefenseConfig values (known
    attacks as a tuple). ``defense_config()`` applies the variant's ablation."""

    phase: str
    variant: str
    flat: Mapping[str, Any] = field(default_factory=dict)
    front_member: int | None = None  # finals of a pareto search: the index of the front member re-run

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"trial phase {self.phase!r}; valid: {', '.join(PHASES)}")

    @classmethod
    def search(cls, variant: str, flat: Mapping[str, Any]) -> "TrialSpec":
        """A search trial of ``variant`` on the flat config ``flat`` (the pair as a string or a sequence)."""
        return cls.parse({**flat, _PHASE: SEARCH, _VARIANT: variant})

    @classmethod
    def final(cls, variant: str, flat: Mapping[str, Any], seed: int, front_member: int | None = None) -> "TrialSpec":
        """A final (seed re-run) trial of ``variant`` on ``flat``, trained with ``train.seed = seed``;
        ``front_member``: which member of a pareto search's front it re-runs (None: the best config)."""
        front = {} if front_member is None else {_FRONT: int(front_member)}
        return cls.parse({**flat, "train.seed": seed, _PHASE: FINAL, _VARIANT: variant, **front})

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> "TrialSpec":
        """Read a trial config (as Ray hands it to trials, callbacks and schedulers)."""
        flat = {k: v for k, v in config.items() if k not in (_PHASE, _VARIANT, _FRONT)}
        if isinstance(flat.get(_KNOWN), str):
            flat[_KNOWN] = pair_attacks(flat[_KNOWN])
        elif _KNOWN in flat:
            flat[_KNOWN] = tuple(flat[_KNOWN])
        front = config.get(_FRONT)
        return cls(config[_PHASE], config[_VARIANT], flat, None if front is None else int(front))

    def to_config(self) -> dict[str, Any]:
        """The flat dict Ray carries (JSON-friendly: the pair as one string)."""
        flat = dict(self.flat)
        if _KNOWN in flat:
            flat[_KNOWN] = pair_name(flat[_KNOWN])
        front = {} if self.front_member is None else {_FRONT: self.front_member}
        return {_PHASE: self.phase, _VARIANT: self.variant, **front, **flat}

    def tags(self) -> dict[str, str]:
        """The MLflow tags of this trial's child run: its phase, variant and (pareto finals) front member."""
        front = {} if self.front_member is None else {_FRONT: str(self.front_member)}
        return {_PHASE: self.phase, _VARIANT: self.variant, **front}

    def run_name(self, trial_id: str) -> str:
        """The MLflow child run's name: ``<phase>-<variant>-<trial id>``."""
        return f"{self.phase}-{self.variant}-{trial_id}"

    def child_params(self) -> dict[str, Any]:
        """What MLflow records as the child run's params: phase, variant and the config that ran."""
        return {**self.tags(), **self.ran_config()}

    def ran_config(self) -> dict[str, Any]:
        """The flat DefenseConfig that trained (the variant's ablation applied, known attacks as a list)."""
        return to_flat_dict(self.defense_config())

    def best_entry(self, val_objective: float | None, **more: Any) -> dict[str, Any]:
        """summary.json's ``best``: this final's variant and seed, its validation objective, then ``more``."""
        front = {} if self.front_member is None else {_FRONT: self.front_member}
        return {_VARIANT: self.variant, "seed": self.seed, **front, "val_objective": val_objective, **more}

    def front_entry(self, **more: Any) -> dict[str, Any]:
        """summary.json's entry of a pareto front member: its ``front_member`` index, then ``more``."""
        return {_FRONT: self.front_member, **more}

    def same_config(self, other: "TrialSpec") -> bool:
        """Whether ``other`` trains this variant's config up to ``train.seed`` (a final and the search trial it re-runs)."""
        def unseeded(spec: "TrialSpec") -> dict[str, Any]:
            return {k: v for k, v in spec.flat.items() if k != "train.seed"}
        return self.variant == other.variant and unseeded(self) == unseeded(other)

    def defense_config(self):
        """The typed :class:`addd.config.DefenseConfig` of this trial, the variant's ablation applied."""
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

    def rerun(self, seed: int, front_member: int | None = None) -> "TrialSpec":
        """This config as a final (seed re-run) trial (of front member ``front_member``, if given)."""
        return TrialSpec.final(self.variant, self.flat, seed, front_member)


def is_trial_config(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` is a trial config (it has a phase and a variant), not, e.g., a baseline's settings."""
    return _PHASE in config and _VARIANT in config


def ran_config(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The flat config that ran from a recorded config: a trial config's :meth:`TrialSpec.ran_config`;
    other settings (a study baseline's) as given, known attacks as a list; None for None."""
    if config is None:
        return None
    if is_trial_config(config):
        return TrialSpec.parse(config).ran_config()
    out = dict(config)
    if isinstance(out.get(_KNOWN), str):
        out[_KNOWN] = list(pair_attacks(out[_KNOWN]))
    elif _KNOWN in out:
        out[_KNOWN] = list(out[_KNOWN])
    return out


def final_params(name: str, config: Mapping[str, Any], **more: Any) -> dict[str, Any]:
    """MLflow params of a final that is not a sweep trial (a study's fixed ablation or baseline):
    phase final, variant ``name``, ``more`` (e.g. its kind), then :func:`ran_config` of ``config``."""
    return {_PHASE: FINAL, _VARIANT: name, **more, **{k: v for k, v in ran_config(config).items()
                                                     if k not in (_PHASE, _VARIANT)}}


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


def front_defense(variant: str, member: Mapping[str, Any]) -> str:
    """The defense name of a pareto front member (a summary ``front`` entry): ``<variant>-front<m>``,
    its finals folder prefix and its MLflow parent-run prefix."""
    return f"{variant}-front{member[_FRONT]}"
