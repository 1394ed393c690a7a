"""Cluster tests (slow, real processes on 127.0.0.1, nothing skipped):

* a Ray head and a second Ray node started as separate processes, a smoke sweep joined with
  ``--address``: trials on both nodes, each adversarial set generated once for the cluster,
  results/checkpoints/summary in the storage path and run folder;
* ``ray up`` / ``ray submit`` / ``ray down`` with the local provider against a private sshd
  (the README's "Cluster" steps);
* both clusters run with Ray's token authentication on, and a client without the token is
  refused with one line (Ray's ConnectionError, the sweep's ``error:``), not left waiting;
* shared backends: PostgreSQL for Optuna and an ``mlflow server`` backed by it.

Every process is started in its own session and stopped by PID in ``finally`` (``ray stop``
would kill every Ray on the machine; only ``ray down`` calls it, inside the ray-up test). Do not
run these in parallel with other Ray tests. A missing prerequisite FAILS saying what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from cluster_support import (
    BIN, REPO, RUN, descendants, env, free_port, kill_tree, listeners, make_token, pids_mentioning, ppid_map,
    require_executable, start, tail, wait_for_port,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SWEEP_TIMEOUT = 900
# Tests 1 and 3 score val/test on a few attacks only (the smoke space's whole suite takes minutes
# longer on 2 cores and adds nothing to what they check); the ray-up test runs the README's command.
FEW_ATTACKS = ["--attacks", "PGDu", "PGDt", "CWu", "DDNu", "DDNt"]


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


def _wait_for_nodes(address: str, n: int, timeout: float, token: Path) -> list[dict]:
    code = (
        "import json, sys, time, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        f"deadline = time.time() + {timeout}\n"
        f"while len([x for x in ray.nodes() if x['Alive']]) < {n} and time.time() < deadline: time.sleep(0.5)\n"
        "print(json.dumps([{'id': x['NodeID'], 'resources': x['Resources']} for x in ray.nodes() if x['Alive']]))\n"
    )
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=timeout + 60,
                         env=env(token))
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


def _assert_refused_without_token(address: str, tmp: Path) -> None:
    """A client without the cluster's token: Ray refuses it (one ConnectionError, within a minute,
    the GCS's InvalidAuthToken in its log line), and a sweep joining with ``--address`` ends with
    one ``error:`` line before it loads anything."""
    home = tmp / "no-token-home"
    home.mkdir(exist_ok=True)
    code = (f"import ray\ntry:\n    ray.init(address={address!r}, logging_level='ERROR')\nexcept ConnectionError as e:\n"
            f"    print('refused:', e)\nelse:\n    print('joined')\n")
    t = time.perf_counter()
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                         env=env(HOME=str(home)))
    assert out.stdout.strip() == f"refused: Failed to connect to Ray cluster at {address}", out.stdout + out.stderr[-3000:]
    assert "Authentication token is missing or incorrect" in out.stderr, out.stderr[-3000:]
    assert time.perf_counter() - t < 90
    sweep = subprocess.run(RUN + ["--space", "digits_ablation", "--smoke", "--address", address, "--run-dir",
                                  str(tmp / "refused-run")], cwd=tmp, capture_output=True, text=True, timeout=120,
                           env=env(HOME=str(home)))
    assert sweep.returncode == 2, sweep.stdout + sweep.stderr
    lines = sweep.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --address {address}: no Ray authentication token"), lines
    assert not (tmp / "refused-run").exists()


def _assert_wrong_token_is_one_error_line(address: str, tmp: Path) -> None:
    """A sweep with a token that is not the cluster's: Ray refuses it (~25 s) and the sweep ends
    with one ``error:`` line (Ray's own log line about the refusal may precede it), no traceback."""
    wrong = tmp / "wrong_token"
    wrong.write_text("0" * 64)
    wrong.chmod(0o600)
    sweep = subprocess.run(RUN + ["--space", "digits_ablation", "--smoke", "--no-study", "--address", address,
                                  "--run-dir", str(tmp / "wrong-token-run"), "--data-root", str(tmp / "data")],
                           cwd=tmp, capture_output=True, text=True, timeout=300, env=env(wrong))
    assert sweep.returncode == 2, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    errors = [line for line in sweep.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Ray refused to join the cluster" in errors[0], sweep.stderr[-3000:]
    assert "Traceback" not in sweep.stderr, sweep.stderr[-3000:]


def _assert_loopback_only(pids: set[int]) -> None:
    """Every TCP listener of ``pids`` is bound to 127.0.0.1."""
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
    ray = require_executable(str(BIN / "ray"), "pip install 'ray[tune]'")
    temp_dir = _short_tmp("rc")
    gcs_port = free_port()
    address = f"127.0.0.1:{gcs_port}"
    head = worker = None
    t0 = time.perf_counter()
    token = make_token(tmp_path / "home")  # both nodes and the driver have it; token authentication on
    try:
        head = start(_ray_node_cmd(ray, head=True, gcs_port=gcs_port, resources={"node_head": 100}, temp_dir=temp_dir),
                     tmp_path / "head.log", env=env(token), cwd=tmp_path)
        wait_for_port(gcs_port, 90, head, "ray head (GCS)", tmp_path / "head.log")
        # Ray waits a fixed 30 s for a new raylet to register; on a loaded 2-core machine that
        # times out now and then ("The current node timed out during startup"): try 3 times.
        for attempt in range(3):
            log = tmp_path / f"worker{attempt}.log"
            worker = start(_ray_node_cmd(ray, head=False, gcs_port=gcs_port, resources={"node_worker": 100},
                                         temp_dir=temp_dir), log, env=env(token), cwd=tmp_path)
            deadline = time.time() + 120
            while worker.poll() is None and "Ray runtime started" not in tail(log, 100000) and time.time() < deadline:
                time.sleep(0.5)
            if worker.poll() is None and "Ray runtime started" in tail(log, 100000):
                break
            kill_tree(worker)
        else:
            raise AssertionError("the second Ray node never started: " + tail(log))
        nodes = _wait_for_nodes(address, 2, 120, token)
        assert {r for n in nodes for r in n["resources"]} >= {"node_head", "node_worker"}
        t_up = time.perf_counter() - t0
        _assert_loopback_only(descendants({head.pid, worker.pid}))
        _assert_refused_without_token(address, tmp_path)
        _assert_wrong_token_is_one_error_line(address, tmp_path)

        run_dir, cache_dir, storage = tmp_path / "run", tmp_path / "cache", tmp_path / "ray_results"
        sampler = _ProcessSampler({head.pid: "head", worker.pid: "worker"})
        sampler.start()
        try:
            out = subprocess.run(
                RUN + ["--space", "digits_ablation", "--smoke", "--no-study", "--address", address, "--run-dir", str(run_dir),
                       "--cache-dir", str(cache_dir), "--storage-path", str(storage), "--data-root", str(tmp_path / "data")]
                + FEW_ATTACKS,
                cwd=tmp_path, capture_output=True, text=True, timeout=SWEEP_TIMEOUT, env=env(token),
            )
        finally:
            sampler.stop.set()
            sampler.join(timeout=10)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:] + tail(tmp_path / "head.log")
        t_sweep = time.perf_counter() - t0 - t_up

        # Results and checkpoints in the storage path, summary in the run folder.
        summary = json.loads((run_dir / "summary.json").read_text())
        plan = json.loads((run_dir / "plan.json").read_text())  # the resolved plan the sweep ran
        assert set(summary["variants"]) == set(plan["variants"])
        results = sorted(storage.glob("*/*/result.json"))
        assert len(results) == plan["total_trials"], [str(p) for p in results]
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
        attacks = plan["attacks"]
        expected = ({(a, "train") for a in attacks["train_split"]}
                    | {(a, s) for a in attacks["val_and_test_splits"] for s in ("val", "test")})
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


# ----------------------------------------------------------------------------- ray up / submit / down
SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {tmp}/ssh_host_ed25519_key
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
SetEnv HOME={tmp}/home
"""

# The remote login shell (the launcher sources ~/.bashrc): this interpreter's bin first on PATH,
# Ray on loopback (no RAY_AUTH_MODE: the config's head_setup_commands append RAY_AUTH_MODE=token
# here, as on a real node), `--address auto` pinned to this cluster's head (it would
# otherwise read the machine-wide /tmp/ray/ray_current_cluster), the repository importable.
# `ray stop` (run by `ray down`) is scoped to this cluster's processes by a shim: the real one
# kills every Ray process on the machine.
BASHRC = """\
export PATH={shim}:{bin}:$PATH
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_ADDRESS=127.0.0.1:{gcs_port}
export PYTHONPATH={home}/addd-sweeps
"""

RAY_SHIM = """\
#!/bin/bash
if [ "$1" = stop ]; then echo "$@" >> {ray_tmp}.stop-calls; exec {python} {stop_script} {ray_tmp}; fi
exec {ray} "$@"
"""

STOP_SCRIPT = """\
import sys
sys.path.insert(0, {support!r})
from cluster_support import kill_tree, pids_mentioning
kill_tree(None, pids_mentioning(sys.argv[1]))
print("stopped the Ray processes under", sys.argv[1])
"""


def _start_sshd(tmp: Path) -> tuple[subprocess.Popen, int, Path]:
    sshd = require_executable("/usr/sbin/sshd", "apt-get install -y openssh-server")
    require_executable("rsync", "apt-get install -y rsync")
    require_executable("nc", "apt-get install -y netcat-openbsd")
    keygen = require_executable("ssh-keygen", "apt-get install -y openssh-client")
    Path("/run/sshd").mkdir(exist_ok=True)  # Debian's sshd refuses to start without it
    (tmp / "home").mkdir()
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "ssh_host_ed25519_key")], check=True, timeout=30)
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "id_ed25519")], check=True, timeout=30)
    shutil.copy(tmp / "id_ed25519.pub", tmp / "authorized_keys")
    port = free_port()
    (tmp / "sshd_config").write_text(SSHD_CONFIG.format(port=port, tmp=tmp))
    # -D: stays in the foreground, so its PID is ours; -e/-E: log to a file.
    proc = start([sshd, "-D", "-f", str(tmp / "sshd_config"), "-E", str(tmp / "sshd.log")], tmp / "sshd.out")
    wait_for_port(port, 30, proc, "sshd", tmp / "sshd.log")
    return proc, port, tmp / "id_ed25519"


def _cluster_config(tmp: Path, ssh_port: int, key: Path, gcs_port: int) -> Path:
    """sweeps/cluster-local.yaml filled in for the sshd on 127.0.0.1 (head only)."""
    import yaml

    config = yaml.safe_load((REPO / "sweeps" / "cluster-local.yaml").read_text())
    config["cluster_name"] = f"addd-test-{tmp.name[-8:]}"  # the launcher keys its state files by it
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(key), "ssh_proxy_command": f"nc %h {ssh_port}"}
    config["min_workers"] = config["max_workers"] = 0
    # Same machine: no `pip install -e` (it would re-point this machine's install to the copy);
    # the copy is importable through PYTHONPATH in the remote ~/.bashrc instead.
    config["setup_commands"] = []
    # The token's copy for the workers goes to this test's "shared storage", not the machine's /shared.
    config["head_setup_commands"] = [c.replace("/shared/", f"{tmp}/shared/") for c in config["head_setup_commands"]]
    assert any("get-auth-token --generate" in c for c in config["head_setup_commands"])
    assert all(c.startswith("RAY_AUTH_MODE=token ray start ") for c in config["head_start_ray_commands"]
               + config["worker_start_ray_commands"])
    ray_tmp = tmp / "ray"
    [head_start] = config["head_start_ray_commands"]
    assert head_start.startswith("RAY_AUTH_MODE=token ray start --head --port=6379 "), head_start
    config["head_start_ray_commands"] = [
        head_start.replace("--port=6379", f"--port={gcs_port}")
        + f" --temp-dir={ray_tmp} --num-cpus=2 --num-gpus=0 --node-ip-address=127.0.0.1 --object-store-memory=200000000"
        f" --dashboard-port={free_port()} --dashboard-agent-listen-port={free_port()}"
        f" --dashboard-agent-grpc-port={free_port()} --metrics-export-port={free_port()}"
        f" --runtime-env-agent-port={free_port()} --node-manager-port={free_port()} --object-manager-port={free_port()}"
    ]
    config["worker_start_ray_commands"] = []
    shim = tmp / "shim"
    shim.mkdir()
    (tmp / "stop_cluster.py").write_text(STOP_SCRIPT.format(support=str(Path(__file__).parent)))
    (shim / "ray").write_text(RAY_SHIM.format(python=BIN / "python", stop_script=tmp / "stop_cluster.py",
                                              ray_tmp=ray_tmp, ray=BIN / "ray"))
    (shim / "ray").chmod(0o755)
    (tmp / "home" / ".bashrc").write_text(BASHRC.format(shim=shim, bin=BIN, gcs_port=gcs_port, home=tmp / "home"))
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _launcher(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``ray <args>`` from the repository root, as the README runs it (file_mounts ``.`` is the repository)."""
    cmd = [str(BIN / "ray"), *args]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env(),
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def test_ray_up_submit_down_on_a_local_sshd():
    require_executable(str(BIN / "ray"), "pip install 'ray[tune]'")
    tmp = _short_tmp("ru")
    sshd = None
    ssh_port = gcs_port = -1
    timings = {}
    try:
        sshd, ssh_port, key = _start_sshd(tmp)
        gcs_port = free_port()
        config = _cluster_config(tmp, ssh_port, key, gcs_port)
        run_dir, cache_dir = tmp / "run", tmp / "cache"
        # The README's "Cluster" steps, with this test's config and folders (--no-config-cache:
        # leave no /tmp/ray-config-<hash> behind):
        t = time.perf_counter()
        _launcher(["up", "-y", "--no-config-cache", str(config)], 300)
        timings["ray up"] = time.perf_counter() - t
        head = pids_mentioning(str(tmp / "ray"))
        assert head, "ray up started no Ray process"
        _assert_loopback_only(head)
        # token authentication on: the head made its token, 0600, and the workers' copy
        for path in (tmp / "home" / ".ray" / "auth_token", tmp / "shared" / ".ray" / "auth_token"):
            assert path.read_text().strip() and (path.stat().st_mode & 0o777) == 0o600, path
        assert "export RAY_AUTH_MODE=token" in (tmp / "home" / ".bashrc").read_text().splitlines()
        _assert_refused_without_token(f"127.0.0.1:{gcs_port}", tmp)
        t = time.perf_counter()
        _launcher(["submit", "--no-config-cache", str(config), "sweeps/run.py", "--",
                   "--space", "digits_ablation", "--smoke", "--no-study", "--address", "auto",
                   "--run-dir", str(run_dir), "--cache-dir", str(cache_dir), "--data-root", str(tmp / "data")],
                  SWEEP_TIMEOUT)
        timings["ray submit (smoke sweep)"] = time.perf_counter() - t
        summary = json.loads((run_dir / "summary.json").read_text())
        plan = json.loads((run_dir / "plan.json").read_text())
        assert set(summary["variants"]) == set(plan["variants"])
        assert summary["best"] is not None and (run_dir / "best_defense" / "defense.safetensors").exists()
        t = time.perf_counter()
        _launcher(["down", "-y", str(config)], 300)
        timings["ray down"] = time.perf_counter() - t
        assert (tmp / "ray.stop-calls").exists(), "ray down did not run `ray stop` through the scoped shim"
        # `ray down` exits 0 even when its `ray stop` failed: look for what is left.
        deadline = time.time() + 30
        while pids_mentioning(str(tmp / "ray")) and time.time() < deadline:
            time.sleep(0.5)
        left = pids_mentioning(str(tmp / "ray"))
        assert not left, f"Ray processes left after ray down: {left}"
        print(f"\n[timing] {', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}")
    finally:
        kill_tree(None, pids_mentioning(str(tmp / "ray")))
        kill_tree(sshd)
        # The launcher's ssh multiplexer (its command line names our key) lingers ~10 s.
        kill_tree(None, pids_mentioning(str(tmp)))
        table = listeners()
        shutil.rmtree(tmp, ignore_errors=True)
        for state in Path("/tmp/ray").glob(f"cluster-addd-test-{tmp.name[-8:]}.*"):  # the launcher's state files
            state.unlink(missing_ok=True)
    mine = [line for line in table.splitlines() if f"127.0.0.1:{ssh_port} " in line or f":{gcs_port} " in line]
    assert not mine, "still listening after the test:\n" + "\n".join(mine)


# ----------------------------------------------------------------------------- shared backends
def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is missing: apt-get install -y postgresql (.ci/run does)", pytrace=False)
    return found[-1].parent


def _start_postgres(tmp: Path) -> tuple[subprocess.Popen, int]:
    """A PostgreSQL of its own: data in ``tmp``, 127.0.0.1 only, run as the ``postgres`` user
    (initdb refuses root), trust auth (loopback only, throwaway data)."""
    import pwd

    pg = _pg_bin()
    if os.geteuid() != 0:
        pytest.fail("this test runs PostgreSQL as the 'postgres' user: run it as root (CI does)", pytrace=False)
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("no 'postgres' user: apt-get install -y postgresql creates it", pytrace=False)
    as_postgres = {"user": user.pw_uid, "group": user.pw_gid}
    os.chown(tmp, user.pw_uid, user.pw_gid)
    out = subprocess.run([str(pg / "initdb"), "-D", str(tmp / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                          "--no-sync"], capture_output=True, text=True, timeout=120, cwd=tmp, **as_postgres)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    port = free_port()
    proc = start([str(pg / "postgres"), "-D", str(tmp / "data"), "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
                  "-c", f"unix_socket_directories={tmp}", "-c", "fsync=off", "-c", "max_connections=50"],
                 tmp / "postgres.log", cwd=tmp, **as_postgres)
    wait_for_port(port, 60, proc, "postgres", tmp / "postgres.log")
    for db in ("mlflow", "optuna"):
        out = subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    return proc, port


def _stop_postgres(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGINT)  # "fast" shutdown: disconnects clients, then exits
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kill_tree(proc)


def test_sweep_against_postgres_optuna_and_mlflow_server():
    import optuna
    from mlflow.tracking import MlflowClient

    require_module_hint = "pip install psycopg2-binary (in pyproject's test extra)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail(f"psycopg2 is missing: {require_module_hint}", pytrace=False)
    help_text = subprocess.run(RUN + ["--help"], capture_output=True, text=True, timeout=120, env=env()).stdout
    assert "--optuna-storage" in help_text, "sweeps/run.py has no --optuna-storage URL option (the Optuna RDB URL)"

    tmp = _short_tmp("pg")
    pg = server = None
    timings = {}
    try:
        t = time.perf_counter()
        pg, pg_port = _start_postgres(tmp)
        timings["postgres up"] = time.perf_counter() - t
        mlflow_db = f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/mlflow"
        optuna_url = f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/optuna"
        port = free_port()
        t = time.perf_counter()
        # The README's server command, bound to 127.0.0.1.
        server = start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                        "--backend-store-uri", mlflow_db, "--artifacts-destination", str(tmp / "artifacts")],
                       tmp / "mlflow.log", cwd=tmp, env=env())
        wait_for_port(port, 180, server, "mlflow server", tmp / "mlflow.log")
        timings["mlflow server up"] = time.perf_counter() - t
        tracking = f"http://127.0.0.1:{port}"

        run_dir = tmp / "run"
        t = time.perf_counter()
        out = subprocess.run(
            RUN + ["--space", "digits_ablation", "--smoke", "--no-study", "--run-dir", str(run_dir), "--cache-dir", str(tmp / "cache"),
                   "--data-root", str(tmp / "data"), "--tracking-uri", tracking, "--optuna-storage", optuna_url]
            + FEW_ATTACKS,
            cwd=tmp, capture_output=True, text=True, timeout=SWEEP_TIMEOUT, env=env(),
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:] + tail(tmp / "mlflow.log")
        timings["smoke sweep"] = time.perf_counter() - t
        summary = json.loads((run_dir / "summary.json").read_text())
        plan = json.loads((run_dir / "plan.json").read_text())  # the resolved plan the sweep ran
        assert plan["optuna_storage"] == optuna_url and plan["tracking_uri"] == tracking
        assert not (run_dir / "optuna.db").exists() and not (run_dir / "mlflow.db").exists(), "fell back to SQLite"

        # MLflow: the parent run and one nested run per trial, read back through the server.
        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("addd-digits_ablation")
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].info.run_id == summary["mlflow_parent_run_id"]
        assert parents[0].info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert len(children) == len(runs) - 1 == plan["total_trials"]
        assert all(c.info.status == "FINISHED" and "objective" in c.data.metrics for c in children)
        stored = client.download_artifacts(parents[0].info.run_id, "summary.json", str(tmp))
        assert json.loads(Path(stored).read_text()) == summary
        assert list((tmp / "artifacts").rglob("summary.json")), "artifacts not under the server's destination"

        # Optuna: each variant's study in PostgreSQL.
        for variant in plan["variants"]:
            study = optuna.load_study(study_name=f"digits_ablation-smoke-{variant}", storage=optuna_url)
            assert len(study.trials) == plan["trials_per_variant"]
            assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
            assert summary["variants"][variant]["search"]["trials"] == plan["trials_per_variant"]
        print(f"\n[timing] {', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}")
    finally:
        kill_tree(server)
        _stop_postgres(pg)
        left = pids_mentioning(str(tmp))
        kill_tree(None, left)
        shutil.rmtree(tmp, ignore_errors=True)
    assert not left, f"processes outlived the test: {left}"
