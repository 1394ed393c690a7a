"""The paper's baselines (addd.baselines) on the bundled digits: APE-GAN and adversarial
training really train, save/load round trips are exact, and the registry is strict."""

import pytest
import torch

from addd import baselines
from addd.attacks import run_attack
from addd.baselines import (
    BASELINE_NAMES,
    BASELINES,
    APEGAN,
    APEGANConfig,
    AdversarialTraining,
    AdversarialTrainingConfig,
    Baseline,
    BaselineError,
    NoDefense,
    build_baseline,
    load_adversarial_training,
    load_apegan,
    load_baseline,
)
from addd.data import load_dataset
from addd.defense import NonFiniteLossError
from addd.target_models import get_target_model

KNOWN = ("PGDu", "PGDt")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits (600 train / 200 test), its target model M_t and oblivious PGD sets on the
    training images (a quarter of the iterations: enough for training data)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope cannot use the function-scoped one_thread fixture
    try:
        data = load_dataset("digits", n_train=600, n_test=200, seed=0)
        target = get_target_model(data, cache_dir=tmp_path_factory.mktemp("cache")).model
        x_adv = {n: run_attack(n, target, data.train.x, data.train.y, dataset="digits", budget=0.25, seed=0).x_adv for n in KNOWN}
    finally:
        torch.set_num_threads(threads)
    return data, target, x_adv


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _white_box_pgd_accuracy(model, data):
    """PGDu at the digits parameters (ε 0.15, 40 iterations) computed on ``model`` itself."""
    x_adv = run_attack("PGDu", model, data.test.x, data.test.y, dataset="digits", seed=1).x_adv
    return _accuracy(model, x_adv, data.test.y)


# ------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_ape_gan_learns_to_restore_adversarial_digits(digits, one_thread):
    data, target, x_adv = digits
    ape = build_baseline("ape_gan", "digits", KNOWN, width=0.125, channels=1, epochs=10, batch_size=64, lr=2e-3, seed=0)
    seen = []
    reports = ape.fit(data.train.x, data.train.y, x_adv, callback=lambda report, model: seen.append((report.epoch, model)))
    assert [epoch for epoch, _ in seen] == list(range(1, 11)) and all(model is ape for _, model in seen)
    first, last = reports[0].losses["mse"], reports[-1].losses["mse"]
    print(f"APE-GAN mse {first:.4f} -> {last:.4f}; epoch {[round(r.seconds, 2) for r in reports]} s")
    assert set(reports[-1].losses) == {"di", "mse", "adv", "total"}
    assert last < 0.25 * first, f"APE-GAN's MSE did not fall: {first:.4f} -> {last:.4f}"

    assert not ape.training and ape.classifier_for(target) is target
    test_adv = run_attack("PGDu", target, data.test.x, data.test.y, dataset="digits", budget=0.25, seed=1).x_adv
    with torch.no_grad():
        restored = ape.restore(test_adv)
        assert torch.equal(restored, ape.restore(test_adv))  # deterministic
    adv_mse = ((test_adv - data.test.x) ** 2).mean().item()
    restored_mse = ((restored - data.test.x) ** 2).mean().item()
    undefended = _accuracy(target, test_adv, data.test.y)
    defended = _accuracy(lambda x: target(ape.restore(x)), test_adv, data.test.y)
    clean = _accuracy(lambda x: target(ape.restore(x)), data.test.x, data.test.y)
    print(f"test PGDu: mse adv {adv_mse:.4f} restored {restored_mse:.4f}; acc undefended {undefended:.3f} "
          f"APE-GAN {defended:.3f}; reconstruction acc {clean:.3f}")
    assert restored_mse < 0.8 * adv_mse, f"restored images ({restored_mse:.4f}) not closer to clean than adversarial ({adv_mse:.4f})"
    assert defended > undefended + 0.3
    assert clean > 0.85


