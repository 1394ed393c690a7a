"""The one place that talks to MLflow: a parent run per sweep, a child run per trial.

Only the driver writes (through ``MlflowClient``), so a SQLite tracking store is safe. Children
nest under the parent in the UI through the ``mlflow.parentRunId`` tag; each carries the tag
``addd.trial_key`` so a resumed sweep finds its runs again instead of making new ones.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "addd.trial_key"
_MAX_PARAM = 6000  # MLflow's param value limit (chars)


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


class Tracker:
    """A thin wrapper over ``MlflowClient`` with the few operations the sweep needs."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment, artifact_location=artifact_location)
        )

    # -- runs
    def start_parent(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def child(self, parent_id: str, key: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """The child run for ``key`` under ``parent_id``: the existing one (resume) or a new one."""
        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{key}'",
            max_results=1,
        )
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={PARENT_TAG: parent_id, TRIAL_TAG: key, **tags}
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def finish(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    # -- data
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)[:_MAX_PARAM]) for k, v in params.items() if k not in have]
        for begin in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[begin : begin + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(_metric_name(k), float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        for begin in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[begin : begin + 500])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.client.log_figure(run_id, figure, name)


def _metric_name(key: str) -> str:
    # MLflow accepts letters, digits, _ - . / and spaces; Ray's keys already fit.
    return key.replace(":", "_")
