"""Run a named ADD-Defense sweep on Ray Tune + Optuna, recorded in MLflow.

What it does: loads the space's dataset, trains (or loads) the target model, builds every
oblivious adversarial set once through the cache (parallel Ray tasks), then, for each ablation
variant of the space (full and its ablations), runs the same budget of trials picked by seeded Optuna TPE and
stopped early by ASHA, maximising the worst-case unknown-attack accuracy on the validation
split. Each variant's best config is re-run over ``--seeds`` seeds and evaluated on the test
split. Results: ``<run dir>/summary.json``, ``<run dir>/report/`` (tables, Fig-12 plot, Optuna
plots), the best defense in ``<run dir>/best_defense/``, and an MLflow parent run with one child
run per trial.

Examples::

    python sweeps/run.py --list-spaces
    python sweeps/run.py --space digits_ablation              # README quick start: ~15 min on 2 CPU cores
    python sweeps/run.py --space svhn_ablation --smoke        # any space, tiny, in minutes
    python sweeps/run.py --space svhn_ablation --dry-run      # print the resolved plan and its size only
    python sweeps/run.py --space digits_ablation --estimate   # and its wall time, from a calibration here
    python sweeps/run.py --space digits_ablation --resume     # continue an interrupted sweep
    mlflow ui --backend-store-uri sqlite:///runs/digits_ablation/mlflow.db
    optuna-dashboard sqlite:///runs/digits_ablation/optuna.db

On a cluster (see docs/cluster.md)::

    ray submit sweeps/cluster.yaml sweeps/run.py -- --space svhn_ablation --address auto \\
        --storage-path s3://bucket/addd --tracking-uri http://HEAD:5000 --cache-dir /shared/cache
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addd.errors import AdddError  # noqa: E402
from sweeps.spaces import SPACES, get_space  # noqa: E402

log = logging.getLogger("sweeps.run")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python sweeps/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Spaces: " + ", ".join(SPACES),
    )
    p.add_argument("--space", help="named sweep space (see --list-spaces)")
    p.add_argument("--list-spaces", action="store_true", help="list the spaces and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan and the sweep's size (trials, trial-epochs, images attacked) and exit; "
                        "runs nothing")
    p.add_argument("--estimate", action="store_true",
                   help="with --dry-run (implied): also time a short calibration on this machine (a training step per "
                        "network width, one batch per attack) and print the estimated wall time per phase")
    p.add_argument("--smoke", action="store_true", help="tiny budgets: try any space here in minutes")
    p.add_argument("--num-samples", type=_positive_int, help="trials per ablation variant (default: the space's)")
    p.add_argument("--seeds", type=_positive_int, help="seeds for re-running each variant's best config")
    p.add_argument("--max-concurrent", type=_positive_int, help="trials at once (default: CPUs / --cpus-per-trial)")
    p.add_argument("--cpus-per-trial", type=_positive_float, help="CPUs per trial = its torch threads")
    p.add_argument("--gpus-per-trial", type=_non_negative_float, help="GPUs per trial; fractions pack trials (0.25: four per GPU)")
    p.add_argument("--address", help="join a running Ray cluster (`auto` under ray submit); default: start a local Ray")
    p.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--run-dir", type=Path, help="local folder of this sweep (default: ./runs/<space>[-smoke])")
    p.add_argument("--storage-path", help="Ray results: a folder or a URI Ray accepts, e.g. s3://bucket/addd (default: <run dir>/ray)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<run dir>/mlflow.db)")
    p.add_argument("--optuna-storage", help="Optuna RDB URL, e.g. postgresql://user@host/db (default: sqlite:///<run dir>/optuna.db)")
    p.add_argument("--attacks", nargs="+", metavar="ATTACK",
                   help="narrow the attacks scored on val/test (default: the dataset's whole suite)")
    p.add_argument("--adaptive-n", type=_positive_int,
                   help="adaptive attacks and robustness curves on the first N test examples (default: the space's)")
    p.add_argument("--objective", help="what each search trial maximises: oblivious (the paper's) or worst "
                   "(min of it and the adaptive probe); default: the space's")
    p.add_argument("--probe-n", type=int, help="the adaptive probe's validation images (default: the space's)")
    p.add_argument("--probe-steps", type=int, help="the adaptive probe's PGD steps (default: the space's)")
    p.add_argument("--data-root", type=Path, default=Path("./data"), help="dataset folder (default: ./data)")
    p.add_argument("--download", action="store_true", help="download the dataset into --data-root if it is missing")
    p.add_argument("--no-study", action="store_true",
                   help="end after the seed re-runs: no fixed ablations or baselines (run them later with python -m sweeps.study --sweep)")
    p.add_argument("--cache-dir", type=Path, help="target models and adversarial sets (default: $ADDD_CACHE_DIR or ./.addd_cache)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in the run folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a flat config key of the space's base config for every trial, e.g. --set train.lr=3e-4 "
                        "(repeatable; VALUE is JSON when it parses, else a string; a searched key is fixed and no "
                        "longer searched)")
    p.add_argument("--sync-mlflow", type=Path, metavar="RUN_DIR",
                   help="upload to MLflow (--tracking-uri, default the run's own) what it missed during the sweep "
                        "(<run dir>/mlflow_journal.jsonl); safe to repeat")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=3e-4", "known_attacks=PGDu+PGDt"]`` -> ``{"train.lr": 0.0003, "known_attacks": "PGDu+PGDt"}``."""
    from sweeps.spaces import SpaceError

    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpaceError(f"--set {item!r}: write KEY=VALUE, e.g. --set train.lr=3e-4")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        overrides[key] = value
    return overrides


