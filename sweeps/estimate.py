"""A sweep's cost before it runs: its size (``run.py --dry-run``) and its wall time (``--estimate``).

- :func:`sweep_size`: trials, trial-epochs and the images attacked per attack and split, pure
  arithmetic on the :class:`sweeps.plan.Plan` (no torch, no data: every ``--dry-run`` prints it);
- :func:`calibrate`: a short measurement on this machine (torch): one ADD-Defense training step
  per network width the space uses, a baseline step, a target-model step, the pipeline's forward
  and PGD step, one batch of every attack of the suite through ``addd.attacks.run_attack`` (the
  runner the adversarial-set cache calls) on random images against an *untrained* target, and
  the start of a trial worker (a Python importing the trainable);
- :func:`estimate_seconds`: wall time per phase (prepare, search, finals, study) = the work of
  :func:`sweep_size` at the calibrated seconds / the parallel slots, plus the sweep's fixed
  overheads; pure arithmetic, so a test can check it by hand.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from addd.config import ABLATIONS
from sweeps.spaces import PARETO, Choice

# (training pool, test set, channels) of each dataset as addd.data loads it (tests/test_estimate.py
# checks the table against addd.data, and against the loaded splits of the two bundled datasets)
DATASETS: dict[str, tuple[int, int, int]] = {
    "digits": (1438, 359, 1), "mnist5k": (4000, 1000, 1), "mnist": (60000, 10000, 1),
    "fashion_mnist": (60000, 10000, 1), "svhn": (73257, 26032, 3), "cifar10": (50000, 10000, 3),
    "svhn_synthetic": (73257, 26032, 3),  # benchmarks only (bench/gpu.py)
}
VAL_FRACTION, VAL_CAP = 0.1, 5000  # addd.data's default n_val: 10% of the training examples, at most 5000
BASELINES = ("no_defense", "ape_gan", "adv_training")  # sweeps.study.BASELINE_KEYS (checked by a test)
TRAINED_BASELINES = ("ape_gan", "adv_training")  # no_defense trains nothing

# The sweep's fixed overheads, measured in a digits_ablation --smoke --no-study sweep on this
# project's 2-core AMD EPYC machine under load (88 s in timings.json, 98 s wall): prepare less
# the target, the sets and the context (Ray, MLflow's parent run, the data: 17 s) plus the
# driver's own imports and its last lines (10 s); the trial phase less its trials' span in
# events.jsonl (Tune's start, the first actors: 14 s); between one trial's end and the next
# one's start on a worker (1.5 s); per epoch, what its report adds to its compute (checkpoint,
# restored-image grid: 0.5 s); the report (1 s).
STARTUP_SECONDS = 27.0
TUNER_START_SECONDS = 14.0
TRIAL_OVERHEAD_SECONDS = 1.5
EPOCH_OVERHEAD_SECONDS = 0.5
REPORT_SECONDS = 1.0
ATTACK_BATCH = 8  # random images per attack in the calibration


# ----------------------------------------------------------------------------- size (no torch)
def split_sizes(space) -> dict[str, int]:
    """Images in the train, val and test splits of ``space``, as ``addd.data.load_dataset`` draws them."""
    pool, test, _ = DATASETS[space.dataset]
    n_val = space.n_val
    if n_val is None:
        n_val = min(VAL_CAP, round(VAL_FRACTION * (pool if space.n_train is None else space.n_train)))
        if space.n_train is not None:
            n_val = min(n_val, pool - space.n_train)
    n_train = pool - n_val if space.n_train is None else space.n_train
    return {"train": n_train, "val": n_val, "test": test if space.n_test is None else space.n_test}


def study_defenses(space) -> tuple[int, int]:
    """How many fixed ablations and baselines the study re-runs over the seeds (sweeps.study): the
    fixed ablations unless the space turns them off; the baselines, and for a pareto search the
    paper's setting as one more."""
    fixed = len(ABLATIONS) - 1 if space.study_fixed_ablations else 0
    return fixed, len(BASELINES) + (space.objective == PARETO)


