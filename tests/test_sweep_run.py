"""End-to-end sweeps through the CLI (slow): digits smoke read back through MLflow's client,
svhn_ablation smoke on fake .mat files, and a sweep whose driver is killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(REPO / "sweeps" / "run.py")]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """Target models and adversarial sets, shared by this module's sweeps (as users share them)."""
    return tmp_path_factory.mktemp("sweep_cache")


DIGITS_SMOKE = ["--space", "digits_ablation", "--smoke", "--no-study"]
ESTIMATE_FACTOR = 4  # README "Cost before a run": --estimate's total within 4x either way of the measured sweep


@pytest.fixture(scope="module")
def digits_smoke(tmp_path_factory, cache_dir) -> tuple[Path, float]:
    """The digits smoke sweep on this module's cache, empty then (the first sweep here), and its wall seconds."""
    cwd = tmp_path_factory.mktemp("digits_smoke")
    start = time.perf_counter()
    _sweep(DIGITS_SMOKE + ["--run-dir", str(cwd / "run"), "--cache-dir", str(cache_dir)], cwd)
    return cwd / "run", time.perf_counter() - start


def _sweep(args: list[str], cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    out = subprocess.run(RUN + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _test_sets(space, cache_dir: Path, data_root: Path):
    """The test split, target model and adversarial sets the sweep used (read back from the cache)."""
    from addd.advcache import AdvCache, AdvRequest
    from addd.data import load_dataset
    from addd.target_models import get_target_model

    dataset = load_dataset(space.dataset, data_root, n_train=space.n_train, n_val=space.n_val, n_test=space.n_test,
                           seed=space.split_sizes()["split_seed"])
    target = get_target_model(dataset, arch=space.target_arch, cache_dir=cache_dir)
    assert not target.trained  # the sweep trained it; we only read it
    test = dataset.test
    requests = [
        AdvRequest(space.dataset, "test", test.x, test.y, target.model, a, model_sha256=target.weights_sha256,
                   budget=space.attack_budget, seed=0)
        for a in space.attacks
    ]
    return test, target, AdvCache.under(cache_dir).get_many(requests)


def test_digits_smoke_sweep_is_readable_through_mlflow(tmp_path, cache_dir, digits_smoke):
    from mlflow.tracking import MlflowClient

    from addd import load_defense
    from addd.evaluate import evaluate
    from sweeps.spaces import get_space

    run_dir = digits_smoke[0]
    space = get_space("digits_ablation", smoke=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["variants"]) == set(space.variants)

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("addd-digits_ablation")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["space"] == "digits_ablation"
    assert parent.data.tags["data_fingerprint"] == summary["data_fingerprint"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 == len(space.variants) * (space.num_samples + space.seeds)
    for child in children:
        metrics = child.data.metrics
        assert "objective" in metrics, child.info.run_name
        prefix = "val" if child.data.tags["phase"] == "search" else "test"
        for attack in space.attacks:  # the whole suite, every trial
            assert 0.0 <= metrics[f"{prefix}/acc.defended.{attack}"] <= 1.0
        if child.data.tags["phase"] == "final":  # finals are attacked on the whole pipeline too
            assert {"adaptive/pgd_worst", "adaptive/aa_linf", "adaptive/aa_l2", "adaptive/bpda"} <= set(metrics)
        assert child.data.params["variant"] == child.data.tags["variant"]
        assert "restored_grid.png" in [a.path for a in client.list_artifacts(child.info.run_id)]
        history = client.get_metric_history(child.info.run_id, "loss/total")
        assert sorted(m.step for m in history) == list(range(1, len(history) + 1))  # one value per epoch
        # MLflow's system metrics, sampled in the trial over each epoch and logged with its figures
        cpu = client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")
        assert sorted(m.step for m in cpu) == sorted(m.step for m in history)
        assert all(0.0 < m.value <= 100.0 for m in cpu)
        assert metrics["system/trial_process_cpu_percentage"] > 0 and metrics["system/system_memory_usage_megabytes"] > 0
    no_dp = [c for c in children if c.data.tags["variant"] == "no_dp"]
    assert all(float(c.data.params["loss.lambda_dp"]) == 0.0 and c.data.params["loss.use_dp"] == "False" for c in no_dp)

    stored = json.loads(Path(client.download_artifacts(parent.info.run_id, "summary.json", str(tmp_path))).read_text())
    assert stored == summary
    best = summary["best"]
    path = client.download_artifacts(parent.info.run_id, best["artifact"], str(tmp_path / "dl"))
    defense = load_defense(path)
    assert defense.config.train.seed == best["seed"]
    test, target, sets = _test_sets(space, cache_dir, tmp_path / "data")
    report = evaluate(defense, target.model, test.x, test.y, sets,
                      known_attacks=defense.config.known_attacks, holdout=space.holdout_attacks)
    for name, value in report.to_metrics().items():
        assert best["test"][name] == pytest.approx(value, abs=1e-6, nan_ok=True), name
    variant_seeds = summary["variants"][best["variant"]]["seeds"]
    assert best["test"] in [s["test"] for s in variant_seeds]
    assert (run_dir / "report" / "report.md").stat().st_size > 0 and list((run_dir / "report").glob("*.png"))
    assert summary["splits"]["n_test"] == len(test.y) and summary["splits"]["split_seed"] == 0
    for variant, entry in summary["variants"].items():
        assert set(entry["adaptive"]) >= {"pgd_worst", "pgd_ce", "pgd_margin", "aa_linf", "aa_l2", "bpda"}
        assert (run_dir / "finals" / f"{variant}-seed0" / "robustness_curve.csv").exists()

    # The finalist command on the sweep's summary reuses the sweep's cache: nothing new is generated.
    def entries():
        return sorted(p.parent for p in (cache_dir / "advcache").rglob("manifest.json"))

    before = entries()
    out = subprocess.run([sys.executable, "-m", "ablations.evaluate", "--defense", str(run_dir / best["artifact"]),
                          "--summary", str(run_dir / "summary.json"), "--adaptive", "BPDA", "--adaptive-steps", "5",
                          "--adaptive-n", "8", "--out", str(tmp_path / "eval")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert entries() == before  # same keys: the sweep's splits, budget, attack list and cache
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    for name in space.attacks:
        assert evaluation["oblivious"][f"acc.defended.{name}"] == pytest.approx(best["test"][f"acc.defended.{name}"], abs=1e-6)
    assert "report/report.md" in [a.path for a in client.list_artifacts(parent.info.run_id, "report")]


def test_estimate_is_within_4x_of_the_smoke_sweep(tmp_path, digits_smoke):
    """--estimate of the digits smoke sweep (its calibration measured now, on this machine) against
    that sweep's measured wall time on an empty cache; every calibrated number is a positive number
    of seconds, one per attack of the suite; nothing is written."""
    from sweeps.spaces import get_space

    run_dir, wall = digits_smoke
    timings = json.loads((run_dir / "timings.json").read_text())
    origins = {s["origin"] for split in timings["breakdown"]["prepare"]["adv_sets"].values() for s in split.values()}
    assert origins == {"generated"}  # an empty cache, as the estimate assumes
    out = _sweep(DIGITS_SMOKE + ["--estimate", "--run-dir", str(tmp_path / "run")], tmp_path, timeout=600)
    estimate = json.loads(out.stdout)["estimate"]
    cal, phases = estimate["calibration"], estimate["phases_seconds"]
    assert set(cal["attack_seconds_per_image"]) == set(get_space("digits_ablation", smoke=True).attacks)
    assert min(cal["attack_seconds_per_image"].values()) > 0 and min(cal["widths"]["0.03125"].values()) > 0
    assert cal["target"]["step_seconds"] > 0 and cal["worker_start"] > 0 and "baseline_step" not in cal  # --no-study
    assert sum(phases.values()) == pytest.approx(estimate["total_seconds"], abs=0.5)
    measured = {"prepare": timings["prepare"], "search+finals": timings["trials"], "total (wall)": wall}
    ratio = estimate["total_seconds"] / wall
    print(f"estimate {estimate['total_seconds']:.0f} s {phases} vs measured {measured}: ratio {ratio:.2f}")
    assert 1 / ESTIMATE_FACTOR <= ratio <= ESTIMATE_FACTOR, (ratio, phases, measured, cal)
    assert not (tmp_path / "run").exists()


def test_svhn_ablation_smoke_runs_on_fake_mat_files(tmp_path, cache_dir):
    from scipy.io import savemat

    from addd.attack_names import ATTACK_NAMES
    from sweeps.spaces import get_space

    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "svhn"
    folder.mkdir(parents=True)
    for split, n in (("train", 120), ("test", 40)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # SVHN's labels: 10 means 0
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
    run_dir = tmp_path / "run"
    # The whole suite but the boundary and local search attacks: on 32x32x3 they cost two thirds of
    # this test's time (BA 13 s, LS 21 s per split, 32 images) and run in every digits sweep here;
    # LS on colour images is compared with advertorch's own class in tests/test_attacks.py.
    attacks = [a for a in ATTACK_NAMES if a not in ("BAu", "LSu")]
    _sweep(["--space", "svhn_ablation", "--smoke", "--no-study", "--run-dir", str(run_dir), "--cache-dir", str(cache_dir),
            "--data-root", str(tmp_path / "data"), "--attacks", *attacks], tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dataset"] == "svhn" and set(summary["variants"]) == set(get_space("svhn_ablation", smoke=True).variants)
    assert summary["holdout_attacks"] == ["STu"]  # the paper's holdout, narrowed with the suite
    for entry in summary["variants"].values():
        assert entry["search"]["trials"] == 2 and len(entry["seeds"]) == 1
        assert "acc.defended.PGDu" in entry["test"]
    assert (run_dir / "best_defense" / "defense.safetensors").exists()


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path, cache_dir):
    import optuna

    from sweeps.spaces import get_space

    space = get_space("digits_ablation", smoke=True)
    run_dir = tmp_path / "run"
    budget = 3
    args = ["--space", "digits_ablation", "--smoke", "--no-study", "--run-dir", str(run_dir), "--cache-dir", str(cache_dir),
            "--num-samples", str(budget), "--set", "train.epochs=6"]
    total = len(space.variants) * (budget + space.seeds)
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(RUN + args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, victim = time.time() + 400, None
        # kill once a trial is 4 epochs in (ASHA stops most smoke search trials without an "end", so
        # waiting for a finished one as well would let every trial start): most are still to come.
        # 4, not 3: ASHA's rungs are at epochs 1 and 3 (grace 1, reduction factor 3), so a trial seen
        # at epoch 3 may have just been stopped there and is rightly never resumed (CI saw that race);
        # one past epoch 3 meets no more rungs before its 6th and last epoch.
        while victim is None:
            events = _events(run_dir)
            ended = {e["trial_id"] for e in events if e["event"] == "end"}
            victim = next((e["trial_id"] for e in events if e["event"] == "epoch" and e["epoch"] >= 4
                           and e["trial_id"] not in ended), None)
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the first run never trained four epochs"
            time.sleep(0.1)
        os.kill(first.pid, signal.SIGKILL)  # the driver dies mid-run ...
        first.wait(timeout=60)
    finally:
        time.sleep(1)
        try:  # ... and so does what it started (raylet, trial workers), as on a crashed machine
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    killed_at = time.time()
    before = _events(run_dir)
    finished = {e["trial_id"] for e in before if e["event"] == "end"}
    started = {e["trial_id"] for e in before if e["event"] == "start"}
    assert len(started) < total, "the kill must land mid-sweep"
    assert not (run_dir / "summary.json").exists()

    _sweep(args + ["--resume"], tmp_path)
    after = [e for e in _events(run_dir) if e["time"] > killed_at]
    # A trial that ended just before the kill may be handed back by Ray (its completion was not
    # yet in the experiment snapshot); it must then resume at its last epoch and train nothing.
    retrained = [e for e in after if e["trial_id"] in finished and e["event"] == "epoch"]
    assert not retrained, f"finished trials trained again: {retrained}"
    last_epoch = {e["trial_id"]: e["epoch"] for e in before if e["event"] == "end"}
    assert all(e["start_epoch"] == last_epoch[e["trial_id"]] for e in after if e["event"] == "start" and e["trial_id"] in finished)
    resumed = {e["trial_id"]: e["start_epoch"] for e in after if e["event"] == "start"}
    # Interrupted: continue from the last checkpoint in Tune's experiment snapshot. Tune writes it at
    # the end of the step that took a checkpoint, after it let the trial train on, so a driver killed
    # then loses that last checkpoint too: an "epoch k" event guarantees checkpoint k-2, not k-1.
    assert victim not in finished and victim in resumed, (victim, finished, resumed)
    for trial in (started - finished) & set(resumed):
        trained = max([e["epoch"] for e in before if e["trial_id"] == trial and e["event"] == "epoch"], default=0)
        assert max(0, trained - 2) <= resumed[trial] <= trained, (trial, trained, resumed[trial])
    assert resumed[victim] >= 2, "the trial 4 epochs in must resume from a checkpoint, not from scratch"
    summary = json.loads((run_dir / "summary.json").read_text())
    for variant, entry in summary["variants"].items():
        assert entry["search"]["trials"] == budget
        assert len(entry["seeds"]) == space.seeds
        study = optuna.load_study(study_name=f"digits_ablation-smoke-{variant}", storage=f"sqlite:///{run_dir / 'optuna.db'}")
        assert len(study.trials) == budget  # the study went on: no re-asked or lost trials
        states = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}  # PRUNED: ASHA stopped it
        assert all(t.state in states for t in study.trials)
        assert all(t.intermediate_values for t in study.trials if t.state == optuna.trial.TrialState.PRUNED)
    ended = {e["trial_id"] for e in _events(run_dir) if e["event"] == "end"}
    stopped_early = {e["trial_id"] for e in _events(run_dir) if e["event"] == "start"} - ended
    assert len(ended | stopped_early) == total
