"""Search efficiency, measured in one run: TPE + ASHA against random search without early stopping.

Both searches get the same digits space (the ``full`` variant's search ranges of ``--space``:
``digits_ablation`` by default, or ``digits_robust`` with its online adaptive PGD choices, trained
per batch as in the sweep), the same number of trials and the same data, adversarial sets and
objective (validation worst-case accuracy over the trial's unknown attacks, oblivious). They run
in this process, one trial at a time, with the project's own pieces:

- TPE + ASHA: ``sweeps._optuna.TpeSearcher`` (seeded TPE, ask-and-tell, the paper's point
  first, as the sweep builds it via ``sweeps.schedule.build_schedule``), stopped by ASHA's rule
  with the space's ``asha()`` settings (max_t, grace_period, reduction_factor): at each rung a
  trial continues only if its objective is in the top 1/reduction_factor of the values seen at
  that rung so far (asynchronous successive halving with one worker); a stopped trial is told
  to TPE as pruned, as in the sweep;
- random: an Optuna study with ``RandomSampler`` (same seed) over the same distributions, every
  trial trained to max_t epochs.

Cost is counted in trial-epochs (epochs trained, summed over trials). The last line is
``ratio: X``, the median over ``--seeds`` sampler seeds (default 5, the same cached sets for
each) of: trial-epochs TPE+ASHA spent until a complete trial reached the best objective random
search found / trial-epochs random search spent until it found it (goal <= 1/3); ``inf`` for a
seed where TPE+ASHA never reached it. One seed alone can read 1.000 when random search's first
trial (the paper's point for TPE too) is its best.

``--objective pareto``: the sweep's multi-objective search instead (``objective = pareto``:
reconstruction accuracy, oblivious worst unknown and the adaptive probe on val, each maximised;
no early stopping, as in the sweep). Multi-objective TPE (``TpeSearcher(objectives=3)`` through
``build_schedule``, the paper's point first) against Optuna's ``RandomSampler``, both over the
same search space and trials; every trial trains to max_t epochs, so after k trials both have
spent k * max_t trial-epochs. The figure per seed is the hypervolume of the complete trials'
values above the origin (the report's reference point) at equal trial-epochs; the last line is
``ratio: X``, the median over seeds of TPE's hypervolume / random search's after all trials
(> 1: TPE's front dominates more). The probe runs once per trial, after its last epoch (the only
values the front uses); the sweep runs it every epoch, which costs time, not trial-epochs.

    python bench/search.py --quick      # small data, few epochs and trials (~minutes on 2 cores)
    python bench/search.py              # digits_ablation at full size, 12 trials each
    python bench/search.py --objective pareto
    python bench/search.py --objective pareto --space digits_robust --trials 8   # digits_robust's budget
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# --quick: the digits_ablation smoke split and attack budget (its sets are shared with a smoke sweep's
# cache), width 0.0625, 4 epochs, ASHA from epoch 1 halving by 2.
QUICK = {"n_train": 96, "n_val": 48, "n_test": 48, "attack_budget": 0.05, "grace_period": 1, "reduction_factor": 2,
         "base": {"network.width": 0.0625, "network.channels": 1, "train.epochs": 4, "train.batch_size": 16,
                  "train.lr": 1e-3}}


def prepare(space, cache_dir: Path, threads: int):
    """The space's data, target model and oblivious sets (through the shared cache), as a TrialContext."""
    import torch

    from addd.advcache import AdvCache, AdvRequest
    from addd.data import load_dataset
    from addd.target_models import get_target_model
    from sweeps.trial import SplitSets, TrialContext

    sizes = space.split_sizes()
    data = load_dataset(space.dataset, "./data", n_train=space.n_train, n_val=space.n_val, n_test=space.n_test,
                        seed=sizes["split_seed"])
    target = get_target_model(data, arch=space.target_arch, cache_dir=cache_dir)
    cache = AdvCache.under(cache_dir)
    sets = {}
    for split, attacks in (("train", space.train_attacks()), ("val", space.attacks)):
        d = getattr(data, split)
        requests = [AdvRequest(space.dataset, split, d.x, d.y, target.model, a, model_sha256=target.weights_sha256,
                               budget=space.attack_budget, seed=0) for a in attacks]
        sets[split] = SplitSets(d.x, d.y, cache.get_many(requests))
    torch.set_num_threads(threads)
    from addd.attacks import attack_params
    from sweeps.trial import Probe

    probe = Probe(eps=float(attack_params("PGDu", space.dataset)["eps"]), n=space.probe_n, steps=space.probe_steps)
    return TrialContext(train=sets["train"], val=sets["val"], test=sets["val"], target_model=target.model,
                        holdout_attacks=tuple(space.holdout_attacks), threads=threads, events_path=None,
                        probe=probe, objective=space.objective)


