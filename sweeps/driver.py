"""The sweep's driver: prepare → search → publish.

1. prepare: the dataset, the run folder's state, Ray, the target model and every oblivious
   adversarial set (once, through the shared cache), the MLflow parent run;
2. search: one Tuner runs every variant's search and its seed re-runs (``sweeps.schedule``);
   finals attack their defense adaptively and draw its robustness curve;
3. publish: ``summary.json`` (always written), the best defense, the study (``sweeps.study``,
   on what prepare built), the report, MLflow.

``run.py`` builds the :class:`sweeps.plan.Plan`; :func:`run_sweep` executes it.
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

from addd.figures import WORST_UNKNOWN, figure
from addd.runfolder import BEST_DIR, FINAL_FILES, REPORT_DIR, RunFolder
from sweeps.plan import Plan, SweepError

WORST_UNKNOWN_TEST = figure(WORST_UNKNOWN).trial_key("test")
log = logging.getLogger(__name__)


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
        path = plan.folder.state
        if path.exists():
            if not plan.resume:
                raise SweepError(
                    f"{plan.run_dir} already holds a sweep; pass --resume to continue it or choose another --run-dir"
                )
            try:
                state = cls(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                raise SweepError(f"{path} is not a sweep's state file ({exc}); choose another --run-dir") from None
            if (state.space, state.smoke) != (plan.space.name, plan.smoke):
                raise SweepError(
                    f"{plan.run_dir} holds a sweep of space {state.space!r} (smoke={state.smoke}), not "
                    f"{plan.space.name!r} (smoke={plan.smoke}); pick the matching --space/--smoke or another --run-dir"
                )
            return state
        if plan.resume:
            raise SweepError(f"nothing to resume in {plan.run_dir} (no {path.name}); drop --resume to start a new sweep "
                             f"or pass the --run-dir of an interrupted one")
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        state = cls(space=plan.space.name, smoke=plan.smoke)
        state.save(plan.run_dir)
        return state

    def save(self, run_dir: Path) -> None:
        from addd.storage import atomic_write_bytes

        atomic_write_bytes(RunFolder(run_dir).state, json.dumps(dataclasses.asdict(self), indent=1).encode())


@dataclass
class Prepared:
    """What the search and the publication share."""

    state: SweepState
    dataset: Any
    target: Any
    ctx: Any  # sweeps.trial.TrialContext
    tracker: Any  # sweeps._mlflow.Tracker
    slots: int
    code_version: str
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase (timings.json)
    breakdown: dict[str, Any] = field(default_factory=dict)  # timings.json's per-part and per-attack seconds

    @property
    def parent(self) -> str:
        return self.state.parent_run_id


# ----------------------------------------------------------------------------- prepare
def load_data(plan: Plan):
    """The space's dataset with its splits (first thing a sweep does: a wrong --data-root fails fast)."""
    from sweeps.trial import sweep_dataset

    return sweep_dataset(plan.space, plan.data_root, download=plan.download)


def _log_progress(attack: str, done: int, total: int) -> None:  # runs in Ray tasks
    logging.getLogger("sweeps.attacks").info("%s: %d/%d examples", attack, done, total)


def _check_shared_storage(plan: Plan) -> None:
    """On a multi-node cluster every node writes adversarial sets into --cache-dir and trial
    checkpoints into a local --storage-path: each must be one shared folder, or sets are
    regenerated per node and checkpoints lost to the driver (best defense, --resume)."""
    from sweeps import _ray

    folders = {"--cache-dir": plan.cache_dir}
    if "://" not in plan.storage_path:
        folders["--storage-path"] = Path(plan.storage_path)
    for flag, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f".visible-{time.time_ns()}"
        marker.write_text("written by the sweep's driver\n")
        try:
            missing = _ray.nodes_without(marker)
        finally:
            marker.unlink(missing_ok=True)
        if missing:
            raise SweepError(f"{flag} {folder} is not visible on node(s) {', '.join(missing)}; put it on storage "
                             f"every node mounts at the same path (NFS, EFS, ...)"
                             + (" or use an s3:// URI" if flag == "--storage-path" else ""))


