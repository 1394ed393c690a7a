"""The sweep's last phase, the ablation study: fixed ablations, the paper's baselines, paired statistics.

Run from the sweep's publish step it reuses what ``prepare`` built (the trial context: data,
target model, cached sets); run alone on a finished sweep's run folder (``summary.json``,
``finals/``, the cache dir and target model it names) it rebuilds them through the driver's own
functions. :func:`run_study` runs what is missing and adds it to ``summary.json``:

- **fixed ablations** ``fixed-<variant>``: the best ``full`` config with one component removed
  (``addd.config.ablation``), re-run over full's seeds (``summary["fixed"][<variant>]``);
- **baselines** ``no_defense``, ``ape_gan``, ``adv_training`` (``addd.baselines``), with the best
  full config's data split, known attacks, epochs, batch size, lr, width and seeds
  (``summary["baselines"][<key>]``);
- **comparisons**: for every tuned variant, fixed ablation and baseline, the difference to
  ``full`` per figure with a paired-bootstrap 95% interval (``ablations.stats``) and a verdict in
  words (``summary["comparisons"][<name>]``).

Each new defense is evaluated exactly like the sweep's finals, by the same function
(``sweeps.trial.evaluate_final``): the oblivious
suite on the val and test splits (the sweep's cached sets, read with the sweep's exact
requests; nothing is regenerated, a missing set is an error), the adaptive suite on its whole
pipeline, and the robustness curve on seed 0. A baseline's pipeline is
``classifier_for(M_t)(restore(x))``: the trial's context is handed the baseline's classifier as
its model (for ``adv_training`` the adversarially trained network; so its ``acc.clean`` is that
network on clean x and its ``acc.undefended.<a>`` is that network on the oblivious sets made on
M_t, a transfer attack). Files go to ``finals/<name>-seed<k>/`` like the sweep's finals, plus
``metrics.json`` (written last: its presence means that final is done, so a second run trains
and attacks nothing).

From the sweep the finals run in parallel, one Ray task each (``map_fn``), longest first; alone
they run one after another with all torch threads (``summary["study"]["parallelism"]`` says which).

The command line (successor of ``python -m ablations.run``, same flags)::

    python -m sweeps.study --sweep runs/digits_ablation
    python -m sweeps.study --sweep <MLflow parent run id> --tracking-uri sqlite:///runs/digits_ablation/mlflow.db
    python -m sweeps.study --space digits_ablation --config paper.json [--smoke] [--seeds 3]
    python -m sweeps.study --space digits_robust --config member.json --adaptive-n 200 --baselines adv_training

``--config``: flat DefenseConfig keys as JSON, e.g. the paper's Appendix D weights
``{"loss.lambda_prior": 1e-4, "loss.lambda_dp": 1, "loss.lambda_cls": 1e-3, "loss.theta_mse": 1000,
"known_attacks": ["PGDu", "PGDt"]}``: trains ``full`` from the config over the seeds (evaluated like
a sweep's final), then the fixed ablations and baselines, then the report. ``--adaptive-n`` evaluates
the adaptive attacks on more (or fewer) test images than the space's; ``--baselines`` runs only the
named baselines (``summary["study_baselines"]``). Writes
``<run>/summary.json`` and ``<run>/report/`` and logs both on the MLflow parent run. A run id is
resolved to its run folder through the parent run's tag ``addd.run_dir``, else its ``plan.json``
artifact; the tracking URI is ``--tracking-uri`` or $MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from addd.errors import AdddError
from addd.figures import WORST_UNKNOWN
from addd.figures import figure as figure_of
from addd.runfolder import METRICS_FILE, PER_EXAMPLE_FILE, REPORT_DIR, RunFolder, experiment_name, final_folder

WORST_UNKNOWN_TEST = figure_of(WORST_UNKNOWN).trial_key("test")  # the figure a finished final's log line shows
log = logging.getLogger("sweeps.study")  # also under python -m (progress the console shows)

BASELINE_KEYS = ("no_defense", "ape_gan", "adv_training")
# Defenses whose figures cannot depend on the seed: nothing is trained and every attack of a final
# is seeded alike (Finalists.seed, Probe.seed). Their first seed is evaluated; each other seed's
# final is a copy of it (its record says ``same_as``), so the paired statistics still pair seed for seed.
SEED_FREE = ("no_defense",)
# A pareto sweep's reference: the paper's ADD-Defense setting (summary["paper_setting"]: App. D's
# weights, the first cached known-attack choice) over full's seeds, drawn beside the front.
PAPER_SETTING = "paper_setting"
# The figures each front member is compared with adv_training on (member − adv_training, paired).
FRONT_FIGURES = ("adaptive.aa_linf", "adaptive.aa_l2", "adaptive.pgd_worst", WORST_UNKNOWN)
STUDY_FORMAT = "addd-study/1"


class StudyError(AdddError):
    """The study cannot run on this folder as asked; the message says what to do."""


def fixed_name(variant: str) -> str:
    return f"fixed-{variant}"


# ----------------------------------------------------------------------------- the sweep's data
def _refuse_generation(name, *args, **kwargs):  # AdvCache.run_attack: only ever called to generate
    raise StudyError(f"the study would regenerate the {name} set; it must read the sweep's cached sets "
                     f"(pass the sweep's run folder with its cache dir intact)")


def space_as_run(summary: Mapping[str, Any]):
    """The space of the sweep behind ``summary``, narrowed as it ran (``run.py --attacks`` and
    ``--adaptive-n`` change the attacks, the holdout and the adaptive subset; summary.json says)."""
    from sweeps.spaces import get_space

    space = get_space(summary["space"], smoke=bool(summary.get("smoke")))
    n = (summary.get("finalists") or {}).get("adaptive_test_examples")
    return dataclasses.replace(space, eval_attacks=tuple(summary["eval_attacks"]),
                               holdout_attacks=tuple(summary.get("holdout_attacks", ())),
                               adaptive_n=n if isinstance(n, int) else None,
                               attack_budget=float(summary["attack_budget"]),
                               **_objective_as_run(space, summary)).validate()


def _objective_as_run(space, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The objective and probe sizes the sweep ran with (``run.py --objective/--probe-n/--probe-steps``)."""
    given = summary.get("search_objective") or {}
    probe = given.get("probe") or {}
    return {"objective": given.get("name", space.objective), "probe_n": probe.get("val_examples", space.probe_n),
            "probe_steps": probe.get("steps", space.probe_steps)}


