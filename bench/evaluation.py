"""The defense-independent evaluation work, measured in one run: recomputed per call (old path)
against made once and handed over (new path, what a sweep does since issue 18).

On a finished sweep's run folder (its summary.json, cached sets and best defense; nothing is
generated), with one torch thread as a trial has:

- ``val evaluation``: ``sweeps.trial.evaluate_split(..., "val")``, what every search epoch runs,
  with M_t's predictions on the sets recomputed (``reference=None``) and handed over
  (``addd.evaluate.reference_predictions``, made once per sweep in ``build_context``);
- ``curve``: ``addd.adaptive.robustness_curve`` with the finals' settings, its white-box column
  run (``whitebox=None``) and handed over (``addd.adaptive.whitebox_curve``, once per sweep).

Each is run ``--repeats`` times alternately old/new; the figures of both paths must be equal (it
stops with an error otherwise). Prints per part old and new seconds (medians), the one-off cost
of the handed-over quantities, and last ``ratio: X``: the quick start's old/new seconds over these
parts, weighted by how often it runs each (its search epochs' val evaluations, and its finals'
val + test evaluations and seed-0 curves).

    python bench/evaluation.py --run-dir runs/digits_ablation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _load(run_dir: Path, data_root: Path):
    from addd.defense import load_defense
    from sweeps.study import load_sets, trial_context
    from sweeps.trialspec import TrialSpec

    summary = json.loads((run_dir / "summary.json").read_text())
    spec = TrialSpec.parse(summary["variants"]["full"]["best_config"])
    known = spec.defense_config().known_attacks
    _, target, sets = load_sets(summary, data_root=data_root, train_attacks=tuple(known))
    one_off, ctx = _timed(lambda: trial_context(summary, sets, target, threads=1))
    defense = load_defense(run_dir / "best_defense" / "defense.safetensors", device="cpu").eval()
    return summary, ctx, defense, tuple(known), one_off


def _parts(ctx, defense, known):
    """part -> (old call, new call), each returning comparable figures."""
    from addd.adaptive import robustness_curve
    from sweeps.trial import _curve_eps, _finalist_examples, evaluate_split

    f = ctx.finalists
    x, y = _finalist_examples(ctx.test, f)
    old_ctx = dataclasses.replace(ctx, val=dataclasses.replace(ctx.val, reference=None),
                                  test=dataclasses.replace(ctx.test, reference=None), whitebox_curve=None)

    def curve(whitebox):
        return robustness_curve(ctx.target_model, defense, x, y, eps_max=_curve_eps(f), num=f.curve_points,
                                steps=f.curve_steps or f.steps, seed=f.seed, whitebox=whitebox).to_dict("list")

    return {
        "val evaluation": (lambda: evaluate_split(defense, old_ctx, "val", known),
                           lambda: evaluate_split(defense, ctx, "val", known)),
        "test evaluation": (lambda: evaluate_split(defense, old_ctx, "test", known),
                            lambda: evaluate_split(defense, ctx, "test", known)),
        "curve": (lambda: curve(None), lambda: curve(ctx.whitebox_curve)),
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished sweep's run folder")
    parser.add_argument("--data-root", type=Path, default=Path("./data"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not (args.run_dir / "summary.json").exists() or not (args.run_dir / "best_defense").exists():
        print(f"error: {args.run_dir} is not a finished sweep's run folder (summary.json, best_defense/); "
              f"pass the --run-dir of one", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    summary, ctx, defense, known, one_off = _load(args.run_dir, args.data_root)
    seconds = {}
    for part, (old, new) in _parts(ctx, defense, known).items():
        old_s, new_s = [], []
        for _ in range(args.repeats):
            (t_old, fig_old), (t_new, fig_new) = _timed(old), _timed(new)
            if fig_old != fig_new:
                print(f"error: {part}: the two paths give different figures", file=sys.stderr)
                return 1
            old_s.append(t_old), new_s.append(t_new)
        seconds[part] = (statistics.median(old_s), statistics.median(new_s))
        print(f"{part:16s} old {seconds[part][0]:7.3f} s  new {seconds[part][1]:7.3f} s  "
              f"x{seconds[part][0] / seconds[part][1]:.2f}  (figures equal)")
    print(f"one-off (build_context: M_t's predictions on val/test, the curve's white-box column): {one_off:.2f} s")
    # how often the quick start runs each part: its search epochs, its finals (val + test), its seed-0 curves
    counts = _counts(args.run_dir, summary)
    old_total = sum(counts[p] * seconds[p][0] for p in seconds)
    new_total = sum(counts[p] * seconds[p][1] for p in seconds) + one_off
    print(f"per sweep {counts}: old {old_total:.0f} s, new {new_total:.0f} s (one-off included)")
    print(f"ratio: {old_total / new_total:.2f}")
    return 0


def _counts(run_dir: Path, summary) -> dict[str, int]:
    """Val evaluations of the search (its epochs), val/test evaluations and curves of all finals
    (the sweep's and the study's: 3 seeds x (5 variants + 4 fixed ablations + 3 baselines))."""
    events = run_dir / "events.jsonl"
    lines = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    from sweeps.trialspec import PHASE_KEY, SEARCH

    phase = {e["trial_id"]: e[PHASE_KEY] for e in lines if e["event"] == "start"}
    search_epochs = sum(1 for e in lines if e["event"] == "epoch" and phase.get(e["trial_id"]) == SEARCH)
    seeds = len(summary["variants"]["full"].get("seeds", [])) or 1
    finals = seeds * (len(summary["variants"]) + 4 + 3)
    return {"val evaluation": search_epochs + finals, "test evaluation": finals, "curve": finals // seeds}


if __name__ == "__main__":
    sys.exit(main())
