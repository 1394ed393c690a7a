"""The one place that talks to Ray (Ray 2.x: ``tune.report(dict, checkpoint=)``, ``tune.RunConfig``).

Everything Ray returns is turned into plain :class:`sweeps.trialspec.TrialOutcome` objects here,
so the driver, the summary and the tests never touch Ray's classes. What a trial config means
(phase, variant) is not known here: the driver passes a ``group_of(config)`` function to the
per-group ASHA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from sweeps.schedule import FINISHED, SweepSchedule
from sweeps.trialspec import TrialOutcome

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
LOOPBACK = "127.0.0.1"


def init(address: str | None, num_cpus: int | None = None) -> dict[str, float]:
    """Join ``address`` (``auto`` under ``ray submit``) or start a local Ray. Returns its resources.

    A local Ray listens on 127.0.0.1 only (GCS, raylet, object manager, workers): it runs with
    token authentication off, so nothing beyond this machine may reach it. A cluster joined by
    ``address`` is the project's, started with token authentication (sweeps/cluster*.yaml): a
    refusal (no or a wrong token) raises SweepError. Ray needs both the
    node address and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set before it starts.

    Ray's console output is the sweep console's, not Ray's: Ray's loggers propagate to the root
    logger (the run folder's sweep.log), the workers' stdout/stderr go there through the logger
    ``ray.workers`` (checkpoint lines, tracebacks of workers killed at shutdown), and Tune prints
    no config box, TensorBoard hint or progress table (legacy reporter at verbose=0).
    """
    if ray.is_initialized():
        return ray.cluster_resources()
    # Every epoch's checkpoint forces an experiment snapshot (num_to_keep=1): cheap here, not a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new output prints its box and hints even at verbose=0
    quiet = dict(configure_logging=False, log_to_driver=_can_route_worker_output())
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster, loopback only
        # Ray reads this switch when it is imported (ray_constants.ENABLE_RAY_CLUSTER), which has
        # happened by now: set the variable for the processes it starts (GCS, raylet, workers)
        # and the constant for this one, or they listen on every interface (measured with ss).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address=LOOPBACK, **quiet)
    else:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:  # Ray says "Failed to connect"; its log line says why (e.g. InvalidAuthToken)
            from sweeps.plan import SweepError

            raise SweepError(f"--address {address}: Ray refused to join the cluster ({exc}); a cluster with token "
                             f"authentication needs its token here: the head's ~/.ray/auth_token (mode 0600), "
                             f"RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN, with RAY_AUTH_MODE=token") from None
    ray_logger = logging.getLogger("ray")
    ray_logger.propagate, ray_logger.level = True, logging.INFO  # configure_logging=False left it silenced
    if quiet["log_to_driver"]:
        _route_worker_output()
    return ray.cluster_resources()


_WORKER_LOG = logging.getLogger("ray.workers")


def _can_route_worker_output() -> bool:
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher  # noqa: F401
    except ImportError:  # another Ray: the workers' output stays in Ray's own log folder
        return False
    return True


def _route_worker_output() -> None:
    """The workers' stdout/stderr (which Ray prints on the driver's console, in colour) to the
    logger ``ray.workers`` instead; the handler keeps Ray's name so ray.shutdown removes it."""
    from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", _log_worker_lines)


def _log_worker_lines(data: dict) -> None:
    who = data.get("actor_name") or data.get("task_name") or "worker"
    lines = data.get("lines") or ()
    if data.get("pid") == "autoscaler":  # its status table every few seconds: only its events, as Ray prints them
        from ray._private.worker import filter_autoscaler_events

        lines = list(filter_autoscaler_events(lines))
    for line in lines:
        _WORKER_LOG.info("(%s pid=%s) %s", who, data.get("pid"), line)


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], *, label: str, num_cpus: float = 1, num_gpus: float = 0,
                 on_done: Callable[[Any, Any, float], None] | None = None) -> list[Any]:
    """``[fn(item) for item in items]`` as Ray tasks; ``on_done(item, result, seconds in the task)``
    as each one finishes."""
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
        seconds, results[index] = ray.get(ready[0])
        done += 1
        log.debug("%s: %d/%d done (%.0fs)", label, done, len(items), time.perf_counter() - start)
        if on_done is not None:
            on_done(items[index], results[index], seconds)
    return results


