"""What a person sees of a command: lines on the console, every log record in a log file.

The base of every console of the project: ``ablations.evaluate`` uses :class:`Console` as it is,
``sweeps.console.SweepConsole`` builds the sweep's live table on it. On a terminal, lines are
printed above an optional live display; not on a terminal (CI, ``> file``): plain lines, no
colour codes, no carriage returns.

Every log record (and warnings) goes to the log file (:meth:`Console.open_log`); ``-v`` shows it
live too. Log records wait in memory until the log file can be opened (a bad command line
writes nothing) and are then written there.

``rich`` draws the live display; nothing outside the consoles imports it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

OUR_PACKAGES = ("addd", "sweeps", "ablations")
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
        return record.name in self.console.progress_loggers

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
def duration(seconds: float | None) -> str:
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
    "rebuilt": "rebuilt in {seconds:.1f}s (its cache entry was damaged; the log file names it)",
    "waited": "loaded after waiting {seconds:.1f}s for another sweep that built it",
}


class _LogFile(logging.FileHandler):
    """The log file. A record it cannot write (its disk is full) is counted and dropped, instead of
    logging's "--- Logging error ---" and a traceback on the console for every record: the sweep
    ends with one line saying which folder filled (sweeps.run.full_folder)."""

    dropped = 0

    def handleError(self, record: logging.LogRecord) -> None:
        self.dropped += 1


class Console:
    """Lines for a person on ``stream``, and the log file beside them."""

    progress_loggers: tuple[str, ...] = ()  # loggers whose INFO records a person waits for (shown without -v)

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
        return duration(time.time() - self.start)

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


# ----------------------------------------------------------------------------- sequential adversarial sets
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
