"""Faults a days-long sweep must survive, each tested: a resumed trial keeps its optimiser state,
MLflow going away loses nothing (journal + --sync-mlflow, idempotent), a read-only or full
storage path fails with one clear line and leaves no half-written file. The end-to-end ones
(a trial worker killed mid-trial, a NaN trial, the MLflow server killed mid-sweep) are slow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(REPO / "sweeps" / "run.py")]


# ----------------------------------------------------------------------------- optimiser state
def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g)
    adv = {name: (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1) for name in ("PGDu", "PGDt")}
    return x, torch.randint(0, 10, (n,), generator=g), adv


def _config(**loss):
    from addd.config import DefenseConfig, LossConfig, NetworkConfig, TrainConfig

    return DefenseConfig(network=NetworkConfig(width=0.0625, channels=1), loss=LossConfig(**loss),
                         train=TrainConfig(epochs=2, batch_size=8))


@pytest.mark.parametrize("loss", [{}, {"use_dp": False, "lambda_dp": 0.0, "use_di": False}])
def test_resume_from_checkpoint_continues_with_the_same_adam_moments(tmp_path, one_thread, loss):
    from addd.defense import ADDDefense, TrainingState, load_defense

    x, y, adv = _data()
    straight = ADDDefense(_config(**loss))
    straight.fit(x, y, adv, epochs=2)
    expected = straight.optimizer_state()

    first = ADDDefense(_config(**loss))
    first.fit(x, y, adv, epochs=1)
    first.save(tmp_path / "defense.safetensors")
    first.optimizer_state().save(tmp_path / "optimizer.safetensors")
    resumed = load_defense(tmp_path / "defense.safetensors")
    state = TrainingState.load(tmp_path / "optimizer.safetensors")
    assert any(k.endswith(".exp_avg_sq") for k in state.tensors)
    resumed.fit(x, y, adv, epochs=1, resume_state=state)
    got = resumed.optimizer_state()

    assert set(got.tensors) == set(expected.tensors)
    for key, tensor in expected.tensors.items():  # moments, step counts, RNG streams
        assert torch.equal(got.tensors[key], tensor), key
    assert got.metadata == expected.metadata
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # without the state the second epoch differs: the test would notice a lost optimiser
    fresh = load_defense(tmp_path / "defense.safetensors")
    fresh.fit(x, y, adv, epochs=1)
    assert not torch.equal(fresh.optimizer_state().tensors["optim.main.0.exp_avg"],
                           expected.tensors["optim.main.0.exp_avg"])


def test_training_state_of_another_config_is_refused(tmp_path, one_thread):
    from addd.defense import ADDDefense, TrainingState
    from addd.storage import StorageError

    x, y, adv = _data()
    with_d = ADDDefense(_config())
    with_d.fit(x, y, adv, epochs=1)
    with_d.optimizer_state().save(tmp_path / "opt.safetensors")
    without_d = ADDDefense(_config(use_dp=False, lambda_dp=0.0, use_di=False))
    with pytest.raises(StorageError, match="discriminators"):
        without_d.fit(x, y, adv, epochs=1, resume_state=TrainingState.load(tmp_path / "opt.safetensors"))


# ----------------------------------------------------------------------------- full / read-only storage
def _tmpfs(tmp_path, size: str):
    """A tmpfs of ``size`` under tmp_path (root only; skipped elsewhere), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs; ``_remount(mnt, ro=True)`` makes it read-only."""
    yield from _tmpfs(tmp_path, "1m")


def _remount(mnt: Path, ro: bool) -> None:
    subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(mnt)], check=True)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_full_disk_gives_a_storage_error_and_leaves_no_partial_file(small_tmpfs):
    from addd.storage import StorageError, atomic_write_bytes, save_tensors

    (small_tmpfs / "kept.json").write_text("{}")
    with pytest.raises(StorageError, match="no space left .* free some space"):
        atomic_write_bytes(small_tmpfs / "summary.json", b"x" * (2 << 20))
    with pytest.raises(StorageError, match="no space left"):
        save_tensors(small_tmpfs / "ckpt" / "defense.safetensors", {"w": torch.zeros(600_000)}, {"epoch": 1})
    assert _files(small_tmpfs) in (["kept.json"], ["ckpt", "kept.json"])  # no temp file, no partial file
    assert not list(small_tmpfs.rglob("*.tmp")) and not (small_tmpfs / "summary.json").exists()


def test_full_cache_leaves_no_half_written_adversarial_set(small_tmpfs, one_thread):
    from addd.advcache import AdvCache, AdvRequest
    from addd.storage import StorageError

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    x, y = torch.rand(96, 3, 32, 32), torch.randint(0, 10, (96,))
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 300 * 1024))  # ~300 KiB left: less than the set
    cache = AdvCache.under(small_tmpfs)
    request = AdvRequest("svhn", "val", x, y, model, "PGDu", model_sha256="m" * 64, budget=0.05, seed=0)
    with pytest.raises(StorageError, match="no space left"):
        cache.get_many([request])
    filler.unlink()
    entries = [p for p in small_tmpfs.rglob("*") if p.is_file()]
    assert all(p.name.endswith(".lock") for p in entries), entries  # no tensors, no manifest, no temp folder


def test_read_only_storage_gives_a_storage_error(small_tmpfs):
    from addd.storage import StorageError, atomic_write_bytes, save_tensors

    _remount(small_tmpfs, ro=True)
    with pytest.raises(StorageError, match="not writable .*Read-only file system"):
        atomic_write_bytes(small_tmpfs / "summary.json", b"{}")
    with pytest.raises(StorageError, match="not writable"):
        save_tensors(small_tmpfs / "sub" / "defense.safetensors", {"w": torch.zeros(3)}, {})
    assert _files(small_tmpfs) == []


# ----------------------------------------------------------------------------- end to end (slow)
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """Target model and adversarial sets shared by this module's sweeps."""
    return tmp_path_factory.mktemp("faults_cache")


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _smoke(run_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return RUN + ["--space", "digits_ablation", "--smoke", "--no-study", "--run-dir", str(run_dir), "--cache-dir", str(cache_dir),
                  "--num-samples", "1", *extra]


def _children(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("addd-digits_ablation")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.slow
def test_nan_trial_fails_with_its_reason_and_the_sweep_finishes(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    out = subprocess.run(_smoke(run_dir, cache_dir, "--set", "train.lr=1e6"), cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    for entry in summary["variants"].values():
        assert entry["search"]["failed"] == 1 and entry["search"]["best"] is None
        assert all("non-finite loss" in reason for reason in entry["search"]["errors"].values())
    _, children = _children(f"sqlite:///{run_dir / 'mlflow.db'}")
    assert children
    failed = [c for c in children if c.data.tags.get("phase") == "search"]
    assert failed and all(c.info.status == "FAILED" and "non-finite loss" in c.data.tags["failure_reason"]
                          for c in failed)


@pytest.mark.slow
def test_killed_trial_worker_resumes_with_its_optimiser_and_one_mlflow_run(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    log = open(tmp_path / "sweep.log", "w")
    sweep = subprocess.Popen(_smoke(run_dir, cache_dir, "--set", "train.epochs=6"), cwd=tmp_path, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        deadline, victim = time.time() + 600, None
        while victim is None:  # a trial past its first checkpoint, not yet ended: kill its worker
            assert sweep.poll() is None and time.time() < deadline, (tmp_path / "sweep.log").read_text()[-3000:]
            events = _events(run_dir)
            ended = {e["trial_id"] for e in events if e["event"] == "end"}
            for e in events:
                # the "epoch" event is written before that epoch's checkpoint is reported; Ray lets a trial
                # train epoch 2 only once the driver took epoch 1's report, so epoch 2 means a checkpoint
                if e["event"] == "epoch" and e["epoch"] == 2 and e["trial_id"] not in ended:
                    victim = e
            time.sleep(0.1)
        os.kill(victim["pid"], signal.SIGKILL)
        assert sweep.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
        log.close()
    starts = [e for e in _events(run_dir) if e["trial_id"] == victim["trial_id"] and e["event"] == "start"]
    assert len(starts) == 2, starts  # retried once, by Ray
    assert starts[1]["start_epoch"] >= 1 and starts[1]["optimizer_restored"] is True
    _, children = _children(f"sqlite:///{run_dir / 'mlflow.db'}")
    keys = [c.data.tags["addd.trial_key"] for c in children]
    assert keys.count(victim["trial_id"]) == 1 and len(keys) == len(set(keys))
    assert (run_dir / "summary.json").exists()


def _start_mlflow(db: Path, port: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen(["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root",
                               str(db.parent / "artifacts")], stdout=open(log, "a"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)


def _stop(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGKILL)  # the server and its gunicorn/uvicorn workers
    except ProcessLookupError:
        pass
    server.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_server_going_away_loses_nothing_and_sync_is_idempotent(tmp_path, cache_dir):
    if shutil.which("mlflow") is None:
        pytest.skip("no mlflow executable")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db, uri, run_dir = tmp_path / "server" / "mlflow.db", f"http://127.0.0.1:{port}", tmp_path / "run"
    db.parent.mkdir()
    server = _start_mlflow(db, port, tmp_path / "server.log")
    log = open(tmp_path / "sweep.log", "w")
    sweep = subprocess.Popen(_smoke(run_dir, cache_dir, "--tracking-uri", uri), cwd=tmp_path, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while len({e["trial_id"] for e in _events(run_dir) if e["event"] == "end"}) < 2:
            assert sweep.poll() is None and time.time() < deadline, (tmp_path / "sweep.log").read_text()[-3000:]
            time.sleep(0.2)
        _stop(server)  # the server goes away mid-sweep ...
        assert sweep.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-3000:]  # ... the sweep does not
    finally:
        if sweep.poll() is None:
            sweep.kill()
        log.close()
        _stop(server)
    journal = run_dir / "mlflow_journal.jsonl"
    assert journal.exists() and (run_dir / "summary.json").exists()
    trials = {e["trial_id"] for e in _events(run_dir)}

    server = _start_mlflow(db, port, tmp_path / "server.log")
    try:
        counts = []
        for _ in range(2):  # twice: the second sync adds nothing
            out = subprocess.run(RUN + ["--sync-mlflow", str(run_dir)], cwd=tmp_path, capture_output=True, text=True,
                                 timeout=600)
            assert out.returncode == 0, out.stderr[-3000:]
            client, children = _children(uri)
            counts.append({c.data.tags["addd.trial_key"]: (
                {k: len(client.get_metric_history(c.info.run_id, k)) for k in c.data.metrics},
                len(c.data.params), c.info.status) for c in children})
        assert counts[0] == counts[1]
        assert set(counts[0]) == trials  # one child run per trial, none twice
        epochs = {t: max([e["epoch"] for e in _events(run_dir) if e["trial_id"] == t and e["event"] == "epoch"],
                         default=0) for t in trials}
        for key, (histories, params, status) in counts[0].items():  # every epoch's metrics arrived
            assert histories.get("loss/total", 0) == epochs[key], (key, histories, epochs[key])
            assert status in ("FINISHED", "FAILED") and params > 5
    finally:
        _stop(server)


def test_tracker_journals_what_mlflow_missed_and_sync_replays_it_once(tmp_path):
    from mlflow.tracking import MlflowClient

    from sweeps import _mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = tmp_path / _mlflow.JOURNAL_FILE
    tracker = _mlflow.Tracker(uri, "addd-digits_ablation", (tmp_path / "art").as_uri(), journal=journal)
    parent = tracker.start_parent("sweep", {"space": "digits_ablation"}, {"a": 1})
    online = tracker.child(parent, "t1", "search-full-t1", {"p": 1}, {"phase": "search"})
    tracker.log_metrics(online, {"loss/total": 1.0}, step=1)

    real = tracker.client
    tracker.client = type("Down", (), {"__getattr__": lambda self, name: (_ for _ in ()).throw(ConnectionError("down"))})()
    tracker.log_metrics(online, {"loss/total": 0.5}, step=2)  # missed, journalled: no exception
    pending = tracker.child(parent, "t2", "search-full-t2", {"p": 2}, {"phase": "search"})
    assert pending.startswith(_mlflow.PENDING)
    tracker.log_metrics(pending, {"loss/total": 0.7, "objective": 0.3}, step=1)
    (tmp_path / "curve.csv").write_text("eps,acc\n0,1\n")
    tracker.log_artifact(pending, tmp_path / "curve.csv")
    tracker.set_tags(pending, {"failure_reason": "non-finite loss"})
    tracker.finish(pending, ok=False)
    tracker.client = real
    assert len(journal.read_text().splitlines()) == 6

    client = MlflowClient(uri)
    for _ in range(2):  # idempotent
        assert _mlflow.sync(journal, uri) == 6
        runs = client.search_runs([tracker.experiment_id], filter_string=f"tags.`{_mlflow.PARENT_TAG}` = '{parent}'")
        by_key = {r.data.tags[_mlflow.TRIAL_TAG]: r for r in runs}
        assert sorted(by_key) == ["t1", "t2"]
        assert [m.value for m in client.get_metric_history(online, "loss/total")] == [1.0, 0.5]
        t2 = by_key["t2"]
        assert [m.value for m in client.get_metric_history(t2.info.run_id, "loss/total")] == [0.7]
        assert t2.info.status == "FAILED" and t2.data.tags["failure_reason"] == "non-finite loss"
        assert [a.path for a in client.list_artifacts(t2.info.run_id)] == ["curve.csv"]


def test_tracker_finds_a_child_by_trial_key_and_answers_none_while_offline(tmp_path):
    from sweeps import _mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = _mlflow.Tracker(uri, "addd-digits_ablation", (tmp_path / "art").as_uri(), journal=tmp_path / _mlflow.JOURNAL_FILE)
    parent = tracker.start_parent("sweep", {"space": "digits_ablation"}, {})
    assert tracker.find_child(parent, "study:full-seed0") is None
    child = tracker.child(parent, "study:full-seed0", "full-seed0", {}, {})
    assert tracker.find_child(parent, "study:full-seed0") == (child, "RUNNING")
    tracker.finish(child)
    assert tracker.find_child(parent, "study:full-seed0") == (child, "FINISHED")
    assert tracker.find_child(parent, "study:full-seed1") is None
    tracker.client = type("Down", (), {"__getattr__": lambda self, name: (_ for _ in ()).throw(ConnectionError("down"))})()
    assert tracker.find_child(parent, "study:full-seed0") is None and not tracker.online  # no exception: offline now
    assert not (tmp_path / _mlflow.JOURNAL_FILE).exists()  # a lookup has nothing to replay


# ----------------------------------------------------------------------------- Ctrl-C and a disk that fills (slow)
def _figures(summary: dict) -> dict:
    """What a finished sweep reports, by name (not value: TPE and ASHA depend on timing): each
    variant's finite test and adaptive figures, its seeds, its searched and failed trials."""
    import math

    return {variant: {"test": sorted(k for k, v in entry["test"].items() if math.isfinite(v["mean"])),
                      "adaptive": sorted(k for k, v in entry["adaptive"].items() if math.isfinite(v["mean"])),
                      "seeds": [s["seed"] for s in entry["seeds"] if s["error"] is None],
                      "trials": entry["search"]["trials"], "failed": entry["search"]["failed"],
                      "best": entry["search"]["best_val_objective"] is not None}
            for variant, entry in summary["variants"].items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> dict:
    """The figures of the smoke sweep these tests interrupt, run to its end without a fault."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    out = subprocess.run(_smoke(run_dir, cache_dir), cwd=run_dir.parent, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = _figures(json.loads((run_dir / "summary.json").read_text()))
    assert all(v["failed"] == 0 and v["best"] and v["test"] and v["adaptive"] for v in figures.values()), figures
    return figures


def _start(args: list[str], cwd: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    """A sweep in its own process group (as a terminal runs it), its stdout and stderr in files."""
    out, err = cwd / f"{name}.out", cwd / f"{name}.err"
    proc = subprocess.Popen(args, cwd=cwd, stdout=open(out, "w"), stderr=open(err, "w"), start_new_session=True)
    return proc, out, err


def _wait_for_training(proc: subprocess.Popen, run_dir: Path, err: Path, after: float = 0.0) -> None:
    deadline = time.time() + 600
    while not any(e["event"] == "epoch" and e["time"] > after for e in _events(run_dir)):
        assert proc.poll() is None and time.time() < deadline, err.read_text()[-3000:]
        time.sleep(0.1)


def _ctrl_c(proc: subprocess.Popen, times: int = 1) -> float:
    """SIGINT to the sweep's process group, as Ctrl-C in its terminal sends it; the time of the last."""
    for i in range(times):
        if i:
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
    return time.time()


def _resume_line(err: Path, args: list[str]) -> str:
    import shlex

    expected = "interrupted: resume with python " + shlex.join([args[1], *[a for a in args[2:] if a != "--resume"], "--resume"])
    lines = err.read_text().splitlines()
    assert lines and lines[-1] == expected, err.read_text()[-3000:]
    return expected


@pytest.mark.slow
def test_ctrl_c_saves_the_search_says_how_to_resume_and_resume_finishes_it(tmp_path, cache_dir, uninterrupted):
    run_dir = tmp_path / "run"
    args = _smoke(run_dir, cache_dir)
    first, out, err = _start(args, tmp_path, "first")
    try:
        _wait_for_training(first, run_dir, err)
        _ctrl_c(first)
        assert first.wait(timeout=300) == 130, err.read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    _resume_line(err, args)
    said = out.read_text() + err.read_text()
    assert "Traceback" not in said and "all trials finished" not in said and "sweep done" not in said, said[-3000:]
    assert not (run_dir / "summary.json").exists() and not (run_dir / "report").exists()
    assert (run_dir / "ray" / "sweep").is_dir() and list((run_dir / "ray" / "sweep").glob("experiment_state-*.json"))

    # resumed, then Ctrl-C twice: the second stops it at once (no last snapshot waited for)
    again, out, err = _start(args + ["--resume"], tmp_path, "second")
    try:
        _wait_for_training(again, run_dir, err, after=time.time())
        last = _ctrl_c(again, times=2)
        assert again.wait(timeout=300) == 130, err.read_text()[-3000:]
        assert time.time() - last < 30
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)
    _resume_line(err, args + ["--resume"])
    assert not (run_dir / "summary.json").exists()

    done = subprocess.run(args + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _figures(json.loads((run_dir / "summary.json").read_text())) == uninterrupted


@pytest.fixture
def twelve_mib_run_folder(tmp_path):
    """A 12 MiB tmpfs for the run folder: the smoke sweep writes ~19 MiB."""
    yield from _tmpfs(tmp_path, "12m")


@pytest.mark.slow
def test_disk_filling_mid_sweep_gives_one_line_and_resume_loses_no_finished_trial(tmp_path, cache_dir, uninterrupted,
                                                                                    twelve_mib_run_folder):
    run_dir = twelve_mib_run_folder / "run"
    args = _smoke(run_dir, cache_dir)
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-3000:]
    assert "has " in said and "MiB free, less than the" in said  # warned before it started
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--run-dir {run_dir}" in errors[0] and errors[0].endswith("--resume"), said[-3000:]
    assert "Traceback" not in said and "Logging error" not in said and len(out.stderr.splitlines()) <= 4, said[-3000:]
    assert "sweep done" not in said and not (run_dir / "summary.json").exists()
    assert not list(run_dir.rglob("*.tmp"))
    full_at = time.time()
    ended = {e["trial_id"]: e["epoch"] for e in _events(run_dir) if e["event"] == "end"}

    subprocess.run(["mount", "-o", "remount,size=200m", str(twelve_mib_run_folder)], check=True)
    done = subprocess.run(args + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    after = [e for e in _events(run_dir) if e["time"] > full_at]
    assert not [e for e in after if e["trial_id"] in ended and e["event"] == "epoch"], "finished trials trained again"
    assert _figures(json.loads((run_dir / "summary.json").read_text())) == uninterrupted


def test_address_without_a_ray_token_is_one_line_before_anything_runs(tmp_path):
    """The project's clusters refuse a client without their token (Ray: ~25 s, then a traceback):
    the sweep says so at once, before loading data or starting Ray. A socket stands in for the head."""
    home = tmp_path / "home"
    home.mkdir()
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        run_dir = tmp_path / "run"
        args = RUN + ["--space", "digits_ablation", "--smoke", "--address", address, "--run-dir", str(run_dir)]
        out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**environment, "HOME": str(home)})
        assert out.returncode == 2, out.stdout + out.stderr
        assert out.stderr.strip().splitlines() == [
            f"error: --address {address}: no Ray authentication token here (no RAY_AUTH_TOKEN, no {home}/.ray/auth_token); "
            "the project's clusters refuse a client without the cluster's token: copy the head's ~/.ray/auth_token here "
            "(mode 0600) or set RAY_AUTH_TOKEN (RAY_AUTH_MODE=disabled joins a cluster started without authentication)"]
        assert not run_dir.exists()


def test_dry_run_estimates_what_the_run_folder_will_hold(tmp_path):
    """--dry-run's disk_estimate, the base of the warning before a run: a digits smoke trial's
    checkpoint measured 1.91 MB (defense 0.49, optimiser 1.00, restored images 0.41), 6 trials."""
    out = subprocess.run(RUN + ["--space", "digits_ablation", "--smoke", "--dry-run"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    estimate = json.loads(out.stdout)["disk_estimate"]
    assert estimate["trials"] == 6 and 1.7e6 < estimate["checkpoint_bytes"] < 2.1e6, estimate
    assert estimate["run_folder_bytes"] > 12 << 20  # more than the 12 MiB run folder of the disk-full test
