"""The ablation study a finished sweep lacks: fixed ablations, the paper's baselines, paired statistics.

Given a sweep's run folder (``summary.json``, ``finals/``, the cache dir and target model it
names), :func:`run_study` runs what is missing and adds it to ``summary.json``:

- **fixed ablations** ``fixed-<variant>``: the best ``full`` config with one component removed
  (``addd.config.ablation``), re-run over full's seeds (``summary["fixed"][<variant>]``);
- **baselines** ``no_defense``, ``ape_gan``, ``adv_training`` (``addd.baselines``), with the best
  full config's data split, known attacks, epochs, batch size, lr, width and seeds
  (``summary["baselines"][<key>]``);
- **comparisons**: for every tuned variant, fixed ablation and baseline, the difference to
  ``full`` per figure with a paired-bootstrap 95% interval (``ablations.stats``) and a verdict in
  words (``summary["comparisons"][<name>]``).

Each new defense is evaluated exactly like the sweep's finals, with the trial's own code
(``sweeps.trial.evaluate_split`` / ``evaluate_finalist`` / ``restored_examples``): the oblivious
suite on the val and test splits (the sweep's cached sets, read with the sweep's exact
requests; nothing is regenerated, a missing set is an error), the adaptive suite on its whole
pipeline, and the robustness curve on seed 0. A baseline's pipeline is
``classifier_for(M_t)(restore(x))``: the trial's context is handed the baseline's classifier as
its model (for ``adv_training`` the adversarially trained network; so its ``acc.clean`` is that
network on clean x and its ``acc.undefended.<a>`` is that network on the oblivious sets made on
M_t, a transfer attack). Files go to ``finals/<name>-seed<k>/`` like the sweep's finals, plus
``metrics.json`` (written last: its presence means that final is done, so a second run trains
and attacks nothing).

Sequential on purpose: one final at a time with all torch threads (measured on the digits smoke
sweep, see ``summary["study"]["timings"]``); the finals are independent and could be mapped
over ``sweeps._ray.parallel_map`` on a cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from addd.errors import AdddError

log = logging.getLogger(__name__)

BASELINE_KEYS = ("no_defense", "ape_gan", "adv_training")
METRICS_FILE = "metrics.json"  # finals/<name>-seed<k>/metrics.json: the final's figures; written last
FINALS_DIR = "finals"
REPORT_DIR = "report"
STUDY_FORMAT = "addd-study/1"


class StudyError(AdddError):
    """The study cannot run on this folder as asked; the message says what to do."""


def fixed_name(variant: str) -> str:
    return f"fixed-{variant}"


# ----------------------------------------------------------------------------- the sweep's data
def _refuse_generation(name, *args, **kwargs):  # AdvCache.run_attack: only ever called to generate
    raise StudyError(f"the study would regenerate the {name} set; it must read the sweep's cached sets "
                     f"(pass the sweep's run folder with its cache dir intact)")


def load_sets(summary: Mapping[str, Any], *, data_root: Path, train_attacks: tuple[str, ...],
              allow_generation: bool = False, device: str = "cpu"):
    """(dataset, target entry, {split: SplitSets}) with the sweep's exact AdvRequests (dataset,
    split, budget, seed 0, model hash), so the cache returns the very sets the sweep's trials saw.
    Without ``allow_generation``, a set missing from the cache is a StudyError, never regenerated."""
    from addd.advcache import MANIFEST_FILE, AdvCache, AdvRequest
    from addd.data import load_dataset
    from addd.target_models import load_target_entry
    from sweeps.trial import SplitSets

    splits = summary["splits"]
    dataset = load_dataset(summary["dataset"], data_root, n_train=splits.get("n_train"), n_val=splits.get("n_val"),
                           n_test=splits.get("n_test"), seed=splits.get("split_seed", 0))
    if summary.get("data_fingerprint") and dataset.fingerprint() != summary["data_fingerprint"]:
        raise StudyError(f"the data under {data_root} is not the data the sweep used (fingerprint "
                         f"{dataset.fingerprint()} != {summary['data_fingerprint']}); pass its --data-root")
    target = load_target_entry(summary["target_model"]["path"], device=device)
    if summary["target_model"].get("sha256") and target.weights_sha256 != summary["target_model"]["sha256"]:
        raise StudyError(f"{summary['target_model']['path']} is not the target model the sweep attacked "
                         f"(weights sha256 differ)")
    options = {} if allow_generation else {"run_attack": _refuse_generation}
    cache = AdvCache.under(summary["cache_dir"], **options)
    requests, missing = {}, []
    for split, attacks in (("train", train_attacks), ("val", summary["eval_attacks"]), ("test", summary["eval_attacks"])):
        data = getattr(dataset, split)
        requests[split] = [AdvRequest(summary["dataset"], split, data.x, data.y, target.model, a,
                                      model_sha256=target.weights_sha256, budget=summary["attack_budget"], seed=0,
                                      device=device) for a in attacks]
        missing += [f"{split}/{r.attack}" for r in requests[split] if not (cache.entry_dir(r) / MANIFEST_FILE).exists()]
    if missing and not allow_generation:
        raise StudyError(f"the sweep's cache {summary['cache_dir']} lacks {', '.join(missing)}; the study reads the "
                         f"sweep's sets and never regenerates them: pass the run folder of a finished sweep with its cache")
    sets = {split: SplitSets(getattr(dataset, split).x, getattr(dataset, split).y, cache.get_many(r))
            for split, r in requests.items()}
    return dataset, target, sets


def trial_context(summary: Mapping[str, Any], sets, target, *, threads: int):
    """The TrialContext the sweep's finals had, rebuilt from summary.json and the space."""
    from sweeps.spaces import get_space
    from sweeps.trial import Finalists, TrialContext

    space = get_space(summary["space"], smoke=bool(summary.get("smoke")))
    fin = summary.get("finalists", {})
    n = fin.get("adaptive_test_examples")
    return TrialContext(
        train=sets["train"], val=sets["val"], test=sets["test"], target_model=target.model,
        holdout_attacks=tuple(summary.get("holdout_attacks", ())), threads=threads, events_path=None,
        finalists=Finalists(dataset=summary["dataset"], n=n if isinstance(n, int) else None,
                            steps=int(fin.get("adaptive_pgd_steps", space.adaptive_steps)),
                            autoattack=space.adaptive_autoattack,
                            curve_points=int(fin.get("robustness_curve_points", space.curve_points)),
                            curve_steps=int(fin.get("robustness_curve_pgd_steps", space.curve_steps)),
                            budget=float(summary["attack_budget"])),
        grid_examples=space.grid_examples,
    )