@pytest.mark.slow
def test_adversarial_training_beats_target_model_under_white_box_pgd(digits, one_thread, tmp_path):
    data, target, x_adv = digits
    defense = build_baseline(
        "adv_training", data, KNOWN, channels=1, epochs=10, batch_size=64, lr=3e-3, seed=0, pgd_steps=5
    )
    assert defense.config.arch == "digits_cnn" and defense.online_attacks == KNOWN
    reports = defense.fit(data.train.x, data.train.y, x_adv)
    first, last = reports[0].losses["total"], reports[-1].losses["total"]
    assert set(reports[-1].losses) == {"clean", "adv_PGDu", "adv_PGDt", "total"}
    assert last < 0.6 * first, f"adversarial training's loss did not fall: {first:.3f} -> {last:.3f}"

    classifier = defense.classifier_for(target)
    assert classifier is defense.classifier and not classifier.training
    assert torch.equal(defense.restore(data.test.x), data.test.x)
    clean_mt, clean_at = _accuracy(target, data.test.x, data.test.y), _accuracy(classifier, data.test.x, data.test.y)
    robust_mt, robust_at = _white_box_pgd_accuracy(target, data), _white_box_pgd_accuracy(classifier, data)
    print(f"adv training loss {first:.3f} -> {last:.3f}; epoch {[round(r.seconds, 2) for r in reports]} s; "
          f"clean M_t {clean_mt:.3f} adv-trained {clean_at:.3f}; white-box PGD M_t {robust_mt:.3f} adv-trained {robust_at:.3f}")
    assert clean_at > 0.85
    assert robust_at > robust_mt + 0.15, f"white-box PGD: adv-trained {robust_at:.3f} vs M_t {robust_mt:.3f}"

    loaded = load_baseline(defense.save(tmp_path / "at.safetensors"))
    assert isinstance(loaded, AdversarialTraining) and loaded.config == defense.config
    with torch.no_grad():
        assert torch.equal(loaded.classifier(data.test.x), classifier(data.test.x))


# ------------------------------------------------------------------------------ persistence


