"""The online known attack PGDa: PGD through M_t ∘ G ∘ E of the current defense, per batch
(addd.online, ADDDefense.fit), its config section, and adversarial training's same code path."""

import pytest
import torch
from torch import nn

from addd.attack_names import ATTACK_NAMES, KNOWN_ATTACK_NAMES, is_online
from addd.baselines import BaselineError, build_baseline
from addd.config import ConfigError, DefenseConfig, NetworkConfig, OnlineAttackConfig, TrainConfig, from_flat_dict, to_flat_dict
from addd.defense import ADDDefense, DefenseError
from addd.networks import latent_dim
from addd.online import OnlinePGD

EPS = 0.15


def config(known=("PGDu", "PGDa"), steps=2, fraction=1.0, epochs=1, seed=0) -> DefenseConfig:
    return DefenseConfig(
        network=NetworkConfig(width=0.0625, channels=1),
        train=TrainConfig(epochs=epochs, batch_size=8, seed=seed),
        known_attacks=known,
        online=OnlineAttackConfig(eps=EPS, steps=steps, fraction=fraction),
    )


def target_model() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))


def images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g), {"PGDu": (x + 0.05).clamp(0, 1)}


def online_examples(defense, x, y, fraction=1.0, seed=0):
    attack = OnlinePGD.with_step_rule(EPS, 3, fraction=fraction)
    return attack.examples(target_model(), defense, x, y, torch.Generator().manual_seed(seed))


def test_pgda_is_a_known_attack_that_is_online_and_not_in_the_suite():
    assert "PGDa" in KNOWN_ATTACK_NAMES and "PGDa" not in ATTACK_NAMES
    assert is_online("PGDa") and not any(is_online(name) for name in ATTACK_NAMES)