def load_sets(summary: Mapping[str, Any], *, data_root: Path, train_attacks: tuple[str, ...],
              allow_generation: bool = False, device: str = "cpu"):
    """(dataset, target entry, {split: SplitSets}) with the sweep's exact AdvRequests (the driver's
    ``sweeps.trial.sweep_requests``), so the cache returns the very sets the sweep's trials saw.
    Without ``allow_generation``, a set missing from the cache is a StudyError, never regenerated."""
    from addd.advcache import AdvCache
    from addd.attack_names import is_online
    from addd.target_models import load_target_entry
    from sweeps.trial import cached_sets, sweep_dataset, sweep_requests

    train_attacks = tuple(a for a in train_attacks if not is_online(a))  # made per batch in training, never cached
    space = space_as_run(summary)
    dataset = sweep_dataset(space, data_root)
    if summary.get("data_fingerprint") and dataset.fingerprint() != summary["data_fingerprint"]:
        raise StudyError(f"the data under {data_root} is not the data the sweep used (fingerprint "
                         f"{dataset.fingerprint()} != {summary['data_fingerprint']}); pass its --data-root")
    target = load_target_entry(summary["target_model"]["path"], device=device)
    if summary["target_model"].get("sha256") and target.weights_sha256 != summary["target_model"]["sha256"]:
        raise StudyError(f"{summary['target_model']['path']} is not the target model the sweep attacked "
                         f"(weights sha256 differ)")
    cache = AdvCache.under(summary["cache_dir"], **({} if allow_generation else {"run_attack": _refuse_generation}))
    requests = sweep_requests(space, dataset, target, device=device, train_attacks=train_attacks)
    missing = [f"{split}/{r.attack}" for split, rs in requests.items() for r in rs if not cache.has(r)]
    if missing and not allow_generation:
        raise StudyError(f"the sweep's cache {summary['cache_dir']} lacks {', '.join(missing)}; the study reads the "
                         f"sweep's sets and never regenerates them: pass the run folder of a finished sweep with its cache")
    return dataset, target, cached_sets(dataset, cache, requests)


def trial_context(summary: Mapping[str, Any], sets, target, *, threads: int):
    """The TrialContext the sweep's finals had, through the driver's builder (``sweeps.trial.build_context``)."""
    from sweeps.trial import build_context

    return build_context(space_as_run(summary), sets, target.model, threads=threads)


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
        return final_folder(self.name, self.seed)