def trial_counts(plan) -> dict[str, int]:
    """Search trials, the sweep's finals (pareto: at most) and the study's finals: the fixed ablations
    of the best ``full`` config and the baselines, over the seeds (only with a study and a ``full`` variant)."""
    s = plan.space
    study = plan.study and "full" in s.variants
    fixed, baselines = study_defenses(s)
    counts = {"search": len(s.variants) * plan.num_samples, "finals": len(s.variants) * plan.finals_per_variant,
              "study_fixed_ablations": fixed * plan.seeds if study else 0,
              "study_baselines": baselines * plan.seeds if study else 0}
    return {**counts, "total": sum(counts.values())}


def trial_epochs(plan, trials: Mapping[str, int]) -> dict[str, Any]:
    """Training epochs over all trials; search trials run at most ``train.epochs`` each."""
    s, epochs = plan.space, plan.space.base_config().train.epochs
    trained = len(TRAINED_BASELINES) + (s.objective == PARETO)  # and a pareto study's paper setting
    trained_baselines = trained * plan.seeds if trials["study_baselines"] else 0
    out = {"per_trial": epochs, "search_at_most": trials["search"] * epochs, "finals": trials["finals"] * epochs,
           "study": (trials["study_fixed_ablations"] + trained_baselines) * epochs}
    out["total_at_most"] = out["search_at_most"] + out["finals"] + out["study"]
    out["note"] = ("objective pareto: no early stopping, every search trial runs all its epochs" if s.objective == PARETO
                   else f"ASHA may stop a search trial after {s.grace_period} epoch(s) (reduction factor "
                        f"{s.reduction_factor}): the search may train fewer epochs")
    return out


def oblivious_images(space, splits: Mapping[str, int]) -> dict[str, Any]:
    """attack -> split -> images attacked once for the cache: the train split for every attack of a
    known-attack choice (an online one, PGDa, is made per batch instead), val and test for the suite."""
    train = set(space.train_attacks())
    out: dict[str, Any] = {}
    for attack in dict.fromkeys((*space.attacks, *space.train_attacks())):
        scored = attack in space.attacks
        out[attack] = {"train": splits["train"] if attack in train else 0,
                       "val": splits["val"] if scored else 0, "test": splits["test"] if scored else 0}
    out["total"] = sum(n for per in out.values() for n in per.values())
    return out


def seed0_finals(plan, trials: Mapping[str, int]) -> int:
    """Finals that also draw the robustness curve (seed 0): one per variant (pareto: per front member) and study job."""
    s = plan.space
    sweep = len(s.variants) * (s.front_size if s.objective == PARETO else 1)
    study = sum(study_defenses(s)) if trials["study_baselines"] else 0
    return sweep + study


def adaptive_images(plan, splits: Mapping[str, int], trials: Mapping[str, int]) -> dict[str, Any]:
    """Images attacked through the whole pipeline: the first adaptive_n test images of every final
    (the sweep's and the study's), per attack; the curve's on the seed-0 finals."""
    s = plan.space
    n = min(s.adaptive_n or splits["test"], splits["test"])
    finals = trials["finals"] + trials["study_fixed_ablations"] + trials["study_baselines"]
    attacks = ["pgd_ce", "pgd_margin", *(["aa_linf", "aa_l2"] if s.adaptive_autoattack else []), "bpda"]
    curve_finals = seed0_finals(plan, trials)
    return {"images_per_final": n, "finals": finals, "pgd_steps": s.adaptive_steps,
            **{attack: n * finals for attack in attacks},
            "curve": {"finals": curve_finals, "eps_points": s.curve_points - 1, "steps": s.curve_steps,
                      "images": n * curve_finals * (s.curve_points - 1)}}


def probe_images(plan, epochs: Mapping[str, Any], trials: Mapping[str, int]) -> dict[str, Any]:
    """The adaptive probe: probe_n val images x probe_steps PGD steps per search-trial epoch, and once per final."""
    s = plan.space
    finals = trials["finals"] + trials["study_fixed_ablations"] + trials["study_baselines"]
    return {"images_per_epoch": s.probe_n, "steps": s.probe_steps,
            "search_images_at_most": s.probe_n * epochs["search_at_most"], "final_images": s.probe_n * finals}


def sweep_size(plan) -> dict[str, Any]:
    """The sweep's size (--dry-run's ``size``): no calibration, no torch, no data."""
    splits = split_sizes(plan.space)
    trials = trial_counts(plan)
    epochs = trial_epochs(plan, trials)
    return {"trials": trials, "trial_epochs": epochs, "splits": splits,
            "oblivious_images": oblivious_images(plan.space, splits),
            "adaptive_images": adaptive_images(plan, splits, trials), "probe": probe_images(plan, epochs, trials)}


