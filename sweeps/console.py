"""What a person sees: the one place that formats the console of a sweep and of ``ablations.evaluate``.

On a terminal: a live table per ablation variant (search trials done / running / stopped early /
failed, finals done, best objective so far) with elapsed and remaining time, and one line above it
per adversarial set as it is built. Not on a terminal (CI, ``> file``): plain lines, no colour
codes, no carriage returns: one per adversarial set and one per finished trial.

Everything else (every log record, Ray's driver and worker output, warnings) goes to the log file
in the run folder (``sweep.log``); ``-v`` shows it live too. Log records wait in memory until the
run folder exists (a bad command line writes nothing) and are then written there.

``rich`` draws the live display; nothing else in the project imports it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

from sweeps.trialspec import EPOCH, FAILURE, SEARCH, ended_early

LOG_FILE = "sweep.log"
OUR_PACKAGES = ("addd", "sweeps", "ablations")
# loggers whose INFO records are progress a person waits for (the study after the search: minutes each)
PROGRESS_LOGGERS = ("ablations.study",)
# third-party loggers that say too much even for the log file
_QUIET = ("sqlalchemy", "alembic", "matplotlib", "PIL", "filelock", "urllib3", "fsspec", "asyncio", "h5py",
          "numexpr", "git", "graphviz", "huey", "httpx", "httpcore")
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# ----------------------------------------------------------------------------- logging
class _Buffer(logging.Handler):
    """Keeps records until the log file can be opened, then hands them over."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.target: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.target is not None:
            self.target.handle(record)
        elif len(self.records) < 100_000:
            self.records.append(record)

    def open(self, target: logging.Handler) -> None:
        self.acquire()
        try:
            for record in self.records:
                target.handle(record)
            self.records.clear()
            self.target = target
        finally:
            self.release()

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
        super().close()


class _LogFile(logging.FileHandler):
    """The log file. A record it cannot write (its disk is full) is counted and dropped, instead of
    logging's "--- Logging error ---" and a traceback on the console for every record: the sweep
    ends with one line saying which folder filled (sweeps.run.full_folder)."""

    dropped = 0

    def handleError(self, record: logging.LogRecord) -> None:
        self.dropped += 1


class _ToConsole(logging.Handler):
    """Log records on the console: ours from WARNING on, progress loggers' INFO (everything with ``-v``)."""

    def __init__(self, console: "Console", verbose: bool) -> None:
        super().__init__(logging.DEBUG if verbose else logging.INFO)
        self.console, self.verbose = console, verbose
        self.setFormatter(logging.Formatter(_FILE_FORMAT, "%H:%M:%S") if verbose else _ShortFormatter(console))

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.levelno >= logging.WARNING:
            return record.name.split(".")[0] in OUR_PACKAGES
        return record.name in PROGRESS_LOGGERS

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.line(self.format(record))
        except Exception:  # noqa: BLE001
            self.handleError(record)


class _ShortFormatter(logging.Formatter):
    def __init__(self, console: "Console") -> None:
        super().__init__()
        self.console = console

    def format(self, record: logging.LogRecord) -> str:  # tracebacks stay in the log file
        if record.levelno < logging.WARNING:
            return f"{self.console.stamp()} {record.getMessage()}"
        return f"{record.levelname.lower()}: {record.getMessage()}"


# ----------------------------------------------------------------------------- the console
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def adv_set_origin(adv_set: Any, since: float) -> str:
    """How the cache got ``adv_set`` (``addd.advcache.ORIGINS``: "cached", "generated", "rebuilt"
    because its entry was damaged, "waited" for another sweep that generated it). A set without
    an origin: "generated" if its cache entry was written after ``since`` (a time.time()), else "cached"."""
    origin = getattr(adv_set, "origin", None)
    if origin in ("generated", "rebuilt", "waited"):
        return origin
    created = getattr(getattr(adv_set, "manifest", None), "created", None)
    try:
        return "generated" if created and datetime.fromisoformat(created).timestamp() >= since - 1 else "cached"
    except ValueError:
        return "cached"