# ----------------------------------------------------------------------------- one final
def evaluate_final(defense, ctx, known: tuple[str, ...], seed: int, out_dir: Path) -> dict[str, float]:
    """The sweep's final evaluation (sweeps.trial's helpers), files into ``out_dir``:
    per_example.safetensors, restored.safetensors, robustness_curve.csv (seed 0)."""
    from addd.storage import save_tensors
    from sweeps.trial import (IMAGES_FILE, PER_EXAMPLE_FILE, evaluate_finalist, evaluate_split,
                              restored_examples)
    from sweeps.trialspec import OBJECTIVE

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_split(defense, ctx, "val", known)
    metrics[OBJECTIVE] = metrics["val/worst.unknown"]
    per_example = {"y": ctx.test.y.contiguous()}
    metrics.update(evaluate_split(defense, ctx, "test", known, per_example))
    if ctx.finalists is not None:
        metrics.update(evaluate_finalist(defense, ctx, out_dir, seed == 0, per_example))
    save_tensors(out_dir / PER_EXAMPLE_FILE, per_example, {"split": "test", "known_attacks": list(known)})
    save_tensors(out_dir / IMAGES_FILE, restored_examples(defense, ctx), {})
    return metrics


@dataclasses.dataclass(frozen=True)
class Job:
    """One defense re-run on one seed: ``build()`` -> an untrained defense with ``fit``."""

    name: str  # fixed-<variant> or a baseline key (the finals folder's prefix)
    kind: str  # "fixed" | "baseline" | "tuned"
    seed: int
    config: dict[str, Any]  # what defines it (JSON-friendly), recorded in metrics.json and MLflow
    known: tuple[str, ...]
    build: Callable[[], Any]

    @property
    def folder(self) -> str:
        return f"{self.name}-seed{self.seed}"


