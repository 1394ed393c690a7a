"""ADDDefense: Table 4 shapes, gradient routing of the alternating updates, training loop contract."""

import math

import pytest
import torch

from addd import load_defense
from addd.config import DefenseConfig, LossConfig, NetworkConfig, TrainConfig, ablation
from addd.defense import ADDDefense, DefenseError, EpochReport, NonFiniteLossError
from addd.networks import latent_dim

SMALL = NetworkConfig(width=0.0625, channels=1)


def small_config(**loss) -> DefenseConfig:
    return DefenseConfig(network=SMALL, loss=LossConfig(**loss), train=TrainConfig(epochs=1, batch_size=8))


def batch(n=8, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, 32, 32, generator=g)
    adv = [(x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1) for _ in range(2)]
    return x, torch.randint(0, 10, (n,), generator=g), adv


def test_table4_shapes_at_width_one():
    config = DefenseConfig(network=NetworkConfig(width=1.0, channels=3))
    defense = ADDDefense(config)
    x = torch.rand(2, 3, 32, 32)
    z_mean, z_logvar = defense.encoder(x)
    assert z_mean.shape == z_logvar.shape == (2, 2048)
    convs = [m.out_channels for m in defense.encoder.features if isinstance(m, torch.nn.Conv2d)]
    assert convs == [128, 256, 512, 1024]
    deconvs = [m.out_channels for m in defense.generator.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert deconvs == [1024, 512, 256, 128, 3]
    fcs = [m.out_features for m in defense.perturbation_discriminator.net if isinstance(m, torch.nn.Linear)]
    assert fcs == [1024, 256, 64, 3]  # original + 2 known attacks
    di_convs = [m.out_channels for m in defense.image_discriminator.features if isinstance(m, torch.nn.Conv2d)]
    assert di_convs == [32, 64, 128, 256]
    restored = defense.restore(x)
    assert restored.shape == x.shape and restored.min() >= 0 and restored.max() <= 1


def test_width_scales_every_network():
    config = DefenseConfig(network=NetworkConfig(width=0.25, channels=1), known_attacks=("PGDu", "PGDt", "CWu"))
    defense = ADDDefense(config)
    assert latent_dim(config.network) == 512
    assert defense.perturbation_discriminator.net[-1].out_features == 4
    assert defense.restore(torch.rand(3, 1, 32, 32)).shape == (3, 1, 32, 32)


def test_restore_is_deterministic_and_differentiable():
    defense = ADDDefense(small_config())
    x = torch.rand(4, 1, 32, 32, requires_grad=True)
    out1, out2 = defense.restore(x), defense.restore(x)
    assert torch.equal(out1, out2)
    out1.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("term", ["mmd", "prior", "confusion", "cls", "adv", "mse"])
def test_every_generator_side_term_reaches_the_encoder(term):
    defense = ADDDefense(small_config())
    x, y, adv = batch()
    terms = defense.generator_side_losses(defense.forward_domains(x, adv), x, y)
    terms[term].backward()
    grads = [p.grad for p in defense.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0, f"{term} does not reach E"


def test_alternating_step_routes_gradients():
    """D step: gradients to D_P/D_I only; E/G/C step: to E/G/C only, never to D_P or D_I."""
    defense = ADDDefense(small_config())
    optimizers = defense._make_optimizers()
    counts = {}

    def count(name):
        def hook(grad):
            counts[name] = counts.get(name, 0) + 1
        return hook

    for module_name in ("encoder", "generator", "classifier", "perturbation_discriminator", "image_discriminator"):
        for i, p in enumerate(getattr(defense, module_name).parameters()):
            p.register_hook(count(f"{module_name}.{i}"))
    x, y, adv = batch()
    before = [p.clone() for p in defense.perturbation_discriminator.parameters()]
    defense.training_step(optimizers, x, y, adv)
    for name, value in counts.items():
        assert value == 1, f"{name} received {value} gradient computations in one alternating step"
    n_params = sum(1 for m in ("encoder", "generator", "classifier", "perturbation_discriminator", "image_discriminator") for _ in getattr(defense, m).parameters())
    assert len(counts) == n_params
    # D_P was updated by its own step (its loss gradient), so its weights moved
    assert any(not torch.equal(a, b) for a, b in zip(before, defense.perturbation_discriminator.parameters()))


def test_no_dp_ablation_has_no_perturbation_discriminator_and_no_term():
    config = ablation(small_config(), "no_dp")
    assert config.loss.lambda_dp == 0.0 and not config.loss.use_dp
    defense = ADDDefense(config)
    assert defense.perturbation_discriminator is None
    x, y, adv = batch()
    terms = defense.generator_side_losses(defense.forward_domains(x, adv), x, y)
    assert "confusion" not in terms
    no_prior = ADDDefense(ablation(small_config(), "no_prior"))
    assert "prior" not in no_prior.generator_side_losses(no_prior.forward_domains(x, adv), x, y)


def test_total_is_weighted_sum_of_terms():
    defense = ADDDefense(small_config(lambda_prior=0.5, lambda_dp=2.0, lambda_cls=3.0, theta_mse=7.0))
    x, y, adv = batch()
    t = defense.generator_side_losses(defense.forward_domains(x, adv), x, y)
    expected = t["mmd"] + 0.5 * t["prior"] + 2.0 * t["confusion"] + 3.0 * t["cls"] + t["adv"] + 7.0 * t["mse"]
    assert t["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_fit_reports_each_epoch_and_callback_can_stop():
    config = small_config().replace(**{"train.epochs": 3})
    x, y, adv = batch(n=16)
    reports = []

    def callback(report, model):
        assert isinstance(report, EpochReport) and model is defense
        reports.append(report)
        return report.epoch < 2  # stop after the second epoch

    defense = ADDDefense(config)
    returned = defense.fit(x, y, {"PGDu": adv[0], "PGDt": adv[1]}, callback=callback)
    assert [r.epoch for r in reports] == [1, 2] and len(returned) == 2
    assert all(math.isfinite(v) for v in reports[0].losses.values()) and reports[0].steps == 2
    assert not defense.training


def test_fit_is_seeded():
    x, y, adv = batch(n=16)
    outs = []
    for _ in range(2):
        defense = ADDDefense(small_config())
        defense.fit(x, y, {"PGDu": adv[0], "PGDt": adv[1]})
        outs.append(defense.restore(x[:2]))
    assert torch.equal(outs[0], outs[1])


def test_fit_stops_with_clear_error_on_nan():
    x, y, adv = batch(n=16)
    defense = ADDDefense(small_config(lambda_cls=3e38))  # finite weight, but 3e38 * CE(~2.3) overflows float32
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1: non-finite loss \(total=inf"):
        defense.fit(x, y, {"PGDu": adv[0], "PGDt": adv[1]})


def test_fit_rejects_non_finite_inputs():
    x, y, adv = batch(n=16)
    x_bad = adv[0].clone()
    x_bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DefenseError, match=r"x_adv\['PGDu'\] contains NaN"):
        ADDDefense(small_config()).fit(x, y, {"PGDu": x_bad, "PGDt": adv[1]})


def test_fit_rejects_missing_or_mismatched_attack_examples():
    x, y, adv = batch(n=16)
    defense = ADDDefense(small_config())
    with pytest.raises(DefenseError, match="lacks the known attack"):
        defense.fit(x, y, {"PGDu": adv[0]})
    with pytest.raises(DefenseError, match="paired with x"):
        defense.fit(x, y, {"PGDu": adv[0], "PGDt": adv[1][:4]})


def test_save_and_load_round_trip(tmp_path):
    x, y, adv = batch(n=16)
    defense = ADDDefense(small_config(sigma=[1.0, 2.0]).replace(**{"known_attacks": ["PGDu", "PGDt"]}))
    defense.fit(x, y, {"PGDu": adv[0], "PGDt": adv[1]})
    path = defense.save(tmp_path / "d.safetensors")
    loaded = load_defense(path)
    assert loaded.config == defense.config and not loaded.training
    assert torch.equal(loaded.restore(x), defense.restore(x))
    assert len(loaded.history) == 1


def test_load_rejects_a_non_defense_file(tmp_path):
    from addd.storage import StorageError, save_tensors

    save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(2)}, {"format": "something-else"})
    with pytest.raises(StorageError, match="not an ADD-Defense checkpoint"):
        load_defense(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StorageError):
        load_defense(tmp_path / "junk.safetensors")


def test_fit_without_online_attack_saves_only_the_shuffle_and_noise_streams():
    """States saved before the online attack existed (no rng.online) still resume these fits."""
    x, y, adv = batch(n=16)
    defense = ADDDefense(small_config())
    defense.fit(x, y, {"PGDu": adv[0], "PGDt": adv[1]})
    assert {k for k in defense.optimizer_state().tensors if k.startswith("rng.")} == {"rng.shuffle", "rng.noise"}