_ORIGIN_LINES = {  # what the console says of a set not simply read from the cache
    "generated": "generated in {seconds:.1f}s",
    "rebuilt": "rebuilt in {seconds:.1f}s (its cache entry was damaged; sweep.log names it)",
    "waited": "loaded after waiting {seconds:.1f}s for another sweep that built it",
}


class Console:
    """Lines for a person on ``stream``, and the log file beside them."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.live = self._isatty() if live is None else live
        self.start = time.time()
        self.log_path: Path | None = None
        self._lock = threading.RLock()
        self._rich = None
        self._live = None
        self._buffer: _Buffer | None = None
        self._cached: tuple[str, list[str]] | None = None
        self._handlers: list[logging.Handler] = []
        self._root_level = logging.WARNING
        if self.live:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(file=self.stream, highlight=False, soft_wrap=True)

    def _isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    # -- logging
    def configure_logging(self) -> "Console":
        """Route every log record to the log file (opened later by :meth:`open_log`), ours from
        WARNING on (everything with ``verbose``) to the console."""
        root = logging.getLogger()
        self._root_level = root.level
        root.setLevel(logging.INFO)
        for name in OUR_PACKAGES:
            logging.getLogger(name).setLevel(logging.DEBUG)
        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.captureWarnings(True)
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # else MLflow prints to stderr itself
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ..." per finished run
        self._buffer = _Buffer()
        self._handlers = [self._buffer, _ToConsole(self, self.verbose)]
        for handler in self._handlers:
            root.addHandler(handler)
        return self

    @staticmethod
    def adopt_loggers() -> None:
        """Libraries that print through handlers of their own (Optuna, MLflow when imported before
        :meth:`configure_logging`) pass their records to ours instead."""
        for name in ("mlflow", "optuna", "ray"):
            logger = logging.getLogger(name)
            if logger.handlers:
                logger.handlers.clear()
            logger.propagate = True

    def open_log(self, path: Path) -> Path:
        """Start writing the log file (appending: a resumed sweep keeps its history)."""
        if self._buffer is None or self.log_path is not None:
            return self.log_path or path
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(path, mode="a", encoding="utf-8", delay=False)
        handler.setFormatter(logging.Formatter(_FILE_FORMAT))
        self._buffer.open(handler)
        self.log_path = path
        return path

    def close(self) -> None:
        """Stop the live display and give the root logger back as it was (in-process callers)."""
        self.stop_live()
        self.flush_cached()
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
            handler.close()
        self._handlers = []
        if self._buffer is not None:
            root.setLevel(self._root_level)
            self._buffer = None

    # -- output
    def line(self, text: str) -> None:
        """One line for a person (above the live display when there is one)."""
        with self._lock:
            if self._rich is not None:
                self._rich.print(text, markup=False, highlight=False)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def elapsed(self) -> str:
        return _duration(time.time() - self.start)

    def stamp(self) -> str:
        return f"[{self.elapsed():>6}]"

    # -- live display (terminal only)
    def start_live(self, render: Callable[[], Any]) -> None:
        if self._rich is None or self._live is not None:
            return
        from rich.live import Live

        class _Renderable:
            def __rich__(self_inner):
                return render()

        self._live = Live(_Renderable(), console=self._rich, refresh_per_second=1, transient=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- adversarial sets
    def adv_set(self, attack: str, split: str, seconds: float, origin: str) -> None:
        """One line per set generated, rebuilt or waited for; sets read from the cache are gathered
        into one line per split."""
        if origin == "cached":
            if self._cached and self._cached[0] != split:
                self.flush_cached()
            self._cached = (split, [*(self._cached[1] if self._cached else []), attack])
            return
        self.flush_cached()
        how = _ORIGIN_LINES.get(origin, _ORIGIN_LINES["generated"]).format(seconds=seconds)
        self.line(f"{self.stamp()} adversarial set {attack:<8} {split:<5} {how}")

    def flush_cached(self) -> None:
        if self._cached:
            split, attacks = self._cached
            self._cached = None
            self.line(f"{self.stamp()} adversarial sets {split:<5} {len(attacks)} from the cache: {' '.join(attacks)}")

    def progress_fn(self) -> Callable[[str, int, int], None]:
        """A ``progress(attack, done, total)`` for ``AdvCache.get_many``: chunk progress goes to the
        log file only (the console gets one line per set from :meth:`adv_set`)."""
        log = logging.getLogger("addd.advcache.progress")

        def progress(attack: str, done: int, total: int) -> None:
            log.debug("%s: %d/%d examples", attack, done, total)

        return progress


# ----------------------------------------------------------------------------- the sweep
@dataclass
class VariantProgress:
    search_total: int
    finals_total: int
    done: int = 0  # search trials finished (stopped early and failed included)
    stopped_early: int = 0
    failed: int = 0
    finals_done: int = 0
    finals_failed: int = 0
    running: set = field(default_factory=set)
    best: float | None = None


def _trial_key(spec) -> str:
    return json.dumps(spec.to_config(), sort_keys=True, default=str)


class SweepConsole(Console):
    """The console of ``python sweeps/run.py``: ``on_event`` is the driver's event hook."""

    def begin(self, plan) -> None:
        s = plan.space
        self.variants = {v: VariantProgress(plan.num_samples, plan.seeds) for v in s.variants}
        self.total = len(s.variants) * (plan.num_samples + plan.seeds)
        self.search_start: float | None = None
        self.finished = 0
        self.mlflow: dict[str, Any] = {}
        self.run_dir = plan.run_dir
        self.tracking_uri = plan.tracking_uri
        self.optuna_url = plan.optuna_url
        self.line(f"sweep {s.name}{' (smoke)' if plan.smoke else ''}: {len(s.variants)} variants "
                  f"({', '.join(s.variants)}) x {plan.num_samples} search + {plan.seeds} final trials = {self.total}")
        self.line(f"run folder: {plan.run_dir}")
        self.line(f"{self.stamp()} preparing: data, target model, adversarial sets (each built once, then cached)")

    # -- the driver's events
    def on_event(self, event: str, spec: Any, result: Mapping[str, Any] | None) -> None:
        result = result or {}
        if event != "adv_set":
            self.flush_cached()
        self.adopt_loggers()
        if spec is None:
            self._driver_event(event, result)
            return
        v = self.variants.get(spec.variant)
        if v is None:
            return
        if self.search_start is None:
            self.search_start = time.time()
            self.start_live(self._render)
        key = _trial_key(spec)
        if event == "started":
            v.running.add(key)
            return
        if event == "result":
            return
        if event not in ("completed", "failed"):
            return
        v.running.discard(key)
        self.finished += 1
        objective = result.get("objective")
        objective = float(objective) if isinstance(objective, (int, float)) else None
        if spec.phase == SEARCH:
            v.done += 1
            what = f"search trial {v.done}/{v.search_total}"
            if event == "failed":
                v.failed += 1
                what += f" failed: {result.get(FAILURE) or 'see the log'}"
            elif ended_early(spec, result):
                v.stopped_early += 1
                what += f" stopped early at epoch {int(result[EPOCH])}/{spec.epochs}"
            else:  # only a complete trial can be a variant's best (as in sweeps.schedule)
                what += " done"
                if objective is not None:
                    v.best = objective if v.best is None else max(v.best, objective)
            if objective is not None:
                what += f", objective {objective:.4f}"
        else:
            v.finals_done += 1
            what = f"final seed {spec.seed} ({v.finals_done}/{v.finals_total})"
            if event == "failed":
                v.finals_failed += 1
                what += f" failed: {result.get(FAILURE) or 'see the log'}"
            else:
                what += " done" + (f", test objective {objective:.4f}" if objective is not None else "")
        if self._live is not None:
            if event == "failed":
                self.line(f"{self.stamp()} {spec.variant}: {what}")
            return
        best = f"{v.best:.4f}" if v.best is not None else "—"
        self.line(f"{self.stamp()} {spec.variant}: {what} | best {best} | "
                  f"all {self.finished}/{self.total}, {self._running()} running, {self._remaining()} left")

    def _driver_event(self, event: str, data: Mapping[str, Any]) -> None:
        if event == "run_dir":
            path = self.open_log(Path(data["path"]) / LOG_FILE)
            self.line(f"log: {path}  (-v shows it here)")
        elif event == "adv_set":
            return self.adv_set(data["attack"], data["split"], data["seconds"], data["origin"])
        elif event == "mlflow":
            self.mlflow = dict(data)
        elif event == "search":
            self.search_start = self.search_start or time.time()
            self.line(f"{self.stamp()} search: {self.total} trials, up to {data.get('slots', '?')} at once")
            self.start_live(self._render)
        elif event == "publish":
            self.stop_live()
            self.line(f"{self.stamp()} all trials finished; the study (fixed ablations, baselines), summary, "
                      f"report and MLflow artifacts")

    def _running(self) -> int:
        return sum(len(v.running) for v in self.variants.values())

    def _remaining(self) -> str:
        if not self.finished or self.search_start is None:
            return "—"
        spent = time.time() - self.search_start
        return "~" + _duration(spent / self.finished * max(0, self.total - self.finished))

    def _render(self):
        from rich.table import Table

        table = Table(title=None, caption=f"elapsed {self.elapsed()} · {self.finished}/{self.total} trials · "
                      f"{self._running()} running · remaining {self._remaining()}", caption_justify="left")
        for column in ("variant", "search done", "running", "stopped early", "failed", "finals", "best objective"):
            table.add_column(column, justify="left" if column == "variant" else "right")
        for name, v in self.variants.items():
            table.add_row(name, f"{v.done}/{v.search_total}", str(len(v.running)), str(v.stopped_early),
                          str(v.failed + v.finals_failed), f"{v.finals_done}/{v.finals_total}",
                          f"{v.best:.4f}" if v.best is not None else "—")
        return table

    # -- the end
    def finish(self, summary_path: Path) -> None:
        self.stop_live()
        trials = sum(v.done + v.finals_done for v in self.variants.values())
        stopped = sum(v.stopped_early for v in self.variants.values())
        failed = sum(v.failed + v.finals_failed for v in self.variants.values())
        self.line(f"sweep done in {self.elapsed()}: {trials} trials ({stopped} stopped early, {failed} failed)")
        report = summary_path.parent / "report" / "report.md"
        self.line(f"summary: {summary_path}")
        self.line(f"report:  {report if report.exists() else report.parent}")
        if self.log_path:
            self.line(f"log:     {self.log_path}")
        for text in mlflow_lines(self.tracking_uri, self.mlflow.get("experiment_id"), self.mlflow.get("parent_run_id")):
            self.line(text)
        self.line(f"optuna:  optuna-dashboard {self.optuna_url} --host 127.0.0.1  (pip install optuna-dashboard)")


