"""The ablation study end to end (slow): a small digits sweep, then ``python -m sweeps.study
--sweep``; every figure of summary.json and the report checked against the per-run metrics in
MLflow (means, stds, intervals and differences recomputed here), images checked, the study
idempotent and reading the sweep's cached sets only."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
ATTACKS = ["PGDu", "PGDt", "CWu", "LSu", "BAu"]
RETRAINED = ("no_defense-seed1", "fixed-no_mmd-seed1")  # study finals the command line trains again


def _figures_of(metrics):
    """A final's figures, without its timings (``seconds/<attack>``: wall time, not a figure)."""
    from sweeps.trial import SECONDS_PREFIX

    return {k: v for k, v in metrics.items() if not k.startswith(SECONDS_PREFIX)}


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # in-process MLflow tests set it
    out = subprocess.run([sys.executable, "-m", "sweeps.study", "--sweep", str(tmp_path / "nothing")], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "tracking-uri" in out.stderr
    out = subprocess.run([sys.executable, "-m", "sweeps.study", "--sweep", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and "no summary.json" in out.stderr
    out = subprocess.run([sys.executable, "-m", "sweeps.study", "--sweep", "nothing-here", "--tracking-uri",
                          f"sqlite:///{tmp_path / 'x.db'}"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "run id" in out.stderr
    assert not (tmp_path / "x.db").exists()  # a name that is no run id is refused before MLflow is touched


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    run_dir, cache = root / "run", root / "cache"
    sweep = [sys.executable, str(REPO / "sweeps" / "run.py"), "--space", "digits_ablation", "--smoke", "--num-samples", "1",
             "--seeds", "2", "--attacks", *ATTACKS, "--adaptive-n", "12", "--run-dir", str(run_dir), "--cache-dir", str(cache)]
    out = subprocess.run(sweep, cwd=root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    entries = sorted(p.parent for p in (cache / "advcache").rglob("manifest.json"))
    # the sweep ran the study on what prepare built; drop two of its finals so the command line
    # trains them again alone, on sets and a context it rebuilds through the driver's functions
    in_sweep = {}
    for folder in RETRAINED:
        in_sweep[folder] = json.loads((run_dir / "finals" / folder / "metrics.json").read_text())
        shutil.rmtree(run_dir / "finals" / folder)
    out = subprocess.run([sys.executable, "-m", "sweeps.study", "--sweep", str(run_dir), "--n-boot", "500"], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return run_dir, cache, entries, in_sweep


@pytest.mark.slow
def test_a_final_trained_alone_has_the_figures_it_had_in_the_sweep(study):
    run_dir, _, _, in_sweep = study
    summary = json.loads((run_dir / "summary.json").read_text())
    # no_defense's seed 1 is seed 0's final, copied (nothing trained, attacks seeded alike): only the other retrains
    assert summary["study"]["trained"] == ["fixed-no_mmd-seed1"] and "load_sets" in summary["study"]["timings_seconds"]
    copied = json.loads((run_dir / "finals" / "no_defense-seed1" / "metrics.json").read_text())
    assert copied["same_as"] == "no_defense-seed0" and copied["seed"] == 1
    assert [s.get("same_as") for s in summary["baselines"]["no_defense"]["seeds"]] == [None, "no_defense-seed0"]
    for folder in RETRAINED:
        alone = json.loads((run_dir / "finals" / folder / "metrics.json").read_text())
        assert alone["config"] == in_sweep[folder]["config"]
        assert _figures_of(alone["metrics"]) == pytest.approx(_figures_of(in_sweep[folder]["metrics"]), abs=1e-6), folder


def _t95(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def _children(run_dir: Path, summary: dict):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("addd-digits_ablation")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parent = summary["mlflow_parent_run_id"]
    return client, parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


def _mlflow_values(children, summary) -> dict[str, dict[int, dict[str, float]]]:
    """defense name -> seed -> metrics of its final run (tuned finals and the study's)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for r in children:
        p = r.data.params
        if p.get("phase") != "final":
            continue
        out.setdefault(p["variant"], {})[int(p["train.seed"])] = r.data.metrics
    return out


@pytest.mark.slow
def test_every_figure_matches_mlflow_and_the_report_shows_it(study):
    run_dir, _, _, _ = study
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["fixed"]) == {"no_dp", "no_prior", "no_mmd", "no_di"}
    assert set(summary["baselines"]) == {"no_defense", "ape_gan", "adv_training"}
    _, _, children = _children(run_dir, summary)
    runs = _mlflow_values(children, summary)
    from ablations.report import all_defenses

    defenses = all_defenses(summary)
    assert set(runs) == set(defenses)  # one MLflow child per final of every defense
    table = pd.read_csv(run_dir / "report" / "test_accuracy.csv")
    report = (run_dir / "report" / "report.md").read_text()
    checked = 0
    for name, (_, entry) in defenses.items():
        seeds = sorted(runs[name])
        assert seeds == [0, 1] == [s["seed"] for s in entry["seeds"]]
        for section in ("test", "adaptive"):
            for figure, stats in entry[section].items():
                values = [runs[name][s][f"{section}/{figure}"] for s in seeds]
                mean, std = statistics.fmean(values), statistics.stdev(values)
                half = _t95(len(values)) * std / math.sqrt(len(values))
                assert stats["mean"] == pytest.approx(mean, abs=1e-9) and stats["std"] == pytest.approx(std, abs=1e-9)
                assert stats["ci95"] == pytest.approx([mean - half, mean + half], abs=2e-3)  # t table to 3 decimals
                key = figure if section == "test" else f"adaptive.{figure}"
                row = table[(table["variant"] == name) & (table["figure"] == key)]
                assert len(row) == 1 and row["mean"].iloc[0] == pytest.approx(mean, abs=1e-6), (name, key)
                assert row["std"].iloc[0] == pytest.approx(std, abs=1e-6) and row["n_seeds"].iloc[0] == 2
                checked += 1
        for figure in ("worst.unknown", "acc.clean", "acc.reconstruction"):
            s = entry["test"][figure]
            assert f"{s['mean']:.3f} ± {s['std']:.3f}" in report
    # every defense has every figure: defended and undefended per attack, clean, reconstruction,
    # three worst cases, and the six adaptive ones
    assert len(defenses) == 9 and checked == len(defenses) * (2 * len(ATTACKS) + 5 + 6)
    # differences to full: point estimates from MLflow, verdicts in words where the interval holds 0
    for name, comparison in summary["comparisons"].items():
        for figure in ("worst.unknown", "acc.defended.CWu", "adaptive.pgd_worst", "worst.unknown_per_sample"):
            d = comparison["figures"][figure]
            key = f"test/{figure}" if not figure.startswith("adaptive.") else f"adaptive/{figure[len('adaptive.'):]}"
            expected = (statistics.fmean(runs[name][s][key] for s in (0, 1))
                        - statistics.fmean(runs["full"][s][key] for s in (0, 1)))
            assert d["difference"] == pytest.approx(expected, abs=1e-6), (name, figure)
            lo, hi = d["ci95"]
            assert lo <= hi and d["within_noise"] == (lo <= 0 <= hi)
            assert ("within noise" in d["verdict"]) == d["within_noise"]
    assert "within noise" in report or "excludes 0" in report
    for header in ("undefended: white-box on M_t", "oblivious: on M_t, then defended", "adaptive: on the whole pipeline",
                   "clean: M_t(x), no attack, no defense", "reconstruction: M_t(G(E(x)))", "PGDu*"):
        assert header in report, header


@pytest.mark.slow
def test_images_are_valid_pngs_of_sensible_size(study):
    from PIL import Image

    run_dir, _, _, _ = study
    images = sorted((run_dir / "report").glob("*.png"))
    names = {p.name for p in images}
    assert {"ablation.png", "robustness_curves.png", "restored.png"} <= names
    assert any(n.startswith("optuna_history") for n in names)
    for path in images:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 200, path


@pytest.mark.slow
def test_the_study_is_idempotent_and_never_regenerates_sets(study):
    from sweeps.study import StudyError, load_sets, run_study

    run_dir, cache, entries_before, _ = study
    assert sorted(p.parent for p in (cache / "advcache").rglob("manifest.json")) == entries_before
    files = {p: p.stat().st_mtime_ns for p in (run_dir / "finals").rglob("*") if p.is_file()}
    summary = json.loads((run_dir / "summary.json").read_text())
    _, _, children = _children(run_dir, summary)
    run_study(run_dir, n_boot=100, report=False)
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["study"]["trained"] == []
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "finals").rglob("*") if p.is_file()} == files
    assert again["baselines"]["ape_gan"]["test"] == summary["baselines"]["ape_gan"]["test"]
    assert len(_children(run_dir, summary)[2]) == len(children)
    # a request the sweep never made (another budget) is refused, not generated
    with pytest.raises(StudyError, match="never regenerates"):
        load_sets({**summary, "attack_budget": 0.5}, data_root=REPO / "data", train_attacks=("PGDu",))


def test_a_seed_free_defense_is_evaluated_once_and_copied_to_its_other_seeds(tmp_path):
    from addd.runfolder import RunFolder
    from sweeps.study import Job, _run_finals

    evaluated = []

    def fake_run(job, ctx, folder):  # stands in for run_job: writes a final's files and record
        evaluated.append(job.folder)
        out = folder.final(job.name, job.seed)
        out.mkdir(parents=True)
        (out / "per_example.safetensors").write_bytes(b"tensors of " + job.folder.encode())
        record = {"name": job.name, "seed": job.seed, "config": job.config, "metrics": {"test/acc": 0.5, "seconds/curve": 3.0},
                  "seconds": {"train": 1.0, "evaluate": 2.0}}
        (out / "metrics.json").write_text(json.dumps(record))
        return record, True

    jobs = [Job(name, "baseline", seed, {"train.seed": seed}, ("PGDu",), lambda: None)
            for name in ("no_defense", "ape_gan") for seed in (2, 0, 1)]
    folder = RunFolder(tmp_path)
    records, trained, timings = _run_finals(jobs, None, folder, lambda fn, todo: [fake_run(j, None, folder) for j in todo],
                                            None, None)
    assert sorted(evaluated) == ["ape_gan-seed0", "ape_gan-seed1", "ape_gan-seed2", "no_defense-seed0"]
    assert sorted(trained) == sorted(evaluated)
    copies = {r["seed"]: r for r in records["no_defense"]}
    assert set(copies) == {0, 1, 2} and copies[0].get("same_as") is None
    for seed in (1, 2):
        assert copies[seed]["same_as"] == "no_defense-seed0" and copies[seed]["config"] == {"train.seed": seed}
        assert copies[seed]["metrics"] == {"test/acc": 0.5}  # the figures; no seconds it did not spend
        assert timings[f"no_defense-seed{seed}"] == 0.0
        out = folder.final("no_defense", seed)
        assert (out / "per_example.safetensors").read_bytes() == b"tensors of no_defense-seed0"
        assert json.loads((out / "metrics.json").read_text())["same_as"] == "no_defense-seed0"


def test_parallel_study_starts_the_longest_finals_first():
    from sweeps.study import Job, expected_cost

    def job(name, seed):
        return Job(name, "baseline" if not name.startswith("fixed-") else "fixed", seed, {}, ("PGDu",), lambda: None)

    jobs = [job(n, s) for n in ("fixed-no_dp", "no_defense", "ape_gan", "adv_training") for s in (0, 1, 2)]
    order = [j.folder for j in sorted(jobs, key=expected_cost, reverse=True)]
    assert order[:3] == ["adv_training-seed0", "adv_training-seed1", "adv_training-seed2"]
    # then the seed-0 finals (they also compute the robustness curve), then the rest, stable
    assert order[3:6] == ["fixed-no_dp-seed0", "no_defense-seed0", "ape_gan-seed0"]
    assert order[6:] == ["fixed-no_dp-seed1", "fixed-no_dp-seed2", "no_defense-seed1", "no_defense-seed2",
                         "ape_gan-seed1", "ape_gan-seed2"]
