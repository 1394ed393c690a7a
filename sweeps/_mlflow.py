"""The one place that talks to MLflow: a parent run per sweep, a child run per trial.

Only the driver writes (through ``MlflowClient``), so a SQLite tracking store is safe. Children
nest under the parent in the UI through the ``mlflow.parentRunId`` tag; each carries the tag
``addd.trial_key`` so a resumed sweep finds its runs again instead of making new ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from addd.errors import AdddError
from addd.runfolder import MLFLOW_JOURNAL_FILE, MLFLOW_JOURNAL_FILES_DIR, RunFolder

log = logging.getLogger(__name__)

JOURNAL_FILE = MLFLOW_JOURNAL_FILE  # every MLflow call that failed, in order, for --sync-mlflow
JOURNAL_FILES_DIR = MLFLOW_JOURNAL_FILES_DIR  # copies of artifacts (figures, curves) the server missed
PENDING = "pending:"  # run-id prefix of a child run the server has not created yet
RETRY_SECONDS = 30.0  # how often an offline tracker tries the server again

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "addd.trial_key"
RUN_DIR_TAG = "addd.run_dir"  # on a parent run: its run folder (python -m sweeps.study --sweep <run id> finds it)
_MAX_PARAM = 6000  # MLflow's param value limit (chars)


def default_tracking_uri(run_dir: Path) -> str:
    return RunFolder(run_dir).default_tracking_uri


class TrackingError(AdddError):
    """MLflow cannot be used as asked; the message says what to do."""


class Tracker:
    """A thin wrapper over ``MlflowClient`` with the few operations the sweep needs.

    Resilient: an MLflow call that fails (server gone, network down) never stops the sweep. It is
    appended to ``journal`` (``<run dir>/mlflow_journal.jsonl``; artifacts are copied next to it)
    and the tracker goes offline, trying the server again every ``RETRY_SECONDS``; when it
    answers, the journal is replayed (see :func:`sync`) and the tracker is online again. What is
    still in the journal at the end is uploaded by ``python sweeps/run.py --sync-mlflow RUN_DIR``.
    """

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None,
                 journal: Path | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        if tracking_uri.startswith(("http://", "https://")):
            # MLflow's default is 7 retries with exponential backoff (minutes per call on a dead
            # server); the journal is our retry, so a call may fail fast.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # MLflow parses an int
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.journal = Path(journal) if journal is not None else None
        self.client = MlflowClient(tracking_uri)
        self.online, self._offline_since = True, 0.0
        self._resolved: dict[str, str] = {}  # pending child id -> its real run id, once created
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (found.experiment_id if found
                                  else self.client.create_experiment(experiment, artifact_location=artifact_location))
        except Exception as exc:  # noqa: BLE001 - any failure here means: no usable server
            raise TrackingError(f"MLflow at {tracking_uri} is not usable ({_one_line(exc)}); start the server or "
                                f"pass another --tracking-uri") from None

    # -- resilience
    def _call(self, record: dict[str, Any], fn: Callable[[], Any], fallback: Any = None) -> Any:
        """``fn()``, or, if MLflow fails or is offline, ``record`` appended to the journal."""
        if not self.online and not self._try_reconnect():
            self._append(record)
            return fallback
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the journal keeps it; the sweep goes on
            if self.journal is None:
                raise
            if self.online:
                log.warning("MLflow at %s failed (%s); recording to %s until it answers again "
                            "(then: python sweeps/run.py --sync-mlflow %s)",
                            self.tracking_uri, _one_line(exc), self.journal, self.journal.parent)
            self.online, self._offline_since = False, time.monotonic()
            self._append({**record, "error": _one_line(exc)})
            return fallback

    def _append(self, record: dict[str, Any]) -> None:
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal, "a") as fh:
            fh.write(json.dumps({"experiment": self.experiment, **record}, default=str) + "\n")

    def _try_reconnect(self) -> bool:
        if time.monotonic() - self._offline_since < RETRY_SECONDS:
            return False
        self._offline_since = time.monotonic()
        try:
            self.client.get_experiment(self.experiment_id)
            replayed = sync(self.journal, self.tracking_uri, client=self.client, resolved=self._resolved)
        except Exception as exc:  # noqa: BLE001 - still down
            log.debug("MLflow still unreachable: %s", _one_line(exc))
            return False
        if self.journal.exists():
            self.journal.rename(self.journal.with_name(f"{self.journal.stem}.replayed-{time.time_ns()}.jsonl"))
        self.online = True
        log.warning("MLflow at %s answers again; %d journalled call(s) replayed", self.tracking_uri, replayed)
        return True

    def _run_id(self, run_id: str) -> str:
        return self._resolved.get(run_id, run_id)

    def _keep_file(self, path: Path) -> str:
        """A copy of ``path`` in the run folder, for a later upload (the original may be temporary)."""
        dest = self.journal.parent / JOURNAL_FILES_DIR / uuid.uuid4().hex[:12] / Path(path).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        return str(dest)

    # -- runs
    def start_parent(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        try:
            run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags))
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"MLflow at {self.tracking_uri} cannot create the sweep's run ({_one_line(exc)}); "
                                f"start the server or pass another --tracking-uri") from None
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def child(self, parent_id: str, key: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """The child run for ``key`` under ``parent_id``: the existing one (resume) or a new one."""
        record = {"op": "child", "run": PENDING + key, "parent": parent_id, "key": key, "name": name,
                  "params": dict(params), "tags": dict(tags)}
        return self._call(record, lambda: _find_or_create_child(self.client, self.experiment_id, parent_id, key, name,
                                                                 params, tags, reopen=True), fallback=PENDING + key)

    def find_child(self, parent_id: str, key: str) -> tuple[str, str] | None:
        """(run id, status) of the child run for ``key`` under ``parent_id``, or None if there is
        none. While MLflow is unreachable (a journalling tracker) this is None: the journalled
        :meth:`child` call then finds or creates the run when the journal is replayed."""
        if not self.online and self.journal is not None and not self._try_reconnect():
            return None
        try:
            run_id = _find_child(self.client, self.experiment_id, parent_id, key)
            return None if run_id is None else (run_id, self.client.get_run(run_id).info.status)
        except Exception as exc:  # noqa: BLE001 - offline from here; the journal keeps the writes
            if self.journal is None:
                raise
            log.warning("MLflow at %s failed (%s); recording to %s until it answers again",
                        self.tracking_uri, _one_line(exc), self.journal)
            self.online, self._offline_since = False, time.monotonic()
            return None

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        run_id = self._run_id(run_id)

        def fn():
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
        self._call({"op": "tags", "run": run_id, "tags": dict(tags)}, fn)

    def finish(self, run_id: str, ok: bool = True) -> None:
        run_id, status = self._run_id(run_id), "FINISHED" if ok else "FAILED"
        self._call({"op": "finish", "run": run_id, "status": status},
                   lambda: self.client.set_terminated(run_id, status=status))

    # -- data
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        run_id = self._run_id(run_id)
        self._call({"op": "params", "run": run_id, "params": {k: str(v) for k, v in params.items()}},
                   lambda: _log_params(self.client, run_id, params))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        run_id, now = self._run_id(run_id), int(time.time() * 1000)
        finite = {_metric_name(k): float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if finite:
            self._call({"op": "metrics", "run": run_id, "metrics": finite, "step": step, "timestamp": now},
                       lambda: _log_metrics(self.client, run_id, finite, step, now))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        run_id = self._run_id(run_id)
        if not self.online and self.journal is not None and not self._try_reconnect():
            self._append({"op": "artifact", "run": run_id, "path": self._keep_file(path), "artifact_path": artifact_path})
            return
        try:
            self.client.log_artifact(run_id, str(path), artifact_path)
        except Exception:  # noqa: BLE001
            if self.journal is None:
                raise
            record = {"op": "artifact", "run": run_id, "path": self._keep_file(path), "artifact_path": artifact_path}
            self._call(record, _raise_again)

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        import tempfile

        run_id = self._run_id(run_id)
        if self.online:
            try:
                self.client.log_figure(run_id, figure, name)
                return
            except Exception:  # noqa: BLE001 - saved as a file below, journalled
                if self.journal is None:
                    raise
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            figure.savefig(path)
            self.log_artifact(run_id, path, str(Path(name).parent) if Path(name).parent != Path(".") else None)


def _raise_again() -> None:
    raise RuntimeError("MLflow call failed")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def _find_child(client, experiment_id: str, parent_id: str, key: str):
    found = client.search_runs([experiment_id], max_results=1,
                               filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{key}'")
    return found[0].info.run_id if found else None


def _find_or_create_child(client, experiment_id: str, parent_id: str, key: str, name: str, params: Mapping[str, Any],
                          tags: Mapping[str, str], reopen: bool) -> str:
    run_id = _find_child(client, experiment_id, parent_id, key)
    if run_id is not None:
        if reopen:
            client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment_id, run_name=name, tags={PARENT_TAG: parent_id, TRIAL_TAG: key, **tags}
                                   ).info.run_id
    _log_params(client, run_id, params)
    return run_id


def _log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:_MAX_PARAM]) for k, v in params.items() if k not in have]
    for begin in range(0, len(new), 100):
        client.log_batch(run_id, params=new[begin : begin + 100])


def _log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int, timestamp: int,
                 skip_logged: bool = False) -> int:
    """Log ``metrics`` at ``step``; with ``skip_logged``, leave out any value already there (replays)."""
    from mlflow.entities import Metric

    batch = [Metric(k, v, timestamp, step) for k, v in metrics.items()]
    if skip_logged:
        have = {k: {(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, k)} for k in metrics}
        batch = [m for m in batch if (m.step, m.timestamp, m.value) not in have[m.key]]
    for begin in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[begin : begin + 500])
    return len(batch)


def sync(journal: Path, tracking_uri: str, client=None, resolved: dict[str, str] | None = None) -> int:
    """Replay ``journal`` (written by a :class:`Tracker` while MLflow was unreachable) to
    ``tracking_uri``, idempotently: child runs are found by their trial-key tag before one is
    made, params and metrics already there are skipped, artifacts are overwritten, statuses set.
    Returns the number of records replayed; raises on the first call that fails (run it again)."""
    from mlflow.tracking import MlflowClient

    journal = Path(journal)
    if not journal.exists():
        return 0
    client = client or MlflowClient(tracking_uri)
    resolved = resolved if resolved is not None else {}
    experiments: dict[str, str] = {}
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]

    def experiment_id(name: str) -> str:
        if name not in experiments:
            found = client.get_experiment_by_name(name)
            experiments[name] = found.experiment_id if found else client.create_experiment(name)
        return experiments[name]

    def run_of(record: dict) -> str:
        run = resolved.get(record["run"], record["run"])
        if run.startswith(PENDING):  # its child record failed too and has not been replayed: a bug
            raise TrackingError(f"{journal}: run {run} was never created; the journal is incomplete")
        return run

    for record in records:
        op = record["op"]
        if op == "child":
            parent = resolved.get(record["parent"], record["parent"])
            resolved[record["run"]] = _find_or_create_child(client, experiment_id(record["experiment"]), parent,
                                                            record["key"], record["name"], record["params"],
                                                            record["tags"], reopen=False)
        elif op == "params":
            _log_params(client, run_of(record), record["params"])
        elif op == "tags":
            for key, value in record["tags"].items():
                client.set_tag(run_of(record), key, value)
        elif op == "metrics":
            _log_metrics(client, run_of(record), record["metrics"], record["step"], record["timestamp"], skip_logged=True)
        elif op == "artifact":
            client.log_artifact(run_of(record), record["path"], record.get("artifact_path"))
        elif op == "finish":
            client.set_terminated(run_of(record), status=record["status"])
        else:
            raise TrackingError(f"{journal}: unknown record {op!r}; was it written by a newer version?")
    return len(records)


def _metric_name(key: str) -> str:
    # MLflow accepts letters, digits, _ - . / and spaces; Ray's keys already fit.
    return key.replace(":", "_")


def run_dir_of(tracking_uri: str, run_id: str) -> str:
    """The run folder of the sweep whose MLflow parent run is ``run_id``: its ``addd.run_dir``
    tag, else the ``run_dir`` of its ``plan.json`` artifact (every sweep logs it)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a SQLite store's migrations are not the user's concern
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"no MLflow run {run_id!r} at {tracking_uri} ({str(exc).splitlines()[0]}); "
                            f"pass a run folder or a parent run id") from None
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    if run_dir:
        return run_dir
    try:
        local = client.download_artifacts(run_id, RunFolder(Path(".")).plan.name)
        return json.loads(Path(local).read_text())["run_dir"]
    except (MlflowException, OSError, ValueError, KeyError) as exc:
        raise TrackingError(f"run {run_id} names no run folder (no {RUN_DIR_TAG} tag, no readable plan.json: {exc})") from None


