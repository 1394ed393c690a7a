"""What a person sees of a sweep: the console of ``python sweeps/run.py``, on the base console
of :mod:`ablations.console` (logging, the log file, lines, adversarial-set lines).

On a terminal: a live table per ablation variant (search trials done / running / stopped early /
failed, finals done, best objective so far) with elapsed and remaining time, and one line above it
per adversarial set as it is built. Not on a terminal (CI, ``> file``): plain lines, no colour
codes, no carriage returns: one per adversarial set and one per finished trial.

Everything else (every log record, Ray's driver and worker output, warnings) goes to the log file
in the run folder (``sweep.log``); ``-v`` shows it live too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ablations.console import Console, duration
from addd.runfolder import RunFolder
from sweeps.trialspec import EPOCH, FAILURE, SEARCH, ended_early

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

    progress_loggers = ("sweeps.study",)  # the study after the search: minutes per final

    def begin(self, plan) -> None:
        s = plan.space
        self.variants = {v: VariantProgress(plan.num_samples, plan.finals_per_variant) for v in s.variants}
        self.total = len(s.variants) * (plan.num_samples + plan.finals_per_variant)  # pareto: at most (the front's size)
        self.search_start: float | None = None
        self.finished = 0
        self.mlflow: dict[str, Any] = {}
        self.run_dir = plan.run_dir
        self.tracking_uri = plan.tracking_uri
        self.optuna_url = plan.optuna_url
        self.line(f"sweep {s.name}{' (smoke)' if plan.smoke else ''}: {len(s.variants)} variants "
                  f"({', '.join(s.variants)}) x {plan.num_samples} search + {'up to ' if plan.finals_per_variant != plan.seeds else ''}"
                  f"{plan.finals_per_variant} final trials = {self.total}")
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
            path = self.open_log(RunFolder(Path(data["path"])).log)
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
        return "~" + duration(spent / self.finished * max(0, self.total - self.finished))

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
        report = RunFolder(summary_path.parent).report_md
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
