"""sweeps.trialspec: the one writer and reader of the trial-config keys, and the config that ran
as MLflow and summary.json record it (fast, no Ray)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import addd.config
import sweeps.trialspec
from sweeps.summary import build_summary, config_entry
from sweeps.trialspec import FINAL, SEARCH, TrialOutcome, TrialSpec, final_params, ran_config

REPO = Path(__file__).resolve().parent.parent
FLAT = {"loss.lambda_dp": 0.5, "train.epochs": 3, "known_attacks": "CWu+CWt"}


def test_search_and_final_make_the_config_ray_carries_and_parse_reads_it_back():
    search = TrialSpec.search("no_dp", FLAT)
    assert (search.phase, search.variant, search.known_attacks) == (SEARCH, "no_dp", ("CWu", "CWt"))
    config = search.to_config()
    assert config == {"phase": "search", "variant": "no_dp", **FLAT}
    assert TrialSpec.parse(config) == search
    final = TrialSpec.final("no_dp", config, seed=4)  # a carried config's own phase/variant give way
    assert (final.phase, final.variant, final.seed) == (FINAL, "no_dp", 4)
    assert final == search.rerun(4)
    assert TrialSpec.search("full", {**FLAT, "known_attacks": ["CWu", "CWt"]}).to_config()["known_attacks"] == "CWu+CWt"


def test_child_params_and_tags_record_the_config_that_ran():
    spec = TrialSpec.final("no_dp", FLAT, seed=2)
    assert spec.tags() == {"phase": "final", "variant": "no_dp"}
    assert spec.run_name("t7") == "final-no_dp-t7"
    params = spec.child_params()
    assert (params["phase"], params["variant"]) == ("final", "no_dp")
    assert (params["loss.use_dp"], params["loss.lambda_dp"]) == (False, 0.0)  # the ablation, not the carried 0.5
    assert params["known_attacks"] == ["CWu", "CWt"] and params["train.seed"] == 2
    assert {k: v for k, v in params.items() if k not in ("phase", "variant")} == spec.ran_config()
    assert spec.best_entry(0.5, trial_id="f2") == {"variant": "no_dp", "seed": 2, "val_objective": 0.5, "trial_id": "f2"}


def test_a_study_final_records_its_name_and_what_ran():
    fixed = final_params("fixed-no_prior", TrialSpec.final("no_prior", FLAT, seed=1).to_config(), kind="fixed")
    assert (fixed["phase"], fixed["variant"], fixed["kind"]) == ("final", "fixed-no_prior", "fixed")
    assert (fixed["loss.use_prior"], fixed["loss.lambda_prior"]) == (False, 0.0)
    settings = {"baseline": "ape_gan", "known_attacks": ("CWu",), "train.seed": 0}
    baseline = final_params("ape_gan", settings, kind="baseline")
    assert baseline == {"phase": "final", "variant": "ape_gan", "kind": "baseline", "baseline": "ape_gan",
                        "known_attacks": ["CWu"], "train.seed": 0}
    assert ran_config(None) is None


def test_summary_entries_hold_the_config_that_ran_beside_the_carried_one():
    def outcome(trial_id: str, spec: TrialSpec) -> TrialOutcome:
        return TrialOutcome(trial_id, spec.to_config(), {"objective": 0.5, "epoch": 3}, None, None)

    summary = build_summary(header={}, search={"no_dp": [outcome("s", TrialSpec.search("no_dp", FLAT))]},
                            final=[outcome("f", TrialSpec.final("no_dp", FLAT, seed=1))], best_artifact="b")
    entry = summary["variants"]["no_dp"]
    assert entry["best_config"]["loss.lambda_dp"] == 0.5 and entry["best_config"]["known_attacks"] == "CWu+CWt"
    assert (entry["ran_config"]["loss.use_dp"], entry["ran_config"]["loss.lambda_dp"]) == (False, 0.0)
    assert entry["ran_config"] == addd.config.to_flat_dict(TrialSpec.parse(entry["best_config"]).defense_config())
    assert entry["known_attacks"] == ["CWu", "CWt"]
    assert summary["best"]["variant"] == "no_dp" and summary["best"]["seed"] == 1
    assert config_entry(None) == {"best_config": None, "ran_config": None, "known_attacks": None}
    json.dumps(summary)


def test_the_pair_spelling_has_one_parser():
    assert sweeps.trialspec.pair_attacks is addd.config.pair_attacks
    assert sweeps.trialspec.pair_name is addd.config.pair_name
    assert addd.config.from_flat_dict({"known_attacks": "CWu+CWt"}).known_attacks == ("CWu", "CWt")
    with pytest.raises(addd.config.ConfigError, match=r"\['PGDu,PGDt'\].*several: PGDu\+PGDt"):
        addd.config.from_flat_dict({"known_attacks": "PGDu,PGDt"})  # one spelling: no comma form


@pytest.mark.parametrize("folder", ["sweeps", "bench"])
def test_no_other_module_spells_the_trial_config_keys(folder):
    """Only sweeps/trialspec.py spells the ``"phase"`` and ``"front_member"`` keys, and nobody splits ``"+"`` (addd.config
    parses the pair). (A checkpoint's own ``"variant"`` metadata in sweeps/trial.py is not a trial config.)"""
    pattern = re.compile(r"""["'](phase|front_member)["']|split\(["']\+|replace\(["']\+""")
    found = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / folder).rglob("*.py"))
             if path.name != "trialspec.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


class _FakeTracker:
    """What sweeps.recorder and the study's child runs call on a sweeps._mlflow.Tracker."""

    def __init__(self):
        self.children: dict[str, dict] = {}

    def child(self, parent_id, key, name, params, tags):
        self.children[key] = {"parent": parent_id, "name": name, "params": params, "tags": tags}
        return key

    def find_child(self, parent_id, key):
        return None

    def log_metrics(self, run_id, metrics, step):
        self.children[run_id]["metrics"] = (dict(metrics), step)

    def finish(self, run_id, ok):
        self.children[run_id]["ok"] = ok


def test_the_recorder_and_the_study_record_the_child_runs_through_trialspec():
    from sweeps.recorder import Recorder
    from sweeps.study import Job, _log_child

    tracker = _FakeTracker()
    spec = TrialSpec.search("no_dp", FLAT)
    Recorder(tracker, "parent").started("t1", spec.to_config())
    run = tracker.children["t1"]
    assert (run["parent"], run["name"], run["tags"]) == ("parent", "search-no_dp-t1", spec.tags())
    assert run["params"] == spec.child_params() and run["params"]["loss.use_dp"] is False
    fixed = TrialSpec.final("no_mmd", FLAT, seed=1)
    job = Job("fixed-no_mmd", "fixed", 1, fixed.to_config(), fixed.known_attacks, build=lambda: None)
    _log_child(tracker, "parent", job, {"metrics": {"test/worst.unknown": 0.5}})
    study_run = tracker.children[f"study:{job.folder}"]
    assert study_run["params"] == final_params("fixed-no_mmd", job.config, kind="fixed")
    assert study_run["params"]["loss.use_mmd"] is False and study_run["params"]["variant"] == "fixed-no_mmd"
    assert study_run["metrics"] == ({"test/worst.unknown": 0.5}, 3) and study_run["ok"]
