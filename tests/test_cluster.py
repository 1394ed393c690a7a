"""Cluster tests (slow, real processes on 127.0.0.1, nothing skipped):

* a Ray head and a second Ray node started as separate processes, a smoke sweep joined with
  ``--address``: trials on both nodes, each adversarial set generated once for the cluster,
  results/checkpoints/summary in the storage path and run folder;
* ``ray up`` / ``ray submit`` / ``ray down`` with the local provider against a private sshd
  (the README's "Cluster" steps);
* shared backends: PostgreSQL for Optuna and an ``mlflow server`` backed by it.

Every process is started in its own session and stopped by PID in ``finally`` (``ray stop``
would kill every Ray on the machine; only ``ray down`` calls it, inside the ray-up test). Do not
run these in parallel with other Ray tests. A missing prerequisite FAILS saying what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from cluster_support import (
    BIN, REPO, RUN, descendants, env, free_port, kill_tree, listeners, pids_mentioning, ppid_map, require_executable,
    start, tail, wait_for_port,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SWEEP_TIMEOUT = 900


def _short_tmp(prefix: str) -> Path:
    """A short temp folder (Ray's unix socket paths must stay under 107 characters)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _ray_node_cmd(ray: str, *, head: bool, gcs_port: int, resources: dict, temp_dir: Path) -> list[str]:
    # A non-head node goes through cluster_support/ray_worker_node.py (see there why).
    launcher = [ray] if head else [str(BIN / "python"), str(Path(__file__).parent / "cluster_support" / "ray_worker_node.py")]
    cmd = launcher + ["start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
           f"--resources={json.dumps(resources)}", "--object-store-memory=200000000", "--disable-usage-stats",
           f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    if head:
        cmd += ["--head", f"--port={gcs_port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"]
    else:
        cmd += [f"--address=127.0.0.1:{gcs_port}"]
    return cmd


def _wait_for_nodes(address: str, n: int, timeout: float) -> list[dict]:
    code = (
        "import json, sys, time, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        f"deadline = time.time() + {timeout}\n"
        f"while len([x for x in ray.nodes() if x['Alive']]) < {n} and time.time() < deadline: time.sleep(0.5)\n"
        "print(json.dumps([{'id': x['NodeID'], 'resources': x['Resources']} for x in ray.nodes() if x['Alive']]))\n"
    )
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=timeout + 60, env=env())
    assert out.returncode == 0, out.stderr[-3000:]
    nodes = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(nodes) == n, f"{len(nodes)} Ray node(s) alive, expected {n}: {nodes}"
    return nodes


class _ProcessSampler(threading.Thread):
    """Records, while a sweep runs, which Ray node (by the PID of its ``ray start``) each worker
    process belongs to: Ray's trial result.json has the trial's ``pid`` but the same
    node_ip/hostname on both nodes of one machine."""

    def __init__(self, roots: dict[int, str], period: float = 0.25):
        super().__init__(daemon=True)
        self.roots, self.period = roots, period
        self.node_of: dict[int, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            parents = ppid_map()
            for pid in parents:
                if pid in self.node_of:
                    continue
                p, seen = pid, 0
                while p in parents and p not in self.roots and seen < 32:
                    p, seen = parents[p], seen + 1
                if p in self.roots:
                    self.node_of[pid] = self.roots[p]
            self.stop.wait(self.period)


def _assert_loopback_only(pids: set[int]) -> None:
    """Every TCP listener of ``pids`` is bound to 127.0.0.1 (Ray runs without auth here)."""
    table = listeners()
    mine = [line for line in table.splitlines() if any(f"pid={p}," in line for p in pids)]
    assert mine, f"no listener found for {sorted(pids)}:\n{table}"
    wide = [line for line in mine if line.split()[3].rsplit(":", 1)[0] not in ("127.0.0.1", "[::1]", "[::ffff:127.0.0.1]")]
    assert not wide, "listening beyond loopback:\n" + "\n".join(wide)


def _advcache_manifests(cache_dir: Path) -> list:
    from addd.advcache import AdvManifest

    return [AdvManifest.load(p) for p in sorted((cache_dir / "advcache").glob("*/*/*/manifest.json"))]


# ----------------------------------------------------------------------------- multi-node
def test_sweep_on_two_ray_nodes(tmp_path):
    from sweeps.spaces import get_space

    ray = require_executable(str(BIN / "ray"), "pip install 'ray[tune]'")
    space = get_space("digits_ablation", smoke=True)
    temp_dir = _short_tmp("rc")
    gcs_port = free_port()
    address = f"127.0.0.1:{gcs_port}"
    head = worker = None
    t0 = time.perf_counter()
    try:
        head = start(_ray_node_cmd(ray, head=True, gcs_port=gcs_port, resources={"node_head": 100}, temp_dir=temp_dir),
                     tmp_path / "head.log", env=env(), cwd=tmp_path)
        wait_for_port(gcs_port, 90, head, "ray head (GCS)", tmp_path / "head.log")
        worker = start(_ray_node_cmd(ray, head=False, gcs_port=gcs_port, resources={"node_worker": 100}, temp_dir=temp_dir),
                       tmp_path / "worker.log", env=env(), cwd=tmp_path)
        time.sleep(3)
        assert worker.poll() is None, "second Ray node exited: " + tail(tmp_path / "worker.log")
        nodes = _wait_for_nodes(address, 2, 120)
        assert {r for n in nodes for r in n["resources"]} >= {"node_head", "node_worker"}
        t_up = time.perf_counter() - t0
        _assert_loopback_only(descendants({head.pid, worker.pid}))

        run_dir, cache_dir, storage = tmp_path / "run", tmp_path / "cache", tmp_path / "ray_results"
        sampler = _ProcessSampler({head.pid: "head", worker.pid: "worker"})
        sampler.start()
        try:
            out = subprocess.run(
                RUN + ["--space", "digits_ablation", "--smoke", "--address", address, "--run-dir", str(run_dir),
                       "--cache-dir", str(cache_dir), "--storage-path", str(storage), "--data-root", str(tmp_path / "data")],
                cwd=tmp_path, capture_output=True, text=True, timeout=SWEEP_TIMEOUT, env=env(),
            )
        finally:
            sampler.stop.set()
            sampler.join(timeout=10)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:] + tail(tmp_path / "head.log")
        t_sweep = time.perf_counter() - t0 - t_up

        # Results and checkpoints in the storage path, summary in the run folder.
        summary = json.loads((run_dir / "summary.json").read_text())
        assert set(summary["variants"]) == set(space.variants)
        results = sorted(storage.glob("sweep/*/result.json"))
        n_trials = len(space.variants) * (space.num_samples + space.seeds)
        assert len(results) == n_trials, [str(p) for p in results]
        for path in results:
            assert list(path.parent.glob("checkpoint_*/")), f"no checkpoint beside {path}"
        assert (run_dir / "best_defense" / "defense.safetensors").exists()

        # Trials ran on both nodes: each trial's result carries the PID of its worker process,
        # which the sampler saw under one node's `ray start`.
        pids = {json.loads(path.read_text().splitlines()[-1])["pid"] for path in results}
        where = {pid: sampler.node_of.get(pid) for pid in pids}
        assert None not in where.values(), f"trial PIDs never seen under a node: {where}"
        assert set(where.values()) == {"head", "worker"}, f"trials ran on {Counter(where.values())} only"

        # Each adversarial set generated exactly once for the whole cluster.
        manifests = _advcache_manifests(cache_dir)
        per_set = Counter((m.attack, m.split) for m in manifests)
        expected = ({(a, "train") for a in space.train_attacks()}
                    | {(a, s) for a in space.eval_attacks for s in ("val", "test")})
        assert set(per_set) == expected and set(per_set.values()) == {1}, per_set
        leftovers = list((cache_dir / "advcache" / ".tmp").glob("*")) if (cache_dir / "advcache" / ".tmp").exists() else []
        assert not leftovers, leftovers
        print(f"\n[timing] two Ray nodes up {t_up:.0f}s, sweep {t_sweep:.0f}s "
              f"(trials per node: {dict(Counter(where.values()))})")
    finally:
        kill_tree(worker)
        kill_tree(head)
        left = pids_mentioning(str(temp_dir))
        kill_tree(None, left)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"Ray processes outlived their node's `ray start`: {left}"
