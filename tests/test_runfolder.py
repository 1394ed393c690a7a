"""addd.runfolder: the one owner of a run folder's layout (fast)."""

from __future__ import annotations

from pathlib import Path

from addd.runfolder import RunFolder, experiment_name, final_folder, parse_final_folder


def test_every_path_is_under_the_root_and_named_once(tmp_path):
    folder = RunFolder(tmp_path)
    paths = [folder.state, folder.plan, folder.study_state, folder.summary, folder.events, folder.timings, folder.log,
             folder.optuna_db, folder.mlflow_db, folder.mlflow_artifacts, folder.mlflow_journal,
             folder.mlflow_journal_files, folder.ray_results, folder.best_dir, folder.finals, folder.report]
    assert len(set(paths)) == len(paths) and all(p.parent == tmp_path for p in paths)
    assert folder.best_defense.parent == folder.best_dir and folder.report_md.parent == folder.report
    assert (tmp_path / folder.best_artifact) == folder.best_defense
    assert folder.default_tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert folder.artifact_location(folder.default_tracking_uri) == (tmp_path / "mlartifacts").resolve().as_uri()
    assert folder.artifact_location("http://127.0.0.1:5000") is None  # a server keeps its own artifacts
    assert experiment_name("digits_ablation") == "addd-digits_ablation"
    assert RunFolder(str(tmp_path)).root == Path(tmp_path)


def test_final_folders_round_trip_and_only_exact_names_are_found(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.final("fixed-no_dp", 2) == tmp_path / "finals" / "fixed-no_dp-seed2"
    for name in ("fixed-no_dp", "no_defense", "full"):
        assert parse_final_folder(final_folder(name, 3)) == (name, 3)
    assert parse_final_folder("full") is None and parse_final_folder("full-seedx") is None
    for name, seed in (("full", 0), ("full", 1), ("fixed-full", 0)):
        folder.final(name, seed).mkdir(parents=True)
        (folder.final(name, seed) / "per_example.safetensors").write_text("x")
    (folder.final("full", 2)).mkdir()  # no file: not listed
    assert folder.finals_of("full", "per_example.safetensors") == {
        0: folder.final("full", 0) / "per_example.safetensors", 1: folder.final("full", 1) / "per_example.safetensors"}
