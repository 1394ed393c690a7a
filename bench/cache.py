"""Benchmark: 8 evaluations of a defense against the full digits suite, with the
adversarial-example cache vs regenerating every set for each evaluation.

Setup (not timed): the digits data, its target model (trained once, cached), and an ADD-Defense
trained briefly on the known attacks PGDu and PGDt. Then, in one run:

- cached: an empty cache; each evaluation asks it for the suite (the first generates and
  stores the sets, the other seven read and verify them) and runs ``addd.evaluate.evaluate``;
- regenerated: each evaluation runs every attack again (``addd.attacks.run_attack``, no disk)
  and evaluates the same way.
The two sides alternate, evaluation by evaluation, so noise on a shared machine hits both.

    python bench/cache.py            # 40 test examples, attack budget 0.2 (~5 minutes on 1 CPU)
    python bench/cache.py --quick    # 16 test examples, budget 0.1
    python bench/cache.py --n-test 100 --budget 1.0 --evaluations 8
Goal: ratio >= 5.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from addd.advcache import AdvCache, AdvRequest, AdvSet
from addd.attacks import ATTACK_NAMES, run_attack
from addd.config import DefenseConfig, NetworkConfig, TrainConfig
from addd.data import load_dataset
from addd.defense import ADDDefense
from addd.evaluate import evaluate
from addd.target_models import get_target_model

KNOWN = ("PGDu", "PGDt")
HOLDOUT = ("CWu", "STu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 test examples, budget 0.1")
    parser.add_argument("--n-test", type=int, default=40, help="test examples attacked (default 40)")
    parser.add_argument("--n-train", type=int, default=300, help="training examples (target model, defense)")
    parser.add_argument("--budget", type=float, default=0.2, help="attack budget in (0, 1] (default 0.2)")
    parser.add_argument("--evaluations", type=int, default=8, help="evaluations per side (default 8)")
    parser.add_argument("--defense-epochs", type=int, default=2, help="epochs of the brief defense training")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the target model is kept (default: temp)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_test, args.budget = 16, 0.1
    return args


def train_defense(dataset, target_model, budget: float, epochs: int, cache_dir: Path) -> ADDDefense:
    """A small ADD-Defense, trained briefly on the known attacks' training sets (via a cache)."""
    train = dataset.train
    requests = [
        AdvRequest("digits", "train", train.x, train.y, target_model, attack, budget=budget) for attack in KNOWN
    ]
    sets = AdvCache.under(cache_dir).get_many(requests)  # train split: other keys than the timed test sets
    config = DefenseConfig(
        network=NetworkConfig(width=0.125, channels=dataset.channels),
        train=TrainConfig(epochs=epochs, batch_size=64),
        known_attacks=KNOWN,
    )
    defense = ADDDefense(config)
    defense.fit(train.x, train.y, {name: s.x_adv for name, s in sets.items()})
    return defense.eval()


def cached_evaluation(cache: AdvCache, requests, defense, model, x, y) -> float:
    sets = cache.get_many(requests)
    return evaluate(defense, model, x, y, sets, known_attacks=KNOWN, holdout=HOLDOUT).worst_unknown


def regenerated_evaluation(defense, model, x, y, budget: float) -> float:
    sets = {}
    for attack in ATTACK_NAMES:
        result = run_attack(attack, model, x, y, dataset="digits", budget=budget, seed=0)
        target = None if result.target is None else torch.full_like(y, result.target)
        sets[attack] = AdvSet(attack, result.x_adv, y, target)
    return evaluate(defense, model, x, y, sets, known_attacks=KNOWN, holdout=HOLDOUT).worst_unknown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # the machine is shared; both sides run alike
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = load_dataset("digits", n_train=args.n_train, n_test=args.n_test, seed=0)
        target = get_target_model(dataset, cache_dir=args.cache_dir or tmp / "models")
        defense = train_defense(dataset, target.model, args.budget, args.defense_epochs, tmp)
        x, y = dataset.test.x, dataset.test.y
        requests = [
            AdvRequest("digits", "test", x, y, target.model, attack, model_sha256=target.weights_sha256,
                       budget=args.budget)
            for attack in ATTACK_NAMES
        ]
        for attack in ATTACK_NAMES:  # warm-up, not timed: lazy library imports, first calls
            run_attack(attack, target.model, x[:2], y[:2], dataset="digits", budget=0.01, seed=0)
        print(
            f"digits: {len(x)} test examples, {len(ATTACK_NAMES)} attacks, budget {args.budget}, "
            f"{args.evaluations} evaluations per side; target clean acc {target.clean_test_accuracy:.3f}"
        )
        cache = AdvCache.under(tmp)
        cached_times, regen_times, cached_worst, regen_worst = [], [], [], []
        for _ in range(args.evaluations):  # interleaved, so machine noise hits both sides alike
            start = time.perf_counter()
            cached_worst.append(cached_evaluation(cache, requests, defense, target.model, x, y))
            middle = time.perf_counter()
            regen_worst.append(regenerated_evaluation(defense, target.model, x, y, args.budget))
            cached_times.append(middle - start)
            regen_times.append(time.perf_counter() - middle)
    cached_s, regen_s = sum(cached_times), sum(regen_times)
    later = statistics.mean(cached_times[1:]) if len(cached_times) > 1 else float("nan")
    print(
        f"with cache:             {cached_s:8.1f} s  (first, generating: {cached_times[0]:.1f} s; then "
        f"{later:.2f} s per evaluation)  worst.unknown {cached_worst[0]:.3f}"
    )
    print(
        f"regenerating each time: {regen_s:8.1f} s  ({statistics.mean(regen_times):.1f} s per evaluation)"
        f"  worst.unknown {regen_worst[0]:.3f}"
    )
    print(f"ratio: {regen_s / cached_s:.1f}x  (goal >= 5x)")
    if len(set(cached_worst)) != 1:
        print("WARNING: cached evaluations disagree with each other", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
