"""The Ray Tune trainable: train one ADD-Defense from its trial config, report every epoch.

The config format belongs to :mod:`sweeps.trialspec`; everything else a trial needs (data,
adversarial sets, the target model, the finalist settings) arrives once through Ray's object
store as a :class:`TrialContext`. Ray itself is reached only through ``sweeps._ray``.

Search trials report every epoch the oblivious worst case over the unknown attacks
(``val/worst.unknown``), the adaptive probe (``val/probe.pgd_worst``: cheap seeded white-box PGD
through M_t(G(E(.))) on a fixed validation subset), the worst of the two, and as ``objective``
the one the space's ``objective`` names (:func:`search_objective`). Final trials (seed re-runs of a variant's best config) report losses every epoch,
and at their end the validation and test figures of both threat models: the oblivious suite,
the adaptive attacks on the whole pipeline, and the robustness curve (saved with the checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from addd import figures
from addd.advcache import AdvSet
from addd.errors import AdddError
from addd.evaluate import ReferencePredictions, evaluate, reference_predictions
from addd.runfolder import CURVE_FILE, DEFENSE_FILE, IMAGES_FILE, PER_EXAMPLE_FILE
from sweeps._mlflow import SYSTEM_PREFIX, SystemSampler
from sweeps.spaces import PARETO
from sweeps.trialspec import EPOCH, FAILURE, FINAL, OBJECTIVE, PARETO_KEYS, SEARCH, TrialSpec

log = logging.getLogger(__name__)

STATE_FILE = "trial_state.json"
SECONDS_PREFIX = "seconds/"  # a final's seconds per adaptive attack and for its curve (not figures)
OPTIMIZER_FILE = "optimizer.safetensors"  # Adam moments and RNG streams: a restored trial continues exactly


@dataclass(frozen=True)
class SplitSets:
    """One split's clean examples and their adversarial sets (oblivious attacks on M_t)."""

    x: torch.Tensor  # (N, C, 32, 32) in [0, 1]
    y: torch.Tensor  # (N,)
    adv: Mapping[str, AdvSet]  # attack -> set paired with x
    # M_t's predictions on x and on each set (addd.evaluate.reference_predictions), made once by
    # build_context: every evaluation's clean and undefended figures. None: computed per evaluation.
    reference: ReferencePredictions | None = None


@dataclass(frozen=True)
class Finalists:
    """How final trials attack the whole pipeline (from the space)."""

    dataset: str
    n: int | None  # first n test examples; None: all
    steps: int
    autoattack: bool
    curve_points: int
    budget: float
    seed: int = 0
    curve_steps: int | None = None  # None: steps


@dataclass(frozen=True)
class Probe:
    """The adaptive probe of every search trial (and of a final's last epoch): white-box PGD through
    M_t(G(E(x))), CE and margin (worse of the two), random start, on the first ``n`` val images."""

    eps: float  # the dataset's PGD eps (figures side by side with the oblivious PGDu)
    n: int
    steps: int
    seed: int = 0


PROBE_KEY = figures.FIGURES[figures.PROBE].trial_key()  # val/probe.pgd_worst
WORST_WITH_PROBE_KEY = figures.FIGURES[figures.WORST_WITH_PROBE].trial_key()  # val/worst.unknown_with_probe
WORST_UNKNOWN_KEY = figures.FIGURES[figures.WORST_UNKNOWN].trial_key("val")  # val/worst.unknown
# space objective -> the trial report key that becomes the trial's ``objective``
# ("pareto" has no one key: its scalar ``objective`` is the min of its PARETO_KEYS, see search_objective)
OBJECTIVE_KEYS: dict[str, str] = {"oblivious": WORST_UNKNOWN_KEY, "worst": WORST_WITH_PROBE_KEY}


class ProbeError(AdddError):
    """The probe asks for more validation images than the split holds; the message says what to do."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares; put in the object store once by the driver."""

    train: SplitSets  # adv: the known-attack sets trials may train on
    val: SplitSets
    test: SplitSets
    target_model: nn.Module
    holdout_attacks: tuple[str, ...]
    threads: int  # torch threads per trial (= CPUs given to it)
    events_path: str | None  # local JSON-lines log of trial starts/epochs/ends (tests, bench)
    finalists: Finalists | None = None
    grid_examples: int = 8
    # M_t when ``target_model`` is a defense's own classifier (adversarial training): the clean,
    # undefended and curve-reference figures stay M_t's. None: target_model is M_t.
    undefended_model: nn.Module | None = None
    # the robustness curve's white-box column on M_t (addd.adaptive.whitebox_curve), the same for
    # every final: made once by build_context. None: each curve runs it.
    whitebox_curve: Any = None
    probe: Probe | None = None  # None: no adaptive probe (the objective must then be "oblivious")
    objective: str = "oblivious"  # a key of OBJECTIVE_KEYS


