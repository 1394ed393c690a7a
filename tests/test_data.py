"""addd.data: real file formats (tiny fake files in tmp_path), splits, sizes, errors, digits."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from addd.data import DATASET_NAMES, DataError, Dataset, Split, load_dataset


# ----------------------------------------------------------------------------- fake files


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def _fake_mnist(root: Path, folder: str, n_train: int, n_test: int, compress: bool, rng: np.random.Generator):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    images = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = 255  # every image holds a full-white pixel: checks /255 exactly
        y = np.arange(n, dtype=np.uint8) % 10
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x, compress)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, compress)
        images[prefix] = (x, y)
    return images


def _fake_svhn(folder: Path, n_train: int, n_test: int, rng: np.random.Generator):
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # labels 1..10, 10 = digit 0
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        data[split] = (x, y)
    return data


def _fake_cifar(root: Path, per_batch: int, n_test: int, rng: np.random.Generator):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        x = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        y = list(rng.integers(0, 10, size=n).tolist())
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": x, "labels": y, "batch_label": name}, handle, protocol=2)
        batches.append((x, y))
    return batches


def _check_split(split: Split, channels: int) -> None:
    assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
    assert split.x.shape[1:] == (channels, 32, 32)
    assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
    assert int(split.y.min()) >= 0 and int(split.y.max()) <= 9


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_idx_files_load_zero_padded(tmp_path, name, folder, compress):
    images = _fake_mnist(tmp_path, folder, n_train=60, n_test=20, compress=compress, rng=np.random.default_rng(1))
    dataset = load_dataset(name, tmp_path, n_val=10)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (50, 10, 20)
    assert dataset.channels == 1
    for split in (dataset.train, dataset.val, dataset.test):
        _check_split(split, 1)
    # 2-pixel zero border, original pixels /255 inside, labels as written (test set is not shuffled out).
    x_test, y_test = images["t10k"]
    assert torch.all(dataset.test.x[:, :, :2] == 0) and torch.all(dataset.test.x[:, :, :, -2:] == 0)
    expected = torch.from_numpy(x_test).float() / 255
    torch.testing.assert_close(dataset.test.x[:, 0, 2:30, 2:30], expected, rtol=0, atol=0)
    assert dataset.test.y.tolist() == y_test.tolist()


def test_svhn_mat_labels_and_layout(tmp_path):
    data = _fake_svhn(tmp_path / "svhn", n_train=40, n_test=30, rng=np.random.default_rng(2))
    dataset = load_dataset("svhn", tmp_path, n_val=0)
    assert dataset.channels == 3 and len(dataset.train) == 40 and len(dataset.test) == 30
    for split in (dataset.train, dataset.test):
        _check_split(split, 3)
    x, y = data["test"]
    expected_labels = y.reshape(-1).astype(np.int64) % 10  # 10 -> 0
    assert 0 in dataset.test.y.tolist() and dataset.test.y.tolist() == expected_labels.tolist()
    # (H, W, C, N) -> (N, C, H, W): pixel (row 3, col 5, channel 2) of image 7.
    assert dataset.test.x[7, 2, 3, 5].item() == pytest.approx(x[3, 5, 2, 7] / 255, abs=1e-7)


def test_svhn_files_directly_in_root_are_found(tmp_path):
    _fake_svhn(tmp_path, n_train=20, n_test=10, rng=np.random.default_rng(3))
    assert len(load_dataset("svhn", tmp_path, n_val=5).train) == 15


def test_cifar10_pickle_batches(tmp_path):
    batches = _fake_cifar(tmp_path, per_batch=8, n_test=12, rng=np.random.default_rng(4))
    dataset = load_dataset("cifar10", tmp_path, n_val=4)
    assert dataset.channels == 3 and (len(dataset.train), len(dataset.val), len(dataset.test)) == (36, 4, 12)
    _check_split(dataset.train, 3)
    x_test, y_test = batches[-1]
    expected = torch.from_numpy(x_test.reshape(-1, 3, 32, 32)).float() / 255
    torch.testing.assert_close(dataset.test.x, expected, rtol=0, atol=0)
    assert dataset.test.y.tolist() == y_test


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    _fake_cifar(tmp_path, per_batch=2, n_test=2, rng=np.random.default_rng(5))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": Evil(), "labels": [0]}, handle)
    with pytest.raises(DataError, match="test_batch is not a CIFAR-10.*refusing to load builtins.print"):
        load_dataset("cifar10", tmp_path)


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    _fake_mnist(tmp_path, "MNIST", n_train=10, n_test=10, compress=False, rng=np.random.default_rng(6))
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated or corrupt"):
        load_dataset("mnist", tmp_path)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name,folder,a_missing_file",
    [
        ("mnist", "MNIST/raw", "t10k-labels-idx1-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw", "train-images-idx3-ubyte"),
        ("svhn", "svhn", "train_32x32.mat"),
        ("cifar10", "cifar-10-batches-py", "data_batch_3"),
    ],
)
def test_missing_files_name_files_folder_and_remedy(tmp_path, name, folder, a_missing_file):
    with pytest.raises(DataError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert a_missing_file in message
    assert str(tmp_path / folder) in message
    assert "download=True" in message and "http" in message


@pytest.mark.parametrize("name,torchvision_class", [("mnist", "MNIST"), ("svhn", "SVHN"), ("cifar10", "CIFAR10")])
def test_failed_download_is_a_clear_error(tmp_path, monkeypatch, name, torchvision_class):
    import torchvision.datasets
    from urllib.error import URLError

    calls = []

    def offline(root, *args, download=False, **kwargs):
        calls.append((root, download))
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets, torchvision_class, offline)
    with pytest.raises(DataError, match=f"{name}: download into .* failed .*no network.*put them in that folder"):
        load_dataset(name, tmp_path, download=True)
    assert calls and calls[0][1] is True and calls[0][0].startswith(str(tmp_path))


def test_download_is_skipped_when_files_are_there(tmp_path, monkeypatch):
    import torchvision.datasets

    _fake_svhn(tmp_path / "svhn", n_train=5, n_test=5, rng=np.random.default_rng(9))
    monkeypatch.setattr(torchvision.datasets, "SVHN", lambda *a, **k: pytest.fail("downloaded although files exist"))
    assert len(load_dataset("svhn", tmp_path, n_val=0, download=True).train) == 5


def test_partly_missing_files_list_only_the_missing_ones(tmp_path):
    _fake_svhn(tmp_path / "svhn", n_train=5, n_test=5, rng=np.random.default_rng(7))
    (tmp_path / "svhn" / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match="missing test_32x32.mat in") as info:
        load_dataset("svhn", tmp_path)
    assert "train_32x32.mat" not in str(info.value)


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASET_NAMES)


@pytest.mark.parametrize(
    "sizes,match",
    [
        ({"n_train": 5000}, "n_train=5000 but only 1438"),
        ({"n_train": 1400, "n_val": 100}, "n_val=100 but only 38"),
        ({"n_test": 10_000}, "n_test=10000 but only 359"),
        ({"n_val": -1}, "n_val must be a whole number"),
        ({"n_train": 2.5}, "n_train must be a whole number"),
    ],
)
def test_bad_sizes_are_clear_errors(sizes, match):
    with pytest.raises(DataError, match=match):
        load_dataset("digits", **sizes)


# ----------------------------------------------------------------------------- splits


def _rows(split: Split) -> set[bytes]:
    return {row.numpy().tobytes() for row in split.x}


def test_splits_are_deterministic_per_seed_and_differ_across_seeds(tmp_path):
    _fake_mnist(tmp_path, "MNIST", n_train=200, n_test=50, compress=True, rng=np.random.default_rng(8))
    first = load_dataset("mnist", tmp_path, n_train=100, n_val=30, n_test=20, seed=3)
    again = load_dataset("mnist", tmp_path, n_train=100, n_val=30, n_test=20, seed=3)
    other = load_dataset("mnist", tmp_path, n_train=100, n_val=30, n_test=20, seed=4)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(first, split).x, getattr(again, split).x)
        assert torch.equal(getattr(first, split).y, getattr(again, split).y)
    assert not torch.equal(first.train.x, other.train.x) and not torch.equal(first.val.x, other.val.x)
    assert first.fingerprint() == again.fingerprint() != other.fingerprint()
    # val is carved out of train: disjoint (the random pixels make every image unique).
    assert not _rows(first.train) & _rows(first.val)


def test_default_sizes_digits():
    dataset = load_dataset("digits")
    # 1797 images: fixed 20% test (359), val = 10% of the 1438 training images, train the rest.
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (1294, 144, 359)
    assert len(load_dataset("digits", n_train=300).val) == 30  # 10% of n_train when it is given


def test_digits_test_set_is_fixed_across_seeds_but_val_is_not():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert _rows(a.test) == _rows(b.test)
    assert _rows(a.val) != _rows(b.val)
    assert _rows(a.train) | _rows(a.val) == _rows(b.train) | _rows(b.val)


def test_digits_values_resize_and_classes():
    dataset = load_dataset("digits", n_train=200, n_val=20, n_test=50)
    assert dataset.name == "digits" and dataset.channels == 1 and dataset.num_classes == 10
    for split in (dataset.train, dataset.val, dataset.test):
        _check_split(split, 1)
    assert float(dataset.train.x.max()) == pytest.approx(1.0)  # 16/16 survives bilinear resizing
    # Bilinear upsampling of 8x8 is smooth: neighbouring pixels differ by far less than one grey level step.
    assert float((dataset.train.x[..., 1:] - dataset.train.x[..., :-1]).abs().max()) < 0.5
    assert len(set(dataset.train.y.tolist())) == 10


def test_n_test_does_not_change_train_or_val():
    small, full = load_dataset("digits", n_test=10), load_dataset("digits")
    assert torch.equal(small.train.x, full.train.x) and torch.equal(small.val.y, full.val.y)


def test_split_and_dataset_validate_their_contents():
    x = torch.rand(4, 1, 32, 32)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        Split(x * 2, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(DataError, match="int64"):
        Split(x, torch.zeros(4, dtype=torch.int32))
    split = Split(x, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(DataError, match="expected \\(3, 32, 32\\)"):
        Dataset("fake", split, split, split, channels=3)