def _apply(fn: Callable[[Any], Any], item: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(item)
    return time.perf_counter() - start, result


def nodes_without(path: Path) -> list[str]:
    """Addresses of the alive nodes on which ``path`` (a file the driver wrote) is not visible:
    a cache folder that is not shared storage would make each node regenerate, or lose, sets."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return []
    probe = ray.remote(num_cpus=0)(os.path.exists)
    refs = {
        n["NodeManagerAddress"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(str(path))
        for n in nodes
    }
    return [address for address, ref in refs.items() if not ray.get(ref, timeout=120)]


# ----------------------------------------------------------------------------- tuning
class TrialListener(Protocol):
    """Driver-side hooks (the MLflow recorder implements them); called in the driver process."""

    def started(self, trial_id: str, config: dict[str, Any]) -> None: ...
    def result(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> None: ...
    def completed(self, trial_id: str, config: dict[str, Any], result: dict[str, Any], checkpoint: Any) -> None: ...
    def errored(self, trial_id: str, config: dict[str, Any]) -> None: ...


@dataclass
class _RayCheckpoint:
    """A trial's last checkpoint (a :class:`sweeps.trialspec.CheckpointRef`) wherever Ray stored it."""

    _checkpoint: Any = field(repr=False)

    @contextlib.contextmanager
    def local_dir(self) -> Iterator[Path]:
        with self._checkpoint.as_directory() as path:
            yield Path(path)

    def copy_to(self, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        return Path(self._checkpoint.to_directory(str(dest)))


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
            listener.completed(trial.trial_id, trial.config, dict(trial.last_result or {}), _RayCheckpoint(ckpt) if ckpt else None)

    def on_trial_error(self, iteration, trials, trial, **info):
        if listener := self._listener():
            listener.errored(trial.trial_id, trial.config, _last_line(str(trial.get_error() or "")))


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


class _GroupedASHA(FIFOScheduler):
    """One ASHA per group: a trial competes only with its own group; a trial whose group is None
    (``group_of(config)``, a picklable module-level function) runs to its end. Each ASHA is
    told only about the trials it was given (its own record, not Ray's private state)."""

    def __init__(self, groups: Sequence[str], group_of: Callable[[dict], str | None], metric: str, asha: dict[str, int]):
        super().__init__()
        self._group_of = group_of
        self._asha = {g: ASHAScheduler(time_attr="training_iteration", metric=metric, mode="max", **asha) for g in groups}
        self._given: dict[str, str] = {}  # trial_id -> group whose ASHA knows it

    def _of(self, trial) -> ASHAScheduler | None:
        group = self._given.get(trial.trial_id)
        return self._asha[group] if group is not None else None

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        group = self._group_of(trial.config)
        if group in self._asha:
            self._given[trial.trial_id] = group
            self._asha[group].on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        asha = self._of(trial)
        return asha.on_trial_result(tune_controller, trial, result) if asha else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        if asha := self._of(trial):
            asha.on_trial_complete(tune_controller, trial, result)
            del self._given[trial.trial_id]

    def on_trial_remove(self, tune_controller, trial) -> None:
        if asha := self._of(trial):
            asha.on_trial_remove(tune_controller, trial)
            del self._given[trial.trial_id]


@dataclass(frozen=True)
class TuneJob:
    """One Tuner run of a whole sweep: a named experiment under ``storage_path``."""

    name: str
    storage_path: str
    make_schedule: Callable[[], SweepSchedule]  # called only for a new run: a restored one has its own
    group_of: Callable[[dict], str | None]  # ASHA group of a trial config (None: never stopped early)
    max_concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    asha: dict[str, int]  # max_t, grace_period, reduction_factor
    # False (objective pareto): FIFO, every trial runs to its end. ASHA compares one number, and any
    # scalar of several objectives would stop the trials at the front's far ends; a stopped trial
    # can never be on the front.
    early_stopping: bool = True


def _scheduler(job: TuneJob, schedule: SweepSchedule) -> TrialScheduler:
    """Per-variant ASHA, or with ``job.early_stopping`` False a FIFO scheduler (nothing stopped early)."""
    if not job.early_stopping:
        return FIFOScheduler()
    return _GroupedASHA([v.variant for v in schedule.variants], job.group_of, schedule.metric, job.asha)


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
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(
                search_alg=_ScheduleSearcher(schedule),
                scheduler=_scheduler(job, schedule),
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
    grid = _fit(tuner, path)
    outcomes = []
    for result in grid:
        metrics = dict(result.metrics or {})
        outcomes.append(
            TrialOutcome(
                trial_id=metrics.get("trial_id", Path(result.path).name),
                config=dict(result.config or {}),
                metrics=metrics,
                checkpoint=_RayCheckpoint(result.checkpoint) if result.checkpoint else None,
                error=_last_line(str(result.error)) if result.error else None,
            )
        )
    return outcomes


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGUSR1 stopped the Tuner: Tune saved the experiment's state, which
    ``resume`` continues; the outcomes so far are not the sweep's."""


def _fit(tuner: tune.Tuner, path: str):
    """``tuner.fit()``; raises :class:`TuneInterrupted` if a signal stopped it, KeyboardInterrupt
    at once on a second Ctrl-C.

    Tune's own handler (``ray.tune.tune._setup_signal_catching``) takes the first SIGINT: it sets
    the experiment's interrupted event, puts back the handler it replaced and lets ``fit`` save
    the state and return normally. The handler it replaced is this one, so finding it installed
    after ``fit`` means Tune was interrupted; called, it is the second Ctrl-C.
    """
    def second_interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread() or int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")):
        return tuner.fit()  # no Tune handler: a Ctrl-C raises KeyboardInterrupt in fit
    previous = signal.signal(signal.SIGINT, second_interrupt)
    try:
        grid = tuner.fit()
        interrupted = signal.getsignal(signal.SIGINT) is second_interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        log.info("the search was interrupted; Tune saved its state in %s", path)
        raise TuneInterrupted(path)
    return grid


def _last_line(message: str | None) -> str | None:
    """The exception line of a Ray error message (its traceback stays in the Ray logs)."""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _join(storage_path: str, name: str) -> str:
    return storage_path.rstrip("/") + "/" + name if "://" in storage_path else str(Path(storage_path) / name)