# ----------------------------------------------------------------------------- wall time (arithmetic)
def _mean_width(calibration: Mapping[str, Any]) -> dict[str, float]:
    """The per-width seconds averaged over the widths (each equally likely: TPE chooses)."""
    widths = list(calibration["widths"].values())
    return {key: statistics.fmean(w[key] for w in widths) for key in widths[0]}


def trial_seconds(plan, size: Mapping[str, Any], calibration: Mapping[str, Any], iterations: Mapping[str, int]) -> dict:
    """Seconds of one trial's parts on one slot: a training epoch (ADD and each baseline), a search
    epoch's evaluation (the val suite and the probe), a final's evaluation, a seed-0 curve."""
    s, splits, w = plan.space, size["splits"], _mean_width(calibration)
    batch = min(s.base_config().train.batch_size, splits["train"])
    steps = splits["train"] // batch  # addd.training drops the last partial batch
    suite = 1 + len(s.attacks)  # the clean images and every attack's, restored and classified
    probe = 2 * s.probe_steps * s.probe_n * w["grad_step_per_image"]  # CE, then margin (counted on every image)
    n_adv = size["adaptive_images"]["images_per_final"]
    adaptive_steps = 2 * s.adaptive_steps + sum(iterations.values())
    return {
        "train_epoch": steps * w["train_step"],
        "baseline_epoch": {k: steps * v for k, v in calibration.get("baseline_step", {}).items()},
        "search_eval": splits["val"] * suite * w["forward_per_image"] + probe,
        "final_eval": (splits["val"] + splits["test"]) * suite * w["forward_per_image"] + probe
                      + n_adv * adaptive_steps * w["grad_step_per_image"],
        "curve": n_adv * (s.curve_points - 1) * 2 * s.curve_steps * w["grad_step_per_image"],
    }


