"""`python -m ablations.evaluate`: a saved defense against the suite, oblivious and adaptive."""

import json

import pandas as pd

import pytest
import torch

from ablations import evaluate as cli
from addd.config import DefenseConfig, NetworkConfig, TrainConfig
from addd.defense import ADDDefense


def test_rejects_missing_checkpoint_and_unknown_attack(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["--defense", str(tmp_path / "nope.safetensors")])
    assert info.value.code == 2 and "no defense checkpoint" in capsys.readouterr().err
    path = tmp_path / "d.safetensors"
    ADDDefense(DefenseConfig(network=NetworkConfig(width=0.03125, channels=1))).save(path)
    with pytest.raises(SystemExit):
        cli.parse_args(["--defense", str(path), "--attacks", "FGSM"])
    assert "valid: PGDu" in capsys.readouterr().err


def test_reads_the_sweeps_adversarial_sets_under_the_cache_dir(tmp_path, monkeypatch, capsys):
    """The sets live in AdvCache.under(cache_dir), where the sweep put them (not another folder)."""
    from types import SimpleNamespace

    from addd.advcache import AdvCache, AdvCacheError

    path = ADDDefense(DefenseConfig(network=NetworkConfig(width=0.03125, channels=1))).save(tmp_path / "d.safetensors")
    target = SimpleNamespace(model=torch.nn.Flatten(), weights_sha256="m0", path="t", clean_test_accuracy=1.0)
    monkeypatch.setattr(cli, "get_target_model", lambda *args, **kwargs: target)
    roots = []

    def get_many(cache, requests, map_fn=None, progress=None):
        roots.append(cache.root)
        raise AdvCacheError("stop here; the location is all this test needs")

    monkeypatch.setattr(AdvCache, "get_many", get_many)
    code = cli.main(["--defense", str(path), "--n-test", "4", "--attacks", "PGDu", "--cache-dir", str(tmp_path / "c")])
    assert roots == [AdvCache.under(tmp_path / "c").root]
    assert code == 2 and "error: stop here" in capsys.readouterr().err  # one except catches addd errors


@pytest.mark.slow
def test_evaluates_a_saved_defense_on_digits(tmp_path):
    torch.manual_seed(0)
    config = DefenseConfig(network=NetworkConfig(width=0.03125, channels=1), train=TrainConfig(epochs=1))
    path = ADDDefense(config).save(tmp_path / "d.safetensors")
    out = tmp_path / "out"
    code = cli.main([
        "--defense", str(path), "--n-train", "300", "--n-test", "40", "--attacks", "PGDu", "PGDt", "CWu",
        "--holdout", "CWu", "--adaptive", "BPDA", "--adaptive-steps", "10", "--budget", "0.1", "--cache-dir", str(tmp_path / "cache"),
        "--out", str(out),
    ])
    assert code == 0
    result = json.loads((out / "evaluation.json").read_text())
    metrics = result["oblivious"]
    assert set(result["attack_params"]) == {"PGDu", "PGDt", "CWu"}
    assert result["attack_params"]["PGDu"]["nb_iter"] == 4  # budget 0.1 of 40, recorded
    assert metrics["worst.unknown"] == pytest.approx(metrics["acc.defended.CWu"])  # the only unknown attack
    assert metrics["worst.holdout"] == pytest.approx(metrics["acc.defended.CWu"])
    assert metrics["acc.undefended.PGDu"] < metrics["acc.clean"]
    assert {"adaptive.bpda", "adaptive.pgd_worst"} <= set(result["adaptive"])  # PGD through the pipeline always runs
    assert (out / "oblivious.csv").read_text().startswith("attack,targeted,known")
    side = pd.read_csv(out / "adaptive.csv")  # every adaptive figure beside the oblivious one at its eps
    pgd = side[side["adaptive attack"] == "PGD (adaptive, CE+margin)"].iloc[0]
    assert pgd["oblivious attack"] == "PGDu" and pgd["oblivious (defended)"] == pytest.approx(metrics["acc.defended.PGDu"])
    assert pgd["eps"] == pytest.approx(result["attack_params"]["PGDu"]["eps"])
    assert list((tmp_path / "cache" / "advcache" / "digits" / "PGDu").glob("*/manifest.json"))  # AdvCache.under
