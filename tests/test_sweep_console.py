"""What a person sees of a smoke sweep, and what it opens (slow; one sweep for all four checks).

The sweep runs as a user would start it, against an ``mlflow server`` bound to 127.0.0.1 with a
SQLite store in a temp folder, stdout redirected to a file and umask 0o002. While it runs, the
listening TCP sockets of its process tree (driver, GCS, raylet, workers) are sampled. Then:
the console is short and plain, every listener was on loopback, the files are group-readable,
and the MLflow runs page shows the parent run, its child runs and the report images in headless
Chromium (screenshot: docs/mlflow-runs.png).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
UMASK = 0o002
# five attacks on val/test keep the slow decision-based ones (LS, BA, ST) out of this test's minutes
ATTACKS = ("PGDu", "PGDt", "CWu", "DDNu", "DDNt")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS = REPO / "docs"  # the screenshots the README shows


# ----------------------------------------------------------------------------- listening sockets
def _listeners() -> dict[int, tuple[str, int]]:
    """Listening TCP sockets of this machine: inode -> (address, port), from /proc/net/tcp{,6}."""
    found = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = (socket.inet_ntop(family, raw), int(hex_port, 16))
    return found


def _tree(root: int) -> set[int]:
    """``root`` and all its descendants (Ray's GCS, raylet and workers are the driver's)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += children.get(pid, [])
    return tree


def _socket_inodes(pids: set[int]) -> dict[int, int]:
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[int(target[8:-1])] = pid
        except OSError:
            continue
    return inodes


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


