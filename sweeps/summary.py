"""Turn trial outcomes into ``summary.json``: best config per variant, test figures over seeds,
each figure under the threat model it was computed in.

Pure data in, JSON-friendly dict out; no Ray, Optuna, MLflow or torch here. A sweep always ends
with a summary: a variant whose search produced no finite objective gets ``best: null`` and the
reason instead of stopping the publication of every other variant.
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from addd import figures
from addd.figures import legend
from sweeps.spaces import PARETO
from sweeps.trialspec import EPOCH, PARETO_KEYS, TrialOutcome, is_finite, ran_config

# the figures computed on the validation split only (the search's probe): summary["..."]["val"]
VAL_FIGURES: tuple[str, ...] = (figures.PROBE, figures.WORST_WITH_PROBE)
PROBE_KEY = figures.FIGURES[figures.PROBE].trial_key()  # a trial's report key of the probe

FORMAT = "addd-sweep-summary/2"


def summary_header(space: Any, smoke: bool, dataset: Any, target: Any, cache_dir: Any) -> dict[str, Any]:
    """What every summary.json starts with (a sweep's and a study of a given config): the space,
    the data (``dataset``: an ``addd.data`` dataset), the target model (an ``addd.target_models``
    entry) and the attack settings the figures were computed with."""
    return {
        "space": space.name,
        "smoke": smoke,
        "dataset": space.dataset,
        "data_fingerprint": dataset.fingerprint(),
        "splits": space.split_sizes() | {split: len(getattr(dataset, split)) for split in ("train", "val", "test")},
        "target_model": {"arch": target.arch, "sha256": target.weights_sha256, "path": str(target.path),
                         "clean_test_accuracy": target.clean_test_accuracy},
        "attack_budget": space.attack_budget,
        "eval_attacks": list(space.attacks),
        "holdout_attacks": list(space.holdout_attacks),
        "finalists": space.describe_finalists(),
        "search_objective": space.describe_objective(),
        "cache_dir": str(cache_dir),
        # a pareto sweep's study re-runs the paper's setting as the front's reference (sweeps.study)
        "study_fixed_ablations": getattr(space, "study_fixed_ablations", True),
        **({"paper_setting": space.paper_setting()} if getattr(space, "objective", None) == PARETO else {}),
    }


def _stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample std and a 95% t-interval of the mean over seeds (NaN-free values only)."""
    finite = [float(v) for v in values if is_finite(v)]
    n = len(finite)
    mean = statistics.fmean(finite) if finite else float("nan")
    std = statistics.stdev(finite) if n > 1 else 0.0
    half = _t95(n - 1) * std / n**0.5 if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n, "ci95": [mean - half, mean + half], "values": list(values)}


def _t95(dof: int) -> float:
    """Two-sided 95% quantile of Student's t (scipy-free; exact to 3 decimals up to 30 dof)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    if dof in table:
        return table[dof]
    return 1.96 + 2.4 / dof  # within 0.01 of the true value for dof > 10


def prefixed(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The ``<prefix>/...`` metrics of a trial, without the prefix."""
    return {k[len(prefix) + 1:]: v for k, v in metrics.items() if k.startswith(prefix + "/")}


def _search_entry(outcomes: Sequence[TrialOutcome]) -> tuple[dict[str, Any], TrialOutcome | None]:
    complete = [o for o in outcomes if o.failure is None and not o.stopped_early]
    stopped = [o for o in outcomes if o.stopped_early]
    failed = [o for o in outcomes if o.failure is not None]
    entry: dict[str, Any] = {
        "trials": len(outcomes),
        "complete": len(complete),
        "stopped_early": len(stopped),
        "failed": len(failed),
        "errors": {o.trial_id: o.failure for o in failed},
    }
    if not complete:
        entry["best"] = None
        entry["reason"] = (f"none of its {len(outcomes)} search trial(s) completed with a finite objective "
                           f"({len(stopped)} stopped early, {len(failed)} failed); see 'errors'")
        return entry, None
    best = max(complete, key=lambda o: o.objective)
    entry.update(best_trial_id=best.trial_id, best_val_objective=best.objective, best_epochs=best.metrics.get(EPOCH),
                 best_val_probe=best.metrics.get(PROBE_KEY))
    return entry, best


def build_summary(
    *,
    header: Mapping[str, Any],
    search: Mapping[str, Sequence[TrialOutcome]],
    final: Sequence[TrialOutcome],
    best_artifact: str,
) -> dict[str, Any]:
    """``header`` (space, hashes, splits, plan) + per variant: its search (complete, stopped-early
    and failed trials; the best complete one), the best config (:func:`config_entry`: as recorded
    and as it trained; the seed re-runs differ from it only in ``train.seed``), and per seed re-run the test
    figures of both threat models, with mean, std and 95% interval over seeds (a pareto variant: those
    of its best member, and every member in ``front``, :func:`front_entries`). ``best`` is the
    final run with the highest validation objective (its checkpoint is ``best_artifact``), or
    None with the reason."""
    variants: dict[str, Any] = {}
    for variant, outcomes in search.items():
        search_entry, best = _search_entry(outcomes)
        runs = sorted((o for o in final if o.spec.variant == variant), key=lambda o: o.spec.seed)
        front = front_entries(outcomes, runs)
        if front is not None and best is not None:  # a pareto variant: its own figures are its best member's
            runs = [o for o in runs if o.spec.same_config(best.spec)]
        per_seed = seed_entries(runs)
        variants[variant] = {
            "search": search_entry,
            **config_entry(best.spec.to_config() if best else None),
            "seeds": per_seed,
            "test": over_seeds(per_seed, "test"),
            "adaptive": over_seeds(per_seed, "adaptive"),
            "val": over_seeds(per_seed, "val"),
            **({} if front is None else {"front": front, "front_hypervolume": front_hypervolume(front)}),
        }
    finalists = [o for o in final if o.failure is None]
    best_run = max(finalists, key=lambda o: o.objective) if finalists else None
    best: dict[str, Any] | None = None
    if best_run is not None:
        best = best_run.spec.best_entry(
            best_run.objective,
            trial_id=best_run.trial_id,
            test=prefixed(best_run.metrics, "test"),
            adaptive=prefixed(best_run.metrics, "adaptive"),
            val=val_figures(best_run.metrics),
            artifact=best_artifact,
        )
    return {
        "format": FORMAT,
        **header,
        "objective": (header.get("search_objective") or {}).get(
            "description", "val worst-case accuracy over the trial's unknown attacks (oblivious), maximised"),
        "threat_models": legend(),
        "variants": variants,
        "best": best,
        "best_reason": None if best else "no seed re-run finished with a finite objective; see each variant's search",
    }


