"""The sweep's driver: prepare data and attacks once, search each variant, re-run the best over
seeds, write ``summary.json`` and the report, and record everything in MLflow.

``run.py`` parses the command line into a :class:`Plan`; :func:`run_sweep` executes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sweeps.spaces import Space

log = logging.getLogger(__name__)

STATE_FILE = "sweep.json"
EVENTS_FILE = "events.jsonl"
TIMINGS_FILE = "timings.json"
BEST_DIR = "best_defense"


class SweepError(ValueError):
    """The sweep cannot start or continue as asked; the message says what to do."""


@dataclass(frozen=True)
class Plan:
    """Everything a sweep run needs, resolved from the space and the command line."""

    space: Space
    smoke: bool
    run_dir: Path  # local: sweep.json, summary.json, optuna.db, mlflow.db, report/
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

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{(self.run_dir / 'optuna.db').resolve()}"

    @property
    def artifact_location(self) -> str | None:
        return (self.run_dir / "mlartifacts").resolve().as_uri() if self.tracking_uri.startswith("sqlite:") else None

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    def study_name(self, variant: str) -> str:
        return f"{self.space.name}{'-smoke' if self.smoke else ''}-{variant}"

    def describe(self) -> dict[str, Any]:
        """The resolved plan as JSON-friendly data (printed by --dry-run, logged on the parent run)."""
        s = self.space
        base = s.base_config()
        unknown = {
            "+".join(pair): [a for a in s.eval_attacks if a not in pair] for pair in s.known_attack_choices()
        }
        return {
            "space": s.name,
            "smoke": self.smoke,
            "description": s.description,
            "dataset": s.dataset,
            "data_root": str(self.data_root),
            "splits": {"n_train": s.n_train, "n_val": s.n_val, "n_test": s.n_test},
            "target_arch": s.target_arch or "default for the dataset",
            "attacks": {
                "budget": s.attack_budget,
                "train_split": list(s.train_attacks()),
                "val_and_test_splits": list(s.eval_attacks),
                "holdout": list(s.holdout_attacks),
                "unknown_per_known_choice": unknown,
            },
            "base_config": {k: v for k, v in _flat(base).items()} | {"train.device": self.device},
            "search": {
                v: {k: d.describe() for k, d in s.variant_search(v).items()} for v in s.variants
            },
            "objective": "val worst-case unknown-attack accuracy (max)",
            "variants": list(s.variants),
            "trials_per_variant": self.num_samples,
            "tpe_startup_trials": min(s.startup_trials, self.num_samples),
            "asha": {"max_t": base.train.epochs, "grace_period": s.grace_period, "reduction_factor": s.reduction_factor},
            "seeds": self.seeds,
            "total_trials": len(s.variants) * (self.num_samples + self.seeds),
            "resources": {
                "cpus_per_trial": self.cpus_per_trial,
                "gpus_per_trial": self.gpus_per_trial,
                "max_concurrent": self.max_concurrent or "cluster CPUs / cpus_per_trial",
                "address": self.address or "local Ray",
            },
            "run_dir": str(self.run_dir),
            "storage_path": self.storage_path,
            "tracking_uri": self.tracking_uri,
            "optuna_storage": self.optuna_url,
            "cache_dir": str(self.cache_dir),
        }


def _flat(config) -> dict[str, Any]:
    from addd.config import to_flat_dict

    return to_flat_dict(config)


# ----------------------------------------------------------------------------- state
@dataclass
class SweepState:
    """What a resumed sweep must find again; ``sweep.json`` in the run folder."""

    space: str
    smoke: bool
    parent_run_id: str | None = None
    created: float = field(default_factory=time.time)

    @classmethod
    def open(cls, plan: Plan) -> "SweepState":
        path = plan.run_dir / STATE_FILE
        if path.exists():
            if not plan.resume:
                raise SweepError(
                    f"{plan.run_dir} already holds a sweep; pass --resume to continue it or choose another --run-dir"
                )
            state = cls(**json.loads(path.read_text()))
            if (state.space, state.smoke) != (plan.space.name, plan.smoke):
                raise SweepError(
                    f"{plan.run_dir} holds a sweep of space {state.space!r} (smoke={state.smoke}), not "
                    f"{plan.space.name!r} (smoke={plan.smoke}); pick the matching --space/--smoke or another --run-dir"
                )
            return state
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        state = cls(space=plan.space.name, smoke=plan.smoke)
        state.save(plan.run_dir)
        return state

    def save(self, run_dir: Path) -> None:
        from addd.storage import atomic_write_bytes

        atomic_write_bytes(run_dir / STATE_FILE, json.dumps(dataclasses.asdict(self), indent=1).encode())


# ----------------------------------------------------------------------------- preparation
def _log_progress(attack: str, done: int, total: int) -> None:  # runs in Ray tasks
    logging.getLogger("sweeps.attacks").info("%s: %d/%d examples", attack, done, total)


def load_data(plan: Plan):
    """The space's dataset with its splits (first thing a sweep does: a wrong --data-root fails fast)."""
    from addd.data import load_dataset

    s = plan.space
    return load_dataset(s.dataset, plan.data_root, n_train=s.n_train, n_val=s.n_val, n_test=s.n_test, seed=0,
                        download=plan.download)


