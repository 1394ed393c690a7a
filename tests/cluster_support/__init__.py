"""Helpers for the cluster tests: free ports, prerequisites that fail loudly, processes started
in their own session and stopped by PID (never ``ray stop`` / ``pkill``: other Ray work on the
machine must survive), and snapshots of which processes descend from which."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
RUN = [sys.executable, str(REPO / "sweeps" / "run.py")]
BIN = Path(sys.executable).parent  # the venv / interpreter prefix whose ray, mlflow we use

# Ray bound to loopback (without the first one Ray swaps 127.0.0.1 for the machine's routable
# address and its GCS/raylet listen on every interface).
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Where Ray looks for its authentication token / its mode (ray._private.authentication, ray.exceptions).
RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def env(token: Path | None = None, **extra: str) -> dict[str, str]:
    """The test's environment for children: Ray on loopback, the repository under test importable.
    With ``token`` (a file): Ray's token authentication on with that token, as on the project's
    clusters. Without: no Ray authentication setting at all (whatever CI exports is dropped), so a
    ``ray.init`` of a cluster is a client without the token; a local sweep picks its own."""
    e = {k: v for k, v in os.environ.items() if k not in RAY_AUTH}
    e.update(RAY_ENV)
    if token is not None:
        e.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    e["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e.update(extra)
    return e


def make_token(folder: Path) -> Path:
    """A new Ray token made as the cluster configs make it (``ray get-auth-token --generate`` with
    HOME=folder), mode 0600: ``folder/.ray/auth_token``."""
    out = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], capture_output=True, text=True, timeout=120,
                         env=env(HOME=str(folder)))
    assert out.returncode == 0, out.stderr[-2000:]
    path = folder / ".ray" / "auth_token"
    path.chmod(0o600)
    assert path.read_text().strip() == out.stdout.strip()
    return path


def require_executable(path_or_name: str, install: str) -> str:
    """The executable's path, or FAIL (never skip) saying what to install."""
    found = path_or_name if os.path.isabs(path_or_name) and os.access(path_or_name, os.X_OK) else shutil.which(path_or_name)
    if not found:
        pytest.fail(f"{path_or_name} is missing: install it ({install}); .ci/run does", pytrace=False)
    return found


def require_module(name: str, install: str) -> None:
    try:
        __import__(name)
    except ImportError:
        pytest.fail(f"Python module {name} is missing: {install}", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "",
                  log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what or proc.args} exited ({proc.returncode}) before listening on {port}: "
                                 + (tail(log) if log else ""))
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s ({what}): " + (tail(log) if log else ""))


def start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    """Start ``cmd`` in its own session (its own process group), output to ``log``."""
    fh = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kw)
    finally:
        fh.close()


def ppid_map() -> dict[int, int]:
    """pid -> parent pid of every process now running."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    out[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def descendants(roots: set[int], parents: dict[int, int] | None = None) -> set[int]:
    """Every running process below ``roots`` (the roots included when alive)."""
    parents = ppid_map() if parents is None else parents
    found = {p for p in roots if p in parents}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def pids_mentioning(text: str) -> set[int]:
    """PIDs whose command line contains ``text`` (e.g. a unique temp folder)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        out.add(int(entry))
            except OSError:
                pass
    return out


def kill_tree(proc: subprocess.Popen | None, extra: set[int] = frozenset(), grace: float = 10.0) -> None:
    """SIGTERM ``proc``'s process group, its descendants and ``extra``; SIGKILL what is left after ``grace``."""
    pids = set(extra)
    if proc is not None:
        pids |= descendants({proc.pid})
    groups = {proc.pid} if proc is not None else set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + (grace if sig == signal.SIGTERM else 5)
        while time.time() < deadline and any(_alive(p) for p in pids):
            if proc is not None:
                proc.poll()
            time.sleep(0.2)
        if not any(_alive(p) for p in pids):
            break
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listeners() -> str:
    """``ss -ltnp``: every listening TCP socket with its process."""
    return subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, timeout=30).stdout


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"({path} unreadable)"