def runs_page(base_url: str, experiment_id: str | None) -> str:
    """MLflow 3.x: the experiment link lands on a GenAI overview; the runs are on this page."""
    base = base_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs" if experiment_id else base


def mlflow_lines(tracking_uri: str, experiment_id: str | None, parent_run_id: str | None) -> list[str]:
    """Where to look in MLflow: the URL of the runs page (a server) or the command that serves the
    run's database, and where to click."""
    click = ("         the sweep is the parent run; click + beside it for one child run per trial, "
             "click its name for the report images (Artifacts > report)")
    if tracking_uri.startswith(("http://", "https://")):
        lines = [f"mlflow:  {runs_page(tracking_uri, experiment_id)}"]
    else:
        lines = [f"mlflow:  mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000",
                 f"         then open {runs_page('http://127.0.0.1:5000', experiment_id)}"]
    return lines + [click]


# ----------------------------------------------------------------------------- ablations.evaluate
def timed_map(console: Console, split: str) -> Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]:
    """A ``map_fn`` for ``AdvCache.get_many`` that runs the requests one after another and prints
    one line per set (attack, split, seconds, cached or generated)."""

    def map_fn(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        results = []
        for item in items:
            since, start = time.time(), time.perf_counter()
            result = fn(item)
            console.adv_set(item.attack, split, time.perf_counter() - start, adv_set_origin(result, since))
            results.append(result)
        return results

    return map_fn