# ----------------------------------------------------------------------------- the sweep
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console_sweep")
    port = _free_port()
    server_log = open(tmp / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts")],
        stdout=server_log, stderr=subprocess.STDOUT, cwd=tmp,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", 300, server)  # minutes on a loaded 2-core machine
        run_dir, cache_dir = tmp / "run", tmp / "cache"
        env = {**os.environ, "COLUMNS": "120"}
        env.pop("RAY_ADDRESS", None)
        with open(tmp / "stdout.txt", "w") as out, open(tmp / "stderr.txt", "w") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "sweeps" / "run.py"), "--space", "digits_ablation", "--smoke", "--no-study",
                 "--run-dir", str(run_dir), "--cache-dir", str(cache_dir), "--attacks", *ATTACKS,
                 "--tracking-uri", f"http://127.0.0.1:{port}"],
                stdout=out, stderr=err, cwd=tmp, env=env, preexec_fn=lambda: os.umask(UMASK),
            )
            seen: dict[tuple[str, int], int] = {}  # listener -> pid of the sweep's tree that owned it
            samples = 0
            while proc.poll() is None and time.perf_counter() - start < 2700:
                listening = _listeners()
                for inode, pid in _socket_inodes(_tree(proc.pid)).items():
                    if inode in listening:
                        seen.setdefault(listening[inode], pid)
                samples += 1
                time.sleep(0.3)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            seconds = time.perf_counter() - start
        yield {
            "rc": proc.returncode, "stdout": (tmp / "stdout.txt").read_text(), "stderr": (tmp / "stderr.txt").read_text(),
            "run_dir": run_dir, "cache_dir": cache_dir, "port": port, "listeners": seen, "samples": samples,
            "seconds": seconds, "tmp": tmp,
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()


def _ok(sweep) -> None:
    assert sweep["rc"] == 0, sweep["stdout"][-3000:] + sweep["stderr"][-5000:]


# ----------------------------------------------------------------------------- the console
def test_redirected_console_is_short_plain_and_says_where_results_are(sweep):
    from sweeps.spaces import get_space

    _ok(sweep)
    out, space = sweep["stdout"], get_space("digits_ablation", smoke=True)
    lines = out.splitlines()
    trials = len(space.variants) * (space.num_samples + space.seeds)
    sets = len(space.train_attacks()) + 2 * len(ATTACKS)  # a fresh cache: one line per generated set
    study = sum("] study" in line for line in lines)  # fixed ablations and baselines trained after the search
    assert len(lines) <= trials + sets + study + 16, out
    for noise in ("Checkpoint successfully created", "Traceback", "\x1b[", "\r", "tensorboard", "Configuration for experiment"):
        assert noise not in out, f"{noise!r} on the console:\n{out}"
    assert "Traceback" not in sweep["stderr"], sweep["stderr"][-3000:]
    for variant in space.variants:  # one line per finished trial, per variant
        assert sum(line.split("] ", 1)[-1].startswith(f"{variant}: ") for line in lines) == space.num_samples + space.seeds
    assert sum(" generated in " in line for line in lines) == sets
    run_dir = sweep["run_dir"]
    assert f"summary: {run_dir / 'summary.json'}" in out
    assert f"report:  {run_dir / 'report' / 'report.md'}" in out
    assert f"mlflow:  http://127.0.0.1:{sweep['port']}/#/experiments/" in out
    log = (run_dir / "sweep.log").read_text()
    assert "Checkpoint successfully created" in log  # the detail is in the run folder
    assert " DEBUG " in log and "ray.workers" in log


# ----------------------------------------------------------------------------- loopback only
def test_local_sweep_listens_on_loopback_only(sweep):
    _ok(sweep)
    listeners = sweep["listeners"]
    assert len(listeners) >= 3, f"sampled {sweep['samples']} times, saw {listeners}: is Ray running here?"
    open_doors = {addr: pid for addr, pid in listeners.items() if not _is_loopback(addr[0])}
    assert not open_doors, f"listening beyond loopback (address, port) -> pid: {open_doors}"


# ----------------------------------------------------------------------------- files for the team
def test_sweep_files_respect_the_umask(sweep):
    _ok(sweep)
    run_dir, cache_dir = sweep["run_dir"], sweep["cache_dir"]
    expected = 0o666 & ~UMASK
    for path in (run_dir / "summary.json", run_dir / "sweep.json", run_dir / "best_defense" / "defense.safetensors"):
        assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"
    checked = 0
    for root in (run_dir, cache_dir):
        for path in root.rglob("*"):
            if path.is_file() and "ray" not in path.relative_to(root).parts[:1] and ".locks" not in path.parts:
                assert path.stat().st_mode & 0o040, f"{path} is not group-readable: {oct(path.stat().st_mode & 0o777)}"
                checked += 1
    assert any(cache_dir.rglob("*.safetensors")) and checked > 20


# ----------------------------------------------------------------------------- MLflow UI
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_mlflow_runs_page_shows_parent_children_and_report_images(sweep):
    pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[test]')")
    from playwright.sync_api import sync_playwright

    _ok(sweep)
    from sweeps.spaces import get_space

    space = get_space("digits_ablation", smoke=True)
    trials = len(space.variants) * (space.num_samples + space.seeds)
    url = next(line.split()[-1] for line in sweep["stdout"].splitlines() if line.startswith("mlflow:  http"))
    assert url.endswith("/runs")  # the page the sweep prints is the runs list, not the GenAI overview
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(180_000)  # a loaded 2-core machine serves MLflow's bundle slowly
            page.goto(url, timeout=180_000)
            parent = page.get_by_text("digits_ablation-smoke-sweep").first
            parent.wait_for()
            assistant = page.get_by_role("button", name="Close")  # MLflow 3.x opens an assistant panel
            if assistant.count():
                assistant.first.click()
            # expand the parent (the + beside its name): one child run per trial appears under it
            row = page.locator("[role=row]", has_text="digits_ablation-smoke-sweep").first
            row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
            for variant in space.variants:
                page.get_by_text(f"search-{variant}-").first.wait_for()
                page.get_by_text(f"final-{variant}-").first.wait_for()
            children = page.locator("[role=row]").filter(has_text="search-").count() + \
                page.locator("[role=row]").filter(has_text="final-").count()
            assert children == trials, f"{children} child rows shown, {trials} trials"
            page.wait_for_timeout(1000)
            page.screenshot(path=str(DOCS / "mlflow-runs.png"))
            # the parent run's artifacts: the report and its images
            parent.click()
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("report", exact=True).first.click()
            page.get_by_text("ablation.png").first.click()
            image = page.locator("img[src^='blob:']").first
            image.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=image.element_handle())
            page.screenshot(path=str(DOCS / "mlflow-report.png"))
        finally:
            browser.close()
    assert (DOCS / "mlflow-runs.png").stat().st_size > 10_000 and (DOCS / "mlflow-report.png").stat().st_size > 10_000

