"""bench/gpu.py's pieces on CPU: the benchmark-only svhn_synthetic data, its space, and the figures
it computes from the trials' system metrics (the GPU run itself needs a lent device: docs/gpu.md)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_svhn_synthetic_has_svhns_shape_and_sizes_and_is_the_same_every_time():
    from addd.data import SYNTHETIC_SVHN_SIZES, load_dataset

    full = load_dataset("svhn_synthetic", n_val=2000)
    assert (len(full.train) + len(full.val), len(full.test)) == SYNTHETIC_SVHN_SIZES == (73257, 26032)
    assert full.train.x.shape[1:] == (3, 32, 32) and full.channels == 3
    assert 0.0 <= full.train.x.min() and full.train.x.max() <= 1.0
    counts = full.test.y.bincount(minlength=10)
    assert len(counts) == 10 and counts.min() > 0.08 * len(full.test)  # every class, about evenly
    small = load_dataset("svhn_synthetic", n_train=500, n_val=100, n_test=200)
    assert small.fingerprint() == load_dataset("svhn_synthetic", n_train=500, n_val=100, n_test=200).fingerprint()
    # learnable: the class templates differ, so a nearest-class-mean classifier beats chance by far
    x, y = small.train.x.flatten(1), small.train.y
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    predicted = torch.cdist(small.test.x.flatten(1), means).argmin(1)
    assert (predicted == small.test.y).float().mean() > 0.5


def test_the_bench_space_is_svhn_ablations_full_on_the_synthetic_data():
    bench = _bench()
    args = argparse.Namespace(device="cuda", trials_per_gpu=4, num_samples=8, epochs=2, width=1.0, n_train=71257,
                              n_val=2000, n_test=2000, cpus_per_trial=2.0)
    space = bench.bench_space(args)
    assert space.dataset == "svhn_synthetic" and space.variants == ("full",) and space.gpus_per_trial == 0.25
    assert space.base_config().network.width == 1.0 and space.base_config().network.channels == 3
    assert space.known_attack_choices() == (("PGDu", "PGDt"),) and space.num_samples == 8
    assert bench.bench_space(argparse.Namespace(**{**vars(args), "device": "cpu"})).gpus_per_trial == 0.0


def test_figures_from_the_trials_system_metrics():
    bench = _bench()
    values = {"a": {bench.GPU_UTIL: [50.0, 70.0], bench.GPU_MEMORY: [1000.0, 1200.0], bench.TRIAL_PEAK: [300.0],
                    bench.CPU_UTIL: [40.0], bench.OWN_CPU: [90.0]},
              "b": {bench.GPU_UTIL: [60.0], bench.GPU_MEMORY: [1100.0], bench.TRIAL_PEAK: [350.0],
                    bench.CPU_UTIL: [60.0], bench.OWN_CPU: [110.0]}}
    out = bench.report(values, trial_seconds=1800.0, gpus=1)
    assert out["trials_per_gpu_hour"] == pytest.approx(4.0)  # 2 trials in half an hour on one GPU
    assert out["mean_gpu_utilization_percentage"] == pytest.approx(60.0)  # over every trial-epoch
    assert out["busy_ratio"] == pytest.approx(0.6)
    assert (out["max_gpu_memory_megabytes"], out["max_trial_gpu_peak_megabytes"]) == (1200.0, 350.0)
    cpu = bench.report({k: {n: v for n, v in r.items() if "gpu" not in n} for k, r in values.items()}, 1800.0, 0)
    assert cpu["trials_per_gpu_hour"] is None and cpu["busy_ratio"] == pytest.approx(0.5)  # CPU: the node's share
    assert bench.report({"a": {}}, 10.0, 1)["busy_ratio"] is None  # no system metrics: the script fails


def test_building_the_bench_space_registers_nothing():
    from sweeps.spaces import SPACES

    _bench().bench_space(argparse.Namespace(device="cpu", trials_per_gpu=4, num_samples=2, epochs=1, width=0.25,
                                            n_train=100, n_val=20, n_test=20, cpus_per_trial=1.0))
    assert _bench().SPACE not in SPACES  # the user's spaces (and --list-spaces) stay as they were