def _seed_copies(jobs: list[Job]) -> dict[str, Job]:
    """job folder -> the job whose final it copies: each SEED_FREE defense's other seeds -> its first."""
    first: dict[str, Job] = {}
    copies = {}
    for job in sorted(jobs, key=lambda j: j.seed):
        if job.name in SEED_FREE:
            if job.name in first:
                copies[job.folder] = first[job.name]
            else:
                first[job.name] = job
    return copies


def copy_final(source: Job, job: Job, folder: RunFolder, record: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``job``'s final as a copy of ``source``'s (a SEED_FREE defense): its tensor files, and
    its record with this job's seed and config, ``same_as`` naming the source, no seconds spent."""
    import shutil

    from addd.storage import atomic_write_bytes
    from sweeps.trial import SECONDS_PREFIX

    src, out = folder.final(source.name, source.seed), folder.final(job.name, job.seed)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.safetensors")):
        shutil.copyfile(path, out / path.name)
    copied = {**record, "seed": job.seed, "config": job.config, "same_as": source.folder,
              "seconds": {"train": 0.0, "evaluate": 0.0},
              "metrics": {k: v for k, v in record["metrics"].items() if not k.startswith(SECONDS_PREFIX)}}
    atomic_write_bytes(out / METRICS_FILE, json.dumps(copied, indent=1).encode())  # last: it marks the final done
    log.info("study: %s seed %d is seed %d's final (nothing trained, attacks seeded alike): copied", job.name,
             job.seed, source.seed)
    return copied


def run_job(job: Job, ctx, folder: RunFolder) -> tuple[dict[str, Any], bool]:
    """(the record of metrics.json, whether it was computed now). Skips a done final."""
    import torch

    from addd.storage import atomic_write_bytes
    from sweeps.trial import evaluate_final

    out = folder.final(job.name, job.seed)
    done = out / METRICS_FILE
    if done.exists():
        return json.loads(done.read_text()), False
    start = time.perf_counter()
    defense = job.build()
    from addd.attack_names import is_online
    from addd.defense import ADDDefense
    from sweeps.trial import cached_known

    device = next((p.device for p in defense.parameters()), torch.device("cpu"))
    log.info("study: training %s (seed %d) on %s", job.name, job.seed, device)
    # an online adaptive attack (PGDa) runs through M_t∘G∘E: ADD-Defense needs M_t (adversarial training attacks its own model)
    online = {"target_model": ctx.target_model} if isinstance(defense, ADDDefense) and any(map(is_online, job.known)) else {}
    defense.fit(ctx.train.x, ctx.train.y, cached_known(ctx, job.known), **online)
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
             metrics.get(WORST_UNKNOWN_TEST, float("nan")))
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
    wanted = study_baselines(summary)
    if summary.get(PAPER_SETTING) and PAPER_SETTING in wanted:
        for seed in seeds:
            s = TrialSpec.final("full", {**summary[PAPER_SETTING], "train.device": device}, seed)
            jobs.append(Job(PAPER_SETTING, "baseline", seed, s.to_config(), s.defense_config().known_attacks,
                            lambda s=s: _add_defense(s)))
    target = summary["target_model"]
    for key in (k for k in BASELINE_KEYS if k in wanted):
        known = _baseline_known(key, cfg.known_attacks)
        for seed in seeds:
            settings = {"baseline": key, "known_attacks": list(known), "network.width": cfg.network.width,
                        "network.channels": cfg.network.channels, "train.epochs": cfg.train.epochs,
                        "train.batch_size": cfg.train.batch_size, "train.lr": cfg.train.lr, "train.seed": seed,
                        "apegan.mse_weight": cfg.loss.theta_mse, "target.arch": target.get("arch")}
            build = lambda key=key, seed=seed, known=known: build_baseline(  # noqa: E731
                key, summary["dataset"], known, width=cfg.network.width, channels=cfg.network.channels,
                epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr, seed=seed, device=device,
                target_arch=target.get("arch"), num_classes=cfg.network.num_classes, mse_weight=cfg.loss.theta_mse)
            jobs.append(Job(key, "baseline", seed, settings, tuple(known), build))
    return jobs


def study_baselines(summary: Mapping[str, Any]) -> tuple[str, ...]:
    """The baselines the study runs: summary["study_baselines"] where a command line narrowed them
    (``python -m sweeps.study --baselines``), else every one (and the paper's setting where the
    summary carries it)."""
    given = summary.get("study_baselines")
    return tuple(given) if given is not None else (*BASELINE_KEYS, PAPER_SETTING)


