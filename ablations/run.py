"""Run the ablation study and write its report.

After a sweep (what it lacks: fixed ablations, baselines, their adaptive figures, intervals)::

    python -m ablations.run --sweep runs/digits_ablation
    python -m ablations.run --sweep <MLflow parent run id> --tracking-uri sqlite:///runs/digits_ablation/mlflow.db

Without a search, ablating a given config (flat DefenseConfig keys as JSON, e.g. the paper's
Appendix D weights ``{"loss.lambda_prior": 1e-4, "loss.lambda_dp": 1, "loss.lambda_cls": 1e-3,
"loss.theta_mse": 1000, "known_attacks": ["PGDu", "PGDt"]}``)::

    python -m ablations.run --space digits_ablation --config paper.json [--smoke] [--seeds 3]

This trains ``full`` from the config over the seeds (evaluated like a sweep's final), then the
fixed ablations and baselines, then the report. Writes ``<run>/summary.json`` and
``<run>/report/``, and logs both on the MLflow parent run.

A run id is resolved to its run folder through the parent run's tag ``addd.run_dir`` if it has
one, else through its ``plan.json`` artifact (every sweep logs it; its ``run_dir`` field); the
tracking URI is ``--tracking-uri`` or $MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from addd.errors import AdddError

log = logging.getLogger("ablations.run")
RUN_DIR_TAG = "addd.run_dir"


class RunError(AdddError):
    """The command line does not name something the study can run on; the message says what to do."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ablations.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", help="a finished sweep: its run folder or its MLflow parent run id")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's, or sqlite:///<run>/mlflow.db)")
    p.add_argument("--space", help="with --config: the space whose data, target model and attacks to use")
    p.add_argument("--config", type=Path, help="with --space: JSON of flat DefenseConfig keys to ablate (no search)")
    p.add_argument("--smoke", action="store_true", help="with --space: the space's tiny smoke version")
    p.add_argument("--seeds", type=int, help="with --space: seeds (default: the space's)")
    p.add_argument("--run-dir", type=Path, help="with --space: output folder (default: runs/<space>[-smoke]-config)")
    p.add_argument("--cache-dir", type=Path, help="with --space: target models and adversarial sets (default: $ADDD_CACHE_DIR or ./.addd_cache)")
    p.add_argument("--data-root", type=Path, default=Path("./data"), help="with --space: dataset folder")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates per interval (default 2000)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; re-raise errors")
    return p


# ----------------------------------------------------------------------------- --sweep
def resolve_sweep(sweep: str, tracking_uri: str | None) -> tuple[Path, str | None]:
    """(run folder, tracking URI) of a run folder or an MLflow parent run id."""
    path = Path(sweep)
    if path.is_dir():
        if not (path / "summary.json").exists():
            raise RunError(f"{path} has no summary.json; pass the run folder of a finished sweep")
        return path.resolve(), tracking_uri or _plan(path).get("tracking_uri")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RunError(f"{sweep!r} is not a folder; to use it as an MLflow run id give --tracking-uri (or set MLFLOW_TRACKING_URI)")
    if not re.fullmatch(r"[0-9a-f]{32}", sweep):
        raise RunError(f"{sweep!r} is neither a run folder nor an MLflow run id (32 hex digits); pass one of them")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a SQLite store's migrations are not the user's concern
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        run = client.get_run(sweep)
    except MlflowException as exc:
        raise RunError(f"no MLflow run {sweep!r} at {uri} ({str(exc).splitlines()[0]}); pass a run folder or a parent run id") from None
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    if not run_dir:
        try:
            local = client.download_artifacts(sweep, "plan.json")
            run_dir = json.loads(Path(local).read_text())["run_dir"]
        except (MlflowException, OSError, ValueError, KeyError) as exc:
            raise RunError(f"run {sweep} names no run folder (no {RUN_DIR_TAG} tag, no readable plan.json: {exc})") from None
    if not (Path(run_dir) / "summary.json").exists():
        raise RunError(f"run {sweep}'s folder {run_dir} has no summary.json here; pass the folder itself if it moved")
    return Path(run_dir), uri


def _plan(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "plan.json").read_text())
    except (OSError, ValueError):
        return {}


