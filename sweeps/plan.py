"""A sweep's plan: the space and the command line resolved into one frozen value.

Cheap to import (no torch, Ray, Optuna or MLflow), so ``--dry-run`` and bad-input checks answer
at once. ``run.py`` builds the :class:`Plan`; ``sweeps.driver.run_sweep`` executes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addd.errors import AdddError
from addd.runfolder import RunFolder, experiment_name
from sweeps.spaces import PARETO, Space


class SweepError(AdddError):
    """The sweep cannot start or continue as asked; the message says what to do."""


@dataclass(frozen=True)
class Plan:
    """Everything a sweep run needs, resolved from the space and the command line."""

    space: Space
    smoke: bool
    run_dir: Path  # local: sweep.json, summary.json, optuna.db, mlflow.db, report/, sweep.log
    storage_path: str  # Ray results (local folder or a URI such as s3://...)
    tracking_uri: str
    data_root: Path
    cache_dir: Path  # target models and adversarial sets (shared storage on a cluster)
    address: str | None
    seeds: int
    num_samples: int
    max_concurrent: int | None  # None: as many as the cluster's CPUs/GPUs allow
    cpus_per_trial: float
    gpus_per_trial: float
    seed: int = 0
    resume: bool = False
    num_cpus: int | None = None  # local Ray only
    download: bool = False  # fetch a missing dataset (torchvision's downloaders)
    optuna_storage: str | None = None  # an RDB URL Optuna accepts; None: sqlite in the run folder
    study: bool = True  # end with the ablation study (fixed ablations, baselines, statistics)

    @property
    def folder(self) -> RunFolder:
        """Every file and folder of the run (``addd.runfolder``)."""
        return RunFolder(self.run_dir)

    @property
    def optuna_url(self) -> str:
        return self.optuna_storage or self.folder.default_optuna_url

    @property
    def artifact_location(self) -> str | None:
        return self.folder.artifact_location(self.tracking_uri)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    @property
    def experiment(self) -> str:
        return experiment_name(self.space.name)

    @property
    def finals_per_variant(self) -> int:
        """The most seed re-runs a variant runs: seeds, times front_size for a pareto search (its front may be smaller)."""
        return self.seeds * (self.space.front_size if self.space.objective == PARETO else 1)

    def study_name(self, variant: str) -> str:
        return f"{self.space.name}{'-smoke' if self.smoke else ''}-{variant}"

    def describe_study(self) -> str:
        """What the study phase runs (sweeps.study), in words."""
        if not self.study:
            return "skipped (--no-study)"
        s = self.space
        parts = (["fixed ablations of the best full config"] if s.study_fixed_ablations else []) + \
            ["baselines no_defense / ape_gan / adv_training"] + \
            (["the paper's setting (App. D weights, first cached known-attack choice)"] if s.objective == PARETO else []) + \
            ["paired-bootstrap differences to full"] + \
            (["each front member against adv_training, paired"] if s.objective == PARETO else [])
        return ", ".join(parts) + " (over full's seeds)"

    def describe(self) -> dict[str, Any]:
        """The resolved plan as JSON-friendly data (printed by --dry-run, logged on the parent run)."""
        from addd.config import to_flat_dict

        s = self.space
        base = s.base_config()
        return {
            "space": s.name,
            "smoke": self.smoke,
            "description": s.description,
            "dataset": s.dataset,
            "data_root": str(self.data_root),
            "splits": s.split_sizes(),
            "target_arch": s.target_arch or "default for the dataset",
            "attacks": s.describe_attacks(),
            "base_config": to_flat_dict(base) | {"train.device": self.device},
            "search": {v: {k: d.describe() for k, d in s.variant_search(v).items()} for v in s.variants},
            "objective": s.describe_objective(),
            "variants": list(s.variants),
            "trials_per_variant": self.num_samples,
            "tpe_startup_trials": min(s.startup_trials, self.num_samples),
            "asha": s.asha() if s.objective != PARETO else "none: objective pareto runs every trial to its end (FIFO)",
            "seeds": self.seeds,
            "total_trials": len(s.variants) * (self.num_samples + self.finals_per_variant),  # pareto: at most
            "finalists": s.describe_finalists(),
            "study": self.describe_study(),
            "resources": {
                "cpus_per_trial": self.cpus_per_trial,
                "gpus_per_trial": self.gpus_per_trial,
                "max_concurrent": self.max_concurrent or "cluster CPUs / cpus_per_trial",
                "address": self.address or "local Ray (127.0.0.1 only)",
            },
            "run_dir": str(self.run_dir),
            "storage_path": self.storage_path,
            "tracking_uri": self.tracking_uri,
            "optuna_storage": self.optuna_url,
            "cache_dir": str(self.cache_dir),
        }

    def params(self) -> dict[str, Any]:
        """The plan as flat MLflow params of the sweep's parent run."""
        d, s = self.describe(), self.space
        return {
            "space": d["space"], "dataset": d["dataset"], "smoke": d["smoke"], "variants": ",".join(d["variants"]),
            "trials_per_variant": d["trials_per_variant"], "seeds": d["seeds"], "attack_budget": d["attacks"]["budget"],
            "objective": s.objective, "probe_n": s.probe_n, "probe_steps": s.probe_steps,
            "eval_attacks": ",".join(d["attacks"]["val_and_test_splits"]), "holdout": ",".join(d["attacks"]["holdout"]),
            **{f"base.{k}": v for k, v in d["base_config"].items()},
        }