def run_job(job: Job, ctx, finals_dir: Path) -> tuple[dict[str, Any], bool]:
    """(the record of metrics.json, whether it was computed now). Skips a done final."""
    import torch

    from addd.storage import atomic_write_bytes

    out = finals_dir / job.folder
    done = out / METRICS_FILE
    if done.exists():
        return json.loads(done.read_text()), False
    start = time.perf_counter()
    defense = job.build()
    x_adv = {a: ctx.train.adv[a].x_adv for a in job.known}
    device = next((p.device for p in defense.parameters()), torch.device("cpu"))
    log.info("study: training %s (seed %d) on %s", job.name, job.seed, device)
    defense.fit(ctx.train.x, ctx.train.y, x_adv)
    trained = time.perf_counter() - start
    classifier = defense.classifier_for(ctx.target_model) if hasattr(defense, "classifier_for") else ctx.target_model
    own = classifier is not ctx.target_model  # adversarial training: its own classifier, M_t stays the reference
    job_ctx = dataclasses.replace(ctx, target_model=classifier.to(device).eval(),
                                  undefended_model=ctx.target_model if own else ctx.undefended_model)
    metrics = evaluate_final(defense.eval(), job_ctx, job.known, job.seed, out)
    record = {"name": job.name, "kind": job.kind, "seed": job.seed, "config": job.config, "known_attacks": list(job.known),
              "metrics": metrics, "seconds": {"train": trained, "evaluate": time.perf_counter() - start - trained},
              "losses": [dict(r.losses) for r in getattr(defense, "history", [])]}
    atomic_write_bytes(done, json.dumps(record, indent=1).encode())
    log.info("study: %s seed %d done in %.0fs (worst.unknown %.3f)", job.name, job.seed, time.perf_counter() - start,
             metrics.get("test/worst.unknown", float("nan")))
    return record, True


# ----------------------------------------------------------------------------- the jobs
def expected_cost(job: "Job") -> int:
    """A rank of how long ``job`` takes (higher: longer), to start the longest first when finals
    run in parallel. Adversarial training attacks every batch online (about 4x an ADD final on
    digits); seed 0 also computes the robustness curve."""
    return (4 if job.name == "adv_training" else 1) * 2 + (job.seed == 0)


def study_jobs(summary: Mapping[str, Any], device: str) -> list[Job]:
    """Fixed ablations of the best full config and the three baselines, over full's seeds."""
    from addd.baselines import build_baseline
    from sweeps.trialspec import FINAL, TrialSpec

    full = summary["variants"].get("full") or {}
    if not full.get("best_config"):
        raise StudyError("the sweep has no best `full` config to ablate (see summary.json's variants.full.search)")
    spec = TrialSpec.parse(full["best_config"])
    seeds = sorted(s["seed"] for s in full.get("seeds", []) if s.get("error") is None) or [0]
    cfg = spec.defense_config()
    flat = {**spec.flat, "train.device": device}
    jobs: list[Job] = []
    for variant in _other_variants(summary):
        for seed in seeds:
            s = TrialSpec(FINAL, variant, {**flat, "train.seed": seed})
            jobs.append(Job(fixed_name(variant), "fixed", seed, s.to_config(), s.defense_config().known_attacks,
                            lambda s=s: _add_defense(s)))
    target = summary["target_model"]
    for key in BASELINE_KEYS:
        for seed in seeds:
            settings = {"baseline": key, "known_attacks": list(cfg.known_attacks), "network.width": cfg.network.width,
                        "network.channels": cfg.network.channels, "train.epochs": cfg.train.epochs,
                        "train.batch_size": cfg.train.batch_size, "train.lr": cfg.train.lr, "train.seed": seed,
                        "apegan.mse_weight": cfg.loss.theta_mse, "target.arch": target.get("arch")}
            build = lambda key=key, seed=seed: build_baseline(  # noqa: E731
                key, summary["dataset"], cfg.known_attacks, width=cfg.network.width, channels=cfg.network.channels,
                epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr, seed=seed, device=device,
                target_arch=target.get("arch"), num_classes=cfg.network.num_classes, mse_weight=cfg.loss.theta_mse)
            jobs.append(Job(key, "baseline", seed, settings, tuple(cfg.known_attacks), build))
    return jobs


