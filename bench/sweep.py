"""Sweep overhead, measured in one run: wall time / (sum of in-trial compute / concurrent slots).

In-trial compute is what a trial must do whatever runs it: its training steps and its
evaluations (the ``compute_seconds`` of every epoch in the sweep's ``events.jsonl``). Everything
else (Ray start, actor start, object-store transfers, checkpoints, Optuna, MLflow logging, idle
slots at the end) is overhead. Goal: <= 1.15 for the trial phase on a 2-core machine.

    python bench/sweep.py                      # the README's digits_ablation sweep, full size (~9 min)
    python bench/sweep.py --num-samples 3 --seeds 1   # a smaller sweep: fixed costs weigh more
    python bench/sweep.py --smoke              # tiny trials: overhead-dominated
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="digits_ablation")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--num-samples", type=int, help="trials per variant (default: the space's)")
    p.add_argument("--seeds", type=int, help="seed re-runs per variant (default: the space's)")
    p.add_argument("--cache-dir", type=Path, help="reuse target models / adversarial sets (default: a fresh temp folder)")
    p.add_argument("--keep", type=Path, help="keep the run folder here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        cmd = [sys.executable, str(REPO / "sweeps" / "run.py"), "--space", args.space, "--run-dir", str(run_dir),
               "--cache-dir", str(args.cache_dir or Path(tmp) / "cache")]
        cmd += ["--num-samples", str(args.num_samples)] if args.num_samples else []
        cmd += ["--seeds", str(args.seeds)] if args.seeds else []
        cmd += ["--smoke"] if args.smoke else []
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        process_wall = time.perf_counter() - start
        if out.returncode != 0:
            print(out.stderr[-4000:], file=sys.stderr)
            return 1
        timings = json.loads((run_dir / "timings.json").read_text())
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]

    compute = sum(e["compute_seconds"] for e in events if e["event"] == "epoch")
    slots = timings["slots"]
    ideal = compute / slots
    trials = len({e["trial_id"] for e in events})
    epochs = sum(e["event"] == "epoch" for e in events)
    print(f"space {args.space}{' (smoke)' if args.smoke else ''}: {trials} trials, {epochs} epochs, {slots} slots")
    print(f"in-trial compute (train + eval): {compute:8.1f} s  -> ideal wall {ideal:.1f} s on {slots} slots")
    print(f"trial phase wall (one Tuner):    {timings['trials']:8.1f} s  -> overhead ratio {timings['trials'] / ideal:.3f}  (goal <= 1.15)")
    print(f"preparation (data, target model, adversarial sets): {timings['prepare']:.1f} s")
    print(f"whole sweep in-process wall:     {timings['total']:8.1f} s  -> ratio {timings['total'] / ideal:.3f}")
    print(f"whole command wall (incl. interpreter and Ray shutdown): {process_wall:.1f} s  -> ratio {process_wall / ideal:.3f}")
    print(f"ratio: {timings['trials'] / ideal:.3f}")  # trial phase wall / ideal (goal <= 1.15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
