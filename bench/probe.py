"""The adaptive probe's cost: probe time / search-trial time, at the quick start's size, in one run.

One search trial of ``digits_ablation`` (its train and val splits, the width, epochs and batch
size of its base config, the paper's loss weights, known attacks PGDu+PGDt) is trained here with
the sweep's own pieces, and at every epoch it runs what a sweep's search epoch runs
(``sweeps.trial.evaluate_split`` on val, the oblivious objective) and, timed apart, the
adaptive probe (``sweeps.trial.probe_split``: ``probe_steps``-step PGD through M_t∘G∘E, CE and
margin, on the first ``probe_n`` val images). The trial's time is training + oblivious
evaluation + probe; the last line is ``ratio: X`` = total probe time / that trial time (goal <= 0.25).

The adversarial sets come from the cache (the sweep's ``sweeps.trial.sweep_requests``); a set
missing there is an error, never generated (the whole suite takes many minutes): run the quick
start once with the same ``--cache-dir`` first.

    python bench/probe.py --cache-dir .addd_cache       # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _refuse(*args, **kwargs):
    from addd.errors import AdddError

    raise AdddError("an adversarial set is missing from --cache-dir; run the quick start with that cache first")


def prepare(space, cache_dir: Path, data_root: Path, threads: int):
    """The TrialContext a sweep of ``space`` gives its trials (the driver's builders), sets from the cache."""
    import torch

    from addd.advcache import AdvCache
    from addd.target_models import get_target_model
    from sweeps.trial import build_context, cached_sets, sweep_dataset, sweep_requests

    torch.set_num_threads(threads)
    dataset = sweep_dataset(space, data_root)
    target = get_target_model(dataset, arch=space.target_arch, cache_dir=cache_dir)
    requests = {split: r for split, r in sweep_requests(space, dataset, target, device="cpu").items() if split != "test"}
    cache = AdvCache.under(cache_dir, run_attack=_refuse)
    splits = cached_sets(dataset, cache, requests)
    splits["test"] = splits["val"]  # a search trial never reads test
    return build_context(space, splits, target.model, threads=threads)


def time_trial(space, ctx) -> dict[str, float]:
    """Seconds of one search trial's parts: training, oblivious val evaluation, the probe."""
    from addd.defense import ADDDefense
    from sweeps.trial import evaluate_split, probe_split

    config = space.base_config()
    seconds = {"train": 0.0, "oblivious": 0.0, "probe": 0.0}
    probes = []
    clock = {"epoch_start": time.perf_counter()}

    def on_epoch(report, model):
        start = time.perf_counter()
        seconds["train"] += start - clock["epoch_start"]
        evaluate_split(model, ctx, "val", config.known_attacks)
        middle = time.perf_counter()
        probes.append(probe_split(model, ctx))
        end = time.perf_counter()
        seconds["oblivious"] += middle - start
        seconds["probe"] += end - middle
        print(f"epoch {report.epoch}: train {start - clock['epoch_start']:.1f}s, oblivious {middle - start:.1f}s, "
              f"probe {end - middle:.1f}s, {probes[-1]}", flush=True)
        clock["epoch_start"] = time.perf_counter()

    x_adv = {name: ctx.train.adv[name].x_adv for name in config.known_attacks}
    ADDDefense(config).fit(ctx.train.x, ctx.train.y, x_adv, callback=on_epoch)
    return seconds


def main(argv: list[str] | None = None) -> int:
    from sweeps.spaces import get_space

    p = argparse.ArgumentParser(prog="python bench/probe.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="digits_ablation")
    p.add_argument("--cache-dir", type=Path, default=Path(".addd_cache"))
    p.add_argument("--data-root", type=Path, default=Path("./data"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (a sweep trial's cpus_per_trial)")
    p.add_argument("--probe-n", type=int, help="probe images (default: the space's)")
    p.add_argument("--probe-steps", type=int, help="probe PGD steps (default: the space's)")
    args = p.parse_args(argv)
    space = get_space(args.space)
    sizes = {k: v for k, v in (("probe_n", args.probe_n), ("probe_steps", args.probe_steps)) if v is not None}
    space = replace(space, **sizes).validate()
    ctx = prepare(space, args.cache_dir, args.data_root, args.threads)
    cfg = space.base_config()
    print(f"{space.name}: {len(ctx.train.y)} train / {len(ctx.val.y)} val images, width {cfg.network.width}, "
          f"{cfg.train.epochs} epochs; probe {ctx.probe.n} images x {ctx.probe.steps} steps at eps {ctx.probe.eps}")
    seconds = time_trial(space, ctx)
    trial = sum(seconds.values())
    print(f"trial {trial:.1f}s = train {seconds['train']:.1f}s + oblivious val {seconds['oblivious']:.1f}s "
          f"+ probe {seconds['probe']:.1f}s")
    print(f"ratio: {seconds['probe'] / trial:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
