"""Benchmark: how busy a sweep keeps its GPU, from the trials' own MLflow system metrics.

A sweep of ``full`` on ``svhn_synthetic`` (SVHN's shape and sizes, generated: no download; for
benchmarks only) at Table 4's width, with ``--trials-per-gpu`` trials packed on each GPU
(``--gpus-per-trial 1/k``), known attacks PGDu+PGDt, unknown DDNu+DDNt, no study. Every trial
samples the node's utilisation each second (``sweeps._mlflow.SystemSampler``: MLflow's monitors)
and reports the means per epoch; this script reads them back from the sweep's MLflow store and
prints, for the trial phase:

- trials per GPU-hour (finished trials ÷ trial-phase wall hours ÷ GPUs);
- mean SM utilisation (``system/gpu_<i>_utilization_percentage``, over every trial-epoch) and the
  GPU memory used (node, largest) and the largest per-trial peak (``torch.cuda.max_memory_allocated``);
- the trials' own CPU share and the node's CPU utilisation.

The last line, ``ratio: X``, is GPU-busy time ÷ trial time (mean SM utilisation ÷ 100). Goal: ≥ 0.6
at 4 trials per GPU. Without a GPU (``--device cpu``) it runs the same sweep with CPU trials and the
ratio is CPU-busy ÷ trial time instead (the plumbing check; it says so).

    python bench/gpu.py                              # on a GPU machine: 8 trials, 4 per GPU, 2 epochs
    python bench/gpu.py --trials-per-gpu 2 --num-samples 4
    python bench/gpu.py --device cpu --n-train 512 --n-val 64 --n-test 64 --width 0.03125 --epochs 1 --num-samples 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GPU_UTIL = "system/gpu_0_utilization_percentage"
GPU_MEMORY = "system/gpu_0_memory_usage_megabytes"
TRIAL_PEAK = "system/trial_gpu_max_memory_megabytes"
CPU_UTIL = "system/cpu_utilization_percentage"
OWN_CPU = "system/trial_process_cpu_percentage"
NAMES = (GPU_UTIL, GPU_MEMORY, TRIAL_PEAK, CPU_UTIL, OWN_CPU)
SPACE = "svhn_synthetic_bench"


def bench_space(args: argparse.Namespace):
    """svhn_ablation's full variant on svhn_synthetic, sized by the command line (``main`` registers it)."""
    from sweeps.spaces import SPACES, Choice, known_pair

    base = SPACES["svhn_ablation"]
    gpus = 0.0 if args.device == "cpu" else 1.0 / args.trials_per_gpu
    space = dataclasses.replace(
        base, name=SPACE, dataset="svhn_synthetic", description="benchmarks only: bench/gpu.py",
        n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, variants=("full",),
        num_samples=args.num_samples, startup_trials=args.num_samples, seeds=1, grace_period=args.epochs,
        adaptive_n=min(args.n_test, 64), probe_n=min(args.n_val, 64), holdout_attacks=(),
        search={**base.search, "known_attacks": Choice((known_pair("PGDu", "PGDt"),))},
        base={**base.base, "network.width": args.width, "train.epochs": args.epochs},
        gpus_per_trial=gpus, cpus_per_trial=args.cpus_per_trial)
    return space.validate()


def report(values: dict[str, dict[str, list[float]]], trial_seconds: float, gpus: int) -> dict[str, float | None]:
    """The benchmark's figures from the trials' system metrics (``values``: run -> metric -> values)."""
    def every(name):
        return [v for run in values.values() for v in run.get(name, [])]

    def mean(name):
        got = every(name)
        return statistics.fmean(got) if got else None

    hours = trial_seconds / 3600
    out = {"trials": len(values), "trial_phase_seconds": trial_seconds, "gpus": gpus,
           "trials_per_gpu_hour": len(values) / hours / gpus if gpus and hours else None,
           "mean_gpu_utilization_percentage": mean(GPU_UTIL),
           "max_gpu_memory_megabytes": max(every(GPU_MEMORY), default=None),
           "max_trial_gpu_peak_megabytes": max(every(TRIAL_PEAK), default=None),
           "mean_trial_process_cpu_percentage": mean(OWN_CPU), "mean_cpu_utilization_percentage": mean(CPU_UTIL)}
    busy = out["mean_gpu_utilization_percentage"] if gpus else out["mean_cpu_utilization_percentage"]
    out["busy_ratio"] = None if busy is None else busy / 100
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--trials-per-gpu", type=int, default=4)
    p.add_argument("--num-samples", type=int, default=8, help="search trials (default 8: two rounds of 4 per GPU)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--width", type=float, default=1.0, help="network width (default 1.0: Table 4)")
    p.add_argument("--n-train", type=int, default=71257, help="default: SVHN's 73,257 less the 2,000 val images")
    p.add_argument("--n-val", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--cpus-per-trial", type=float, default=2.0)
    p.add_argument("--run-dir", type=Path, help="keep the sweep here (default: a temporary folder)")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run on a GPU machine, or pass --device cpu for the plumbing check",
              file=sys.stderr)
        return 2
    from sweeps.spaces import SPACES

    SPACES[SPACE] = bench_space(args)  # this process only: the sweep runs in it (no study, no worker asks)
    from addd.runfolder import experiment_name
    from sweeps import _mlflow
    from sweeps.run import main as run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        code = run_sweep(["--space", SPACE, "--no-study", "--attacks", "PGDu", "PGDt", "DDNu", "DDNt",
                          "--run-dir", str(run_dir), "--cache-dir", str(run_dir.parent / "cache")])
        if code != 0:
            return code
        timings = json.loads((run_dir / "timings.json").read_text())
        values = _mlflow.child_metric_values(f"sqlite:///{run_dir / 'mlflow.db'}", experiment_name(SPACE), NAMES)
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    figures = report(values, timings["trials"], gpus)
    unit = "GPU" if gpus else "CPU (no GPU: the plumbing check)"
    print(f"{figures['trials']} trials, trial phase {figures['trial_phase_seconds']:.0f} s, "
          f"{args.trials_per_gpu if gpus else 0} per GPU on {gpus} GPU(s), width {args.width}, {args.epochs} epochs")
    for key, value in figures.items():
        print(f"  {key:36s} {'-' if value is None else f'{value:.3f}'}")
    if figures["busy_ratio"] is None:
        print("error: the trials logged no system metrics", file=sys.stderr)
        return 1
    print(f"{unit} busy / trial time (goal >= 0.6 on a GPU at 4 trials per GPU)")
    print(f"ratio: {figures['busy_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