def prepare(plan: Plan, dataset, events_path: Path | None):
    """Get the target model and build every adversarial set through the cache (in parallel Ray
    tasks). Returns (TrialContext, target model)."""
    import torch

    from addd.advcache import AdvCache, AdvRequest
    from addd.target_models import get_target_model
    from sweeps import _ray
    from sweeps.trial import SplitSets, TrialContext

    s = plan.space
    target = get_target_model(dataset, arch=s.target_arch, cache_dir=plan.cache_dir,
                              device="cuda" if torch.cuda.is_available() else "cpu")
    target.model.cpu()  # trials and attack tasks move it to their own device
    cache = AdvCache(plan.cache_dir / "advcache")
    task_gpus = 1.0 if plan.device == "cuda" else 0.0  # attacks on GPU workers when trials use GPUs
    splits = {}
    for split, attacks in (("train", s.train_attacks()), ("val", s.eval_attacks), ("test", s.eval_attacks)):
        data = getattr(dataset, split)
        requests = [
            AdvRequest(s.dataset, split, data.x, data.y, target.model, attack, model_sha256=target.weights_sha256,
                       budget=s.attack_budget, seed=0, device=plan.device)
            for attack in attacks
        ]
        map_fn = lambda fn, items, split=split: _ray.parallel_map(  # noqa: E731
            fn, items, label=f"adversarial sets ({split})", num_gpus=task_gpus
        )
        splits[split] = SplitSets(data.x, data.y, cache.get_many(requests, map_fn=map_fn, progress=_log_progress))
    ctx = TrialContext(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        target_model=target.model,
        holdout_attacks=tuple(s.holdout_attacks),
        threads=max(1, int(plan.cpus_per_trial)),
        events_path=str(events_path) if events_path else None,
    )
    return ctx, target