# ----------------------------------------------------------------------------- system metrics
SYSTEM_PREFIX = "system/"  # MLflow's namespace for system metrics (its UI shows them in their own tab)


class SystemSampler:
    """CPU, memory and (where NVML finds a GPU) GPU utilisation, sampled every ``interval`` seconds
    on a daemon thread by MLflow's own system-metrics monitors, plus this process's CPU share.

    A trial runs one in its own process, so what it samples is the node it runs on. ``take()``
    gives the means since the last ``take()`` (``system/<name>``, MLflow's system-metric names, e.g.
    ``system/cpu_utilization_percentage``, ``system/gpu_0_utilization_percentage``) and starts
    the next window. The driver logs them with the trial's other metrics: workers never talk to
    MLflow themselves (a SQLite store has one writer)."""

    def __init__(self, interval: float = 1.0):
        import psutil
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

        if not interval > 0:
            raise ValueError(f"SystemSampler: interval must be > 0 seconds, got {interval}")
        self.interval = interval
        self._monitors = [CPUMonitor()]
        try:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            self._monitors.append(GPUMonitor())
        except (ImportError, RuntimeError):  # no nvidia-ml-py, or NVML finds no GPU: CPU metrics only
            pass
        self._process = psutil.Process()
        self._process.cpu_percent()  # the first call starts psutil's interval
        self._own: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="addd-system-metrics", daemon=True)

    @property
    def gpus(self) -> bool:
        return len(self._monitors) > 1

    def __enter__(self) -> "SystemSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5 * self.interval)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            for monitor in self._monitors:
                monitor.collect_metrics()
            self._own.append(self._process.cpu_percent())

    def take(self) -> dict[str, float]:
        """Means over the window since the last call (one sample taken now, so never empty)."""
        self._sample()
        with self._lock:
            out = {}
            for monitor in self._monitors:
                out.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
            out["trial_process_cpu_percentage"] = round(sum(self._own) / len(self._own), 1)
            self._own.clear()
        return {SYSTEM_PREFIX + k: float(v) for k, v in out.items()}


def child_metric_values(tracking_uri: str, experiment: str, names: tuple[str, ...]) -> dict[str, dict[str, list[float]]]:
    """run name -> metric name -> every logged value (all steps), for the child runs of ``experiment``
    (benchmarks read the trials' system metrics back this way)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    out: dict[str, dict[str, list[float]]] = {}
    for run in client.search_runs([found.experiment_id], max_results=10000):
        if PARENT_TAG not in run.data.tags:
            continue
        out[run.info.run_name] = {n: [m.value for m in client.get_metric_history(run.info.run_id, n)] for n in names
                                  if n in run.data.metrics}
    return out
