"""Evaluate one saved ADD-Defense against a dataset's whole attack suite, both threat models.

Oblivious: every attack of the suite against the target model alone (sets from the shared
adversarial-example cache), accuracy with and without the defense, plus the worst cases.
Adaptive: AutoAttack and BPDA against the whole pipeline M_t ∘ G ∘ E, beside the oblivious
figure for the same attack and ε. This is the finalist check the sweep does not run per trial.

    python -m ablations.evaluate --defense runs/digits_ablation/best_defense/defense.safetensors \
        --summary runs/digits_ablation/summary.json
    python -m ablations.evaluate --defense D.safetensors --dataset digits --n-test 200 \
        --attacks PGDu PGDt CWu --adaptive BPDA AA_Linf --out results/

The target model: with ``--summary``, the one the sweep attacked (its path is in summary.json);
with ``--target-model``, that file; otherwise the one `addd.target_models.get_target_model` trains
(once) for the dataset, ``--n-train`` and ``--seed``.
Writes ``oblivious.csv``, ``adaptive.csv`` and ``evaluation.json`` to ``--out`` (if given) and
prints both tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


import addd
from addd.advcache import AdvCache, AdvRequest
from addd.attack_names import ADAPTIVE_ATTACK_NAMES, ATTACK_NAMES
from addd.data import DATASET_NAMES, load_dataset
from addd.errors import AdddError
from addd.evaluate import evaluate, evaluate_adaptive
from addd.storage import atomic_write_bytes
from addd.target_models import default_cache_dir, get_target_model, load_target_entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ablations.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--defense", required=True, help="ADD-Defense checkpoint (.safetensors from ADDDefense.save)")
    parser.add_argument("--summary", default=None,
                        help="a sweep's summary.json: takes the dataset and the exact target model the sweep attacked")
    parser.add_argument("--dataset", default="digits", choices=DATASET_NAMES)
    parser.add_argument("--data-root", default="./data")
    parser.add_argument("--cache-dir", default=None, help="target models and adversarial sets (default: $ADDD_CACHE_DIR or ./.addd_cache)")
    parser.add_argument("--target-model", default=None, help="saved target model; default: train/load the dataset's default")
    parser.add_argument("--n-train", type=int, default=None, help="training subset the target model was trained on")
    parser.add_argument("--n-test", type=int, default=None, help="evaluate on this many test examples (default: all)")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACK_NAMES), help="oblivious attacks (default: the whole suite)")
    parser.add_argument("--holdout", nargs="*", default=[], help="holdout attacks for worst.holdout")
    parser.add_argument("--adaptive", nargs="*", default=["BPDA", "AA_Linf"], help="adaptive attacks (none: skip)")
    parser.add_argument("--budget", type=float, default=1.0, help="scales attack iterations (1.0: the dataset's table)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="folder for oblivious.csv, adaptive.csv, evaluation.json")
    args = parser.parse_args(argv)
    for name in [*args.attacks, *args.holdout]:
        if name not in ATTACK_NAMES:
            parser.error(f"unknown attack {name!r}; valid: {', '.join(ATTACK_NAMES)}")
    for name in args.adaptive:
        if name not in ADAPTIVE_ATTACK_NAMES:
            parser.error(f"unknown adaptive attack {name!r}; valid: {', '.join(ADAPTIVE_ATTACK_NAMES)}")
    if args.summary:
        try:
            summary = json.loads(Path(args.summary).read_text())
            args.dataset = summary["dataset"]
            args.target_model = args.target_model or summary["target_model"]["path"]
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"cannot read dataset and target model from {args.summary} ({exc}); pass a sweep's summary.json")
    if not Path(args.defense).is_file():
        parser.error(f"no defense checkpoint at {args.defense}; pass the path of a file saved by ADDDefense.save")
    return args


def run(args: argparse.Namespace) -> dict:
    defense = addd.load_defense(args.defense, device=args.device)
    data = load_dataset(args.dataset, args.data_root, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.target_model:
        target = load_target_entry(args.target_model, device=args.device)
    else:
        target = get_target_model(data, cache_dir=cache_dir, device=args.device)
    model = target.model
    x, y = data.test.x, data.test.y

    def progress(attack: str, done: int, total: int) -> None:
        logging.info("%s: %d/%d examples", attack, done, total)

    cache = AdvCache.under(cache_dir)  # the sweep's cache: its sets are reused, not regenerated
    requests = [
        AdvRequest(args.dataset, "test", x, y, model, attack, model_sha256=target.weights_sha256,
                   budget=args.budget, seed=args.seed, device=args.device)
        for attack in args.attacks
    ]
    adv_sets = cache.get_many(requests, progress=progress)
    known = list(defense.config.known_attacks)
    report = evaluate(defense, model, x, y, adv_sets, known_attacks=known, holdout=args.holdout)
    oblivious = report.to_frame()
    result = {
        "defense": str(args.defense),
        "dataset": args.dataset,
        "n_test": int(len(y)),
        "known_attacks": known,
        "target_model": {"path": str(target.path), "weights_sha256": target.weights_sha256,
                         "clean_test_accuracy": target.clean_test_accuracy},
        "attack_params": {a: s.manifest.params if s.manifest else None for a, s in adv_sets.items()},
        "oblivious": report.to_metrics(),
    }
    print(f"Oblivious (attacks on M_t alone), {len(y)} {args.dataset} test examples, known attacks {known}")
    print(oblivious.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(" ".join(f"{k}={v:.4f}" for k, v in report.to_metrics().items() if not k.startswith("acc.")))
    if args.adaptive:
        adaptive = evaluate_adaptive(defense, model, x, y, dataset=args.dataset, attacks=args.adaptive,
                                     adv_sets=adv_sets, budget=args.budget, seed=args.seed)
        print("\nAdaptive (attacks on M_t ∘ G ∘ E) beside oblivious (same attack and ε)")
        print(adaptive.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        result["adaptive"] = adaptive.to_metrics()
    if args.out:
        out = Path(args.out)
        atomic_write_bytes(out / "oblivious.csv", oblivious.to_csv(index=False).encode())
        if args.adaptive:
            atomic_write_bytes(out / "adaptive.csv", adaptive.to_frame().to_csv(index=False).encode())
        atomic_write_bytes(out / "evaluation.json", json.dumps(result, indent=2, default=str).encode())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(args)
    except (AdddError, OSError) as exc:  # every addd error carries a what-to-do message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