# ----------------------------------------------------------------------------- MLflow recorder
class Recorder:
    """Driver-side trial hooks: one MLflow child run per trial, nested under the sweep's run."""

    _LOGGED_PREFIXES = ("loss/", "val/", "test/")
    _LOGGED_KEYS = ("objective", "epoch_seconds", "eval_seconds")

    def __init__(self, tracker, parent_id: str, ctx, grid_examples: int):
        self.tracker, self.parent_id, self.ctx, self.grid_examples = tracker, parent_id, ctx, grid_examples
        self.runs: dict[str, str] = {}
        self.done = 0  # trials completed in this driver process

    def _run(self, trial_id: str, config: dict[str, Any]) -> str:
        if trial_id not in self.runs:
            from sweeps.trial import split_config

            phase, variant, cfg = split_config(config)
            params = {"phase": phase, "variant": variant, **_flat(cfg)}
            self.runs[trial_id] = self.tracker.child(
                self.parent_id, trial_id, f"{phase}-{variant}-{trial_id}", params, {"phase": phase, "variant": variant}
            )
        return self.runs[trial_id]

    def started(self, trial_id: str, config: dict[str, Any]) -> None:
        self._run(trial_id, config)

    def result(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        metrics = {k: v for k, v in result.items() if k.startswith(self._LOGGED_PREFIXES) or k in self._LOGGED_KEYS}
        self.tracker.log_metrics(self._run(trial_id, config), metrics, step=int(result["epoch"]))

    def completed(self, trial_id: str, config: dict[str, Any], result: dict[str, Any], checkpoint) -> None:
        run_id = self._run(trial_id, config)
        self.done += 1
        log.info("trial %s (%s, %s) done after %s epoch(s): objective %.4f [%d done]", trial_id, config.get("phase"),
                 config.get("variant"), result.get("epoch"), result.get("objective", float("nan")), self.done)
        if checkpoint is not None:
            try:
                self._log_grid(run_id, config, checkpoint)
            except Exception:  # a missing picture must not stop the sweep
                log.exception("no image grid for trial %s", trial_id)
        self.tracker.finish(run_id, ok=True)

    def errored(self, trial_id: str, config: dict[str, Any]) -> None:
        self.tracker.finish(self._run(trial_id, config), ok=False)

    def _log_grid(self, run_id: str, config: dict[str, Any], checkpoint) -> None:
        import matplotlib.pyplot as plt
        import torch

        from addd.defense import load_defense
        from ablations.plots import image_grid
        from sweeps.trial import DEFENSE_FILE, split_config

        _, _, cfg = split_config(config)
        unknown = [a for a in self.ctx.val.adv if a not in cfg.known_attacks]
        attack = unknown[0]
        n = self.grid_examples
        with checkpoint.local_dir() as path:
            defense = load_defense(path / DEFENSE_FILE)
        x = self.ctx.val.x[:n]
        x_adv = self.ctx.val.adv[attack].x_adv[:n]
        with torch.no_grad():
            rows = {"original": x, f"{attack} (unknown)": x_adv, "restored": defense.restore(x_adv)}
        figure = image_grid(rows)
        self.tracker.log_figure(run_id, figure, "restored_grid.png")
        plt.close(figure)


# ----------------------------------------------------------------------------- the sweep
def _code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _schedule(plan: Plan):
    """One VariantSearch per ablation variant: its own seeded TPE study, the same budget."""
    from addd.config import ablation
    from sweeps import _optuna
    from sweeps.schedule import SweepSchedule, VariantSearch
    from sweeps.trial import OBJECTIVE

    s = plan.space
    base = s.base_config().replace(**{"train.device": plan.device})
    variants = []
    for variant in s.variants:
        search = s.variant_search(variant)
        flat = _flat(ablation(base, variant))
        paper_point = {k: v for k, v in _flat(base).items() if k in search and not isinstance(v, list)}
        if "known_attacks" in search:
            paper_point["known_attacks"] = "+".join(base.known_attacks)
        searcher = _optuna.make_searcher(
            url=plan.optuna_url,
            study_name=plan.study_name(variant),
            search=search,
            metric=OBJECTIVE,
            seed=plan.seed,
            startup_trials=min(s.startup_trials, plan.num_samples),
            first_point=paper_point,
        )
        constants = {k: v for k, v in flat.items() if k not in search}
        variants.append(VariantSearch(variant, searcher, constants, budget=plan.num_samples, seeds=plan.seeds))
    return SweepSchedule(variants, metric=OBJECTIVE)


def _slots(plan: Plan, resources: Mapping[str, float]) -> int:
    if plan.max_concurrent:
        return plan.max_concurrent
    by_cpu = int(resources.get("CPU", 1) // plan.cpus_per_trial)
    by_gpu = int(resources.get("GPU", 0) // plan.gpus_per_trial) if plan.gpus_per_trial else by_cpu
    return max(1, min(by_cpu, by_gpu))


def run_sweep(plan: Plan) -> Path:
    """Run (or resume) the sweep of ``plan``; returns the path of its ``summary.json``."""
    from ablations.report import build_report
    from addd.storage import atomic_write_bytes
    from sweeps import _mlflow, _optuna, _ray
    from sweeps.summary import SUMMARY_FILE, build_summary
    from sweeps.trial import DEFENSE_FILE, train_defense

    code_version = _code_version()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    dataset = load_data(plan)
    state = SweepState.open(plan)
    resources = _ray.init(plan.address, plan.num_cpus)
    slots = _slots(plan, resources)
    local = plan.address is None
    ctx, target = prepare(plan, dataset, plan.run_dir / EVENTS_FILE if local else None)
    timings["prepare"] = time.perf_counter() - t0

    tracker = _mlflow.Tracker(plan.tracking_uri, f"addd-{plan.space.name}", plan.artifact_location)
    if state.parent_run_id is None:
        header_tags = {
            "space": plan.space.name,
            "smoke": str(plan.smoke),
            "code_version": code_version,
            "data_fingerprint": dataset.fingerprint(),
            "target_model_sha256": target.weights_sha256,
        }
        state.parent_run_id = tracker.start_parent(f"{plan.study_name('sweep')}", header_tags, _plan_params(plan))
        state.save(plan.run_dir)
        plan_path = plan.run_dir / "plan.json"
        plan_path.write_text(json.dumps(plan.describe(), indent=1))
        tracker.log_artifact(state.parent_run_id, plan_path)
    parent = state.parent_run_id
    recorder = Recorder(tracker, parent, ctx, plan.space.grid_examples)

    s = plan.space
    job = _ray.TuneJob(
        name="sweep",
        storage_path=plan.storage_path,
        make_schedule=lambda: _schedule(plan),
        max_concurrent=slots,
        cpus_per_trial=plan.cpus_per_trial,
        gpus_per_trial=plan.gpus_per_trial,
        asha={"max_t": s.base_config().train.epochs, "grace_period": s.grace_period, "reduction_factor": s.reduction_factor},
    )
    start = time.perf_counter()
    outcomes = _ray.run(job, train_defense, ctx, recorder, plan.resume)
    timings["trials"] = time.perf_counter() - start
    search = {v: [o for o in outcomes if o.config.get("phase") == "search" and o.config.get("variant") == v] for v in s.variants}
    final = [o for o in outcomes if o.config.get("phase") == "final"]

    header = {
        "space": plan.space.name,
        "smoke": plan.smoke,
        "dataset": plan.space.dataset,
        "data_fingerprint": dataset.fingerprint(),
        "target_model": {"arch": target.arch, "sha256": target.weights_sha256, "path": str(target.path),
                         "clean_test_accuracy": target.clean_test_accuracy},
        "attack_budget": plan.space.attack_budget,
        "eval_attacks": list(plan.space.eval_attacks),
        "holdout_attacks": list(plan.space.holdout_attacks),
        "code_version": code_version,
        "mlflow_parent_run_id": parent,
    }
    best_artifact = f"{BEST_DIR}/{DEFENSE_FILE}"
    summary = build_summary(header=header, search=search, final=final, best_artifact=best_artifact)
    if summary["best"] is not None:
        best = next(o for o in final if o.trial_id == summary["best"]["trial_id"])
        best_dir = plan.run_dir / BEST_DIR
        shutil.rmtree(best_dir, ignore_errors=True)
        best.checkpoint.copy_to(best_dir)
        tracker.log_artifact(parent, best_dir / DEFENSE_FILE, BEST_DIR)
    summary_path = plan.run_dir / SUMMARY_FILE
    atomic_write_bytes(summary_path, json.dumps(summary, indent=1).encode())
    tracker.log_artifact(parent, summary_path)
    _log_parent_metrics(tracker, parent, summary)

    report_dir = plan.run_dir / "report"
    for path in build_report(summary, report_dir):
        tracker.log_artifact(parent, path, "report")
    for variant in plan.space.variants:
        for path in _optuna.save_study_plots(plan.optuna_url, plan.study_name(variant), report_dir):
            tracker.log_artifact(parent, path, "report")
    timings["total"] = time.perf_counter() - t0
    (plan.run_dir / TIMINGS_FILE).write_text(json.dumps({**timings, "slots": slots}, indent=1))
    tracker.finish(parent, ok=True)
    log.info("sweep done in %.0fs: %s", timings["total"], summary_path)
    return summary_path


def _plan_params(plan: Plan) -> dict[str, Any]:
    d = plan.describe()
    return {
        "space": d["space"], "dataset": d["dataset"], "smoke": d["smoke"], "variants": ",".join(d["variants"]),
        "trials_per_variant": d["trials_per_variant"], "seeds": d["seeds"], "attack_budget": d["attacks"]["budget"],
        "eval_attacks": ",".join(d["attacks"]["val_and_test_splits"]), "holdout": ",".join(d["attacks"]["holdout"]),
        **{f"base.{k}": v for k, v in d["base_config"].items()},
    }


def _log_parent_metrics(tracker, parent: str, summary: Mapping[str, Any]) -> None:
    metrics = {}
    for variant, entry in summary["variants"].items():
        metrics[f"{variant}/search/best_val_objective"] = entry["search"]["best_val_objective"]
        for name, stats in entry["test"].items():
            metrics[f"{variant}/test/{name}"] = stats["mean"]
    tracker.log_metrics(parent, metrics, step=0)

