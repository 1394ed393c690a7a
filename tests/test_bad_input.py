"""Every row of the README's "Bad input" table: one `error:` line naming the fix, a non-zero
exit, no traceback, and nothing written (no run folder, no cache, nothing new in the cwd).

Each row runs the real command in a subprocess (slow: a Python start and the imports each);
the rows that fail before the sweep loads anything are also checked in this process (fast):
the command line's own checks (``make_plan`` and ``preflight``) raise the error the
``error:`` line prints."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(REPO / "sweeps" / "run.py")]
EVALUATE = [sys.executable, "-m", "ablations.evaluate"]
SMOKE = ["--space", "digits_ablation", "--smoke"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _fails_cleanly(cmd: list[str], cwd: Path, match: str, env: dict | None = None) -> str:
    before = _tree(cwd)
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert out.returncode != 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    assert len(errors) == 1, out.stderr[-3000:]
    assert match in errors[0], errors[0]
    assert _tree(cwd) == before, sorted(_tree(cwd) - before)  # nothing written
    return errors[0]


def _run_args(tmp: Path) -> list[str]:
    return ["--run-dir", str(tmp / "run"), "--cache-dir", str(tmp / "cache")]


CASES = {
    "unknown space": (["--space", "nope"], "unknown space 'nope'; valid spaces"),
    "invalid range (--num-samples 0)": (SMOKE + ["--num-samples", "0"], "must be >= 1"),
    "invalid value (--set train.epochs=0)": (SMOKE + ["--set", "train.epochs=0"], "train.epochs must be >= 1"),
    "unknown attack name": (SMOKE + ["--attacks", "PGDu", "FOO"], "unknown attack(s) ['FOO']"),
    "no unknown attack left": (SMOKE + ["--attacks", "PGDu", "PGDt"], "leave no unknown attack"),
    "bad --set key": (SMOKE + ["--set", "train.lrr=1e-3"], "unknown config key(s) ['train.lrr']; valid keys"),
    "bad --set value": (SMOKE + ["--set", "train.lr=fast"], "train.lr must be a number"),
    "bad --set form": (SMOKE + ["--set", "train.lr"], "write KEY=VALUE"),
    "unknown objective": (SMOKE + ["--objective", "best"], "unknown objective 'best'; valid: oblivious, worst, pareto"),
    "pareto without the probe": (SMOKE + ["--objective", "pareto", "--probe-n", "0"],
                                 "objective pareto needs the adaptive probe"),
    "probe of no images": (SMOKE + ["--probe-n", "0"], "probe_n must be a whole number >= 1"),
    "probe of no steps": (SMOKE + ["--probe-steps", "0"], "probe_steps must be a whole number >= 1"),
    "probe larger than val": (SMOKE + ["--probe-n", "49"], "larger than the validation split (48 images)"),
    "--estimate with an unknown space": (["--space", "nope", "--estimate"], "unknown space 'nope'; valid spaces"),
}
NO_SPACE_ESTIMATE = "error: --estimate needs --space NAME (one of digits_ablation, svhn_ablation, digits_robust, mnist,"


def _plan_error(argv: list[str], cwd: Path, capsys) -> str:
    """In this process: what ``python sweeps/run.py ARGV`` reports before it loads anything, the
    message of the project error (or of argparse's exit) the parser, make_plan or preflight raise.
    Nothing may be written under ``cwd``."""
    from addd.errors import AdddError
    from sweeps.run import build_parser, make_plan, preflight

    before = _tree(cwd)
    try:
        preflight(make_plan(build_parser().parse_args(argv)))
    except AdddError as exc:
        message = " ".join(str(exc).split())
    except SystemExit as exc:  # argparse: usage and one "error:" line on stderr, exit 2
        assert exc.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1, errors
        message = errors[0]
    else:
        pytest.fail(f"{argv} raised nothing")
    assert _tree(cwd) == before, sorted(_tree(cwd) - before)  # nothing written
    return message


FAST_CASES = {
    **CASES,
    "unreachable --tracking-uri": (SMOKE + ["--tracking-uri", f"http://127.0.0.1:{closed_port()}"], "is not reachable"),
    "unreachable --address": (SMOKE + ["--address", f"127.0.0.1:{closed_port()}"], "no Ray cluster answers"),
    "--resume with nothing to resume": (SMOKE + ["--resume"], "nothing to resume"),
}


@pytest.mark.parametrize("name", list(FAST_CASES))
def test_bad_arguments_in_process(tmp_path, capsys, name):
    args, match = FAST_CASES[name]
    assert match in _plan_error(args + _run_args(tmp_path), tmp_path, capsys)


def test_resume_on_a_folder_that_is_not_a_sweep_in_process(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("hello")
    args = SMOKE + _run_args(tmp_path) + ["--resume"]
    assert "is not a sweep's run folder" in _plan_error(args, tmp_path, capsys)
    (tmp_path / "run" / "sweep.json").write_text("{ not json")
    assert "is not a sweep's state file" in _plan_error(args, tmp_path, capsys)


def test_estimate_without_a_space_in_process(tmp_path, capsys, monkeypatch):
    """--estimate names no space: one error line (after argparse's usage line), exit 2, no calibration."""
    from sweeps.run import main

    monkeypatch.chdir(tmp_path)
    assert main(["--estimate"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(NO_SPACE_ESTIMATE), captured.err
    assert "calibrating" not in captured.err and captured.out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_estimate_without_a_space(tmp_path):
    assert _fails_cleanly(RUN + ["--estimate"], tmp_path, NO_SPACE_ESTIMATE).startswith(NO_SPACE_ESTIMATE)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_arguments(tmp_path, name):
    args, match = CASES[name]
    _fails_cleanly(RUN + args + _run_args(tmp_path), tmp_path, match)


@pytest.mark.slow
def test_unreachable_tracking_uri_fails_before_ray(tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    _fails_cleanly(RUN + SMOKE + _run_args(tmp_path) + ["--tracking-uri", uri], tmp_path, "is not reachable")


@pytest.mark.slow
def test_unreachable_ray_address(tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    _fails_cleanly(RUN + SMOKE + _run_args(tmp_path) + ["--address", address], tmp_path, "no Ray cluster answers")


@pytest.mark.slow
def test_address_auto_without_a_running_ray(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"TMPDIR": str(tmp_path)}
    _fails_cleanly(RUN + SMOKE + _run_args(tmp_path) + ["--address", "auto"], tmp_path, "found no running Ray", env)


@pytest.mark.slow
def test_resume_with_nothing_to_resume(tmp_path):
    _fails_cleanly(RUN + SMOKE + _run_args(tmp_path) + ["--resume"], tmp_path, "nothing to resume")


@pytest.mark.slow
def test_resume_on_a_folder_that_is_not_a_sweep(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("hello")
    _fails_cleanly(RUN + SMOKE + _run_args(tmp_path) + ["--resume"], tmp_path, "is not a sweep's run folder")
    (tmp_path / "run" / "sweep.json").write_text("{ not json")
    _fails_cleanly(RUN + SMOKE + _run_args(tmp_path) + ["--resume"], tmp_path, "is not a sweep's state file")


@pytest.fixture
def read_only_dir(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_read_only_run_folder(tmp_path, read_only_dir):
    args = ["--run-dir", str(read_only_dir / "run"), "--cache-dir", str(tmp_path / "cache")]
    _fails_cleanly(RUN + SMOKE + args, tmp_path, "cannot write --run-dir")


@pytest.mark.slow
def test_read_only_cache_dir(tmp_path, read_only_dir):
    args = ["--run-dir", str(tmp_path / "run"), "--cache-dir", str(read_only_dir / "cache")]
    _fails_cleanly(RUN + SMOKE + args, tmp_path, "cannot write --cache-dir")


@pytest.mark.slow
def test_missing_dataset_files(tmp_path):
    (tmp_path / "data").mkdir()
    args = ["--space", "svhn_ablation", "--smoke", "--data-root", str(tmp_path / "data")] + _run_args(tmp_path)
    _fails_cleanly(RUN + args, tmp_path, "--download")


@pytest.mark.slow
def test_corrupt_dataset_files(tmp_path):
    folder = tmp_path / "data" / "svhn"
    folder.mkdir(parents=True)
    args = ["--space", "svhn_ablation", "--smoke", "--data-root", str(tmp_path / "data")] + _run_args(tmp_path)
    for junk in (b"this is not a MATLAB file" * 10, b"not a mat" * 10):  # scipy: ValueError, IndexError
        for split in ("train", "test"):
            (folder / f"{split}_32x32.mat").write_bytes(junk)
        _fails_cleanly(RUN + args, tmp_path, "train_32x32.mat is not an SVHN .mat file")


@pytest.mark.slow
def test_target_model_of_another_architecture(tmp_path):
    import torch

    from addd.config import DefenseConfig, NetworkConfig
    from addd.defense import ADDDefense
    from addd.storage import save_tensors

    defense = tmp_path / "defense.safetensors"
    ADDDefense(DefenseConfig(network=NetworkConfig(width=0.03125, channels=1))).save(defense)
    other = tmp_path / "other_arch.safetensors"  # a torchvision-style checkpoint, not a target model
    save_tensors(other, {"fc.weight": torch.zeros(10, 4)}, {"format": "resnet18"})
    for target in (other, defense):
        _fails_cleanly(EVALUATE + ["--defense", str(defense), "--dataset", "digits", "--target-model", str(target),
                                   "--cache-dir", str(tmp_path / "cache")],
                       tmp_path, "is not a target model")