def build_sets(plan: Plan, dataset, task_gpus: float, on_event=None, timings: dict | None = None):
    """The target model and every adversarial set of the plan, through the shared cache (parallel
    Ray tasks; an ``adv_set`` event as each one is ready). Returns (target model entry, {split: SplitSets}).
    ``timings`` (if given) receives ``target_model`` seconds, ``sets`` (split -> wall seconds) and
    ``adv_sets`` (split -> attack -> {seconds in its task, origin})."""
    import torch

    from ablations.console import adv_set_origin
    from addd.advcache import AdvCache
    from addd.target_models import get_target_model
    from sweeps import _ray
    from sweeps.trial import cached_sets, sweep_requests

    s = plan.space
    timings = {} if timings is None else timings
    start = time.perf_counter()
    # the plan's device: CPU and GPU training give different weights, hence different cache keys
    target = get_target_model(dataset, arch=s.target_arch, cache_dir=plan.cache_dir,
                              device="cuda" if plan.device == "cuda" and torch.cuda.is_available() else "cpu")
    target.model.cpu()  # trials and attack tasks move it to their own device
    timings["target_model"] = time.perf_counter() - start
    split_seconds, per_attack = timings.setdefault("sets", {}), timings.setdefault("adv_sets", {})

    def map_for(split: str):  # called as each split starts: sets written after `since` were generated
        since, split_start = time.time(), time.perf_counter()

        def on_done(request, adv_set, seconds):
            origin = adv_set_origin(adv_set, since)
            per_attack.setdefault(split, {})[request.attack] = {"seconds": round(seconds, 3), "origin": origin}
            split_seconds[split] = time.perf_counter() - split_start
            _emit(on_event, "adv_set", {"attack": request.attack, "split": split, "seconds": seconds, "origin": origin})

        return lambda fn, items: _ray.parallel_map(fn, items, label=f"adversarial sets ({split})", num_gpus=task_gpus,
                                                   on_done=on_done)

    requests = sweep_requests(s, dataset, target, device=plan.device)
    return target, cached_sets(dataset, AdvCache.under(plan.cache_dir), requests, map_for=map_for, progress=_log_progress)


def _emit(on_event, event: str, data: dict) -> None:
    """A driver event for the console (``sweeps.console.SweepConsole.on_event``; spec None)."""
    if on_event is not None:
        on_event(event, None, data)


def prepare(plan: Plan, on_event=None) -> Prepared:
    from sweeps import _mlflow, _ray
    from sweeps.trial import build_context

    t0 = time.perf_counter()
    code_version = _code_version()
    dataset = load_data(plan)
    tracker = _mlflow.Tracker(plan.tracking_uri, plan.experiment, plan.artifact_location,  # fails fast if unreachable
                              journal=plan.folder.mlflow_journal)  # later failures: journalled
    state = SweepState.open(plan)
    _emit(on_event, "run_dir", {"path": str(plan.run_dir)})
    resources = _ray.init(plan.address, plan.num_cpus)
    if plan.gpus_per_trial > resources.get("GPU", 0):
        raise SweepError(f"--gpus-per-trial {plan.gpus_per_trial:g} but the Ray cluster has {resources.get('GPU', 0):g} GPU(s); "
                         f"pass --gpus-per-trial 0 (CPU) or join a cluster with GPUs (--address)")
    if plan.address is not None:
        _check_shared_storage(plan)
    # attack tasks pack onto the GPUs like trials (a whole GPU each would build the sets one by one)
    parts: dict[str, Any] = {}
    target, splits = build_sets(plan, dataset, task_gpus=plan.gpus_per_trial, on_event=on_event, timings=parts)
    s = plan.space
    context_start = time.perf_counter()
    ctx = build_context(s, splits, target.model, threads=plan.cpus_per_trial,
                        events_path=str(plan.folder.events) if plan.address is None else None)
    parts["context"] = time.perf_counter() - context_start  # M_t's defense-independent figures, once
    if state.parent_run_id is None:
        tags = {"space": s.name, "smoke": str(plan.smoke), "code_version": code_version,
                "data_fingerprint": dataset.fingerprint(), "target_model_sha256": target.weights_sha256,
                _mlflow.RUN_DIR_TAG: str(plan.run_dir)}  # python -m sweeps.study --sweep <run id> finds the folder
        state.parent_run_id = tracker.start_parent(plan.study_name("sweep"), tags, plan.params())
        state.save(plan.run_dir)
        plan_path = plan.folder.plan
        plan_path.write_text(json.dumps(plan.describe(), indent=1))
        tracker.log_artifact(state.parent_run_id, plan_path)
    _emit(on_event, "mlflow", {"experiment_id": tracker.experiment_id, "parent_run_id": state.parent_run_id})
    prepared = Prepared(state, dataset, target, ctx, tracker, _slots(plan, resources), code_version)
    prepared.timings["prepare"] = time.perf_counter() - t0
    prepared.breakdown["prepare"] = parts
    return prepared


