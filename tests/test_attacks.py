"""Attack suite: invariants checked for every attack (advertorch-test style), on tiny digits models.

Module fixtures train a small CNN (and, for the local search attack, a linear model) for a
second or two on sklearn digits; each attack then runs once on a few correctly classified test
images at a small budget (SETTINGS) and the run is shared by the invariant tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from addd import attacks
from addd.attacks import (
    ATTACK_NAMES, AttackError, AttackResult, attack_params, is_targeted, run_adaptive_attack, run_attack,
)
from addd.data import load_dataset

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # the attack libraries' chatter
]

DATASET = "digits"
N_EXAMPLES = 24
# Per attack: budget (as small as keeps the attack effective), number of examples, model.
SETTINGS: dict[str, dict] = {
    "PGDu": {"budget": 0.25},
    "PGDt": {"budget": 1.0},  # targeted attacks need their full iteration count here
    "CWu": {"budget": 1.0, "n": 12},  # C&W needs its binary search to raise the constant
    "CWt": {"budget": 1.0, "n": 12},
    "DDNu": {"budget": 0.2},
    "DDNt": {"budget": 1.0},
    # advertorch's LS barely moves the CNN on these smooth upscaled digits (it changes at most
    # a few hundred pixels, reset every round); a linear model shows it working.
    "LSu": {"budget": 0.4, "model": "linear"},
    "BAu": {"budget": 0.02},
    "STu": {"budget": 0.5},
    "STt": {"budget": 1.0},
    "AA_Linf": {"budget": 0.05},
    "AA_L2": {"budget": 0.05},
}
assert set(SETTINGS) == set(ATTACK_NAMES)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 32, 32) -> (B, 10)
        return self.head(self.features(x).flatten(1))


def _train(net: nn.Module, digits, epochs: int, lr: float) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    x, y = digits.train.x[:600], digits.train.y[:600]
    for _ in range(epochs):
        for begin in range(0, len(x), 50):
            optimizer.zero_grad()
            F.cross_entropy(net(x[begin:begin + 50]), y[begin:begin + 50]).backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # test_model_gradients_untouched checks they stay None
    return net.eval()


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DATASET)


@pytest.fixture(scope="module")
def models(digits) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    cnn = _train(SmallCNN(), digits, epochs=8, lr=3e-3)
    linear = _train(nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10)), digits, epochs=30, lr=1e-2)
    return {"cnn": cnn, "linear": linear}


@pytest.fixture(scope="module")
def model(models) -> nn.Module:
    return models["cnn"]


def _correct_examples(digits, model, n: int = N_EXAMPLES):
    """Correctly classified test images, so every attack has something to break."""
    with torch.no_grad():
        correct = model(digits.test.x).argmax(1) == digits.test.y
    x, y = digits.test.x[correct][:n], digits.test.y[correct][:n]
    assert len(x) == n
    return x, y


@pytest.fixture(scope="module")
def examples(digits, model):
    return _correct_examples(digits, model)


@dataclass
class Run:
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    x_before: torch.Tensor  # copies taken before the attack ran
    y_before: torch.Tensor
    result: AttackResult


@pytest.fixture(scope="module")
def results(digits, models):
    """Each attack run once (seed 0) with its SETTINGS."""
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            setting = SETTINGS[name]
            model = models[setting.get("model", "cnn")]
            x, y = _correct_examples(digits, model, setting.get("n", N_EXAMPLES))
            x_before, y_before = x.clone(), y.clone()
            torch.manual_seed(12345)  # a caller state unlike test_same_seed_same_output's
            np.random.seed(12345)
            result = run_attack(name, model, x, y, dataset=DATASET, budget=setting["budget"], seed=0)
            cache[name] = Run(model, x, y, x_before, y_before, result)
        return cache[name]

    return get


def _predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# ---- invariants, every attack ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_inputs_untouched_and_output_shape_dtype_range(name, results):
    run = results(name)
    x, result = run.x, run.result
    assert torch.equal(x, run.x_before) and torch.equal(run.y, run.y_before)
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.x_adv.device == x.device
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert not torch.equal(result.x_adv, x)  # the attack changed something


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ATTACK_NAMES if attacks.ATTACKS[n].norm is not None])
def test_perturbation_within_bound(name, results):
    x, result = results(name).x, results(name).result
    eps = result.params["eps"]
    delta = (result.x_adv - x).flatten(1)
    if attacks.ATTACKS[name].norm == "Linf":
        assert float(delta.abs().max()) <= eps + 1e-6
    else:
        assert float(delta.norm(dim=1).max()) <= eps + 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_lowers_accuracy(name, results):
    run = results(name)
    model, x, y, result = run.model, run.x, run.y, run.result
    clean = (_predict(model, x) == y).float().mean()
    attacked = (_predict(model, result.x_adv) == y).float().mean()
    assert clean == 1.0  # the fixture picked correctly classified images
    assert attacked <= clean - 0.25, f"{name}: accuracy {attacked:.2f} under attack"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ATTACK_NAMES if is_targeted(n)])
def test_targeted_attack_moves_predictions_to_target(name, results):
    run = results(name)
    model, x, result = run.model, run.x, run.result
    assert result.target == attacks.DEFAULT_TARGET_CLASS == result.params["target_class"]
    assert (run.y == result.target).any()  # examples already of the target class are passed in too
    before = (_predict(model, x) == result.target).float().mean()
    after = (_predict(model, result.x_adv) == result.target).float().mean()
    assert after >= before + 0.25, f"{name}: {before:.2f} -> {after:.2f} predicted as target"


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_params_recorded_with_budget_applied(name, results):
    result = results(name).result
    budget = SETTINGS[name]["budget"]
    spec = attacks.ATTACKS[name]
    table = {**attacks.FAMILY_DEFAULTS[spec.family], **attacks.DATASET_PARAMS[DATASET][spec.family]}
    expected = {key: max(1, round(table[key] * budget)) for key in spec.scaled}
    if result.params.get("version") == "custom":
        expected["n_queries"] = 0  # AutoAttack's cut-down subset runs no Square attack
    assert {key: result.params[key] for key in expected} == expected
    assert result.params["budget"] == budget and result.params["seed"] == 0
    assert result.params["library_version"] == attacks.library_versions()[result.params["library"]]
    assert result.params == {**attack_params(name, DATASET, budget), **_run_only(result.params)}
    if result.target is None:
        assert "target_class" not in result.params


def _run_only(params):
    """Entries run_attack adds to attack_params' dict (seed, library, counts)."""
    keys = ("seed", "library", "library_version", "num_classes", "ba_no_start", "st_failed_passthrough")
    return {key: params[key] for key in keys if key in params}


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_same_seed_same_output(name, results):
    run = results(name)
    first = run.result
    torch.manual_seed(999)  # the caller's random state must not matter, only `seed`
    np.random.seed(999)
    again = run_attack(name, run.model, run.x, run.y, dataset=DATASET, budget=SETTINGS[name]["budget"], seed=0)
    assert torch.equal(first.x_adv, again.x_adv)