def make_plan(args: argparse.Namespace):
    """Resolve the space and the command line into a driver Plan (no side effects)."""
    from dataclasses import replace

    from addd.target_models import default_cache_dir
    from sweeps import _mlflow
    from sweeps.plan import Plan

    space = get_space(args.space, smoke=args.smoke).with_base(parse_overrides(args.overrides))
    narrowed = {}
    if args.attacks:
        narrowed["eval_attacks"] = tuple(args.attacks)
        narrowed["holdout_attacks"] = tuple(a for a in space.holdout_attacks if a in args.attacks)
    if args.adaptive_n:
        narrowed["adaptive_n"] = args.adaptive_n
    for field_name in ("objective", "probe_n", "probe_steps"):  # checked by Space.validate: one error line
        if getattr(args, field_name) is not None:
            narrowed[field_name] = getattr(args, field_name)
    if narrowed:
        space = replace(space, **narrowed).validate()
    run_dir = (args.run_dir or Path("runs") / f"{space.name}{'-smoke' if args.smoke else ''}").resolve()
    storage_path = args.storage_path or str(run_dir / "ray")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).resolve())  # Ray wants absolute local paths
    return Plan(
        space=space,
        smoke=args.smoke,
        run_dir=run_dir,
        storage_path=storage_path,
        tracking_uri=args.tracking_uri or _mlflow.default_tracking_uri(run_dir),
        data_root=args.data_root.resolve(),
        cache_dir=(args.cache_dir or default_cache_dir()).resolve(),
        address=args.address,
        seeds=args.seeds or space.seeds,
        num_samples=args.num_samples or space.num_samples,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial or space.cpus_per_trial,
        gpus_per_trial=space.gpus_per_trial if args.gpus_per_trial is None else args.gpus_per_trial,
        seed=args.seed,
        resume=args.resume,
        num_cpus=args.num_cpus,
        download=args.download,
        optuna_storage=args.optuna_storage,
        study=not args.no_study,
    )


def _reachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None if a TCP connection to host:port opens within ``timeout``, else why not."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def _no_ray_token() -> str | None:
    """Why this process has no Ray authentication token (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH
    names, else ~/.ray/auth_token: where Ray looks), or None if it has one or RAY_AUTH_MODE=disabled."""
    import os

    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return None if path.read_text().strip() else f"{path} is empty"
    except OSError:
        return f"no Ray authentication token here (no RAY_AUTH_TOKEN, no {path})"