def _slots(plan: Plan, resources: Mapping[str, float]) -> int:
    if plan.max_concurrent:
        return plan.max_concurrent
    by_cpu = int(resources.get("CPU", 1) // plan.cpus_per_trial)
    by_gpu = int(resources.get("GPU", 0) // plan.gpus_per_trial) if plan.gpus_per_trial else by_cpu
    return max(1, min(by_cpu, by_gpu))


def _code_version() -> str:
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5, cwd=here)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------- search
def search(plan: Plan, prepared: Prepared, on_event=None) -> list:
    """Every variant's search and seed re-runs in one Tuner run; returns the trial outcomes."""
    from sweeps import _optuna, _ray
    from sweeps.recorder import Recorder
    from sweeps.schedule import build_schedule
    from sweeps.trial import train_defense
    from sweeps.spaces import PARETO
    from sweeps.trialspec import PARETO_KEYS, search_group

    s = plan.space
    pareto = s.objective == PARETO

    def make_searcher(variant, search_space, first_point):
        return _optuna.TpeSearcher(url=plan.optuna_url, study_name=plan.study_name(variant), search=search_space,
                                   seed=plan.seed, startup_trials=min(s.startup_trials, plan.num_samples),
                                   first_point=first_point, objectives=len(PARETO_KEYS) if pareto else 1)

    job = _ray.TuneJob(
        name="sweep",
        storage_path=plan.storage_path,
        make_schedule=lambda: build_schedule(plan, make_searcher),
        group_of=search_group,
        max_concurrent=prepared.slots,
        cpus_per_trial=plan.cpus_per_trial,
        gpus_per_trial=plan.gpus_per_trial,
        asha=s.asha(),
        early_stopping=not pareto,  # README: a scalar would prune the front's far ends
    )
    start = time.perf_counter()
    recorder = Recorder(prepared.tracker, prepared.parent, on_event)
    _emit(on_event, "search", {"slots": prepared.slots})
    outcomes = _ray.run(job, train_defense, prepared.ctx, recorder, plan.resume)
    prepared.timings["trials"] = time.perf_counter() - start
    return outcomes


# ----------------------------------------------------------------------------- publish
def summary_header(plan: Plan, prepared: Prepared) -> dict[str, Any]:
    """The sweep's summary header: ``sweeps.summary.summary_header`` plus the code and the parent run."""
    from sweeps.summary import summary_header as header

    return {**header(plan.space, plan.smoke, prepared.dataset, prepared.target, plan.cache_dir),
            "code_version": prepared.code_version, "mlflow_parent_run_id": prepared.parent}


def publish(plan: Plan, prepared: Prepared, outcomes: list) -> Path:
    """summary.json (always), the best defense, the Optuna plots, the study (fixed ablations,
    baselines, statistics: ``sweeps.study``, on what prepare built), the report and the parent
    run's figures."""
    from addd.storage import atomic_write_bytes
    from sweeps.summary import build_summary
    from sweeps.trialspec import FINAL, SEARCH

    s, tracker, parent, folder = plan.space, prepared.tracker, prepared.parent, plan.folder
    searches = {v: [o for o in outcomes if o.spec.phase == SEARCH and o.spec.variant == v] for v in s.variants}
    finals = [o for o in outcomes if o.spec.phase == FINAL]
    summary = build_summary(header=summary_header(plan, prepared), search=searches, final=finals,
                            best_artifact=folder.best_artifact)
    _collect_final_files(finals, folder, summary)
    if summary["best"] is not None:
        best = next(o for o in finals if o.trial_id == summary["best"]["trial_id"])
        shutil.rmtree(folder.best_dir, ignore_errors=True)
        best.checkpoint.copy_to(folder.best_dir)
        tracker.log_artifact(parent, folder.best_defense, BEST_DIR)
    atomic_write_bytes(folder.summary, json.dumps(summary, indent=1).encode())
    tracker.log_artifact(parent, folder.summary)
    tracker.log_metrics(parent, parent_metrics(summary), step=0)
    _publish_optuna_plots(plan, tracker, parent)
    start = time.perf_counter()
    _study_or_report(plan, prepared, summary)
    prepared.timings["study"] = time.perf_counter() - start
    prepared.timings["total"] = sum(prepared.timings.values())
    from sweeps.timings import trial_breakdown

    breakdown = {**prepared.breakdown, **trial_breakdown(folder, finals)}
    folder.timings.write_text(json.dumps({**prepared.timings, "slots": prepared.slots, "breakdown": breakdown}, indent=1))
    tracker.finish(parent, ok=True)
    return folder.summary


def _publish_optuna_plots(plan: Plan, tracker, parent: str) -> None:
    from sweeps import _optuna

    paths = []
    for variant in plan.space.variants:
        paths += _optuna.save_study_plots(plan.optuna_url, plan.study_name(variant), plan.folder.report, variant)
    for path in paths:
        tracker.log_artifact(parent, path, REPORT_DIR)


def _study_or_report(plan: Plan, prepared: Prepared, summary: Mapping[str, Any]) -> None:
    """The study on what prepare built (it writes the report), or the report alone."""
    from ablations.report import build_report
    from sweeps import _ray
    from sweeps.study import run_study

    tracker, parent, folder = prepared.tracker, prepared.parent, plan.folder
    if plan.study and summary["variants"].get("full", {}).get("best_config") is not None:
        # fixed ablations, baselines, paired statistics and the report: the same code as `python -m sweeps.study`
        run_study(plan.run_dir, tracker=tracker, parent_run_id=parent, data_root=plan.data_root, ctx=prepared.ctx,
                  map_fn=lambda fn, jobs: _ray.parallel_map(fn, jobs, label="study", num_gpus=plan.gpus_per_trial,
                                                            on_done=_study_done))
        return
    if plan.study:
        log.warning("no fixed ablations or baselines: variant 'full' has no best config (see summary.json)")
    for path in build_report(summary, folder.report, finals_dir=folder.finals):
        tracker.log_artifact(parent, path, REPORT_DIR)


def _study_done(job, result, seconds: float) -> None:
    """A study final finished in its Ray task: the line a person waits for (sweeps.console shows it)."""
    record, _ = result
    logging.getLogger("sweeps.study").info("study: %s seed %d done in %.0fs (worst.unknown %.3f)", job.name, job.seed,
                                           seconds, record["metrics"].get(WORST_UNKNOWN_TEST, float("nan")))


def _collect_final_files(finals: list, folder: RunFolder, summary: Mapping[str, Any]) -> None:
    """What each final trial saved with its checkpoint (robustness curve, per-example correctness,
    restored images) under ``finals/<variant>-seed<k>/``: the study and the report read it there.
    A pareto variant runs several front members per seed: ``<variant>-seed<k>`` holds its best
    member's (the finals of the variant's summary entry), ``<variant>-front<m>-seed<k>`` the others'."""
    for o in finals:
        if o.checkpoint is None:
            continue
        kept = {run["trial_id"] for run in summary["variants"].get(o.spec.variant, {}).get("seeds", [])}
        name = o.spec.variant if o.spec.front_member is None or o.trial_id in kept else \
            f"{o.spec.variant}-front{o.spec.front_member}"
        dest = folder.final(name, o.spec.seed)
        dest.mkdir(parents=True, exist_ok=True)
        with o.checkpoint.local_dir() as path:
            for name in FINAL_FILES:
                if (Path(path) / name).exists():
                    shutil.copyfile(Path(path) / name, dest / name)


def parent_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The parent run's figures, each name saying its threat model:
    ``<variant>/test/oblivious/<attack>``, ``<variant>/test/undefended/<attack>``, ``<variant>/adaptive/<name>``,
    ``<variant>/val/adaptive/probe.pgd_worst`` (the seed re-runs' probe), ``<variant>/search/best_val_probe``
    (spelled by ``addd.figures``)."""
    from addd.figures import parent_metrics as figure_metrics

    metrics: dict[str, float] = {}
    for variant, entry in summary["variants"].items():
        if entry["search"].get("best_val_objective") is not None:
            metrics[f"{variant}/search/best_val_objective"] = entry["search"]["best_val_objective"]
        metrics[f"{variant}/search/stopped_early"] = entry["search"]["stopped_early"]
        metrics.update(figure_metrics(variant, entry))  # test, adaptive and val (the seed re-runs' probe)
        if entry["search"].get("best_val_probe") is not None:
            metrics[f"{variant}/search/best_val_probe"] = entry["search"]["best_val_probe"]
        metrics.update(front_metrics(variant, entry))
    return metrics


def front_metrics(variant: str, entry: Mapping[str, Any]) -> dict[str, float]:
    """A pareto variant's front on the parent run: each member m's figures as ``<variant>-front<m>/...``
    (spelled like a defense's), and ``<variant>/front/hypervolume_{val,test}`` and ``.../size``."""
    from addd.figures import parent_metrics as figure_metrics
    from sweeps.trialspec import front_defense

    front = entry.get("front") or ()
    metrics: dict[str, float] = {f"{variant}/front/size": len(front)} if front else {}
    for member in front:
        metrics.update(figure_metrics(front_defense(variant, member), member))
    for split in ("val", "test"):
        value = (entry.get("front_hypervolume") or {}).get(split)
        if value is not None:
            metrics[f"{variant}/front/hypervolume_{split}"] = value
    return metrics


# ----------------------------------------------------------------------------- the sweep
def run_sweep(plan: Plan, on_event=None) -> Path:
    """Run (or resume) the sweep of ``plan``; returns the path of its ``summary.json``."""
    prepared = prepare(plan, on_event)
    outcomes = search(plan, prepared, on_event)
    _emit(on_event, "publish", {})
    summary_path = publish(plan, prepared, outcomes)
    log.info("sweep done in %.0fs: %s", prepared.timings["total"], summary_path)
    return summary_path