# ---- seeds, side effects, overrides ----------------------------------------------------------


def test_seed_changes_random_start_and_callers_rng_is_left_alone(model, examples):
    x, y = examples
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    first = run_attack("PGDu", model, x, y, dataset=DATASET, budget=0.05, seed=1)
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_numpy)
    other = run_attack("PGDu", model, x, y, dataset=DATASET, budget=0.05, seed=2)
    assert not torch.equal(first.x_adv, other.x_adv)


def test_model_gradients_untouched(model, examples):
    x, y = examples
    run_attack("PGDu", model, x, y, dataset=DATASET, budget=0.05)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_overrides_target_class_and_eps(model, examples):
    x, y = examples
    overrides = {"target_class": 7, "eps": 0.05}
    result = run_attack("PGDt", model, x, y, dataset=DATASET, budget=0.25, overrides=overrides)
    assert result.target == 7 and result.params["eps"] == 0.05
    assert float((result.x_adv - x).abs().max()) <= 0.05 + 1e-6
    assert (_predict(model, result.x_adv) == 7).float().mean() > (_predict(model, x) == 7).float().mean()


@pytest.mark.slow
def test_autoattack_standard_version_at_full_budget(model, examples):
    x, y = examples
    result = run_attack("AA_Linf", model, x[:6], y[:6], dataset=DATASET, budget=1.0)
    assert result.params["version"] == "standard"
    assert result.params["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert float((result.x_adv - x[:6]).abs().max()) <= result.params["eps"] + 1e-6
    assert (_predict(model, result.x_adv) == y[:6]).float().mean() < 0.5


# ---- adaptive attacks on model(defense.restore(x)) -------------------------------------------


class QuantizeDefense(nn.Module):
    """Rounds pixels to 3 levels: zero gradient almost everywhere (BPDA's use case)."""

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 2) / 2