def train_pareto(spec, ctx) -> tuple[tuple[float, ...] | None, int]:
    """Train one trial to max_t and return its :data:`sweeps.trialspec.PARETO_KEYS` values after the
    last epoch (None if a loss went non-finite or a value is not finite) and the epochs trained."""
    from addd.defense import ADDDefense, NonFiniteLossError
    from sweeps.trial import cached_known, evaluate_search
    from sweeps.trialspec import PARETO_KEYS

    cfg = spec.defense_config()
    try:
        model = ADDDefense(cfg)
        model.fit(ctx.train.x, ctx.train.y, cached_known(ctx, cfg.known_attacks), target_model=ctx.target_model)
    except NonFiniteLossError:
        return None, len(model.history)
    metrics = evaluate_search(model, ctx, cfg.known_attacks)
    values = tuple(float(metrics[key]) for key in PARETO_KEYS)
    return (values if all(math.isfinite(v) for v in values) else None), cfg.train.epochs


def train_trial(spec, ctx, keep_going) -> tuple[float | None, int, float | None]:
    """Train one trial (a :class:`sweeps.trialspec.TrialSpec`); ``keep_going(epoch, objective) -> bool``
    after each epoch. Returns (objective if it ran to max_t else None, epochs trained, last value)."""
    from addd.defense import ADDDefense, NonFiniteLossError
    from sweeps.trial import cached_known, evaluate_split

    cfg = spec.defense_config()
    state = {"epochs": 0, "value": None, "stopped": False}

    def on_epoch(report, model):
        state["epochs"] += 1
        value = evaluate_split(model, ctx, "val", cfg.known_attacks)["val/worst.unknown"]
        state["value"] = value
        if not keep_going(state["epochs"], value):
            state["stopped"] = True
            return False
        return None

    try:
        ADDDefense(cfg).fit(ctx.train.x, ctx.train.y, cached_known(ctx, cfg.known_attacks), callback=on_epoch,
                            target_model=ctx.target_model)
    except NonFiniteLossError:
        return None, state["epochs"], None
    return (None if state["stopped"] else state["value"]), state["epochs"], state["value"]


def run_tpe_asha(space, ctx, trials: int, seed: int, url: str) -> list[tuple[int, float | None]]:
    """[(cumulative trial-epochs, objective or None if stopped)] per trial, in order."""
    from sweeps import _optuna
    from sweeps.schedule import build_schedule
    from sweeps.trialspec import TrialSpec

    asha = space.asha()
    rungs = []
    r = asha["grace_period"]
    while r < asha["max_t"]:
        rungs.append(r)
        r *= asha["reduction_factor"]
    seen: dict[int, list[float]] = {r: [] for r in rungs}

    class _Plan:  # what build_schedule reads of a sweeps.plan.Plan
        def __init__(self):
            self.space, self.device, self.num_samples, self.seeds = replace(space, variants=("full",)), "cpu", trials, 0

    schedule = build_schedule(_Plan(), lambda variant, search, first: _optuna.TpeSearcher(
        url=url, study_name="tpe", search=search, seed=seed, startup_trials=min(space.startup_trials, trials),
        first_point=first))
    out, spent = [], 0
    for i in range(trials):
        trial_id = f"t{i}"
        config = schedule.suggest(trial_id)

        def keep_going(epoch, value, trial_id=trial_id):
            schedule.on_trial_result(trial_id, {"objective": value, "epoch": epoch})
            if epoch in seen:
                values = sorted(seen[epoch] + [value], reverse=True)
                seen[epoch].append(value)
                cutoff = values[max(0, math.ceil(len(values) / asha["reduction_factor"]) - 1)]
                return value >= cutoff
            return True

        objective, epochs, last = train_trial(TrialSpec.parse(config), ctx, keep_going)
        spent += epochs
        # a stopped trial reports its last value at an epoch < max_t: the schedule tells TPE it was pruned
        schedule.on_trial_complete(trial_id, {"objective": last if last is not None else float("nan"), "epoch": epochs})
        out.append((spent, objective))
        logging.info("tpe+asha trial %d: %d epochs, objective %s (total %d)", i, epochs, objective, spent)
    return out