def _other_variants(summary: Mapping[str, Any]) -> list[str]:
    from addd.config import ABLATIONS

    return [v for v in ABLATIONS if v != "full"]


def _add_defense(spec):
    from addd.defense import ADDDefense

    return ADDDefense(spec.defense_config())


# ----------------------------------------------------------------------------- summary sections
def entry(records: list[dict[str, Any]], kind: str, note: str) -> dict[str, Any]:
    """A summary entry shaped like summary["variants"][v]: config, per seed figures, stats over seeds."""
    from sweeps.summary import _over_seeds, prefixed
    from sweeps.trialspec import OBJECTIVE

    per_seed = [{"seed": r["seed"], "trial_id": f"study:{r['name']}-seed{r['seed']}", "val_objective": r["metrics"].get(OBJECTIVE),
                 "error": None, "test": prefixed(r["metrics"], "test"), "adaptive": prefixed(r["metrics"], "adaptive")}
                for r in sorted(records, key=lambda r: r["seed"])]
    return {"search": {"kind": kind, "note": note}, "best_config": records[0]["config"] if records else None,
            "known_attacks": records[0]["known_attacks"] if records else None,
            "seeds": per_seed, "test": _over_seeds(per_seed, "test"), "adaptive": _over_seeds(per_seed, "adaptive")}


