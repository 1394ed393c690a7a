"""End to end on the bundled digits: ADD-Defense trained with PGDu + PGDt as known attacks
restores PGD examples that the undefended target model gets wrong."""

import pytest
import torch

from addd.attacks import run_attack
from addd.config import DefenseConfig, NetworkConfig, TrainConfig
from addd.data import load_dataset
from addd.defense import ADDDefense
from addd.metrics import accuracy_targeted, accuracy_untargeted
from addd.target_models import get_target_model


def _accuracy(model, x, y, target):
    with torch.no_grad():
        pred = model(x).argmax(1)
    return accuracy_untargeted(pred, y) if target is None else accuracy_targeted(pred, y, target)


@pytest.mark.slow
def test_defense_restores_pgd_examples_on_digits(tmp_path):
    torch.manual_seed(0)
    data = load_dataset("digits", n_train=700, n_test=300, seed=0)
    target_model = get_target_model(data, cache_dir=tmp_path).model
    known = ("PGDu", "PGDt")
    x_adv_train = {n: run_attack(n, target_model, data.train.x, data.train.y, dataset="digits", seed=0).x_adv for n in known}
    test_sets = {n: run_attack(n, target_model, data.test.x, data.test.y, dataset="digits", seed=1) for n in known}

    config = DefenseConfig(
        network=NetworkConfig(width=0.125, channels=1),
        train=TrainConfig(epochs=8, batch_size=64, seed=0),
        known_attacks=known,
    )
    defense = ADDDefense(config)
    defense.fit(data.train.x, data.train.y, x_adv_train)

    clean = _accuracy(target_model, data.test.x, data.test.y, None)
    reconstruction = _accuracy(lambda x: target_model(defense.restore(x)), data.test.x, data.test.y, None)
    assert clean > 0.9
    assert reconstruction > 0.8, f"defense destroys clean images: {reconstruction:.3f}"
    for name, result in test_sets.items():
        undefended = _accuracy(target_model, result.x_adv, data.test.y, result.target)
        defended = _accuracy(lambda x: target_model(defense.restore(x)), result.x_adv, data.test.y, result.target)
        print(f"{name}: undefended {undefended:.3f} defended {defended:.3f}")
        assert undefended < 0.4, f"{name} did not hurt the target model ({undefended:.3f})"
        assert defended > undefended + 0.35, f"{name}: defended {defended:.3f} vs undefended {undefended:.3f}"