def sweep_dataset(space: Any, data_root: Path, *, download: bool = False):
    """The dataset of a sweep of ``space`` with its splits (the driver's and the study's)."""
    from addd.data import load_dataset

    sizes = space.split_sizes()
    return load_dataset(space.dataset, data_root, n_train=sizes["n_train"], n_val=sizes["n_val"],
                        n_test=sizes["n_test"], seed=sizes["split_seed"], download=download)


def sweep_requests(space: Any, dataset: Any, target: Any, *, device: str,
                   train_attacks: tuple[str, ...] | None = None) -> dict[str, list]:
    """split -> the AdvRequests of a sweep of ``space``: on train the attacks trials may train on
    (``train_attacks``, default every known-attack choice of the space), on val and test the
    space's suite; all on the target model ``target`` (a TargetModel) at the space's budget, seed 0."""
    from addd.advcache import split_requests

    attacks = {"train": space.train_attacks() if train_attacks is None else train_attacks,
               "val": space.attacks, "test": space.attacks}
    return {split: split_requests(space.dataset, split, getattr(dataset, split).x, getattr(dataset, split).y, target,
                                  names, budget=space.attack_budget, device=device)
            for split, names in attacks.items()}


def cached_sets(dataset: Any, cache: Any, requests: Mapping[str, list], map_for=None,
                progress=None) -> dict[str, SplitSets]:
    """split -> SplitSets of ``requests`` (from :func:`sweep_requests`) through ``cache`` (an
    AdvCache); ``map_for(split)`` gives that split's ``map_fn`` for ``AdvCache.get_many`` (None: in turn)."""
    sets = {}
    for split, split_requests in requests.items():
        data = getattr(dataset, split)
        map_fn = map_for(split) if map_for is not None else None
        sets[split] = SplitSets(data.x, data.y, cache.get_many(split_requests, map_fn=map_fn, progress=progress))
    return sets


def build_context(space: Any, splits: Mapping[str, SplitSets], target_model: nn.Module, *, threads: int,
                  events_path: str | None = None) -> TrialContext:
    """The context every trial of a sweep of ``space`` (a ``sweeps.spaces.Space``) shares: the
    driver's and the standalone study's one builder. ``splits``: train, val and test sets.
    What no defense changes is computed here once, with the trials' torch threads (the same
    numbers as in a trial): M_t's predictions on the val and test sets and the curve's white-box column."""
    from addd.attacks import attack_params

    n_val = len(splits["val"].y)
    if space.probe_n > n_val:
        raise ProbeError(f"probe_n {space.probe_n} is larger than the validation split ({n_val} images); "
                         f"pass --probe-n {n_val} or less")
    probe = Probe(eps=float(attack_params("PGDu", space.dataset)["eps"]), n=space.probe_n, steps=space.probe_steps)
    finalists = Finalists(dataset=space.dataset, n=space.adaptive_n, steps=space.adaptive_steps,
                          autoattack=space.adaptive_autoattack, curve_points=space.curve_points,
                          budget=space.attack_budget, curve_steps=space.curve_steps)
    threads, previous = max(1, int(threads)), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        val, test = (dataclasses.replace(splits[s], reference=reference_predictions(target_model, splits[s].x, splits[s].adv))
                     for s in ("val", "test"))
        whitebox = _whitebox_curve(target_model, test, finalists)
    finally:
        torch.set_num_threads(previous)
    return TrialContext(
        train=splits["train"], val=val, test=test, target_model=target_model,
        holdout_attacks=tuple(space.holdout_attacks), threads=threads, events_path=events_path,
        finalists=finalists, grid_examples=space.grid_examples, whitebox_curve=whitebox,
        probe=probe, objective=space.objective,
    )


def _finalist_examples(test: SplitSets, f: Finalists) -> tuple[torch.Tensor, torch.Tensor]:
    """The test examples the finals attack adaptively: the first ``f.n`` (all if None)."""
    return (test.x, test.y) if f.n is None else (test.x[: f.n], test.y[: f.n])