def defenses(summary: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """Every defense of the study: name -> (kind, entry); name is its finals folder prefix."""
    out: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for v, e in summary.get("variants", {}).items():
        out[v] = ("tuned", e)
    for v, e in summary.get("fixed", {}).items():
        out[fixed_name(v)] = ("fixed", e)
    for k, e in summary.get("baselines", {}).items():
        out[k] = ("baseline", e)
    return out


def known_of(entry_: Mapping[str, Any]) -> tuple[str, ...]:
    from sweeps.trialspec import pair_attacks

    known = entry_.get("known_attacks")
    if known is None:
        known = (entry_.get("best_config") or {}).get("known_attacks", ())
    return pair_attacks(known) if isinstance(known, str) else tuple(known)


def comparison_figures(summary: Mapping[str, Any]) -> list[str]:
    from addd.adaptive import METRICS

    return (["worst.unknown", "worst.unknown_per_sample", "worst.holdout"]
            + [f"acc.defended.{a}" for a in summary.get("eval_attacks", [])] + list(METRICS))


def comparisons(summary: Mapping[str, Any], finals_dir: Path, *, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """name -> {kind, figures: {figure: Difference.to_dict()}} for every defense but full."""
    from ablations.stats import StatsError, load_seed_arrays, paired_difference
    from sweeps.trial import PER_EXAMPLE_FILE

    def arrays(name: str) -> dict[int, dict]:
        found = {}
        for path in finals_dir.glob(f"{name}-seed*/{PER_EXAMPLE_FILE}"):
            prefix, _, k = path.parent.name.rpartition("-seed")
            if prefix == name and k.isdigit():
                found[int(k)] = load_seed_arrays(path)
        return found

    all_defenses = defenses(summary)
    if "full" not in all_defenses:
        return {}
    full = arrays("full")
    known_full = known_of(all_defenses["full"][1])
    holdout = tuple(summary.get("holdout_attacks", ()))
    out: dict[str, Any] = {}
    for name, (kind, e) in all_defenses.items():
        if name == "full":
            continue
        other = arrays(name)
        figures, skipped = {}, {}
        for figure in comparison_figures(summary):
            try:
                figures[figure] = paired_difference(full, other, figure, known_full=known_full, known_other=known_of(e),
                                                    holdout=holdout, n_boot=n_boot, seed=seed).to_dict()
            except StatsError as exc:
                skipped[figure] = str(exc)
        out[name] = {"kind": kind, "vs": "full", "n_boot": n_boot, "figures": figures, "skipped": skipped}
    return out


# ----------------------------------------------------------------------------- the study
def _device(summary: Mapping[str, Any]) -> str:
    import torch

    wanted = ((summary.get("variants", {}).get("full") or {}).get("best_config") or {}).get("train.device", "cpu")
    return "cuda" if wanted == "cuda" and torch.cuda.is_available() else "cpu"


def _data_root(run_dir: Path) -> Path:
    plan = run_dir / "plan.json"
    if plan.exists():
        try:
            return Path(json.loads(plan.read_text())["data_root"])
        except (ValueError, KeyError):
            pass
    return Path("./data")


def _run_job_alone(job: "Job", ctx, finals_dir: Path) -> tuple[dict[str, Any], bool]:
    """run_job in a task of its own: one torch thread (the tasks share the machine's cores)."""
    import torch

    torch.set_num_threads(1)
    return run_job(job, ctx, finals_dir)


def run_study(run_dir: str | Path, *, tracker=None, parent_run_id: str | None = None, n_boot: int = 2000,
              data_root: Path | None = None, allow_generation: bool = False, report: bool = True,
              map_fn: Callable[[Callable, list], list] | None = None) -> Path:
    """Run what the sweep in ``run_dir`` lacks (fixed ablations, baselines, their adaptive
    figures and curves), add ``fixed``, ``baselines``, ``comparisons`` and ``study`` to its
    summary.json, write the report into ``<run_dir>/report/`` and, with ``tracker`` (a
    sweeps._mlflow.Tracker) and ``parent_run_id``, log each new final as a child run and the
    summary and report on the parent. ``map_fn(fn, jobs)`` (e.g. Ray tasks) runs the finals in
    parallel; without it they run one after the other in this process. Idempotent: a final whose ``metrics.json`` exists is not
    re-run. Returns the path of summary.json."""
    import torch

    from addd.storage import atomic_write_bytes
    from sweeps.summary import SUMMARY_FILE

    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(f"no readable summary.json in {run_dir} ({exc}); pass the run folder of a finished sweep") from None
    t0 = time.perf_counter()
    finals_dir = run_dir / FINALS_DIR
    device = _device(summary)
    jobs = study_jobs(summary, device)
    todo = [j for j in jobs if not (finals_dir / j.folder / METRICS_FILE).exists()]
    timings: dict[str, float] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    trained: list[str] = []
    if todo:
        start = time.perf_counter()
        train_attacks = tuple(dict.fromkeys(a for j in jobs for a in j.known))
        _, target, sets = load_sets(summary, data_root=data_root or _data_root(run_dir), train_attacks=train_attacks,
                                    allow_generation=allow_generation, device=device)
        ctx = trial_context(summary, sets, target, threads=torch.get_num_threads())
        timings["load_sets"] = time.perf_counter() - start
    computed: dict[str, tuple[dict[str, Any], bool]] = {}
    if todo and map_fn is not None:  # the finals are independent: one task each (the sweep's Ray)
        todo = sorted(todo, key=expected_cost, reverse=True)  # longest first: no long job left alone at the end
        results = map_fn(functools.partial(_run_job_alone, ctx=ctx, finals_dir=finals_dir), todo)
        computed = {job.folder: result for job, result in zip(todo, results)}
    for job in jobs:
        if job.folder in computed:
            record, fresh = computed[job.folder]
        elif job in todo:
            record, fresh = run_job(job, ctx, finals_dir)
        else:
            record, fresh = json.loads((finals_dir / job.folder / METRICS_FILE).read_text()), False
        timings[job.folder] = sum(record["seconds"].values())  # when it was computed (this run or before)
        records.setdefault(job.name, []).append(record)
        if fresh:
            trained.append(job.folder)
        if tracker is not None and parent_run_id:
            _log_child(tracker, parent_run_id, job, record)
    summary["fixed"] = {name.removeprefix("fixed-"): entry(r, "fixed", f"the best full config with {name.removeprefix('fixed-')}'s "
                                                              f"component removed, full's seeds")
                        for name, r in records.items() if name.startswith("fixed-")}
    summary["baselines"] = {name: entry(r, "baseline", "same split, known attacks, epochs, batch size, lr, width and "
                                                      "seeds as the best full config")
                            for name, r in records.items() if name in BASELINE_KEYS}
    start = time.perf_counter()
    summary["comparisons"] = comparisons(summary, finals_dir, n_boot=n_boot)
    timings["bootstrap"] = time.perf_counter() - start
    timings["this_run"] = time.perf_counter() - t0
    summary["study"] = {"format": STUDY_FORMAT, "device": device, "n_boot": n_boot, "trained": trained,
                        "timings_seconds": timings,
                        "parallelism": ("parallel: one Ray task per final, longest first" if map_fn is not None
                                        else "sequential: one final at a time, all torch threads")}
    atomic_write_bytes(summary_path, json.dumps(summary, indent=1).encode())
    if report:
        from ablations.report import build_report

        paths = build_report(summary, run_dir / REPORT_DIR, finals_dir=finals_dir)
        if tracker is not None and parent_run_id:
            tracker.log_artifact(parent_run_id, summary_path)
            for path in paths:
                tracker.log_artifact(parent_run_id, path, REPORT_DIR)
            tracker.log_metrics(parent_run_id, study_metrics(summary), step=0)
    log.info("study done in %.0fs (%d final(s) trained now)", timings["this_run"], len(trained))
    return summary_path


def study_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Parent-run figures of the study: ``<name>/test/...``, ``<name>/adaptive/...`` (means) and
    ``<name>/diff/<figure>`` (other − full)."""
    from sweeps.driver import _threat_name

    metrics: dict[str, float] = {}
    for name, (kind, e) in defenses(summary).items():
        if kind == "tuned":
            continue  # the sweep logged those
        for figure, stats in e["test"].items():
            metrics[f"{name}/test/{_threat_name(figure)}"] = stats["mean"]
        for figure, stats in e["adaptive"].items():
            metrics[f"{name}/adaptive/{figure}"] = stats["mean"]
    for name, c in summary.get("comparisons", {}).items():
        for figure, d in c["figures"].items():
            metrics[f"{name}/diff/{figure}"] = d["difference"]
    return metrics


def _log_child(tracker, parent_run_id: str, job: Job, record: Mapping[str, Any]) -> None:
    """One child run per study final (as the sweep's trials), created once: a rerun finds it."""
    from sweeps._mlflow import PARENT_TAG, TRIAL_TAG

    key = f"study:{job.folder}"
    found = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{key}'",
        max_results=1)
    if found and found[0].info.status == "FINISHED":
        return
    params = {"phase": "final", "variant": job.name, "kind": job.kind, **{k: v for k, v in job.config.items()
                                                                         if k not in ("phase", "variant")}}
    run_id = tracker.child(parent_run_id, key, job.folder, params, {"addd.study": job.kind})
    tracker.log_metrics(run_id, record["metrics"], step=int(job.config.get("train.epochs", 0) or 0))
    tracker.finish(run_id, ok=True)