def seed_entries(runs: Sequence[TrialOutcome]) -> list[dict[str, Any]]:
    """Per final (seed re-run): its seed, trial, validation objective, error and figures by threat model."""
    return [
        {
            "seed": o.spec.seed,
            "trial_id": o.trial_id,
            "val_objective": o.objective,
            "error": o.failure,
            "test": prefixed(o.metrics, "test"),
            "adaptive": prefixed(o.metrics, "adaptive"),
            "val": val_figures(o.metrics),
        }
        for o in runs
    ]


def front_entries(search: Sequence[TrialOutcome], finals: Sequence[TrialOutcome]) -> list[dict[str, Any]] | None:
    """A pareto variant's front (None for a variant whose finals carry no front member): per member,
    in front order, its config (:func:`config_entry` of the search trial it re-runs), that trial's
    search values (the :data:`PARETO_KEYS` figures and its scalar objective) and its seeds'
    figures with mean, std and 95% interval over seeds, like a variant entry."""
    members = sorted({o.spec.front_member for o in finals if o.spec.front_member is not None})
    if not members:
        return None
    entries = []
    for member in members:
        runs = [o for o in finals if o.spec.front_member == member]
        source = next((o for o in search if o.spec.same_config(runs[0].spec)), None)
        values = {key: source.metrics.get(key) for key in PARETO_KEYS} if source else {}
        per_seed = seed_entries(runs)
        entries.append(runs[0].spec.front_entry(
            **config_entry(source.config if source else None),
            search_trial_id=source.trial_id if source else None,
            search_values={**values, "objective": source.objective if source else None},
            seeds=per_seed, test=over_seeds(per_seed, "test"), adaptive=over_seeds(per_seed, "adaptive"),
            val=over_seeds(per_seed, "val")))
    return entries


# A front's hypervolume is taken over the search's three objectives, each an accuracy in [0, 1]:
# as the search measured them (validation; the probe) and as the finals measured them on the test
# split (means over seeds; the finalist's full adaptive PGD in the probe's place). Reference: 0.
HYPERVOLUME_TEST_FIGURES: tuple[str, ...] = (figures.RECONSTRUCTION, figures.WORST_UNKNOWN, "adaptive.pgd_worst")


def front_hypervolume(front: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The hypervolume (reference point 0) of a pareto front, on validation (the members' search
    values, :data:`PARETO_KEYS`) and on test (:data:`HYPERVOLUME_TEST_FIGURES`, means over
    seeds); a member without all three values is left out and counted."""
    from sweeps._optuna import hypervolume

    def mean(member: Mapping[str, Any], name: str) -> float | None:
        fig = figures.figure(name)
        return (member.get(fig.section, {}).get(fig.key) or {}).get("mean")

    val = [[m.get("search_values", {}).get(k) for k in PARETO_KEYS] for m in front]
    test = [[mean(m, name) for name in HYPERVOLUME_TEST_FIGURES] for m in front]
    val, test = ([p for p in points if all(is_finite(v) for v in p)] for points in (val, test))
    return {"reference": [0.0] * 3, "val_axes": list(PARETO_KEYS), "test_axes": list(HYPERVOLUME_TEST_FIGURES),
            "val": hypervolume(val, [0.0] * 3) if val else None, "test": hypervolume(test, [0.0] * 3) if test else None,
            "members": len(front), "members_with_test_values": len(test)}


def val_figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's validation-only figures (the probe and the worst case with it), by summary key."""
    out = {}
    for name in VAL_FIGURES:
        fig = figures.FIGURES[name]
        if fig.trial_key() in metrics:
            out[fig.key] = metrics[fig.trial_key()]
    return out


def config_entry(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config keys of a summary entry (a variant's, a study's fixed ablation's or baseline's):
    ``best_config``, the config as recorded (a trial config as Ray carried it: phase, variant, the
    pair as one string); ``ran_config``, the flat config that trained (the variant's ablation
    applied, known attacks as a list; a baseline's settings as given); ``known_attacks``, a list.
    All three None without a config. Readers display ``ran_config`` and ``known_attacks``."""
    ran = ran_config(config)
    return {"best_config": None if config is None else dict(config), "ran_config": ran,
            "known_attacks": None if ran is None else list(ran.get("known_attacks", []))}


def over_seeds(per_seed: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """Mean, std and 95% interval over seeds of every numeric figure under ``run[key]`` (``test``,
    ``adaptive``, ``val``)."""
    names = sorted({k for run in per_seed for k, v in run.get(key, {}).items() if isinstance(v, (int, float))})
    return {name: _stats([run.get(key, {}).get(name, float("nan")) for run in per_seed]) for name in names}