def _curve_eps(f: Finalists) -> float:
    from addd.attacks import attack_params

    return float(attack_params("PGDu", f.dataset)["eps"])  # the oblivious PGD's eps: figures side by side


def _whitebox_curve(target_model: nn.Module, test: SplitSets, f: Finalists):
    """The finals' curve column of white-box PGD on M_t alone (addd.adaptive.whitebox_curve)."""
    from addd.adaptive import whitebox_curve

    x, y = _finalist_examples(test, f)
    return whitebox_curve(target_model, x, y, eps_max=_curve_eps(f), num=f.curve_points, steps=f.curve_steps or f.steps,
                          seed=f.seed)


def cached_known(ctx: TrialContext, known: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The cached training sets of the known attacks (an online one, ``PGDa``, is made per batch by fit)."""
    from addd.attack_names import is_online

    return {name: ctx.train.adv[name].x_adv for name in known if not is_online(name)}


def evaluate_split(defense: nn.Module, ctx: TrialContext, split: str, known: tuple[str, ...],
                   per_example: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """addd.evaluate's oblivious metrics on ``split``, named by ``addd.figures`` (``val/worst.unknown``, ...).
    ``per_example`` (if given) receives ``oblivious.<attack>.correct`` / ``.excluded`` masks."""
    data: SplitSets = getattr(ctx, split)
    report = evaluate(defense, ctx.target_model, data.x, data.y, data.adv, known_attacks=known, holdout=ctx.holdout_attacks,
                      undefended_model=ctx.undefended_model, reference=data.reference)
    if per_example is not None:
        for attack, (correct, excluded) in report.masks.items():
            fig = figures.defended(attack)
            per_example[fig.per_example_key] = correct.contiguous()
            per_example[fig.excluded_key] = excluded.contiguous()
    return figures.trial_metrics(report.to_metrics(), split)


def probe_split(defense: nn.Module, ctx: TrialContext) -> dict[str, float]:
    """The adaptive probe (``ctx.probe``) of ``defense`` on the first ``n`` validation images, as
    ``{val/probe.pgd_worst: accuracy}``: an image counts only if it survives both the CE and the
    margin PGD through M_t(G(E(.))) (``addd.adaptive.adaptive_worst``). Empty without a probe."""
    from addd.adaptive import adaptive_worst

    p = ctx.probe
    if p is None:
        return {}
    x, y = ctx.val.x[: p.n], ctx.val.y[: p.n]
    correct = adaptive_worst(ctx.target_model, defense, x, y, eps=p.eps, steps=p.steps, seed=p.seed)
    return {PROBE_KEY: correct.float().mean().item()}


def search_objective(metrics: Mapping[str, float], objective: str) -> dict[str, float]:
    """What a trial adds to its validation ``metrics`` (oblivious figures and, if run, the probe):
    ``val/worst.unknown_with_probe`` = min(worst unknown, probe) when the probe ran, and
    ``objective``, the key ``OBJECTIVE_KEYS[objective]`` names ("worst" needs the probe). For
    "pareto" (probe needed) ``objective`` is min(reconstruction, worst unknown, probe): a scalar for
    the console and summary only; the multi-objective study is told the three values, and no
    early stopping compares it."""
    out: dict[str, float] = {}
    if PROBE_KEY in metrics:
        out[WORST_WITH_PROBE_KEY] = min(metrics[WORST_UNKNOWN_KEY], metrics[PROBE_KEY])
    if objective == PARETO:
        if PROBE_KEY not in metrics:
            raise ProbeError("objective 'pareto' needs the adaptive probe, and this trial has none")
        out[OBJECTIVE] = min(metrics[key] for key in PARETO_KEYS)
        return out
    key = OBJECTIVE_KEYS.get(objective)
    if key is None:
        raise ProbeError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVE_KEYS)}")
    if key not in {**metrics, **out}:
        raise ProbeError(f"objective {objective!r} needs the adaptive probe, and this trial has none")
    out[OBJECTIVE] = {**metrics, **out}[key]
    return out


def evaluate_search(defense: nn.Module, ctx: TrialContext, known: tuple[str, ...]) -> dict[str, float]:
    """A search epoch's figures: the oblivious val suite, the adaptive probe, their worst and ``objective``."""
    metrics = evaluate_split(defense, ctx, "val", known)
    metrics.update(probe_split(defense, ctx))
    metrics.update(search_objective(metrics, ctx.objective))
    return metrics


def evaluate_finalist(defense: nn.Module, ctx: TrialContext, out_dir: Path, curve: bool,
                      per_example: dict[str, torch.Tensor]) -> dict[str, float]:
    """Adaptive attacks on M_t(G(E(.))) and, if ``curve``, the robustness curve, on the test split
    (or its first ``n`` examples); the curve is written to ``out_dir`` as CSV. Metrics named by
    ``addd.figures`` (``adaptive/<name>``)."""
    from addd.adaptive import evaluate_adaptive_suite, robustness_curve

    f = ctx.finalists
    x, y = _finalist_examples(ctx.test, f)
    eps = _curve_eps(f)
    suite = evaluate_adaptive_suite(ctx.target_model, defense, x, y, dataset=f.dataset, eps=eps, steps=f.steps,
                                    seed=f.seed, budget=f.budget, autoattack=f.autoattack)
    metrics = figures.trial_metrics(suite.to_metrics())
    for row in suite.rows:
        if row.correct is not None:
            per_example[figures.figure(row.metric).per_example_key] = row.correct.contiguous()
        # seconds per attack (the three PGD rows are one attack): timings.json's breakdown
        attack = "adaptive.pgd" if row.metric.startswith("adaptive.pgd_") else row.metric
        metrics[f"{SECONDS_PREFIX}{attack}"] = row.params["seconds"]
    if curve:
        curve_start = time.perf_counter()
        frame = robustness_curve(ctx.target_model, defense, x, y, eps_max=eps, num=f.curve_points, steps=f.curve_steps or f.steps,
                                 seed=f.seed, undefended_model=ctx.undefended_model, whitebox=ctx.whitebox_curve)
        frame.to_csv(out_dir / CURVE_FILE, index=False)
        metrics[f"{SECONDS_PREFIX}curve"] = time.perf_counter() - curve_start
    return metrics


def restored_examples(defense: nn.Module, ctx: TrialContext) -> dict[str, torch.Tensor]:
    """A few validation images per attack: original, adversarial, restored and predicted labels."""
    from addd.inference import predict

    n = ctx.grid_examples
    x, y = ctx.val.x[:n], ctx.val.y[:n]
    tensors = {"x": x.contiguous(), "y": y.contiguous(), "pred.x": predict(ctx.target_model, x)}
    # a defense without parameters (the identity of the no-defense baseline) runs where M_t does
    param = next(defense.parameters(), None)
    if param is None:
        param = next(ctx.target_model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        for attack, adv in ctx.val.adv.items():
            x_adv = adv.x_adv[:n]
            restored = defense.restore(x_adv.to(device)).cpu()
            tensors[f"x_adv.{attack}"] = x_adv.contiguous()
            tensors[f"restored.{attack}"] = restored.clone()  # an identity restore would share memory
            tensors[f"pred.x_adv.{attack}"] = predict(ctx.target_model, x_adv)
            tensors[f"pred.restored.{attack}"] = predict(ctx.target_model, restored)
    return tensors


def evaluate_final(defense: nn.Module, ctx: TrialContext, known: tuple[str, ...], seed: int, out_dir: Path,
                   metadata: Mapping[str, Any] | None = None) -> dict[str, float]:
    """A final's whole evaluation, for the sweep's final trials and the study's finals alike: the
    validation figures of a search epoch (the probe and ``objective`` included), the oblivious test suite, the adaptive suite (if ``ctx.finalists``) and,
    on seed 0, the robustness curve. Writes into ``out_dir``: the per-example test correctness
    (``per_example.safetensors``), a few restored images (``restored.safetensors``) and the curve
    (``robustness_curve.csv``); ``metadata`` goes into both tensor files."""
    from addd.storage import save_tensors

    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata or {})
    metrics = evaluate_search(defense, ctx, known)
    per_example = {"y": ctx.test.y.contiguous()}
    metrics.update(evaluate_split(defense, ctx, "test", known, per_example))
    if ctx.finalists is not None:  # the curve of each variant's best config: its first seed (the costly part)
        metrics.update(evaluate_finalist(defense, ctx, out_dir, seed == 0, per_example))
    save_tensors(out_dir / PER_EXAMPLE_FILE, per_example, {"split": "test", "known_attacks": list(known), **metadata})
    save_tensors(out_dir / IMAGES_FILE, restored_examples(defense, ctx), metadata)
    return metrics


def _event(ctx: TrialContext, trial_id: str, event: str, **fields: Any) -> None:
    """Append one line to the events log (O_APPEND lines are atomic on a local disk)."""
    if ctx.events_path:
        line = json.dumps({"trial_id": trial_id, "event": event, "time": time.time(), "pid": os.getpid(), **fields})
        with open(ctx.events_path, "a") as fh:
            fh.write(line + "\n")


def system_metrics(sampler, device: torch.device) -> dict[str, float]:
    """``system/...``: the sampler's means over the epoch, and on a GPU this trial's peak memory
    (``torch.cuda.max_memory_allocated``, reset for the next epoch)."""
    out = sampler.take()
    if device.type == "cuda":
        out[SYSTEM_PREFIX + "trial_gpu_max_memory_megabytes"] = torch.cuda.max_memory_allocated(device) / 1e6
        torch.cuda.reset_peak_memory_stats(device)
    return out


def train_defense(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable (see the module docstring)."""
    from addd.defense import ADDDefense, NonFiniteLossError, TrainingState, load_defense
    from addd.storage import save_tensors
    from sweeps import _ray

    torch.set_num_threads(max(1, ctx.threads))
    spec = TrialSpec.parse(config)
    cfg = spec.defense_config()
    trial_id = _ray.trial_id()
    epochs = cfg.train.epochs
    device = torch.device(cfg.train.device)
    ctx.target_model.to(device).eval()

    start_epoch, resume_state = 0, None
    with _ray.latest_checkpoint_dir() as ckpt:  # restored trial: continue where it stopped
        if ckpt is not None:
            defense = load_defense(Path(ckpt) / DEFENSE_FILE, device=cfg.train.device)
            start_epoch = json.loads((Path(ckpt) / STATE_FILE).read_text())["epoch"]
            if (Path(ckpt) / OPTIMIZER_FILE).exists():
                resume_state = TrainingState.load(Path(ckpt) / OPTIMIZER_FILE)
        else:
            defense = ADDDefense(cfg)
    _event(ctx, trial_id, "start", phase=spec.phase, variant=spec.variant, start_epoch=start_epoch,
           optimizer_restored=resume_state is not None)
    if start_epoch >= epochs:
        _event(ctx, trial_id, "end", epoch=start_epoch)
        return

    def on_epoch(report, model: ADDDefense) -> None:
        epoch = start_epoch + report.epoch
        last = epoch == epochs
        metrics: dict[str, float] = {EPOCH: epoch, "epoch_seconds": report.seconds}
        metrics.update({f"loss/{k}": v for k, v in report.losses.items()})
        eval_start = time.perf_counter()
        final = spec.phase == FINAL and last
        with tempfile.TemporaryDirectory() as tmp:
            if final:  # the same evaluation as the study's finals
                metrics.update(evaluate_final(model, ctx, cfg.known_attacks, spec.seed, Path(tmp), {"epoch": epoch}))
            elif spec.phase == SEARCH:
                metrics.update(evaluate_search(model, ctx, cfg.known_attacks))
            metrics["eval_seconds"] = time.perf_counter() - eval_start
            # compute = what the trial must do whatever runs it; checkpointing and reporting are overhead
            _event(ctx, trial_id, "epoch", epoch=epoch, compute_seconds=report.seconds + metrics["eval_seconds"])
            model.save(Path(tmp) / DEFENSE_FILE, extra_metadata={"epoch": epoch, "variant": spec.variant})
            model.optimizer_state().save(Path(tmp) / OPTIMIZER_FILE)
            if not final:  # evaluate_final saved them
                save_tensors(Path(tmp) / IMAGES_FILE, restored_examples(model, ctx), {"epoch": epoch})
            (Path(tmp) / STATE_FILE).write_text(json.dumps({"epoch": epoch, "metrics": metrics}))
            _ray.report({**metrics, **system_metrics(sampler, device)}, checkpoint_dir=tmp)

    try:
        with SystemSampler() as sampler:  # the node's CPU/GPU use over each epoch (MLflow's system metrics)
            defense.fit(ctx.train.x, ctx.train.y, cached_known(ctx, cfg.known_attacks), callback=on_epoch,
                        epochs=epochs - start_epoch, resume_state=resume_state, target_model=ctx.target_model)
    except NonFiniteLossError as exc:  # a result, not a crash: the sweep goes on, the reason is kept
        log.warning("trial %s: %s", trial_id, exc)
        _ray.report({EPOCH: len(defense.history) + 1, OBJECTIVE: float("nan"), FAILURE: str(exc)})
    _event(ctx, trial_id, "end", epoch=epochs)