def run_random(space, ctx, trials: int, seed: int, url: str) -> list[tuple[int, float | None]]:
    import optuna

    from sweeps._optuna import _distribution
    from sweeps.trialspec import TrialSpec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = space.variant_search("full")
    base = space.base_config()
    from addd.config import to_flat_dict

    constants = {k: v for k, v in to_flat_dict(base).items() if k not in search}
    study = optuna.create_study(study_name="random", storage=url, sampler=optuna.samplers.RandomSampler(seed=seed),
                                direction="maximize")
    out, spent = [], 0
    for i in range(trials):
        trial = study.ask({k: _distribution(d) for k, d in search.items()})
        objective, epochs, _ = train_trial(TrialSpec.search("full", {**constants, **trial.params}), ctx, lambda e, v: True)
        spent += epochs
        study.tell(trial, objective if objective is not None else float("nan"))
        out.append((spent, objective))
        logging.info("random trial %d: %d epochs, objective %s (total %d)", i, epochs, objective, spent)
    return out


def run_pareto(space, ctx, trials: int, seed: int, url: str, sampler: str) -> list[tuple[int, tuple | None]]:
    """[(cumulative trial-epochs, PARETO_KEYS values or None if it failed)] per trial, in order, of
    multi-objective TPE (``sampler`` "tpe", the sweep's searcher and schedule) or random search."""
    import optuna

    from sweeps import _optuna
    from sweeps.schedule import build_schedule
    from sweeps.trialspec import EPOCH, OBJECTIVE, PARETO_KEYS, TrialSpec

    space = replace(space, variants=("full",), objective="pareto")
    if sampler == "tpe":
        class _Plan:  # what build_schedule reads of a sweeps.plan.Plan
            def __init__(self):
                self.space, self.device, self.num_samples, self.seeds = space, "cpu", trials, 0

        schedule = build_schedule(_Plan(), lambda variant, search, first: _optuna.TpeSearcher(
            url=url, study_name="pareto-tpe", search=search, seed=seed, startup_trials=min(space.startup_trials, trials),
            first_point=first, objectives=len(PARETO_KEYS)))
        suggest = schedule.suggest
    else:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search = space.variant_search("full")
        from addd.config import to_flat_dict

        constants = {k: v for k, v in to_flat_dict(space.base_config()).items() if k not in search}
        study = optuna.create_study(study_name="pareto-random", storage=url, sampler=optuna.samplers.RandomSampler(seed=seed),
                                    directions=["maximize"] * len(PARETO_KEYS))
        asked = {}

        def suggest(trial_id):
            asked[trial_id] = study.ask({k: _optuna._distribution(d) for k, d in search.items()})
            return TrialSpec.search("full", {**constants, **asked[trial_id].params}).to_config()
    out, spent = [], 0
    for i in range(trials):
        trial_id = f"p{i}"
        spec = TrialSpec.parse(suggest(trial_id))
        values, epochs = train_pareto(spec, ctx)
        spent += epochs
        if sampler == "tpe":
            result = {EPOCH: epochs, OBJECTIVE: min(values) if values else float("nan"),
                      **({k: v for k, v in zip(PARETO_KEYS, values)} if values else {})}
            schedule.on_trial_complete(trial_id, result, error=values is None)
        elif values is None:
            study.tell(asked[trial_id], state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(asked[trial_id], list(values))
        out.append((spent, values))
        logging.info("pareto %s trial %d (%s): values %s (total %d trial-epochs)", sampler, i,
                     "+".join(spec.defense_config().known_attacks), values, spent)
    return out


def hypervolume_history(trials: list[tuple[int, tuple | None]]) -> list[tuple[int, float]]:
    """[(cumulative trial-epochs, hypervolume above the origin of the complete trials so far)]."""
    from sweeps._optuna import hypervolume

    out, points = [], []
    for spent, values in trials:
        if values is not None:
            points.append(values)
        out.append((spent, hypervolume(points, [0.0] * len(values or points[0])) if points else 0.0))
    return out


def pareto_seed(random: list, tpe: list) -> dict:
    """One seed's pareto figures: both searches' hypervolume at half and all of their (equal)
    trial-epochs, and ``ratio`` = TPE's / random's at the end (inf if random's is 0)."""
    hv_random, hv_tpe = hypervolume_history(random), hypervolume_history(tpe)
    if [e for e, _ in hv_random] != [e for e, _ in hv_tpe]:
        raise ValueError("the two searches did not spend equal trial-epochs per trial")
    half = len(hv_random) // 2 - 1
    end_random, end_tpe = hv_random[-1][1], hv_tpe[-1][1]
    return {"epochs": hv_random[-1][0], "half_epochs": hv_random[half][0], "random_half": hv_random[half][1],
            "tpe_half": hv_tpe[half][1], "random": end_random, "tpe": end_tpe,
            "ratio": end_tpe / end_random if end_random > 0 else math.inf}


def seed_ratio(random: list, tpe: list) -> dict:
    """One sampler seed's figures: random search's best and the trial-epochs each search needed
    to reach it (``ratio`` = TPE+ASHA's / random's; inf if TPE+ASHA never reached it)."""
    finite = [(e, v) for e, v in random if v is not None and math.isfinite(v)]
    best = max(v for _, v in finite)
    random_epochs = next(e for e, v in finite if v == best)
    reached = next((e for e, v in tpe if v is not None and math.isfinite(v) and v >= best), None)
    tpe_best = max((v for _, v in tpe if v is not None and math.isfinite(v)), default=float("nan"))
    return {"random_best": best, "random_epochs": random_epochs, "random_total": random[-1][0], "tpe_best": tpe_best,
            "tpe_reached": reached, "tpe_total": tpe[-1][0],
            "ratio": reached / random_epochs if reached is not None else math.inf}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke-size data, 4 epochs, 6 trials each")
    p.add_argument("--trials", type=int, help="trials per search (default: 6 with --quick, else 12)")
    p.add_argument("--seeds", type=int, default=5, help="sampler seeds 0..N-1, each search repeated per seed (default 5)")
    p.add_argument("--objective", choices=("oblivious", "pareto"), default="oblivious",
                   help="oblivious: TPE+ASHA vs random, trial-epochs to random's best; pareto: hypervolume at equal trial-epochs")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--cache-dir", type=Path, help="target models and adversarial sets (default: a temp folder)")
    p.add_argument("--space", choices=SPACES, default="digits_ablation",
                   help="whose search ranges ('full' variant): digits_ablation (the paper's known-attack pairs) or "
                        "digits_robust (with the online adaptive PGD choices, where the probe is not 0)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("addd").setLevel(logging.WARNING)
    from sweeps.spaces import get_space

    space = get_space(args.space)
    if args.quick:
        space = replace(space, **QUICK, probe_n=32, probe_steps=5).validate()
    trials = args.trials or (6 if args.quick else 12)  # the quick start's 4 per variant is too few to compare
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = prepare(space, args.cache_dir or Path(tmp) / "cache", threads=args.threads)
        prepared = time.perf_counter() - start
        for seed in range(args.seeds):  # the same cached sets for every seed: only the samplers differ
            url = f"sqlite:///{Path(tmp) / f'optuna-{seed}.db'}"
            if args.objective == "pareto":
                rows.append(pareto_seed(run_pareto(space, ctx, trials, seed, url, "random"),
                                        run_pareto(space, ctx, trials, seed, url, "tpe")))
            else:
                rows.append(seed_ratio(run_random(space, ctx, trials, seed, url), run_tpe_asha(space, ctx, trials, seed, url)))
    name = f"{args.space}{' (quick)' if args.quick else ''}"
    searched = time.perf_counter() - start - prepared
    if args.objective == "pareto":
        print(f"space: {name}, objective pareto {PARETO_WORDS}, {trials} trials each to max_t {space.asha()['max_t']} "
              f"epochs (no early stopping); sets and target model {prepared:.0f}s, searches {searched:.0f}s")
        for seed, r in enumerate(rows):
            print(f"seed {seed}: hypervolume at {r['half_epochs']} trial-epochs: TPE {r['tpe_half']:.4f}, random "
                  f"{r['random_half']:.4f}; at {r['epochs']}: TPE {r['tpe']:.4f}, random {r['random']:.4f}: ratio {r['ratio']:.3f}")
    else:
        print(f"space: {name}, {trials} trials each, max_t {space.asha()['max_t']} "
              f"epochs, ASHA {space.asha()}; sets and target model {prepared:.0f}s, searches {searched:.0f}s")
        for seed, r in enumerate(rows):
            print(f"seed {seed}: random best {r['random_best']:.4f} after {r['random_epochs']}/{r['random_total']} trial-epochs; "
                  f"TPE+ASHA best {r['tpe_best']:.4f}, reached random's best after "
                  f"{r['tpe_reached'] if r['tpe_reached'] is not None else 'never'}/{r['tpe_total']}: ratio {r['ratio']:.3f}")
    print(f"ratio: {statistics.median(r['ratio'] for r in rows):.3f}")
    return 0


SPACES = ("digits_ablation", "digits_robust")  # digits spaces: their cached sets are the same ones
PARETO_WORDS = "(val reconstruction accuracy, oblivious worst unknown, adaptive probe; hypervolume above 0)"


if __name__ == "__main__":
    sys.exit(main())