class BlurDefense(nn.Module):
    """A differentiable 'defense' with a parameter: a fixed 3x3 mean filter."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.full((1, 1, 3, 3), 1 / 9))

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel, padding=1).clamp(0, 1)


class _Defended(nn.Module):
    def __init__(self, defense, model):
        super().__init__()
        self.defense, self.model = defense, model

    def forward(self, x):
        return self.model(self.defense.restore(x))


@pytest.mark.slow
def test_bpda_breaks_gradient_masking_that_stops_plain_pgd(model, examples):
    x, y = examples
    defense = QuantizeDefense()
    defended = _Defended(defense, model).eval()
    overrides = {"eps": 0.3}  # quantization to 3 levels needs steps of ~0.25 to show
    clean = (_predict(defended, x) == y).float().mean()
    plain = run_attack("PGDu", defended, x, y, dataset=DATASET, budget=0.25, overrides=overrides)
    bpda = run_adaptive_attack("BPDA", model, defense, x, y, dataset=DATASET, budget=0.25, overrides=overrides)
    plain_acc = (_predict(defended, plain.x_adv) == y).float().mean()
    bpda_acc = (_predict(defended, bpda.x_adv) == y).float().mean()
    assert clean >= 0.8
    assert bpda_acc <= plain_acc - 0.3, (clean, plain_acc, bpda_acc)
    assert float((bpda.x_adv - x).abs().max()) <= 0.3 + 1e-6
    assert bpda.params["nb_iter"] == 10 and bpda.params["library"] == "advertorch"
    again = run_adaptive_attack("BPDA", model, defense, x, y, dataset=DATASET, budget=0.25, overrides=overrides)
    assert torch.equal(bpda.x_adv, again.x_adv)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["AA_Linf", "AA_L2"])
def test_adaptive_autoattack_through_defense(name, model, examples):
    x, y = examples
    x_before = x.clone()
    defense = BlurDefense()
    defended = _Defended(defense, model).eval()
    result = run_adaptive_attack(name, model, defense, x, y, dataset=DATASET, budget=0.05, seed=0)
    clean = (_predict(defended, x) == y).float().mean()
    attacked = (_predict(defended, result.x_adv) == y).float().mean()
    assert torch.equal(x, x_before)
    assert attacked <= clean - 0.25, (clean, attacked)
    delta = (result.x_adv - x).flatten(1)
    bound = delta.abs().max() if name == "AA_Linf" else delta.norm(dim=1).max()
    assert float(bound) <= result.params["eps"] + 1e-4
    assert defense.kernel.requires_grad and defense.kernel.grad is None


# ---- tables and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("dataset", attacks.DATASETS)
@pytest.mark.parametrize("name", ATTACK_NAMES + ("BPDA",))
def test_every_attack_has_params_on_every_dataset(name, dataset):
    params = attack_params(name, dataset, budget=0.5)
    assert params["budget"] == 0.5 and params["batch_size"] >= 1
    assert ("target_class" in params) == is_targeted(name)


def test_paper_c1_values():
    assert attack_params("PGDu", "cifar10")["eps"] == 0.03 and attack_params("PGDt", "svhn")["eps"] == 0.025
    assert attack_params("CWu", "mnist")["max_iterations"] == 300
    assert attack_params("DDNu", "svhn")["nb_iter"] == 200
    assert attack_params("BAu", "cifar10")["steps"] == 2000
    assert attack_params("LSu", "cifar10")["t"] == 15
    assert attack_params("STt", "fashion_mnist")["max_iterations"] == 5000


def test_budget_scales_iterations_down_to_one():
    assert attack_params("PGDu", "mnist", budget=0.5)["nb_iter"] == 20
    tiny = attack_params("CWu", "mnist", budget=1e-6)
    assert tiny["max_iterations"] == 1 and tiny["binary_search_steps"] == 1
    assert attack_params("AA_L2", "cifar10", budget=0.5)["version"] == "custom"


def test_targeted_names():
    assert [n for n in ATTACK_NAMES if is_targeted(n)] == ["PGDt", "CWt", "DDNt", "STt"]


def test_attack_names_are_one_registry_with_a_kind_per_attack():
    from addd import attack_names

    assert ATTACK_NAMES is attack_names.ATTACK_NAMES and set(attacks.ATTACKS) >= set(attack_names.ATTACK_NAMES)
    assert set(attack_names.ATTACK_KINDS) == set(ATTACK_NAMES)
    by_kind = {}
    for name, kind in attack_names.ATTACK_KINDS.items():
        by_kind.setdefault(kind, set()).add(name)
    assert by_kind == {
        "gradient": {"PGDu", "PGDt", "CWu", "CWt", "DDNu", "DDNt", "AA_Linf", "AA_L2"},
        "decision": {"BAu"}, "score": {"LSu"}, "spatial": {"STu", "STt"},
    }
    assert attacks.ATTACKS["BAu"].library == "foolbox"  # the decision-based one is foolbox's boundary attack


def test_attack_names_and_config_import_without_torch():
    import subprocess
    import sys

    code = "import sys, addd.attack_names, addd.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_unknown_names_list_valid_ones(model, examples):
    x, y = examples
    with pytest.raises(AttackError, match="PGDu.*AA_L2"):
        attack_params("FGSM", "mnist")
    with pytest.raises(AttackError, match="mnist.*digits"):
        attack_params("PGDu", "imagenet")
    with pytest.raises(AttackError, match="PGDu.*AA_L2"):
        run_attack("BPDA", model, x, y, dataset=DATASET)  # adaptive only
    with pytest.raises(AttackError, match="BPDA"):
        run_adaptive_attack("PGDu", model, QuantizeDefense(), x, y, dataset=DATASET)
    with pytest.raises(AttackError, match="nb_iter"):
        attack_params("PGDu", "mnist", overrides={"epsilon": 0.1})
    with pytest.raises(AttackError):
        is_targeted("pgdu")


@pytest.mark.parametrize("budget", [0, -0.5, 1.5, float("nan"), "1", True])
def test_invalid_budget(budget):
    with pytest.raises(AttackError, match="budget"):
        attack_params("PGDu", "mnist", budget=budget)


def test_invalid_inputs(model, examples):
    x, y = examples
    with pytest.raises(AttackError, match=r"\[0, 1\]"):
        run_attack("PGDu", model, x * 2, y, dataset=DATASET)
    with pytest.raises(AttackError, match="float32"):
        run_attack("PGDu", model, x.double(), y, dataset=DATASET)
    with pytest.raises(AttackError, match="labels"):
        run_attack("PGDu", model, x, y[:-1], dataset=DATASET)
    with pytest.raises(AttackError, match="target_class"):
        run_attack("PGDt", model, x, y, dataset=DATASET, overrides={"target_class": 10})


def test_import_is_cheap_and_never_pulls_sweep_libraries():
    import subprocess
    import sys

    code = (
        "import sys, addd.attacks; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'advertorch', 'foolbox', 'pyautoattack', 'ray', 'optuna', 'mlflow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["PGDt", "DDNu", "BAu", "STu", "AA_Linf"])
def test_runs_on_cuda(name, digits):
    x, y = digits.test.x[:8], digits.test.y[:8]
    model = SmallCNN().eval()
    result = run_attack(name, model, x, y, dataset=DATASET, budget=0.02, device="cuda")
    assert result.x_adv.device == x.device and result.x_adv.shape == x.shape


def _assert_fast_local_search_matches_advertorch(model, x, y, dataset: str, budget: float = 1.0) -> None:
    """addd/_advertorch.py's LocalSearchAttack and advertorch's own class give the same images,
    seed for seed, with ``dataset``'s LSu parameters; some images moved and some not, so both
    outcomes were compared."""
    from addd import _advertorch

    advertorch = _advertorch._import()
    kwargs = {key: value for key, value in attack_params("LSu", dataset, budget=budget).items()
              if key in ("p", "r", "t", "d", "k", "round_ub", "seed_ratio", "max_nb_seeds")}
    outputs = []
    for cls in (advertorch.attacks.LocalSearchAttack, _advertorch._local_search_class()):
        torch.manual_seed(3)
        outputs.append(cls(model, **kwargs).perturb(x.clone(), y.clone()))
    assert torch.equal(outputs[0], outputs[1])
    changed = (outputs[0] != x).flatten(1).any(1)
    assert 0 < changed.sum() < len(x)


def test_fast_local_search_gives_advertorchs_images_bit_for_bit(digits, models):
    """Our local search against advertorch's, with the digits suite's parameters, on the linear
    model (the one LS moves: on the CNN both return the images unchanged)."""
    x, y = _correct_examples(digits, models["linear"], 8)
    _assert_fast_local_search_matches_advertorch(models["linear"], x, y, DATASET)


def test_fast_local_search_gives_advertorchs_images_on_colour_images():
    """The same comparison on 3-channel 32x32 images (SVHN's and CIFAR-10's shape), with SVHN's
    parameters and one round: the candidates perturb every channel of a pixel, and the sweep's
    SVHN smoke test leaves this attack out. A random linear model and noise images it labels
    itself (so every image starts correctly classified)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    _assert_fast_local_search_matches_advertorch(model, x, y, "svhn", budget=0.1)
