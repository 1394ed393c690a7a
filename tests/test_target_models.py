"""addd.target_models: architectures, seeded training, the train-once cache, safe loading."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

import addd
import addd.architectures as arch
import addd.target_models as tm
from addd.data import Dataset, load_dataset
from addd.storage import save_tensors
from addd.architectures import DEFAULT_ARCH, TARGET_ARCHS, TargetModelError, arch_kwargs_for, build_target_model
from addd.target_models import (
    TargetTrainSettings,
    accuracy,
    get_target_model,
    load_target_model,
    target_model_key,
)

TINY = TargetTrainSettings(epochs=1, batch_size=32, lr=3e-3)
CHANNELS = {"digits": 1, "mnist": 1, "mnist5k": 1, "fashion_mnist": 1, "svhn": 3, "cifar10": 3, "svhn_synthetic": 3}


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    return load_dataset("digits", n_train=256, n_val=32, n_test=64, seed=0)


# ----------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("dataset_name", sorted(DEFAULT_ARCH))
def test_each_default_arch_maps_its_dataset_images_to_logits(dataset_name):
    channels = CHANNELS[dataset_name]
    model = build_target_model(DEFAULT_ARCH[dataset_name], **arch_kwargs_for(DEFAULT_ARCH[dataset_name], channels, 10))
    x = torch.rand(3, channels, 32, 32)
    logits = model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    logits.sum().backward()  # differentiable w.r.t. its parameters (attacks need gradients too)
    assert all(p.grad is not None for p in model.parameters())


def test_every_registered_arch_takes_one_and_three_channels():
    for arch in TARGET_ARCHS:
        for channels in (1, 3):
            model = build_target_model(arch, channels=channels, num_classes=7).eval()
            assert model(torch.rand(2, channels, 32, 32)).shape == (2, 7), arch


def test_resnet_depth_is_a_parameter():
    def n_blocks(depth):
        return sum(isinstance(m, arch._BasicBlock) for m in arch.CifarResNet(depth=depth).modules())

    assert n_blocks(20) == 9 and n_blocks(110) == 54  # (depth - 2) / 2 blocks
    assert arch.CifarResNet(depth=110).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(TargetModelError, match="6n \\+ 2"):
        arch.CifarResNet(depth=21)


def test_normalisation_is_inside_the_model():
    model = arch.DigitsCNN().eval()
    x = torch.rand(2, 1, 32, 32)  # images in [0, 1]; the model centres them itself
    torch.testing.assert_close(model(x), model.layers((x - 0.5) / 0.5))
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}  # constants not stored


def test_unknown_arch_and_bad_kwargs_are_clear_errors():
    with pytest.raises(TargetModelError) as info:
        arch_kwargs_for("vgg", 1, 10)
    assert all(name in str(info.value) for name in TARGET_ARCHS)
    with pytest.raises(TargetModelError, match="bad arguments for resnet.*depth"):
        arch_kwargs_for("resnet", 3, 10, {"layers": 3})


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"optimizer": "lbfgs"}, "adam, sgd"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"augment": "mixup"}, "crop_flip"),
    ],
)
def test_bad_settings_are_clear_errors(changes, match):
    with pytest.raises(TargetModelError, match=match):
        TargetTrainSettings(**changes)


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_digits_default_model_reaches_high_clean_accuracy(tmp_path):
    dataset = load_dataset("digits")
    start = time.perf_counter()
    entry = get_target_model(dataset, cache_dir=tmp_path)
    seconds = time.perf_counter() - start
    assert entry.trained and entry.arch == "digits_cnn"
    assert entry.clean_test_accuracy >= 0.95, entry.clean_test_accuracy
    assert accuracy(entry.model, dataset.test) == entry.clean_test_accuracy  # stored figure is the real one
    assert seconds < 120  # "a few seconds" on an idle CPU; generous for a shared box


def test_training_is_deterministic_and_leaves_global_rng_alone(tmp_path, small_digits):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = get_target_model(small_digits, settings=TINY, cache_dir=tmp_path / "a")
    assert torch.equal(torch.rand(3), expected_next)
    second = get_target_model(small_digits, settings=TINY, cache_dir=tmp_path / "b")
    assert first.trained and second.trained
    assert first.weights_sha256 == second.weights_sha256
    reseeded = get_target_model(small_digits, settings=replace(TINY, seed=1), cache_dir=tmp_path)
    assert reseeded.weights_sha256 != first.weights_sha256


def test_augmentations_keep_shape_and_range():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    for name, augment in tm.AUGMENTATIONS.items():
        out = augment(x, generator)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, name
    assert not torch.equal(tm.AUGMENTATIONS["crop"](x, generator), x)


# ----------------------------------------------------------------------------- cache


def test_second_call_loads_instead_of_training(tmp_path, small_digits, monkeypatch):
    first = get_target_model(small_digits, settings=TINY, cache_dir=tmp_path)
    assert first.trained and first.path.is_file() and first.path.parent == tmp_path / "target_models"

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the model is cached")

    monkeypatch.setattr(tm, "train_target_model", no_training)
    second = get_target_model(small_digits, settings=TINY, cache_dir=tmp_path)
    assert not second.trained
    assert (second.key, second.weights_sha256, second.path) == (first.key, first.weights_sha256, first.path)
    assert second.clean_test_accuracy == first.clean_test_accuracy
    x = small_digits.test.x[:16]
    torch.testing.assert_close(second.model(x), first.model(x), rtol=0, atol=0)
    # A different setting is a different key, so it would train: the patched trainer fires.
    with pytest.raises(AssertionError, match="trained again"):
        get_target_model(small_digits, settings=replace(TINY, lr=1e-3), cache_dir=tmp_path)


def test_cache_dir_defaults_to_env(tmp_path, small_digits, monkeypatch):
    monkeypatch.setenv("ADDD_CACHE_DIR", str(tmp_path / "env_cache"))
    entry = get_target_model(small_digits, settings=TINY)
    assert entry.path.parent == tmp_path / "env_cache" / "target_models"


def test_key_changes_with_every_ingredient(small_digits):
    fingerprint, kwargs = small_digits.fingerprint(), arch_kwargs_for("digits_cnn", 1, 10)
    base = target_model_key(fingerprint, "digits_cnn", kwargs, TINY)
    assert base == target_model_key(fingerprint, "digits_cnn", dict(kwargs), replace(TINY))
    other_data = load_dataset("digits", n_train=256, n_val=32, n_test=64, seed=1).fingerprint()
    variants = [
        target_model_key(other_data, "digits_cnn", kwargs, TINY),
        target_model_key(fingerprint, "lenet", arch_kwargs_for("lenet", 1, 10), TINY),
        target_model_key(fingerprint, "digits_cnn", arch_kwargs_for("digits_cnn", 1, 10, {"width": 4}), TINY),
    ]
    for field_name, value in [("epochs", 2), ("batch_size", 64), ("lr", 1e-2), ("seed", 1), ("weight_decay", 1e-4)]:
        variants.append(target_model_key(fingerprint, "digits_cnn", kwargs, replace(TINY, **{field_name: value})))
    assert len(set(variants)) == len(variants) and base not in variants


def test_concurrent_callers_train_once(tmp_path, small_digits, monkeypatch):
    calls = []
    real_train = tm.train_target_model

    def counting_train(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # hold the lock long enough for the other caller to arrive
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tm, "train_target_model", counting_train)
    results, errors = [], []

    def worker():
        try:
            results.append(get_target_model(small_digits, settings=TINY, cache_dir=tmp_path))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2
    assert len(calls) == 1
    assert sorted(r.trained for r in results) == [False, True]
    assert results[0].weights_sha256 == results[1].weights_sha256


# ----------------------------------------------------------------------------- loading


def test_load_target_model_rebuilds_in_eval_mode(tmp_path, small_digits):
    # svhn_cnn has dropout: outputs only repeat if loading really put it in eval mode.
    entry = get_target_model(small_digits, arch="svhn_cnn", arch_kwargs={"width": 4}, settings=TINY, cache_dir=tmp_path)
    model = load_target_model(entry.path)
    assert isinstance(model, arch.SVHNCNN)
    assert not any(module.training for module in model.modules())
    x = small_digits.test.x[:8]
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(model(x), entry.model(x), rtol=0, atol=0)
    assert addd.load_target_model is load_target_model


def test_stored_record(tmp_path, small_digits):
    entry = get_target_model(small_digits, settings=TINY, cache_dir=tmp_path)
    loaded = tm.load_target_entry(entry.path)
    assert loaded.settings == TINY and loaded.arch == "digits_cnn" and loaded.arch_kwargs == entry.arch_kwargs
    assert loaded.dataset_fingerprint == small_digits.fingerprint()
    assert loaded.clean_test_accuracy == pytest.approx(accuracy(loaded.model, small_digits.test))
    assert loaded.val_accuracy == pytest.approx(accuracy(loaded.model, small_digits.val))


def test_corrupted_weights_are_detected(tmp_path, small_digits):
    entry = get_target_model(small_digits, settings=TINY, cache_dir=tmp_path)
    data = bytearray(entry.path.read_bytes())
    data[-100] ^= 0xFF  # flip one byte inside the tensor data (the header is at the start)
    entry.path.write_bytes(bytes(data))
    with pytest.raises(TargetModelError, match="do not match their recorded SHA-256"):
        load_target_model(entry.path)
    entry.path.write_bytes(bytes(data[:200]))  # truncated
    with pytest.raises(TargetModelError, match="cannot load target model"):
        load_target_model(entry.path)


def test_weights_hash_matches_storage_recipe_and_covers_scalars():
    from addd.storage import sha256_state_dict

    state = arch.DigitsCNN().state_dict()  # no 0-d tensors: storage's function works here
    assert tm.weights_sha256(state) == sha256_state_dict(state)
    bn_state = arch.SVHNCNN(width=4).state_dict()  # batch norm: 0-d num_batches_tracked
    changed = dict(bn_state)
    name = next(k for k in bn_state if k.endswith("num_batches_tracked"))
    changed[name] = bn_state[name] + 1
    assert tm.weights_sha256(changed) != tm.weights_sha256(bn_state)


def test_unknown_files_are_clear_errors(tmp_path):
    with pytest.raises(TargetModelError, match="no file at"):
        load_target_model(tmp_path / "nothing.safetensors")
    other = tmp_path / "defense.safetensors"
    save_tensors(other, {"w": torch.zeros(2)}, {"format": "addd-defense/1"})
    with pytest.raises(TargetModelError, match="is not a target model"):
        load_target_model(other)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(TargetModelError, match="cannot load target model"):
        load_target_model(text)


def test_dataset_without_default_arch_needs_one(small_digits):
    custom = Dataset("custom", small_digits.train, small_digits.val, small_digits.test, channels=1)
    with pytest.raises(TargetModelError, match="no default target architecture.*digits_cnn"):
        get_target_model(custom)


@pytest.mark.parametrize("name", sorted(set(TARGET_ARCHS) - {"resnet"}))  # the CIFAR ResNet pools by strides
def test_maxpool_fast_path_gives_torchs_values_and_gradients(name):
    """The forward-only channels-last pooling is exact: every architecture gives nn.MaxPool2d's
    logits bit for bit without gradients, and its gradients with them (ties included: the
    digits are upsampled, so neighbouring pixels are often equal)."""
    torch.manual_seed(0)
    model = build_target_model(name, channels=CHANNELS[DEFAULT_ARCH_DATASET[name]], num_classes=10).eval()
    plain = arch.with_torch_pools(model)
    assert not any(isinstance(m, arch.MaxPool2d) for m in plain.modules())  # compared with torch's own pools
    assert any(isinstance(m, arch.MaxPool2d) for m in model.modules())
    x = torch.nn.functional.interpolate(torch.rand(6, CHANNELS[DEFAULT_ARCH_DATASET[name]], 8, 8), size=32)  # ties
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    grads = []
    for m in (model, plain):
        xi = x.clone().requires_grad_(True)
        m(xi).logsumexp(1).sum().backward()
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])


DEFAULT_ARCH_DATASET = {a: next(d for d, v in DEFAULT_ARCH.items() if v == a) for a in set(DEFAULT_ARCH.values())}
