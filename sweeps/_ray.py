"""The one place that talks to Ray (Ray 2.x: ``tune.report(dict, checkpoint=)``, ``tune.RunConfig``).

Everything Ray returns is turned into plain :class:`TrialOutcome` objects here, so the driver,
the summary and the tests never touch Ray's classes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from sweeps.schedule import FINISHED, SweepSchedule

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- inside a trial
def trial_id() -> str:
    return tune.get_context().get_trial_id()


@contextlib.contextmanager
def latest_checkpoint_dir() -> Iterator[str | None]:
    """The directory of the trial's last checkpoint (a restored trial), else None."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as path:
        yield path


def report(metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(metrics, checkpoint=checkpoint)


# ----------------------------------------------------------------------------- the cluster
def init(address: str | None, num_cpus: int | None = None) -> dict[str, float]:
    """Join ``address`` (``auto`` under ``ray submit``) or start a local Ray. Returns its resources."""
    if ray.is_initialized():
        return ray.cluster_resources()
    # Every epoch's checkpoint forces an experiment snapshot (num_to_keep=1): cheap here, not a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return ray.cluster_resources()


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], *, label: str, num_cpus: float = 1, num_gpus: float = 0) -> list[Any]:
    """``[fn(item) for item in items]`` as Ray tasks, logging progress as each one finishes."""
    if not items:
        return []
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=1)(_apply)
    fn_ref = ray.put(fn)  # shipped once, not once per item
    pending = {remote.remote(fn_ref, item): index for index, item in enumerate(items)}
    results: list[Any] = [None] * len(items)
    start, done = time.perf_counter(), 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        results[index] = ray.get(ready[0])
        done += 1
        log.info("%s: %d/%d done (%.0fs)", label, done, len(items), time.perf_counter() - start)
    return results


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


# ----------------------------------------------------------------------------- tuning
class TrialListener(Protocol):
    """Driver-side hooks (the MLflow recorder implements them); called in the driver process."""

    def started(self, trial_id: str, config: dict[str, Any]) -> None: ...
    def result(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> None: ...
    def completed(self, trial_id: str, config: dict[str, Any], result: dict[str, Any], checkpoint: "CheckpointRef | None") -> None: ...
    def errored(self, trial_id: str, config: dict[str, Any]) -> None: ...


@dataclass
class CheckpointRef:
    """A trial's last checkpoint, readable on the driver wherever Ray stored it."""

    _checkpoint: Any = field(repr=False)

    @contextlib.contextmanager
    def local_dir(self) -> Iterator[Path]:
        with self._checkpoint.as_directory() as path:
            yield Path(path)

    def copy_to(self, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        return Path(self._checkpoint.to_directory(str(dest)))


@dataclass
class TrialOutcome:
    """One trial after tuning: its config, last reported metrics, checkpoint and status."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint: CheckpointRef | None
    error: str | None


# Ray pickles the callbacks into the experiment (tuner.pkl) and unpickles them on restore: the
# callback holds only a name, the live listener of this driver process is looked up by it.
_LISTENERS: dict[str, TrialListener] = {}


class _Forward(tune.Callback):
    """Forwards trial events to the listener registered under ``key`` in this process."""

    def __init__(self, key: str):
        self.key = key

    def _listener(self) -> TrialListener | None:
        return _LISTENERS.get(self.key)

    def on_trial_start(self, iteration, trials, trial, **info):
        if listener := self._listener():
            listener.started(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if listener := self._listener():
            listener.result(trial.trial_id, trial.config, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if listener := self._listener():
            ckpt = trial.checkpoint
            listener.completed(trial.trial_id, trial.config, dict(trial.last_result or {}), CheckpointRef(ckpt) if ckpt else None)

    def on_trial_error(self, iteration, trials, trial, **info):
        if listener := self._listener():
            listener.errored(trial.trial_id, trial.config)


class _ScheduleSearcher(Searcher):
    """Ray Searcher over a :class:`sweeps.schedule.SweepSchedule` (state = the pickled schedule)."""

    def __init__(self, schedule: SweepSchedule):
        # No metric for Tune to enforce: final trials report the objective only at their end.
        super().__init__(metric=None, mode=None)
        self.schedule = schedule

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the schedule carries its own spaces

    def suggest(self, trial_id: str):
        config = self.schedule.suggest(trial_id)
        return Searcher.FINISHED if config == FINISHED else config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.schedule.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.schedule.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.schedule, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.schedule = pickle.load(fh)


class _VariantASHA(FIFOScheduler):
    """One ASHA per variant (a variant's trials compete only with each other); final trials run to the end."""

    def __init__(self, variants: Sequence[str], metric: str, asha: dict[str, int]):
        super().__init__()
        self._asha = {v: ASHAScheduler(time_attr="training_iteration", metric=metric, mode="max", **asha) for v in variants}

    def _of(self, trial) -> ASHAScheduler | None:
        config = trial.config
        return self._asha.get(config.get("variant")) if config.get("phase") == "search" else None

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        if asha := self._of(trial):
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        asha = self._of(trial)
        return asha.on_trial_result(tune_controller, trial, result) if asha else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        if (asha := self._of(trial)) and trial.trial_id in asha._trial_info:  # noqa: SLF001
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if (asha := self._of(trial)) and trial.trial_id in asha._trial_info:  # noqa: SLF001
            asha.on_trial_remove(tune_controller, trial)


@dataclass(frozen=True)
class TuneJob:
    """One Tuner run of a whole sweep: a named experiment under ``storage_path``."""

    name: str
    storage_path: str
    make_schedule: Callable[[], SweepSchedule]  # called only for a new run: a restored one has its own
    max_concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    asha: dict[str, int]  # max_t, grace_period, reduction_factor


def run(job: TuneJob, trainable: Callable, context: Any, listener: TrialListener | None, resume: bool) -> list[TrialOutcome]:
    """Run (or, with ``resume``, continue) ``job``. ``context`` goes to every trial through the
    object store (``tune.with_parameters``); workers are reused between trials."""
    fn = tune.with_resources(
        tune.with_parameters(trainable, ctx=context),
        {"cpu": job.cpus_per_trial, "gpu": job.gpus_per_trial},
    )
    path = _join(job.storage_path, job.name)
    if listener is not None:
        _LISTENERS[job.name] = listener
    if resume and tune.Tuner.can_restore(path):
        log.info("resuming %s from %s", job.name, path)
        tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=True)
    else:
        schedule = job.make_schedule()
        variants = [v.variant for v in schedule.variants]
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(
                search_alg=_ScheduleSearcher(schedule),
                scheduler=_VariantASHA(variants, schedule.metric, job.asha),
                num_samples=schedule.total_trials,
                max_concurrent_trials=job.max_concurrent,
                reuse_actors=True,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=job.name,
                storage_path=job.storage_path,
                callbacks=[_Forward(job.name)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=1),
                verbose=0,
            ),
        )
    grid = tuner.fit()
    outcomes = []
    for result in grid:
        metrics = dict(result.metrics or {})
        outcomes.append(
            TrialOutcome(
                trial_id=metrics.get("trial_id", Path(result.path).name),
                config=dict(result.config or {}),
                metrics=metrics,
                checkpoint=CheckpointRef(result.checkpoint) if result.checkpoint else None,
                error=str(result.error) if result.error else None,
            )
        )
    return outcomes


def _join(storage_path: str, name: str) -> str:
    return storage_path.rstrip("/") + "/" + name if "://" in storage_path else str(Path(storage_path) / name)