def prepare_seconds(plan, size: Mapping[str, Any], calibration: Mapping[str, Any], slots: Mapping[str, int]) -> float:
    """The target model (trained in the driver), every adversarial set (Ray tasks), the curve's white-box column."""
    target = calibration["target"]
    n_train = size["splits"]["train"]
    target_work = target["epochs"] * max(1, n_train // min(target["batch_size"], n_train)) * target["step_seconds"]
    per_image = calibration["attack_seconds_per_image"]
    attack_work = sum(n * per_image[attack] for attack, per in size["oblivious_images"].items() if attack != "total"
                      for n in per.values())
    whitebox = trial_seconds(plan, size, calibration, {})["curve"]  # on M_t alone: counted as through the pipeline
    return STARTUP_SECONDS + target_work + calibration["worker_start"] + attack_work / slots["tasks"] + whitebox


def estimate_seconds(plan, size: Mapping[str, Any], calibration: Mapping[str, Any], slots: Mapping[str, int],
                     iterations: Mapping[str, int]) -> dict[str, float]:
    """Wall seconds per phase: work / parallel slots + overheads (``slots``: ``trials`` for Tune's
    trials, ``tasks`` for the Ray tasks of the sets and the study; ``iterations``: the gradient
    steps of each adaptive library attack, from :func:`adaptive_iterations`)."""
    t = trial_seconds(plan, size, calibration, iterations)
    trials, epochs = size["trials"], size["trial_epochs"]["per_trial"]
    curves = seed0_finals(plan, trials)
    study_curves = curves - len(plan.space.variants) * (plan.space.front_size if plan.space.objective == PARETO else 1)
    search = trials["search"] * (epochs * (t["train_epoch"] + t["search_eval"] + EPOCH_OVERHEAD_SECONDS)
                                 + TRIAL_OVERHEAD_SECONDS)
    finals = trials["finals"] * (epochs * (t["train_epoch"] + EPOCH_OVERHEAD_SECONDS) + t["final_eval"]
                                 + TRIAL_OVERHEAD_SECONDS) + (curves - study_curves) * t["curve"]
    study = REPORT_SECONDS
    if trials["study_baselines"]:
        seeds, paper = plan.seeds, plan.space.objective == PARETO  # a pareto study trains the paper's setting too
        train = (trials["study_fixed_ablations"] + paper * seeds) * epochs * t["train_epoch"] + \
            seeds * epochs * sum(t["baseline_epoch"].values())
        work = train + (trials["study_fixed_ablations"] + trials["study_baselines"]) * t["final_eval"] \
            + study_curves * t["curve"]
        study += calibration["worker_start"] + work / slots["tasks"]
    return {"prepare": prepare_seconds(plan, size, calibration, slots),
            "search": TUNER_START_SECONDS + calibration["worker_start"] + search / slots["trials"],
            "finals": finals / slots["trials"], "study": study}


# ----------------------------------------------------------------------------- calibration (torch)
def _widths(space) -> tuple[float, ...]:
    """The network widths trials use: the searched options (a range's ends), else the base width."""
    dom = space.search.get("network.width")
    if dom is None:
        return (space.base_config().network.width,)
    return tuple(dom.options) if isinstance(dom, Choice) else (dom.low, dom.high)


def _random_images(n: int, channels: int, device: str, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 32, 32, generator=generator).to(device)


def _median_epoch(model, x, y, adv: Mapping[str, Any], repeats: int, **fit_kwargs) -> float:
    """The median seconds of a training step: ``fit`` on one batch for 1 + ``repeats`` epochs, the first a warm-up."""
    seconds: list[float] = []
    model.fit(x, y, adv, callback=lambda report, _: seconds.append(report.seconds), epochs=1 + repeats, **fit_kwargs)
    return statistics.median(seconds[1:])


def _known_batches(known: tuple[str, ...], x) -> dict[str, Any]:
    """Stand-in cached sets of the known attacks (an online one is made by fit)."""
    from addd.attack_names import is_online

    return {a: (x + 0.03 * (i + 1) * (x - 0.5)).clamp(0, 1) for i, a in enumerate(known) if not is_online(a)}


def _time_width(space, width: float, target, device: str, repeats: int) -> dict[str, float]:
    """One ADD-Defense training step at ``width`` (the mean over the known-attack choices), then the
    pipeline M_t(G(E(x)))'s forward and PGD step (forward and input backward) per image."""
    import torch
    import torch.nn.functional as F

    from addd.attack_names import is_online
    from addd.defense import ADDDefense
    from addd.inference import frozen

    base = space.base_config().replace(**{"network.width": width, "train.device": device})
    x = _random_images(base.train.batch_size, base.network.channels, device)
    y = torch.arange(len(x), device=device) % 10
    steps = []
    for known in space.known_attack_choices():
        defense = ADDDefense(base.replace(known_attacks=list(known)))
        online = {"target_model": target} if any(map(is_online, known)) else {}
        steps.append(_median_epoch(defense, x, y, _known_batches(known, x), repeats, **online))
    defense.eval()
    n = min(256, max(space.probe_n, space.adaptive_n or 1))
    images = _random_images(n, base.network.channels, device, seed=1)
    forward, grad = [], []
    with frozen(defense, target):
        for _ in range(1 + repeats):
            start = time.perf_counter()
            with torch.no_grad():
                labels = target(defense.restore(images)).argmax(1)
            forward.append(time.perf_counter() - start)
            start = time.perf_counter()
            x_adv = images.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(target(defense.restore(x_adv)), labels), x_adv)
            grad.append(time.perf_counter() - start)
    return {"train_step": statistics.fmean(steps), "forward_per_image": statistics.median(forward[1:]) / n,
            "grad_step_per_image": statistics.median(grad[1:]) / n}


def _time_baselines(space, target_arch: str, device: str, repeats: int) -> dict[str, float]:
    """One training step of each trained baseline at the base config (mean over the known-attack choices)."""
    import torch

    from addd.baselines import build_baseline
    from sweeps.study import _baseline_known

    cfg = space.base_config()
    x = _random_images(cfg.train.batch_size, cfg.network.channels, device)
    y = torch.arange(len(x), device=device) % 10
    out = {}
    for key in TRAINED_BASELINES:
        steps = []
        for choice in space.known_attack_choices():
            known = _baseline_known(key, choice)
            model = build_baseline(key, space.dataset, known, width=cfg.network.width, channels=cfg.network.channels,
                                   batch_size=cfg.train.batch_size, lr=cfg.train.lr, device=device,
                                   target_arch=target_arch, mse_weight=cfg.loss.theta_mse)
            steps.append(_median_epoch(model, x, y, _known_batches(known, x), repeats))
        out[key] = statistics.fmean(steps)
    return out