def _images(n=16, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_ape_gan_save_load_round_trip(tmp_path, one_thread):
    x, y = _images()
    config = APEGANConfig(width=0.0625, channels=1, epochs=1, batch_size=8, known_attacks=("PGDu", "CWu"))
    ape = APEGAN(config)
    ape.fit(x, y, {"PGDu": (x + 0.1).clamp(0, 1), "CWu": (x - 0.1).clamp(0, 1)})
    path = ape.save(tmp_path / "ape.safetensors", extra_metadata={"trial": "t1"})
    loaded = load_apegan(path, "cpu")
    assert loaded.config == config and not loaded.training
    assert [r.losses for r in loaded.history] == [r.losses for r in ape.history]
    with torch.no_grad():
        assert torch.equal(loaded.restore(x), ape.restore(x))
        assert not torch.equal(APEGAN(config).restore(x), ape.restore(x))  # the weights really were trained and loaded
    assert isinstance(load_baseline(path), APEGAN)
    with pytest.raises(Exception, match="not a addd-adv-training/1 checkpoint"):
        load_adversarial_training(path)


def test_adversarial_training_save_load_round_trip(tmp_path, one_thread):
    x, y = _images()
    config = AdversarialTrainingConfig(epochs=1, batch_size=8, known_attacks=("PGDu", "DDNu"), pgd_steps=1)
    defense = AdversarialTraining(config)
    assert defense.online_attacks == ("PGDu",) and defense.static_attacks == ("DDNu",)
    defense.fit(x, y, {"DDNu": (x + 0.05).clamp(0, 1)})  # PGDu is generated online: not needed
    loaded = load_adversarial_training(defense.save(tmp_path / "at.safetensors"))
    assert loaded.config == config and loaded.config.arch_kwargs["channels"] == 1
    with torch.no_grad():
        assert torch.equal(loaded.classifier(x), defense.classifier(x))
        assert not torch.equal(AdversarialTraining(config).classifier(x), defense.classifier(x))


# ------------------------------------------------------------------------------ registry, errors


def test_registry_and_protocol():
    assert set(BASELINES) == {"ape_gan", "adv_training"}
    assert set(BASELINE_NAMES) == {"ape_gan", "adv_training", "no_defense"}
    model = torch.nn.Linear(2, 2)
    x = torch.rand(2, 1, 32, 32)
    for name in BASELINE_NAMES:
        defense = build_baseline(name, "digits", KNOWN, width=0.0625, channels=1)
        assert isinstance(defense, Baseline) and isinstance(defense, torch.nn.Module)
        assert defense.name == name
    none = build_baseline("no_defense", "digits", KNOWN)
    assert isinstance(none, NoDefense) and none.restore(x) is x and none.classifier_for(model) is model
    assert build_baseline("ape_gan", "digits", KNOWN, width=0.0625, channels=1).classifier_for(model) is model
    at = build_baseline("adv_training", "svhn", ["PGDu", "CWu"], channels=3)
    assert at.config.arch == "svhn_cnn" and at.classifier_for(model) is at.classifier


def test_bad_names_and_inputs_are_rejected():
    with pytest.raises(BaselineError, match="valid names: ape_gan, adv_training, no_defense"):
        build_baseline("apegan", "digits", KNOWN)
    assert issubclass(BaselineError, ValueError)
    with pytest.raises(BaselineError, match="unknown known attack"):
        APEGANConfig(known_attacks=("FGSM",))
    with pytest.raises(BaselineError, match="unknown target architecture"):
        AdversarialTrainingConfig(arch="vgg")
    with pytest.raises(BaselineError, match="unknown dataset"):
        AdversarialTrainingConfig(dataset="imagenet")
    x, y = _images(4)
    with pytest.raises(BaselineError, match=r"lacks the known attack\(s\) \['CWu'\]"):
        AdversarialTraining(AdversarialTrainingConfig(known_attacks=("PGDu", "CWu"))).fit(x, y, {})
    with pytest.raises(BaselineError, match="NaN"):
        APEGAN(APEGANConfig(width=0.0625, channels=1, known_attacks=("PGDu",))).fit(x, y, {"PGDu": x * float("nan")})


def test_non_finite_loss_stops_training(monkeypatch):
    x, y = _images(4)
    monkeypatch.setattr(baselines.losses, "reconstruction_loss", lambda a, b: (a - b).sum() * float("nan"))
    ape = APEGAN(APEGANConfig(width=0.0625, channels=1, batch_size=4, known_attacks=("PGDu",)))
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        ape.fit(x, y, {"PGDu": x})
    assert not ape.training


# ------------------------------------------------------------------------------ resuming (addd.training)


@pytest.mark.parametrize("name", ["ape_gan", "adv_training"])
def test_resumed_fit_equals_uninterrupted_fit(name, one_thread):
    """Two epochs straight == one epoch, a fresh model with its weights and TrainingState, then one
    more: same losses and weights, so the shuffle, the online-PGD noise and the Adam moments resume."""
    x, y = _images(12)
    x_adv = {"PGDu": (x + 0.1).clamp(0, 1), "CWu": (x - 0.1).clamp(0, 1)}

    def build():
        return build_baseline(name, "digits", ("PGDu", "CWu"), width=0.0625, channels=1, epochs=2, batch_size=4,
                              seed=3, pgd_steps=2)

    straight = build()
    straight.fit(x, y, x_adv)
    first = build()
    first.fit(x, y, x_adv, epochs=1)
    resumed = build()
    resumed.load_state_dict(first.state_dict())
    resumed.fit(x, y, x_adv, epochs=1, resume_state=first.optimizer_state())
    assert resumed.history[0].losses == straight.history[1].losses
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    fresh = build()
    fresh.load_state_dict(first.state_dict())
    fresh.fit(x, y, x_adv, epochs=1)  # without the state: a different second epoch
    assert fresh.history[0].losses != straight.history[1].losses


def test_images_outside_unit_range_are_rejected():
    x, y = _images(4)
    ape = APEGAN(APEGANConfig(width=0.0625, channels=1, known_attacks=("PGDu",)))
    with pytest.raises(BaselineError, match=r"x_adv\['PGDu'\] must be images in \[0, 1\]"):
        ape.fit(x, y, {"PGDu": x + 2})
