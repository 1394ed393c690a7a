"""The one place that talks to Ray (Ray 2.x: ``tune.report(dict, checkpoint=)``, ``tune.RunConfig``).

Everything Ray returns is turned into plain :class:`TrialOutcome` objects here, so the driver,
the summary and the tests never touch Ray's classes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- inside a trial
def trial_id() -> str:
    from ray import tune

    return tune.get_context().get_trial_id()


@contextlib.contextmanager
def latest_checkpoint_dir() -> Iterator[str | None]:
    """The directory of the trial's last checkpoint (a restored trial), else None."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as path:
        yield path


def report(metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(metrics, checkpoint=checkpoint)


# ----------------------------------------------------------------------------- the cluster
def init(address: str | None, num_cpus: int | None = None) -> dict[str, float]:
    """Join ``address`` (``auto`` under ``ray submit``) or start a local Ray. Returns its resources."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return ray.cluster_resources()


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], *, label: str, num_cpus: float = 1, num_gpus: float = 0) -> list[Any]:
    """``[fn(item) for item in items]`` as Ray tasks, logging progress as each one finishes."""
    import ray

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


def _callback(name: str):
    from ray import tune

    class _Forward(tune.Callback):
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

    return _Forward(name)


@dataclass(frozen=True)
class TuneJob:
    """One Tuner run: a named experiment under ``storage_path``."""

    name: str
    storage_path: str
    param_space: dict[str, Any]
    num_samples: int
    max_concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    metric: str | None = None
    mode: str = "max"
    searcher: Any = None  # from sweeps._optuna; None: grid / constants only
    asha: dict[str, int] | None = None  # max_t, grace_period, reduction_factor


def run(job: TuneJob, trainable: Callable, context: Any, listener: TrialListener | None, resume: bool) -> list[TrialOutcome]:
    """Run (or, with ``resume``, continue) ``job``. ``context`` goes to every trial through the
    object store (``tune.with_parameters``); workers are reused between trials."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    fn = tune.with_resources(
        tune.with_parameters(trainable, ctx=context),
        {"cpu": job.cpus_per_trial, "gpu": job.gpus_per_trial},
    )
    path = _join(job.storage_path, job.name)
    if listener is not None:
        _LISTENERS[job.name] = listener
    if resume and tune.Tuner.can_restore(path):
        log.info("resuming %s from %s", job.name, path)
        tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=True, param_space=job.param_space)
    else:
        scheduler = None
        if job.asha:
            scheduler = ASHAScheduler(time_attr="training_iteration", **job.asha)
        tuner = tune.Tuner(
            fn,
            param_space=job.param_space,
            tune_config=tune.TuneConfig(
                metric=job.metric,
                mode=job.mode if job.metric else None,
                search_alg=job.searcher,
                scheduler=scheduler,
                num_samples=job.num_samples,
                max_concurrent_trials=job.max_concurrent,
                reuse_actors=True,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=job.name,
                storage_path=job.storage_path,
                callbacks=[_callback(job.name)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=1),
                verbose=0,
            ),
        )
    grid = tuner.fit()
    outcomes = []
    for result in grid:
        trial_config = dict(result.config or {})
        outcomes.append(
            TrialOutcome(
                trial_id=(result.metrics or {}).get("trial_id", Path(result.path).name),
                config=trial_config,
                metrics=dict(result.metrics or {}),
                checkpoint=CheckpointRef(result.checkpoint) if result.checkpoint else None,
                error=str(result.error) if result.error else None,
            )
        )
    return outcomes


def grid(values: list[Any]) -> Any:
    from ray import tune

    return tune.grid_search(values)


def _join(storage_path: str, name: str) -> str:
    return storage_path.rstrip("/") + "/" + name if "://" in storage_path else str(Path(storage_path) / name)
