"""Evaluate one saved ADD-Defense against a dataset's whole attack suite, both threat models.

Oblivious: every attack of the suite against the target model alone (sets from the shared
adversarial-example cache), accuracy with and without the defense, plus the worst cases.
Adaptive: white-box PGD (CE and margin, the worse of the two per example), AutoAttack (L∞, L2)
and BPDA (the paper's Sec 4.3 attack) against the whole pipeline M_t ∘ G ∘ E, each beside the
oblivious figure at the same norm and ε. With ``--summary`` it uses the sweep's splits, target
model, attack list, holdout, budget and cache, so it regenerates nothing the sweep cached.

    python -m ablations.evaluate --defense runs/digits_ablation/best_defense/defense.safetensors \
        --summary runs/digits_ablation/summary.json
    python -m ablations.evaluate --defense D.safetensors --dataset digits --n-test 200 \
        --attacks PGDu PGDt CWu --adaptive pgd BPDA --out results/

The target model: with ``--summary``, the one the sweep attacked (its path is in summary.json);
with ``--target-model``, that file; otherwise the one `addd.target_models.get_target_model` trains
(once) for the dataset, ``--n-train`` and ``--seed``.
Writes ``oblivious.csv``, ``adaptive.csv`` and ``evaluation.json`` to ``--out`` (if given) and
prints both tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


import addd
from addd import figures as F
from addd.advcache import AdvCache, split_requests
from addd.attack_names import ATTACK_NAMES
from addd.data import DATASET_NAMES, load_dataset
from addd.errors import AdddError
from addd.evaluate import evaluate
from addd.storage import atomic_write_bytes
from addd.target_models import default_cache_dir, get_target_model, load_target_entry


ADAPTIVE_CHOICES = ("pgd", "AA_Linf", "AA_L2", "BPDA")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ablations.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--defense", required=True, help="ADD-Defense checkpoint (.safetensors from ADDDefense.save)")
    parser.add_argument("--summary", default=None,
                        help="a sweep's summary.json: its dataset, splits, target model, attack list, holdout, budget "
                             "and cache (flags given explicitly still win)")
    parser.add_argument("--dataset", default=None, choices=DATASET_NAMES, help="default: the summary's, else digits")
    parser.add_argument("--data-root", default="./data")
    parser.add_argument("--cache-dir", default=None,
                        help="target models and adversarial sets (default: the summary's, else $ADDD_CACHE_DIR or ./.addd_cache)")
    parser.add_argument("--target-model", default=None, help="saved target model; default: the summary's, else train/load the dataset's default")
    parser.add_argument("--n-train", type=int, default=None, help="training subset size (default: the summary's, else all)")
    parser.add_argument("--n-val", type=int, default=None, help="validation subset size (default: the summary's)")
    parser.add_argument("--n-test", type=int, default=None, help="test subset size (default: the summary's, else all)")
    parser.add_argument("--split-seed", type=int, default=None, help="seed of the subsets (default: the summary's, else 0)")
    parser.add_argument("--attacks", nargs="+", default=None, help="oblivious attacks (default: the summary's, else the whole suite)")
    parser.add_argument("--holdout", nargs="*", default=None, help="holdout attacks for worst.holdout (default: the summary's)")
    parser.add_argument("--adaptive", nargs="*", default=list(ADAPTIVE_CHOICES), choices=ADAPTIVE_CHOICES,
                        help="adaptive attacks on the whole pipeline (default: all; give none to skip)")
    parser.add_argument("--adaptive-n", type=int, default=None, help="adaptive attacks on the first N test examples (default: all)")
    parser.add_argument("--adaptive-steps", type=int, default=100, help="white-box PGD steps (CE and margin)")
    parser.add_argument("--budget", type=float, default=None, help="scales attack iterations (default: the summary's, else 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="attack seed (the sweep's sets use 0)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every log record (with --out they are in evaluate.log)")
    parser.add_argument("--out", default=None, help="folder for oblivious.csv, adaptive.csv, evaluation.json")
    args = parser.parse_args(argv)
    sweep = {}
    if args.summary:
        try:
            summary = json.loads(Path(args.summary).read_text())
            splits = summary.get("splits", {})
            sweep = {"dataset": summary["dataset"], "target_model": summary["target_model"]["path"],
                     "n_train": splits.get("n_train"), "n_val": splits.get("n_val"), "n_test": splits.get("n_test"),
                     "split_seed": splits.get("split_seed", 0), "attacks": summary["eval_attacks"],
                     "holdout": summary.get("holdout_attacks", []), "budget": summary.get("attack_budget", 1.0),
                     "cache_dir": summary.get("cache_dir")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"cannot read the sweep's settings from {args.summary} ({exc}); pass a sweep's summary.json")
    defaults = {"dataset": "digits", "split_seed": 0, "attacks": list(ATTACK_NAMES), "holdout": [], "budget": 1.0}
    for key in ("dataset", "target_model", "n_train", "n_val", "n_test", "split_seed", "attacks", "holdout", "budget",
                "cache_dir"):
        if getattr(args, key) is None:
            setattr(args, key, sweep.get(key, defaults.get(key)))
    for name in [*args.attacks, *args.holdout]:
        if name not in ATTACK_NAMES:
            parser.error(f"unknown attack {name!r}; valid: {', '.join(ATTACK_NAMES)}")
    if not Path(args.defense).is_file():
        parser.error(f"no defense checkpoint at {args.defense}; pass the path of a file saved by ADDDefense.save")
    return args


def run(args: argparse.Namespace, console=None) -> dict:
    from addd.adaptive import evaluate_adaptive_suite
    from ablations.console import Console, timed_map

    console = console or Console()

    defense = addd.load_defense(args.defense, device=args.device)
    data = load_dataset(args.dataset, args.data_root, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                        seed=args.split_seed)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.target_model:
        target = load_target_entry(args.target_model, device=args.device)
    else:
        target = get_target_model(data, cache_dir=cache_dir, device=args.device)
    model = target.model
    x, y = data.test.x, data.test.y

    cache = AdvCache.under(cache_dir)  # the sweep's cache: its sets are reused, not regenerated
    requests = split_requests(args.dataset, "test", x, y, target, args.attacks, budget=args.budget, device=args.device,
                              seed=args.seed)
    adv_sets = cache.get_many(requests, map_fn=timed_map(console, "test"), progress=console.progress_fn())
    console.flush_cached()
    known = list(defense.config.known_attacks)
    report = evaluate(defense, model, x, y, adv_sets, known_attacks=known, holdout=args.holdout)
    oblivious = report.to_frame().rename(columns={"defended": "oblivious (defended)", "undefended": "white-box on M_t (undefended)"})
    result = {
        "defense": str(args.defense),
        "dataset": args.dataset,
        "splits": {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test, "split_seed": args.split_seed},
        "n_test": int(len(y)),
        "known_attacks": known,
        "target_model": {"path": str(target.path), "weights_sha256": target.weights_sha256,
                         "clean_test_accuracy": target.clean_test_accuracy},
        "attack_params": {a: s.manifest.params if s.manifest else None for a, s in adv_sets.items()},
        "threat_models": {t: F.THREAT_MODELS[t] for t in (F.OBLIVIOUS, F.UNDEFENDED, F.ADAPTIVE)},
        "oblivious": report.to_metrics(),
    }
    print(f"Oblivious (attacks on M_t alone), {len(y)} {args.dataset} test examples, known attacks {known}")
    print(oblivious.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(" ".join(f"{k}={v:.4f}" for k, v in report.to_metrics().items() if not k.startswith("acc.")))
    side = None
    if args.adaptive:
        console.line(f"{console.stamp()} adaptive attacks through the defense ({', '.join(args.adaptive)}; "
                     f"first {args.adaptive_n or len(y)} examples)...")
        suite = evaluate_adaptive_suite(model, defense, x, y, dataset=args.dataset, steps=args.adaptive_steps,
                                        seed=args.seed, budget=args.budget, n=args.adaptive_n,
                                        autoattack=bool({"AA_Linf", "AA_L2"} & set(args.adaptive)),
                                        bpda="BPDA" in args.adaptive)
        side = side_by_side(suite, report)
        print(f"\nAdaptive (attacks on the whole pipeline M_t(G(E(.))), first {suite.rows[0].n} test examples) "
              f"beside the oblivious figure at the same norm and ε")
        print(side.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        result["adaptive"] = suite.to_metrics()
        result["adaptive_seed"] = args.seed
    if args.out:
        _write(Path(args.out), oblivious, side, result)
    return result


def _write(out: Path, oblivious, side, result: dict) -> None:
    """oblivious.csv, adaptive.csv (if the adaptive attacks ran) and evaluation.json into ``out``."""
    atomic_write_bytes(out / "oblivious.csv", oblivious.to_csv(index=False).encode())
    if side is not None:
        atomic_write_bytes(out / "adaptive.csv", side.to_csv(index=False).encode())
    atomic_write_bytes(out / "evaluation.json", json.dumps(result, indent=2, default=str).encode())


def side_by_side(suite, report):
    """One row per adaptive figure: its eps and norm, and the oblivious defended accuracy of the
    suite attack with the same norm and eps (NaN where that attack was not evaluated)."""
    import pandas as pd

    oblivious = {row.attack: row.defended for row in report.attacks}
    rows = [{"adaptive attack": row.attack, "norm": row.norm, "eps": row.eps, "adaptive": row.accuracy,
             "oblivious attack": F.figure(row.metric).oblivious_attack,
             "oblivious (defended)": oblivious.get(F.figure(row.metric).oblivious_attack, float("nan")),
             "n": row.n} for row in suite.rows]
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    from ablations.console import Console  # one line per adversarial set here; the detail in <out>/evaluate.log

    args = parse_args(argv)
    console = Console(verbose=args.verbose).configure_logging()
    try:
        if args.out:
            console.open_log(Path(args.out) / "evaluate.log")
        run(args, console)
    except (AdddError, OSError) as exc:  # every addd error carries a what-to-do message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        console.close()
    if console.log_path:
        print(f"\nresults: {Path(args.out).resolve()}/ (evaluation.json, CSVs)\nlog:     {console.log_path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
