"""Driver-side trial hooks: one MLflow child run per trial, nested under the sweep's parent run.

The recorder only records: trials compute their figures and save their few restored images and
their robustness curve with their last checkpoint; here they are rendered and uploaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from sweeps._mlflow import SYSTEM_PREFIX
from sweeps.trialspec import EPOCH, FAILURE, OBJECTIVE, TrialSpec

log = logging.getLogger(__name__)

_LOGGED_PREFIXES = ("loss/", "val/", "test/", "adaptive/", SYSTEM_PREFIX)
_LOGGED_KEYS = (OBJECTIVE, "epoch_seconds", "eval_seconds")


class Recorder:
    """Implements ``sweeps._ray.TrialListener`` on a :class:`sweeps._mlflow.Tracker`."""

    def __init__(self, tracker, parent_id: str, on_event: Callable[[str, TrialSpec, dict], None] | None = None):
        self.tracker, self.parent_id = tracker, parent_id
        self.on_event = on_event or (lambda event, spec, result: None)
        self.runs: dict[str, str] = {}

    def _run(self, trial_id: str, config: dict[str, Any]) -> str:
        if trial_id not in self.runs:
            spec = TrialSpec.parse(config)
            self.runs[trial_id] = self.tracker.child(
                self.parent_id, trial_id, spec.run_name(trial_id), spec.child_params(), spec.tags()
            )
        return self.runs[trial_id]

    def started(self, trial_id: str, config: dict[str, Any]) -> None:
        self._run(trial_id, config)
        self.on_event("started", TrialSpec.parse(config), {})

    def result(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        metrics = {k: v for k, v in result.items() if k.startswith(_LOGGED_PREFIXES) or k in _LOGGED_KEYS}
        self.tracker.log_metrics(self._run(trial_id, config), metrics, step=int(result.get(EPOCH, 0)))
        self.on_event("result", TrialSpec.parse(config), result)

    def completed(self, trial_id: str, config: dict[str, Any], result: dict[str, Any], checkpoint) -> None:
        run_id = self._run(trial_id, config)
        spec = TrialSpec.parse(config)
        if checkpoint is not None:
            try:
                self._upload_from_checkpoint(run_id, checkpoint)
            except Exception:  # a missing picture must not stop the sweep  # noqa: BLE001
                log.exception("no images for trial %s", trial_id)
        failure = result.get(FAILURE)
        if failure:
            self.tracker.set_tags(run_id, {"failure_reason": str(failure)[:5000]})
        self.tracker.finish(run_id, ok=not failure)
        self.on_event("failed" if failure else "completed", spec, result)

    def errored(self, trial_id: str, config: dict[str, Any], error: str | None = None) -> None:
        run_id = self._run(trial_id, config)
        if error:
            self.tracker.set_tags(run_id, {"failure_reason": error[:5000]})
        self.tracker.finish(run_id, ok=False)
        self.on_event("failed", TrialSpec.parse(config), {FAILURE: error})

    def _upload_from_checkpoint(self, run_id: str, checkpoint) -> None:
        import matplotlib.pyplot as plt

        from ablations.plots import restored_grid
        from addd.storage import load_tensors
        from addd.runfolder import CURVE_FILE, IMAGES_FILE

        with checkpoint.local_dir() as path:
            images = Path(path) / IMAGES_FILE
            if images.exists():
                tensors, _ = load_tensors(images)
                figure = restored_grid(tensors)
                self.tracker.log_figure(run_id, figure, "restored_grid.png")
                plt.close(figure)
            curve = Path(path) / CURVE_FILE
            if curve.exists():
                self.tracker.log_artifact(run_id, curve)