def preflight(plan) -> None:
    """What can be known before the sweep loads data, starts Ray or writes anything: the MLflow
    server and the Ray cluster answer, and the run folder can be written. Raises SweepError."""
    import os
    import tempfile
    from urllib.parse import urlparse

    from sweeps.plan import SweepError

    uri = urlparse(plan.tracking_uri)
    if uri.scheme in ("http", "https"):
        port = uri.port or (443 if uri.scheme == "https" else 80)
        if why := _reachable(uri.hostname or "localhost", port):
            raise SweepError(f"--tracking-uri {plan.tracking_uri} is not reachable ({why}); start the MLflow server "
                             f"(mlflow server --host 127.0.0.1 --port {port}) or drop --tracking-uri to record in the run folder")
    if plan.address == "auto":
        if not (os.environ.get("RAY_ADDRESS") or Path(tempfile.gettempdir(), "ray", "ray_current_cluster").exists()):
            raise SweepError("--address auto found no running Ray on this machine; start one (ray start --head) "
                             "or drop --address to start a private local Ray")
    elif plan.address:
        target = urlparse(plan.address if "://" in plan.address else f"ray://{plan.address}")
        if target.hostname is None or target.port is None:
            raise SweepError(f"--address {plan.address}: write HOST:PORT (e.g. 10.0.0.5:6379) or auto")
        if why := _reachable(target.hostname, target.port):
            raise SweepError(f"--address {plan.address}: no Ray cluster answers there ({why}); check the head's address "
                             f"and port (ray status on the head) or drop --address to start a local Ray")
        if why := _no_ray_token():  # Ray would try to join for ~25 s, then fail with a traceback
            raise SweepError(f"--address {plan.address}: {why}; the project's clusters refuse a client without the "
                             f"cluster's token: copy the head's ~/.ray/auth_token here (mode 0600) or set RAY_AUTH_TOKEN "
                             f"(RAY_AUTH_MODE=disabled joins a cluster started without authentication)")
    state = plan.folder.state
    if plan.resume and not state.exists():
        what = "is not a sweep's run folder" if plan.run_dir.exists() and any(plan.run_dir.iterdir()) else "holds no sweep"
        raise SweepError(f"nothing to resume: {plan.run_dir} {what} (no sweep.json); drop --resume to start a new "
                         f"sweep or pass the --run-dir of an interrupted one")
    if plan.resume:
        try:
            json.loads(state.read_text())["space"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SweepError(f"{state} is not a sweep's state file ({type(exc).__name__}: {exc}); "
                             f"pass the --run-dir of an interrupted sweep") from None
    for option, path in (("--run-dir", plan.run_dir), ("--cache-dir", plan.cache_dir)):
        folder = path
        while not folder.exists():  # the nearest existing folder decides whether this one can be made
            folder = folder.parent
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            raise SweepError(f"cannot write {option} {path} ({exc.strerror or exc} in {folder}); "
                             f"pass a writable {option}") from None


# ----------------------------------------------------------------------------- disk space
MiB = 1 << 20
DATABASES_AND_LOGS = 4 * MiB  # optuna.db, mlflow.db, sweep.log, events and Tune's experiment state of a smoke sweep: ~2 MiB


def estimate_disk(plan) -> dict[str, int]:
    """What the run folder will hold, estimated before anything runs: one checkpoint per trial
    (the defense's float32 weights, Adam's two moments of each, the restored example images), one
    more while Tune replaces a trial's checkpoint, the best defense and its MLflow copy, and the
    databases and logs. Measured on the digits smoke sweep: 1.9 MB a checkpoint, estimated 1.9 MB."""
    from addd.defense import ADDDefense

    s = plan.space
    config = s.base_config()  # variant "full": the most networks
    weights = 4 * sum(p.numel() for p in ADDDefense(config).parameters())
    image = 4 * config.network.channels * config.network.image_size ** 2
    images = s.grid_examples * image * (1 + 2 * len(s.attacks))  # originals; adversarial and restored per attack
    checkpoint = 3 * weights + images
    trials = len(s.variants) * (plan.num_samples + plan.seeds)
    return {"checkpoint_bytes": checkpoint, "trials": trials,
            "run_folder_bytes": checkpoint * (trials + 3) + DATABASES_AND_LOGS}


def dry_run_report(plan, estimate: bool = False) -> dict:
    """--dry-run's JSON: the plan, its disk estimate and size (``sweeps.estimate.sweep_size``) and, with
    ``estimate``, the calibrated wall time (``sweeps.estimate.estimate``; a line on stderr while it measures)."""
    from sweeps import estimate as cost

    report = {**plan.describe(), "disk_estimate": estimate_disk(plan), "size": cost.sweep_size(plan)}
    if estimate:
        print(f"estimate: calibrating on this machine (training steps, {len(plan.space.attacks)} attacks on "
              f"{cost.ATTACK_BATCH} images each) ...", file=sys.stderr, flush=True)
        report["estimate"] = cost.estimate(plan, report["size"])
    return report


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _written_folders(plan) -> dict[str, Path]:
    """The local folders the sweep writes into, by the option that names them."""
    folders = {"--run-dir": plan.run_dir, "--cache-dir": plan.cache_dir}
    if "://" not in plan.storage_path:
        folders["--storage-path"] = Path(plan.storage_path)
    for option, uri in (("--optuna-storage", plan.optuna_url), ("--tracking-uri", plan.tracking_uri)):
        if uri.startswith("sqlite:///"):
            folders[option] = Path(uri[len("sqlite:///"):]).parent
    return folders


def warn_if_short_of_space(plan) -> None:
    """A warning line when the run folder's (and a local --storage-path's) disk has less free space
    than the sweep will write there (:func:`estimate_disk`)."""
    import shutil

    need = estimate_disk(plan)
    for option in ("--run-dir", "--storage-path"):
        folder = _written_folders(plan).get(option)
        if folder is None or (option == "--storage-path" and folder.is_relative_to(plan.run_dir)):
            continue
        free = shutil.disk_usage(_nearest_existing(folder)).free
        if free < need["run_folder_bytes"]:
            log.warning("%s %s has %.1f MiB free, less than the ~%.1f MiB this sweep writes (%d trials x %.1f MiB "
                        "checkpoints, databases, logs); free space there or pass a %s on a larger disk", option,
                        folder, free / MiB, need["run_folder_bytes"] / MiB, need["trials"],
                        need["checkpoint_bytes"] / MiB, option)


def full_folder(plan, exc: BaseException) -> str | None:
    """If ``exc`` (or what caused it) is a full disk, or a folder the sweep writes has under 1 MiB
    left, the option and folder that filled (the one with the least free space), else None."""
    import errno
    import shutil

    seen, pending, full = set(), [exc], False
    while pending and not full:  # the error chain, through Ray's task errors (.cause) and Optuna's wrappers
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        text = str(error).lower()
        full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or any(
            phrase in text for phrase in ("no space left", "disk is full", "errno 28"))
        pending += [error.__cause__, error.__context__, getattr(error, "cause", None)]
    free = {option: shutil.disk_usage(_nearest_existing(folder)).free for option, folder in _written_folders(plan).items()}
    option = min(free, key=free.get)
    if not full and free[option] >= MiB:
        return None
    return f"{option} {_written_folders(plan)[option]} ({free[option] / MiB:.1f} MiB free)"


def sync_mlflow(run_dir: Path, tracking_uri: str | None) -> int:
    """``--sync-mlflow RUN_DIR``: upload what MLflow missed during that sweep (idempotent)."""
    from addd.runfolder import RunFolder
    from sweeps import _mlflow
    from sweeps.plan import SweepError

    run_dir = run_dir.resolve()
    plan_file = RunFolder(run_dir).plan
    if not plan_file.exists():
        raise SweepError(f"{run_dir} is not a sweep's run folder (no plan.json); pass the --run-dir of a sweep")
    journal = run_dir / _mlflow.JOURNAL_FILE
    if not journal.exists():
        print(f"nothing to sync: MLflow missed nothing of {run_dir} (no {_mlflow.JOURNAL_FILE})")
        return 0
    try:
        uri = tracking_uri or json.loads(plan_file.read_text())["tracking_uri"]
    except (OSError, ValueError, KeyError) as exc:
        raise SweepError(f"{plan_file} is unreadable ({exc}); pass --tracking-uri") from None
    if uri.startswith(("http://", "https://")):
        from urllib.parse import urlparse

        parsed = urlparse(uri)
        if why := _reachable(parsed.hostname or "localhost", parsed.port or (443 if parsed.scheme == "https" else 80)):
            raise SweepError(f"MLflow at {uri} is not reachable ({why}); start it or pass --tracking-uri")
    try:
        count = _mlflow.sync(journal, uri)
    except AdddError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's own errors: one line, then run it again
        raise SweepError(f"MLflow at {uri} failed during the sync ({' '.join(str(exc).split())[:300]}); "
                         f"run --sync-mlflow again (it is idempotent)") from None
    print(f"synced {count} journalled MLflow call(s) of {run_dir} to {uri}")
    return 0


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; a Ray task's error (it carries its traceback) gives its cause's."""
    cause = getattr(exc, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else exc)
    return " ".join(text.split())


INTERRUPTED = 130  # the exit status of a process ended by SIGINT (128 + 2), as shells report it


def resume_command(argv: list[str], run_dir: Path | None) -> str:
    """The command line that continues this sweep: the same options and ``--resume`` if the
    run folder already holds its state, else the same command again."""
    import shlex

    from addd.runfolder import RunFolder

    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("run.py") else "sweeps/run.py"
    args = [a for a in argv if a != "--resume"]
    if run_dir is not None and RunFolder(run_dir).state.exists():
        args.append("--resume")
    return "python " + shlex.join([script, *args])


def _failed(plan, exc: Exception, argv: list[str]) -> int:
    """A full disk or a project error: one line, exit 2; anything else is raised again."""
    where = full_folder(plan, exc) if plan is not None else None
    if where is not None:
        print(f"error: the disk filled up: {where}; free space there (or pass that option a larger disk), "
              f"then continue with {resume_command(argv, plan.run_dir)}", file=sys.stderr)
        return 2
    if not isinstance(exc, AdddError):  # every project error; the message says what to do
        raise exc
    print(f"error: {_one_line(exc)}", file=sys.stderr)
    return 2


def _interrupted(plan, argv: list[str]) -> int:
    """Ctrl-C: the line that says how to continue, exit 130."""
    import signal

    # the sweep is ending: a further Ctrl-C must not interrupt Ray's own shutdown (an atexit
    # handler), which would print "Exception ignored in atexit callback" and a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    command = resume_command(argv, plan.run_dir if plan else None)
    print(f"interrupted: {'resume' if command.endswith('--resume') else 'start it again'} with {command}",
          file=sys.stderr)
    return INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from sweeps.console import SweepConsole  # the console: progress here, every detail in <run dir>/sweep.log

    console = SweepConsole(verbose=args.verbose).configure_logging()
    if args.list_spaces:
        for name, space in SPACES.items():
            print(f"{name:16s} {space.dataset:14s} {space.description}")
        return 0
    if args.sync_mlflow:
        try:
            return sync_mlflow(args.sync_mlflow, args.tracking_uri)
        except AdddError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not args.space:
        parser.print_usage(sys.stderr)
        what = "--estimate needs" if args.estimate else "give"
        print(f"error: {what} --space NAME (one of {', '.join(SPACES)}){'' if args.estimate else ' or --list-spaces'}",
              file=sys.stderr)
        return 2
    plan = None
    try:
        plan = make_plan(args)
        if args.dry_run or args.estimate:
            print(json.dumps(dry_run_report(plan, args.estimate), indent=2))
            return 0
        preflight(plan)
        warn_if_short_of_space(plan)
        from sweeps.driver import run_sweep

        console.begin(plan)
        summary_path = run_sweep(plan, console.on_event)
    except Exception as exc:  # noqa: BLE001 - a project error or a full disk: one line; anything else: raised
        console.stop_live()
        if args.verbose:
            raise
        return _failed(plan, exc, sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:  # Ctrl-C: Tune saved the search's state (sweeps._ray.TuneInterrupted), or a 2nd Ctrl-C
        console.stop_live()
        return _interrupted(plan, sys.argv[1:] if argv is None else list(argv))
    finally:
        console.stop_live()
    console.finish(summary_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