def tracker_for(run_dir: Path, summary: dict[str, Any], tracking_uri: str | None):
    """The sweep's MLflow tracker (same experiment and artifact location as sweeps.plan.Plan)."""
    from sweeps import _mlflow

    uri = tracking_uri or _mlflow.default_tracking_uri(run_dir)
    artifacts = (run_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    return _mlflow.Tracker(uri, f"addd-{summary['space']}", artifacts)


def study_sweep(sweep: str, tracking_uri: str | None, n_boot: int) -> Path:
    from ablations.study import run_study

    run_dir, uri = resolve_sweep(sweep, tracking_uri)
    summary = json.loads((run_dir / "summary.json").read_text())
    tracker = tracker_for(run_dir, summary, uri)
    return run_study(run_dir, tracker=tracker, parent_run_id=summary.get("mlflow_parent_run_id"), n_boot=n_boot)


# ----------------------------------------------------------------------------- --space --config
def study_config(args: argparse.Namespace) -> Path:
    """Train full from a given config over seeds (like a sweep's finals), then run the study."""
    import torch

    from ablations.study import FINALS_DIR, Job, _add_defense, entry, load_sets, run_job, run_study, trial_context
    from addd.data import load_dataset
    from addd.storage import atomic_write_bytes
    from addd.target_models import default_cache_dir, get_target_model
    from sweeps.spaces import get_space
    from sweeps.summary import THREAT_MODELS
    from sweeps.trialspec import FINAL, OBJECTIVE, TrialSpec

    space = get_space(args.space, smoke=args.smoke)
    try:
        given = json.loads(args.config.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read --config {args.config} ({exc}); give a JSON object of flat DefenseConfig keys") from None
    if not isinstance(given, dict):
        raise RunError(f"--config {args.config} must hold a JSON object of flat DefenseConfig keys")
    device = "cuda" if space.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    from addd.config import to_flat_dict

    cfg = space.base_config().replace(**{**given, "train.device": device})  # ConfigError names a bad key
    flat = to_flat_dict(cfg)
    seeds = args.seeds or space.seeds
    run_dir = (args.run_dir or Path("runs") / f"{space.name}{'-smoke' if args.smoke else ''}-config").resolve()
    cache_dir = (args.cache_dir or default_cache_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(space.dataset, args.data_root, n_train=space.n_train, n_val=space.n_val, n_test=space.n_test,
                           seed=space.split_sizes()["split_seed"])
    target = get_target_model(dataset, arch=space.target_arch, cache_dir=cache_dir, device=device)
    summary: dict[str, Any] = {
        "format": "addd-sweep-summary/2", "space": space.name, "smoke": args.smoke, "dataset": space.dataset,
        "data_fingerprint": dataset.fingerprint(),
        "splits": space.split_sizes() | {s: len(getattr(dataset, s)) for s in ("train", "val", "test")},
        "target_model": {"arch": target.arch, "sha256": target.weights_sha256, "path": str(target.path),
                         "clean_test_accuracy": target.clean_test_accuracy},
        "attack_budget": space.attack_budget, "eval_attacks": list(space.attacks),
        "holdout_attacks": list(space.holdout_attacks), "finalists": space.describe_finalists(),
        "cache_dir": str(cache_dir), "config_source": str(args.config),
        "objective": "none: a given config, no search", "threat_models": THREAT_MODELS,
    }
    (run_dir / "plan.json").write_text(json.dumps({"run_dir": str(run_dir), "data_root": str(args.data_root.resolve()),
                                                   "config": given}, indent=1))
    tracker = tracker_for(run_dir, summary, args.tracking_uri)
    state = run_dir / "study.json"
    parent = json.loads(state.read_text())["parent_run_id"] if state.exists() else None
    if parent is None:
        parent = tracker.start_parent(f"{space.name}{'-smoke' if args.smoke else ''}-config-study",
                                      {"space": space.name, "smoke": str(args.smoke), "config": str(args.config),
                                       RUN_DIR_TAG: str(run_dir)}, {f"config.{k}": v for k, v in flat.items()})
        state.write_text(json.dumps({"parent_run_id": parent}))
    summary["mlflow_parent_run_id"] = parent
    start = time.perf_counter()
    _, target, sets = load_sets(summary, data_root=args.data_root, train_attacks=tuple(cfg.known_attacks),
                                allow_generation=True, device=device)
    ctx = trial_context(summary, sets, target, threads=torch.get_num_threads())
    records = []
    for seed in range(seeds):
        spec = TrialSpec(FINAL, "full", {**flat, "train.seed": seed})
        job = Job("full", "tuned", seed, spec.to_config(), tuple(cfg.known_attacks), lambda spec=spec: _add_defense(spec))
        record, _ = run_job(job, ctx, run_dir / FINALS_DIR)
        records.append(record)
        from ablations.study import _log_child

        _log_child(tracker, parent, job, record)
    full = entry(records, "given", f"the config of {args.config}, no search")
    full["search"] = {"trials": 0, "best_val_objective": None, "note": f"given config {args.config}, no search"}
    summary["variants"] = {"full": full}
    best = max(records, key=lambda r: r["metrics"].get(OBJECTIVE, float("-inf")))
    summary["best"] = {"variant": "full", "seed": best["seed"], "val_objective": best["metrics"].get(OBJECTIVE)}
    summary["timings_seconds"] = {"full": time.perf_counter() - start}
    atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=1).encode())
    return run_study(run_dir, tracker=tracker, parent_run_id=parent, n_boot=args.n_boot,
                     data_root=args.data_root, allow_generation=True)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if bool(args.sweep) == bool(args.space or args.config):
        parser.print_usage(sys.stderr)
        print("error: give either --sweep RUN (a run folder or an MLflow parent run id) or --space NAME --config FILE",
              file=sys.stderr)
        return 2
    if not args.sweep and not (args.space and args.config):
        print("error: --space and --config go together (ablating a config needs both)", file=sys.stderr)
        return 2
    try:
        summary_path = study_sweep(args.sweep, args.tracking_uri, args.n_boot) if args.sweep else study_config(args)
    except AdddError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"summary: {summary_path}")
    print(f"report:  {summary_path.parent / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