def test_online_examples_are_within_eps_in_range_and_differ_from_x():
    x, y, _ = images(8)
    x_adv = online_examples(ADDDefense(config()), x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert bool(((x_adv - x).flatten(1).abs().amax(1) > 0.05).all())  # every example moved


def test_fraction_attacks_only_the_first_share_of_the_batch():
    x, y, _ = images(8)
    x_adv = online_examples(ADDDefense(config()), x, y, fraction=0.25)
    moved = (x_adv - x).flatten(1).abs().amax(1) > 0
    assert moved.tolist() == [True, True] + [False] * 6


def test_online_examples_follow_the_defense_weights_and_leave_it_untouched():
    x, y, _ = images(8)
    defense = ADDDefense(config())
    defense.train()
    before = {k: v.clone() for k, v in defense.state_dict().items()}
    first = online_examples(defense, x, y)
    assert defense.training and all(p.grad is None for p in defense.parameters())
    assert all(p.requires_grad for p in defense.parameters())
    assert all(torch.equal(v, defense.state_dict()[k]) for k, v in before.items())  # batch-norm stats too
    assert torch.equal(online_examples(defense, x, y), first)  # seeded
    with torch.no_grad():
        for p in defense.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not torch.equal(online_examples(defense, x, y), first)


def test_fit_attacks_the_current_defense_at_every_step(monkeypatch):
    x, y, x_adv = images(16)
    defense = ADDDefense(config())
    calls = []
    original = OnlinePGD.examples

    def recording(self, model, restore, x_batch, y_batch, generator):
        calls.append((restore is defense, next(defense.encoder.parameters()).detach().clone()))
        return original(self, model, restore, x_batch, y_batch, generator)

    monkeypatch.setattr(OnlinePGD, "examples", recording)
    defense.fit(x, y, x_adv, target_model=target_model())
    assert len(calls) == 2 and all(is_defense for is_defense, _ in calls)
    assert not torch.equal(calls[0][1], calls[1][1])  # weights moved between the two steps
    logits = defense.perturbation_discriminator(torch.zeros(1, latent_dim(defense.config.network)))
    assert logits.shape == (1, 3)  # D_P's domains: original, PGDu, PGDa


def test_fit_without_target_model_raises_one_clear_error():
    x, y, x_adv = images(16)
    with pytest.raises(DefenseError, match=r"PGDa .* pass the target model, fit\(\.\.\., target_model=M_t\)"):
        ADDDefense(config()).fit(x, y, x_adv)
    ADDDefense(config(known=("PGDu",))).fit(x, y, x_adv)  # no online attack: no target model needed


def test_fit_with_online_attack_is_seeded():
    x, y, x_adv = images(16)
    runs = []
    for _ in range(2):
        defense = ADDDefense(config(known=("PGDa",)))
        defense.fit(x, y, {}, target_model=target_model())
        runs.append((defense.history[0].losses, defense.restore(x[:2])))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    other = ADDDefense(config(known=("PGDa",), seed=1))
    other.fit(x, y, {}, target_model=target_model())
    assert other.history[0].losses != runs[0][0]


def test_resumed_fit_equals_uninterrupted_fit(one_thread):
    x, y, x_adv = images(16)
    straight = ADDDefense(config(epochs=2))
    straight.fit(x, y, x_adv, target_model=target_model())
    first = ADDDefense(config(epochs=2))
    first.fit(x, y, x_adv, epochs=1, target_model=target_model())
    state = first.optimizer_state()
    assert "rng.online" in state.tensors
    resumed = ADDDefense(config(epochs=2))
    resumed.load_state_dict(first.state_dict())
    resumed.fit(x, y, x_adv, epochs=1, resume_state=state, target_model=target_model())
    assert resumed.history[0].losses == straight.history[1].losses
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_online_settings_are_flat_searchable_keys():
    flat = to_flat_dict(config(steps=7, fraction=0.5))
    assert flat["online.eps"] == EPS and flat["online.steps"] == 7 and flat["online.fraction"] == 0.5
    assert from_flat_dict({**flat, "online.steps": 3}).online.steps == 3
    assert from_flat_dict(flat) == config(steps=7, fraction=0.5)


@pytest.mark.parametrize(
    "flat, message",
    [
        ({"online.eps": 0.0}, r"online.eps must be in \(0, 1\]"),
        ({"online.eps": -0.1}, r"online.eps must be in \(0, 1\]"),
        ({"online.steps": 0}, r"online.steps must be an int >= 1"),
        ({"online.steps": 2.5}, r"online.steps must be an int >= 1"),
        ({"online.fraction": 0.0}, r"online.fraction must be in \(0, 1\]"),
        ({"online.fraction": 1.5}, r"online.fraction must be in \(0, 1\]"),
        ({"known_attacks": ["PGDa"]}, r"known attack\(s\) \['PGDa'\] need online.eps: set it to the dataset's PGD"),
    ],
)
def test_bad_online_settings_fail_with_one_line(flat, message):
    with pytest.raises(ConfigError, match=message) as caught:
        from_flat_dict(flat)
    assert "\n" not in str(caught.value)


def adversarial_training(known):
    return build_baseline("adv_training", "digits", known, channels=1, epochs=1, batch_size=8, seed=3, pgd_steps=2)


def test_adversarial_training_runs_pgda_as_its_online_untargeted_pgd(one_thread):
    """PGDa for Def-adv is PGDu's online code path: same settings, same losses under the same seed."""
    pgda, pgdu = adversarial_training(("PGDa",)), adversarial_training(("PGDu",))
    assert pgda.online_attacks == ("PGDa",) and pgda.config.pgd_settings("PGDa") == pgdu.config.pgd_settings("PGDu")
    x, y, _ = images(16)
    pgda.fit(x, y)
    pgdu.fit(x, y)
    assert pgda.history[0].losses["adv_PGDa"] == pgdu.history[0].losses["adv_PGDu"]
    for key, value in pgdu.state_dict().items():
        assert torch.equal(value, pgda.state_dict()[key]), key


def test_ape_gan_rejects_the_online_attack():
    with pytest.raises(BaselineError, match=r"APE-GAN trains on cached sets only; drop the online attack\(s\) \['PGDa'\]"):
        build_baseline("ape_gan", "digits", ("PGDu", "PGDa"), channels=1)