def _time_target(space, arch: str, device: str, repeats: int) -> dict[str, Any]:
    """One training step of M_t at its training settings (addd.target_models), as the driver trains it."""
    import torch
    import torch.nn.functional as F

    from addd.architectures import arch_kwargs_for, build_target_model
    from addd.target_models import default_settings

    settings = default_settings(space.dataset)
    channels = DATASETS[space.dataset][2]
    model = build_target_model(arch, **arch_kwargs_for(arch, channels, 10)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    x = _random_images(settings.batch_size, channels, device)
    y = torch.arange(len(x), device=device) % 10
    seconds = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return {"arch": arch, "epochs": settings.epochs, "batch_size": settings.batch_size,
            "step_seconds": statistics.median(seconds[1:])}


def _time_attacks(space, target, device: str) -> dict[str, float]:
    """Seconds per image of every attack the sets need, from one batch of ATTACK_BATCH random images
    labelled with the untrained target's own predictions (each image starts correctly classified);
    a first pass on one image at a small budget warms each library up."""
    import torch

    from addd.attacks import run_attack

    channels = DATASETS[space.dataset][2]
    x = _random_images(ATTACK_BATCH, channels, device, seed=2)
    with torch.no_grad():
        y = target(x).argmax(1)
    attacks = list(dict.fromkeys((*space.attacks, *space.train_attacks())))
    for attack in attacks:
        run_attack(attack, target, x[:1], y[:1], dataset=space.dataset, budget=min(space.attack_budget, 0.05),
                   device=device)
    out = {}
    for attack in attacks:
        start = time.perf_counter()
        run_attack(attack, target, x, y, dataset=space.dataset, budget=space.attack_budget, device=device)
        out[attack] = (time.perf_counter() - start) / ATTACK_BATCH
    return out


def _time_worker_start() -> float:
    """Seconds for a fresh Python to import the trainable (torch, the library): a Ray worker's first task."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sweeps.trial"], cwd=root, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def calibration_device(plan) -> str:
    """The plan's device if this machine has it, else the CPU."""
    import torch

    return "cuda" if plan.device == "cuda" and torch.cuda.is_available() else "cpu"


def calibrate(plan, repeats: int = 3) -> dict[str, Any]:
    """Measured seconds on this machine (see the module docstring): trials' steps with their torch
    threads (cpus_per_trial), the target's with the driver's, attacks with one thread (a Ray task's)."""
    import torch

    from addd.architectures import DEFAULT_ARCH, arch_kwargs_for, build_target_model

    s, device, start = plan.space, calibration_device(plan), time.perf_counter()
    arch = s.target_arch or DEFAULT_ARCH[s.dataset]
    out: dict[str, Any] = {"device": device, "target": _time_target(s, arch, device, repeats)}
    torch.manual_seed(0)
    target = build_target_model(arch, **arch_kwargs_for(arch, DATASETS[s.dataset][2], 10)).to(device).eval()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(max(1, int(plan.cpus_per_trial)))
        out["widths"] = {f"{w:g}": _time_width(s, w, target, device, repeats) for w in _widths(s)}
        if plan.study and "full" in s.variants:
            out["baseline_step"] = _time_baselines(s, arch, device, repeats)
        torch.set_num_threads(1)
        out["attack_seconds_per_image"] = _time_attacks(s, target, device)
    finally:
        torch.set_num_threads(previous)
    out["worker_start"] = _time_worker_start()
    out["seconds"] = time.perf_counter() - start
    return out


def adaptive_iterations(space) -> dict[str, int]:
    """Gradient steps per image of the finals' library attacks through the pipeline: AutoAttack
    counted as its first attack, APGD-CE (n_iter), BPDA as PGDu (nb_iter)."""
    from addd.attacks import attack_params

    out = {"bpda": int(attack_params("PGDu", space.dataset, space.attack_budget)["nb_iter"])}
    if space.adaptive_autoattack:
        for key, name in (("aa_linf", "AA_Linf"), ("aa_l2", "AA_L2")):
            out[key] = int(attack_params(name, space.dataset, space.attack_budget)["n_iter"])
    return out


def parallel_slots(plan) -> dict[str, Any]:
    """Concurrent trials and Ray tasks on this machine: CPUs / cpus_per_trial (--max-concurrent
    instead, as the driver does), or GPUs / gpus_per_trial for a plan on GPUs (one assumed where
    this machine has none); the sets' and the study's tasks take one CPU each (and a GPU share)."""
    import torch

    cpus = plan.num_cpus or os.cpu_count() or 1
    gpus = max(1, torch.cuda.device_count()) if plan.device == "cuda" else 0
    by_cpu = max(1, int(cpus // plan.cpus_per_trial))
    by_gpu = max(1, int(gpus // plan.gpus_per_trial)) if gpus else by_cpu
    trials = plan.max_concurrent or min(by_cpu, by_gpu)
    tasks = min(cpus, by_gpu) if gpus else cpus
    return {"trials": trials, "tasks": tasks, "cpus": cpus, "gpus": gpus}


def assumptions(plan, calibration: Mapping[str, Any], slots: Mapping[str, Any], iterations: Mapping[str, int]) -> list[str]:
    """What the estimate takes for granted, in words (printed with it)."""
    s = plan.space
    out = [
        f"attack times are an estimate: measured on an untrained target ({calibration['target']['arch']}) on {ATTACK_BATCH} random images "
        f"labelled with its own predictions, so each starts correctly classified; a trained target's sets may "
        f"take longer or shorter (an attack stops early where it succeeds)",
        "an empty cache: the target model and every adversarial set are built (estimate.prepare_seconds_warm_cache: "
        "with them in --cache-dir)",
        f"every search trial trains all {s.base_config().train.epochs} epochs"
        + ("" if s.objective == PARETO else "; ASHA stops some earlier, so the search may take less"),
        "each network width and known-attack choice of the search equally likely (TPE chooses)",
        f"AutoAttack through the pipeline counted as its first attack (APGD-CE, {iterations.get('aa_linf', 0)} steps) "
        f"on every image: its later attacks run only on the images APGD-CE leaves correct",
        "the probe's and the curve's margin PGD counted on every image (they run on what CE PGD leaves correct)",
        f"parallel slots: {slots['trials']} trial(s) and {slots['tasks']} task(s) at once ({slots['cpus']} CPUs"
        + (f", {slots['gpus']} GPUs" if slots["gpus"] else "") + " of this machine)",
        f"fixed overheads measured in a digits smoke sweep on a 2-core CPU machine: {STARTUP_SECONDS:g} s start "
        f"(imports, Ray, MLflow, data), {TUNER_START_SECONDS:g} s Tune's start, {TRIAL_OVERHEAD_SECONDS:g} s per "
        f"trial, {EPOCH_OVERHEAD_SECONDS:g} s per epoch (checkpoint, report)",
    ]
    if plan.address:
        out.append(f"--address {plan.address}: the cluster's resources are not known before it is joined; "
                   f"this machine's are assumed")
    if plan.device == "cuda" and calibration["device"] != "cuda":
        out.append("the plan runs on GPUs but this machine has none: calibrated on its CPU (far slower), "
                   "and one GPU assumed")
    return out


def estimate(plan, size: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """--estimate: calibrate on this machine, then the wall time per phase (seconds and hours)."""
    size = size or sweep_size(plan)
    calibration = calibrate(plan)
    slots = parallel_slots(plan)
    iterations = adaptive_iterations(plan.space)
    phases = estimate_seconds(plan, size, calibration, slots, iterations)
    total = sum(phases.values())
    cached = STARTUP_SECONDS + trial_seconds(plan, size, calibration, {})["curve"]  # sets and target loaded
    out = {"calibration": _rounded(calibration), "slots": slots, "adaptive_iterations": iterations,
           "phases_seconds": {k: round(v, 1) for k, v in phases.items()}, "total_seconds": round(total, 1),
           "total_hours": round(total / 3600, 3), "prepare_seconds_warm_cache": round(cached, 1)}
    if plan.device == "cuda":
        out["gpu_hours"] = round(total / 3600 * max(1, slots["gpus"]), 3)
    out["assumptions"] = assumptions(plan, calibration, slots, iterations)
    return out


def _rounded(value: Any) -> Any:
    """Measured seconds with 4 significant digits (JSON stays readable)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value