def _baseline_known(key: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """The known attacks a baseline trains on: full's, except that APE-GAN (a generator trained on
    fixed pairs) cannot train on an online adaptive attack; adversarial training runs it on itself."""
    from addd.attack_names import is_online

    if key != "ape_gan" or not any(map(is_online, known)):
        return tuple(known)
    cached = tuple(a for a in known if not is_online(a))
    if not cached:
        raise StudyError(f"ape_gan cannot train on {'+'.join(known)} alone (online attacks only); give full's "
                         f"known-attack choice a cached attack too, e.g. PGDu+PGDa")
    return cached


def _other_variants(summary: Mapping[str, Any]) -> list[str]:
    from addd.config import ABLATIONS

    if summary.get("study_fixed_ablations") is False:  # the space asks another question (digits_robust)
        return []
    return [v for v in ABLATIONS if v != "full"]


def _add_defense(spec):
    from addd.defense import ADDDefense

    return ADDDefense(spec.defense_config())


# ----------------------------------------------------------------------------- summary sections
def entry(records: list[dict[str, Any]], kind: str, note: str) -> dict[str, Any]:
    """A summary entry shaped like summary["variants"][v]: config, per seed figures, stats over seeds."""
    from sweeps.summary import config_entry, over_seeds, prefixed
    from sweeps.trialspec import OBJECTIVE

    per_seed = [{"seed": r["seed"], "trial_id": f"study:{r['name']}-seed{r['seed']}", "val_objective": r["metrics"].get(OBJECTIVE),
                 "error": None, "test": prefixed(r["metrics"], "test"), "adaptive": prefixed(r["metrics"], "adaptive"),
                 **({"same_as": r["same_as"]} if r.get("same_as") else {})}  # a SEED_FREE defense's copied final
                for r in sorted(records, key=lambda r: r["seed"])]
    return {"search": {"kind": kind, "note": note}, **config_entry(records[0]["config"] if records else None),
            "seeds": per_seed, "test": over_seeds(per_seed, "test"), "adaptive": over_seeds(per_seed, "adaptive")}


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
    """The figures compared to full: the worst cases, each oblivious attack, every adaptive figure."""
    from addd import figures as F

    return [*F.WORST_FIGURES, *(F.defended(a).name for a in summary.get("eval_attacks", [])), *F.ADAPTIVE_FIGURES]


def comparisons(summary: Mapping[str, Any], folder: RunFolder, *, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """name -> {kind, figures: {figure: Difference.to_dict()}} for every defense but full."""
    from ablations.stats import StatsError, load_seed_arrays, paired_difference

    def arrays(name: str) -> dict[int, dict]:
        return {k: load_seed_arrays(path) for k, path in folder.finals_of(name, PER_EXAMPLE_FILE).items()}

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


def member_folder(variant: str, entry_: Mapping[str, Any], member: Mapping[str, Any]) -> str:
    """The finals folder prefix of a front member: the variant's own for its best member (the one
    whose seed re-runs are the variant's), ``<variant>-front<m>`` for the others (sweeps.driver)."""
    from sweeps.trialspec import front_defense

    own = {s.get("trial_id") for s in entry_.get("seeds", [])}
    mine = {s.get("trial_id") for s in member.get("seeds", [])}
    return variant if mine and mine <= own else front_defense(variant, member)


def front_comparisons(summary: Mapping[str, Any], folder: RunFolder, *, n_boot: int, seed: int = 0) -> None:
    """Every front member of every pareto variant against adv_training: member − adv_training per
    :data:`FRONT_FIGURES`, paired by seed and test example (ablations.stats), as the member's
    ``vs_adv_training``. Nothing without an adv_training baseline."""
    from ablations.stats import StatsError, load_seed_arrays, paired_difference

    def arrays(name: str) -> dict[int, dict]:
        return {k: load_seed_arrays(path) for k, path in folder.finals_of(name, PER_EXAMPLE_FILE).items()}

    baseline = (summary.get("baselines") or {}).get("adv_training")
    if not baseline:
        return
    theirs, known_theirs = arrays("adv_training"), known_of(baseline)
    for variant, e in summary.get("variants", {}).items():
        for member in e.get("front") or ():
            ours, figures, skipped = arrays(member_folder(variant, e, member)), {}, {}
            for figure in FRONT_FIGURES:
                try:
                    figures[figure] = paired_difference(theirs, ours, figure, known_full=known_theirs,
                                                        known_other=known_of(member), n_boot=n_boot, seed=seed,
                                                        reference="adv_training").to_dict()
                except StatsError as exc:
                    skipped[figure] = str(exc)
            member["vs_adv_training"] = {"vs": "adv_training", "n_boot": n_boot, "figures": figures, "skipped": skipped}


# ----------------------------------------------------------------------------- the study
def _device(summary: Mapping[str, Any]) -> str:
    import torch

    wanted = ((summary.get("variants", {}).get("full") or {}).get("best_config") or {}).get("train.device", "cpu")
    return "cuda" if wanted == "cuda" and torch.cuda.is_available() else "cpu"


def _data_root(folder: RunFolder) -> Path:
    if folder.plan.exists():
        try:
            return Path(json.loads(folder.plan.read_text())["data_root"])
        except (ValueError, KeyError):
            pass
    return Path("./data")


def _run_job_alone(job: "Job", ctx, folder: RunFolder) -> tuple[dict[str, Any], bool]:
    """run_job in a task of its own: one torch thread (the tasks share the machine's cores)."""
    import torch

    torch.set_num_threads(1)
    return run_job(job, ctx, folder)


def _read_summary(folder: RunFolder) -> dict[str, Any]:
    try:
        return json.loads(folder.summary.read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(f"no readable summary.json in {folder.root} ({exc}); pass the run folder of a finished sweep") from None


def _run_finals(jobs: list[Job], ctx, folder: RunFolder, map_fn, tracker, parent_run_id: str | None):
    """Every job's record (computed now or read from its metrics.json), by defense name, and the
    finals trained now; each logged as a child run (with ``tracker``)."""
    copies = _seed_copies(jobs)
    todo = [j for j in jobs if not (folder.final(j.name, j.seed) / METRICS_FILE).exists()]
    run_now = [j for j in todo if j.folder not in copies]
    computed: dict[str, tuple[dict[str, Any], bool]] = {}
    if run_now and map_fn is not None:  # the finals are independent: one task each (the sweep's Ray)
        run_now = sorted(run_now, key=expected_cost, reverse=True)  # longest first: no long job left alone at the end
        results = map_fn(functools.partial(_run_job_alone, ctx=ctx, folder=folder), run_now)
        computed = {job.folder: result for job, result in zip(run_now, results)}
    records: dict[str, list[dict[str, Any]]] = {}
    trained, timings = [], {}
    for job in sorted(jobs, key=lambda j: j.folder in copies):  # a copy's source first
        if job.folder in computed:
            record, fresh = computed[job.folder]
        elif job in todo and job.folder in copies:
            source = copies[job.folder]
            record = copy_final(source, job, folder, json.loads((folder.final(source.name, source.seed) / METRICS_FILE).read_text()))
            fresh = False  # nothing trained
        elif job in todo:
            record, fresh = run_job(job, ctx, folder)
        else:
            record, fresh = json.loads((folder.final(job.name, job.seed) / METRICS_FILE).read_text()), False
        timings[job.folder] = sum(record["seconds"].values())  # when it was computed (this run or before)
        records.setdefault(job.name, []).append(record)
        if fresh:
            trained.append(job.folder)
        if tracker is not None and parent_run_id:
            _log_child(tracker, parent_run_id, job, record)
    return records, trained, timings


def _add_sections(summary: dict[str, Any], records: Mapping[str, list], folder: RunFolder, n_boot: int,
                  timings: dict[str, float]) -> None:
    """summary["fixed"], ["baselines"] and ["comparisons"] from the finals' records and files."""
    summary["fixed"] = {name.removeprefix("fixed-"): entry(r, "fixed", f"the best full config with {name.removeprefix('fixed-')}'s "
                                                              f"component removed, full's seeds")
                        for name, r in records.items() if name.startswith("fixed-")}
    summary["baselines"] = {name: entry(r, "baseline", "same split, known attacks, epochs, batch size, lr, width and "
                                                      "seeds as the best full config")
                            for name, r in records.items() if name in BASELINE_KEYS}
    if PAPER_SETTING in records:
        summary["baselines"][PAPER_SETTING] = entry(records[PAPER_SETTING], "baseline", "the paper's setting: App. D's "
                                                    "weights and the first cached known-attack choice, full's seeds")
    start = time.perf_counter()
    summary["comparisons"] = comparisons(summary, folder, n_boot=n_boot)
    front_comparisons(summary, folder, n_boot=n_boot)
    timings["bootstrap"] = time.perf_counter() - start


def _publish_report(summary: Mapping[str, Any], folder: RunFolder, tracker, parent_run_id: str | None) -> None:
    from ablations.report import build_report

    paths = build_report(summary, folder.report, finals_dir=folder.finals)
    if tracker is not None and parent_run_id:
        tracker.log_artifact(parent_run_id, folder.summary)
        for path in paths:
            tracker.log_artifact(parent_run_id, path, REPORT_DIR)
        tracker.log_metrics(parent_run_id, study_metrics(summary), step=0)


def run_study(run_dir: str | Path, *, tracker=None, parent_run_id: str | None = None, n_boot: int = 2000,
              data_root: Path | None = None, allow_generation: bool = False, report: bool = True,
              map_fn: Callable[[Callable, list], list] | None = None, ctx=None) -> Path:
    """Run what the sweep in ``run_dir`` lacks (fixed ablations, baselines, their adaptive
    figures and curves), add ``fixed``, ``baselines``, ``comparisons`` and ``study`` to its
    summary.json, write the report into ``<run_dir>/report/`` and, with ``tracker`` (a
    sweeps._mlflow.Tracker) and ``parent_run_id``, log each new final as a child run and the
    summary and report on the parent. ``ctx``: the sweep's TrialContext (from its prepare step);
    without it the data, target model and cached sets are loaded as the sweep made them.
    ``map_fn(fn, jobs)`` (e.g. Ray tasks) runs the finals in parallel; without it they run one
    after the other in this process. Idempotent: a final whose ``metrics.json`` exists is not
    re-run. Returns the path of summary.json."""
    import torch

    from addd.storage import atomic_write_bytes

    folder = RunFolder(Path(run_dir))
    summary = _read_summary(folder)
    t0 = time.perf_counter()
    device = _device(summary)
    jobs = study_jobs(summary, device)
    timings: dict[str, float] = {}
    if ctx is None and any(not (folder.final(j.name, j.seed) / METRICS_FILE).exists() for j in jobs):
        start = time.perf_counter()
        train_attacks = tuple(dict.fromkeys(a for j in jobs for a in j.known))
        _, target, sets = load_sets(summary, data_root=data_root or _data_root(folder), train_attacks=train_attacks,
                                    allow_generation=allow_generation, device=device)
        ctx = trial_context(summary, sets, target, threads=torch.get_num_threads())
        timings["load_sets"] = time.perf_counter() - start
    elif ctx is not None:
        ctx = dataclasses.replace(ctx, events_path=None)  # the sweep's events log is its trials'
    records, trained, final_timings = _run_finals(jobs, ctx, folder, map_fn, tracker, parent_run_id)
    timings.update(final_timings)
    _add_sections(summary, records, folder, n_boot, timings)
    timings["this_run"] = time.perf_counter() - t0
    summary["study"] = {"format": STUDY_FORMAT, "device": device, "n_boot": n_boot, "trained": trained,
                        "timings_seconds": timings,
                        "parallelism": ("parallel: one Ray task per final, longest first" if map_fn is not None
                                        else "sequential: one final at a time, all torch threads")}
    atomic_write_bytes(folder.summary, json.dumps(summary, indent=1).encode())
    if report:
        _publish_report(summary, folder, tracker, parent_run_id)
    log.info("study done in %.0fs (%d final(s) trained now)", timings["this_run"], len(trained))
    return folder.summary


def study_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Parent-run figures of the study: ``<name>/test/...``, ``<name>/adaptive/...`` (means) and
    ``<name>/diff/<figure>`` (other − full); spelled by ``addd.figures``."""
    from addd.figures import parent_metrics

    metrics: dict[str, float] = {}
    for name, (kind, e) in defenses(summary).items():
        if kind != "tuned":  # the sweep logged those
            metrics.update(parent_metrics(name, e))
    for name, c in summary.get("comparisons", {}).items():
        for figure, d in c["figures"].items():
            metrics[f"{name}/diff/{figure}"] = d["difference"]
    from sweeps.trialspec import front_defense

    for variant, e in summary.get("variants", {}).items():  # a pareto front: each member − adv_training
        for member in e.get("front") or ():
            for figure, d in ((member.get("vs_adv_training") or {}).get("figures") or {}).items():
                metrics[f"{front_defense(variant, member)}/vs_adv_training/{figure}"] = d["difference"]
    return metrics


def _log_child(tracker, parent_run_id: str, job: Job, record: Mapping[str, Any]) -> None:
    """One child run per study final (as the sweep's trials), created once: a rerun finds it."""
    key = f"study:{job.folder}"
    found = tracker.find_child(parent_run_id, key)
    if found is not None and found[1] == "FINISHED":
        return
    from sweeps.trialspec import final_params

    params = final_params(job.name, job.config, kind=job.kind)  # the config that ran: a fixed ablation applied
    run_id = tracker.child(parent_run_id, key, job.folder, params, {"addd.study": job.kind})
    tracker.log_metrics(run_id, record["metrics"], step=int(job.config.get("train.epochs", 0) or 0))
    tracker.finish(run_id, ok=True)


# ----------------------------------------------------------------------------- the command line
class RunError(AdddError):
    """The command line does not name something the study can run on; the message says what to do."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweeps.study", description=__doc__,
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
    p.add_argument("--adaptive-n", type=int, help="with --space: adaptive attacks on the first N test images (default: the space's)")
    p.add_argument("--baselines", nargs="+", choices=(*BASELINE_KEYS, PAPER_SETTING), metavar="NAME",
                   help=f"with --space: only these baselines ({', '.join((*BASELINE_KEYS, PAPER_SETTING))}; default: all)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates per interval (default 2000)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; re-raise errors")
    return p


def resolve_sweep(sweep: str, tracking_uri: str | None) -> tuple[Path, str | None]:
    """(run folder, tracking URI) of a run folder or an MLflow parent run id."""
    from sweeps import _mlflow

    path = Path(sweep)
    if path.is_dir():
        if not RunFolder(path).summary.exists():
            raise RunError(f"{path} has no summary.json; pass the run folder of a finished sweep")
        return path.resolve(), tracking_uri or _plan(RunFolder(path)).get("tracking_uri")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RunError(f"{sweep!r} is not a folder; to use it as an MLflow run id give --tracking-uri (or set MLFLOW_TRACKING_URI)")
    if not re.fullmatch(r"[0-9a-f]{32}", sweep):
        raise RunError(f"{sweep!r} is neither a run folder nor an MLflow run id (32 hex digits); pass one of them")
    run_dir = Path(_mlflow.run_dir_of(uri, sweep))
    if not RunFolder(run_dir).summary.exists():
        raise RunError(f"run {sweep}'s folder {run_dir} has no summary.json here; pass the folder itself if it moved")
    return run_dir, uri


def _plan(folder: RunFolder) -> dict[str, Any]:
    try:
        return json.loads(folder.plan.read_text())
    except (OSError, ValueError):
        return {}


def tracker_for(run_dir: Path, summary: Mapping[str, Any], tracking_uri: str | None):
    """The sweep's MLflow tracker (same experiment and artifact location as sweeps.plan.Plan)."""
    from sweeps import _mlflow

    folder = RunFolder(run_dir)
    uri = tracking_uri or folder.default_tracking_uri
    return _mlflow.Tracker(uri, experiment_name(summary["space"]), folder.artifact_location(uri))


def study_sweep(sweep: str, tracking_uri: str | None, n_boot: int) -> Path:
    run_dir, uri = resolve_sweep(sweep, tracking_uri)
    summary = _read_summary(RunFolder(run_dir))
    tracker = tracker_for(run_dir, summary, uri)
    return run_study(run_dir, tracker=tracker, parent_run_id=summary.get("mlflow_parent_run_id"), n_boot=n_boot)


def _given_config(space, path: Path, device: str) -> tuple[dict[str, Any], Any]:
    """(the JSON of --config, the DefenseConfig it makes on the space's base config)."""
    try:
        given = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read --config {path} ({exc}); give a JSON object of flat DefenseConfig keys") from None
    if not isinstance(given, dict):
        raise RunError(f"--config {path} must hold a JSON object of flat DefenseConfig keys")
    return given, space.base_config().replace(**{**given, "train.device": device})  # ConfigError names a bad key


def _config_parent(args: argparse.Namespace, space, folder: RunFolder, tracker, flat: Mapping[str, Any]) -> str:
    """The MLflow parent run of a study of a given config: the one in study.json, or a new one."""
    from sweeps._mlflow import RUN_DIR_TAG

    if folder.study_state.exists():
        return json.loads(folder.study_state.read_text())["parent_run_id"]
    parent = tracker.start_parent(f"{space.name}{'-smoke' if args.smoke else ''}-config-study",
                                  {"space": space.name, "smoke": str(args.smoke), "config": str(args.config),
                                   RUN_DIR_TAG: str(folder.root)}, {f"config.{k}": v for k, v in flat.items()})
    folder.study_state.write_text(json.dumps({"parent_run_id": parent}))
    return parent


def _train_given(args: argparse.Namespace, summary: dict[str, Any], cfg, flat: Mapping[str, Any], folder: RunFolder,
                 tracker, device: str, seeds: int) -> None:
    """``full`` from the given config over ``seeds``, evaluated like a sweep's final, into ``summary``."""
    import torch

    from sweeps.trialspec import FINAL, OBJECTIVE, TrialSpec

    start = time.perf_counter()
    _, target, sets = load_sets(summary, data_root=args.data_root, train_attacks=tuple(cfg.known_attacks),
                                allow_generation=True, device=device)
    ctx = trial_context(summary, sets, target, threads=torch.get_num_threads())
    records = []
    for seed in range(seeds):
        spec = TrialSpec(FINAL, "full", {**flat, "train.seed": seed})
        job = Job("full", "tuned", seed, spec.to_config(), tuple(cfg.known_attacks), lambda spec=spec: _add_defense(spec))
        record, _ = run_job(job, ctx, folder)
        records.append(record)
        _log_child(tracker, summary["mlflow_parent_run_id"], job, record)
    full = entry(records, "given", f"the config of {args.config}, no search")
    full["search"] = {"trials": 0, "best_val_objective": None, "note": f"given config {args.config}, no search"}
    summary["variants"] = {"full": full}
    best = max(records, key=lambda r: r["metrics"].get(OBJECTIVE, float("-inf")))
    summary["best"] = TrialSpec.parse(best["config"]).best_entry(best["metrics"].get(OBJECTIVE))
    summary["timings_seconds"] = {"full": time.perf_counter() - start}


def config_space(args: argparse.Namespace):
    """The space of ``--space`` (``--smoke``), with ``--adaptive-n`` applied (``Space.validate``: N >= 1;
    an N above the test split attacks the whole split)."""
    from sweeps.spaces import get_space

    space = get_space(args.space, smoke=args.smoke)
    if args.adaptive_n is None:
        return space
    return dataclasses.replace(space, adaptive_n=args.adaptive_n).validate()  # SpaceError: one error line


def study_config(args: argparse.Namespace) -> Path:
    """Train full from a given config over seeds (like a sweep's finals), then run the study."""
    import torch

    from addd.config import to_flat_dict
    from addd.storage import atomic_write_bytes
    from addd.target_models import default_cache_dir, get_target_model
    from addd.figures import legend
    from sweeps.summary import FORMAT, summary_header
    from sweeps.trial import sweep_dataset

    space = config_space(args)
    device = "cuda" if space.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    given, cfg = _given_config(space, args.config, device)
    flat = to_flat_dict(cfg)
    folder = RunFolder((args.run_dir or Path("runs") / f"{space.name}{'-smoke' if args.smoke else ''}-config").resolve())
    cache_dir = (args.cache_dir or default_cache_dir()).resolve()
    folder.root.mkdir(parents=True, exist_ok=True)
    dataset = sweep_dataset(space, args.data_root)
    target = get_target_model(dataset, arch=space.target_arch, cache_dir=cache_dir, device=device)
    summary: dict[str, Any] = {"format": FORMAT, **summary_header(space, args.smoke, dataset, target, cache_dir),
                               "config_source": str(args.config), "objective": "none: a given config, no search",
                               "threat_models": legend()}
    if args.baselines:
        summary["study_baselines"] = list(dict.fromkeys(args.baselines))
    folder.plan.write_text(json.dumps({"run_dir": str(folder.root), "data_root": str(args.data_root.resolve()),
                                       "config": given}, indent=1))
    tracker = tracker_for(folder.root, summary, args.tracking_uri)
    summary["mlflow_parent_run_id"] = _config_parent(args, space, folder, tracker, flat)
    _train_given(args, summary, cfg, flat, folder, tracker, device, args.seeds or space.seeds)
    atomic_write_bytes(folder.summary, json.dumps(summary, indent=1).encode())
    return run_study(folder.root, tracker=tracker, parent_run_id=summary["mlflow_parent_run_id"], n_boot=args.n_boot,
                     data_root=args.data_root, allow_generation=True)


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
    if args.sweep and (args.adaptive_n is not None or args.baselines):
        print("error: --adaptive-n and --baselines go with --space and --config; a --sweep study runs as the sweep did",
              file=sys.stderr)
        return 2
    try:
        summary_path = study_sweep(args.sweep, args.tracking_uri, args.n_boot) if args.sweep else study_config(args)
    except AdddError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"summary: {summary_path}")
    print(f"report:  {RunFolder(summary_path.parent).report_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
