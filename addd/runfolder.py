"""The layout of a sweep's run folder: the one place that names its files and folders.

A run folder holds what a sweep (``python sweeps/run.py``) and its study (``python -m
sweeps.study``) write, and what ``ablations`` reads afterwards::

    sweep.json            the sweep's state (space, smoke, MLflow parent run): --resume finds it
    plan.json             the resolved plan (also logged on the parent run)
    study.json            the parent run of a study of a given config (no sweep)
    summary.json          every figure; the report is rendered from it
    events.jsonl          trial starts, epochs and ends (local Ray only)
    timings.json          seconds per phase
    sweep.log             every log record
    optuna.db             the Optuna studies (when no --optuna-storage is given)
    mlflow.db, mlartifacts/            the MLflow store (when no --tracking-uri is given)
    mlflow_journal.jsonl, mlflow_journal_files/   MLflow calls the server missed
    best_defense/defense.safetensors   the best final's defense
    finals/<name>-seed<k>/             one final: metrics.json (the study's), per_example.safetensors,
                                       restored.safetensors, robustness_curve.csv
    report/               report.md, CSV tables and figures

Pure standard library: ``addd``, ``ablations`` and ``sweeps`` all import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# files a trial checkpoint and a finals/<name>-seed<k>/ folder hold
DEFENSE_FILE = "defense.safetensors"
PER_EXAMPLE_FILE = "per_example.safetensors"  # test-split correctness per example, for paired statistics
IMAGES_FILE = "restored.safetensors"  # a few original / adversarial / restored images per attack
CURVE_FILE = "robustness_curve.csv"
METRICS_FILE = "metrics.json"  # a study final's figures; written last: its presence means that final is done
FINAL_FILES = (CURVE_FILE, PER_EXAMPLE_FILE, IMAGES_FILE)  # what the sweep keeps of every final trial

MLFLOW_JOURNAL_FILE = "mlflow_journal.jsonl"  # every MLflow call that failed, in order, for --sync-mlflow
MLFLOW_JOURNAL_FILES_DIR = "mlflow_journal_files"  # copies of artifacts (figures, curves) the server missed

# folders, also the artifact paths on the MLflow parent run
FINALS_DIR = "finals"
REPORT_DIR = "report"
BEST_DIR = "best_defense"
SEED_SEPARATOR = "-seed"


def experiment_name(space: str) -> str:
    """The MLflow experiment of every sweep and study of ``space``."""
    return f"addd-{space}"


def final_folder(name: str, seed: int) -> str:
    """``<name>-seed<k>``: the folder of one final under ``finals/`` (name: a variant, fixed-<v> or a baseline)."""
    return f"{name}{SEED_SEPARATOR}{seed}"


def parse_final_folder(folder: str) -> tuple[str, int] | None:
    """(name, seed) of a ``<name>-seed<k>`` folder name, or None if it is not one."""
    name, sep, seed = folder.rpartition(SEED_SEPARATOR)
    return (name, int(seed)) if sep and name and seed.isdigit() else None


@dataclass(frozen=True)
class RunFolder:
    """Every path of one run folder (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- state and records
    @property
    def state(self) -> Path:
        return self.root / "sweep.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def study_state(self) -> Path:
        return self.root / "study.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def log(self) -> Path:
        return self.root / "sweep.log"

    # -- stores
    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def mlflow_journal(self) -> Path:
        return self.root / MLFLOW_JOURNAL_FILE

    @property
    def mlflow_journal_files(self) -> Path:
        return self.root / MLFLOW_JOURNAL_FILES_DIR

    @property
    def ray_results(self) -> Path:
        return self.root / "ray"

    # -- outputs
    @property
    def best_dir(self) -> Path:
        return self.root / BEST_DIR

    @property
    def best_defense(self) -> Path:
        return self.best_dir / DEFENSE_FILE

    @property
    def finals(self) -> Path:
        return self.root / FINALS_DIR

    def final(self, name: str, seed: int) -> Path:
        return self.finals / final_folder(name, seed)

    def finals_of(self, name: str, file: str) -> dict[int, Path]:
        """seed -> ``finals/<name>-seed<seed>/<file>`` for each such file that exists."""
        found = {}
        for path in self.finals.glob(f"{name}{SEED_SEPARATOR}*/{file}"):
            parsed = parse_final_folder(path.parent.name)
            if parsed is not None and parsed[0] == name:
                found[parsed[1]] = path
        return found

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def report_md(self) -> Path:
        return self.report / "report.md"

    # -- what the stores are reached by when the command line names none
    @property
    def default_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db.resolve()}"

    @property
    def default_optuna_url(self) -> str:
        return f"sqlite:///{self.optuna_db.resolve()}"

    def artifact_location(self, tracking_uri: str) -> str | None:
        """Where MLflow keeps artifacts: ``mlartifacts/`` beside a SQLite store, else the server decides."""
        return self.mlflow_artifacts.resolve().as_uri() if tracking_uri.startswith("sqlite:") else None

    @property
    def best_artifact(self) -> str:
        """The best defense's path relative to the run folder (and on the parent run)."""
        return f"{BEST_DIR}/{DEFENSE_FILE}"
