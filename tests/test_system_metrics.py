"""sweeps._mlflow.SystemSampler: MLflow's system-metrics monitors sampled on a thread, averaged per window."""

from __future__ import annotations

import time

import pytest
import torch

from sweeps._mlflow import SYSTEM_PREFIX, SystemSampler


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(2000))


def test_windows_hold_mlflows_names_and_this_processs_share():
    with SystemSampler(interval=0.05) as sampler:
        _busy(0.6)
        busy = sampler.take()
        time.sleep(0.6)
        idle = sampler.take()
    names = {"cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
             "trial_process_cpu_percentage"}
    assert {SYSTEM_PREFIX + n for n in names} <= set(busy) and set(busy) == set(idle)
    assert all(isinstance(v, float) for v in busy.values())
    assert 0 < busy[SYSTEM_PREFIX + "cpu_utilization_percentage"] <= 100
    assert 0 < busy[SYSTEM_PREFIX + "system_memory_usage_percentage"] < 100
    # the window restarts at take(): the busy second counts only in the first window
    assert busy[SYSTEM_PREFIX + "trial_process_cpu_percentage"] > 5 * idle[SYSTEM_PREFIX + "trial_process_cpu_percentage"] + 1
    assert not sampler._thread.is_alive()  # leaving the block stops the sampling thread


def test_gpu_metrics_appear_only_where_nvml_finds_a_gpu():
    with SystemSampler(interval=0.05) as sampler:
        taken = sampler.take()
    gpu = {k for k in taken if k.startswith(SYSTEM_PREFIX + "gpu_")}
    if torch.cuda.is_available():
        assert sampler.gpus and SYSTEM_PREFIX + "gpu_0_utilization_percentage" in gpu
    else:
        assert not sampler.gpus and gpu == set()


def test_a_trials_epoch_report_carries_them_and_a_gpus_peak_memory():
    from sweeps.trial import system_metrics

    with SystemSampler(interval=0.05) as sampler:
        cpu = system_metrics(sampler, torch.device("cpu"))
        assert SYSTEM_PREFIX + "cpu_utilization_percentage" in cpu
        assert SYSTEM_PREFIX + "trial_gpu_max_memory_megabytes" not in cpu
        if not torch.cuda.is_available():
            return
        x = torch.ones(1024, 1024, device="cuda")  # 4 MB
        gpu = system_metrics(sampler, torch.device("cuda"))
        assert gpu[SYSTEM_PREFIX + "trial_gpu_max_memory_megabytes"] >= 4.0
        del x


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_a_bad_interval_is_refused(interval):
    with pytest.raises(ValueError, match="interval must be > 0"):
        SystemSampler(interval=interval)
